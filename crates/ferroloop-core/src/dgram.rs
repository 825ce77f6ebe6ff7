//! Datagram helpers with no Python: raw socket addresses as the kernel reports them, and a small
//! bounded cache mapping them to the caller's address objects.
//!
//! A datagram server receives from a few peers again and again and answers to the address
//! object it was given. The cache lets the Python layer hand out the *same* address object for
//! the same peer (no tuple and no strings built per datagram), and recognise that object in
//! `sendto` by identity, so the reply goes out with the raw address, unparsed.

use std::collections::HashMap;

/// A socket address as the kernel wrote it (`sockaddr_storage` plus its length).
#[derive(Clone)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Default for RawAddr {
    fn default() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        Self {
            storage: unsafe { std::mem::zeroed() },
            len: 0,
        }
    }
}

impl RawAddr {
    pub const CAPACITY: usize = std::mem::size_of::<libc::sockaddr_storage>();

    /// Zero the first bytes the last address used, and the length.
    pub fn clear(&mut self) {
        let n = (self.len as usize).min(Self::CAPACITY);
        // SAFETY: the storage is `CAPACITY` bytes; we zero at most that many.
        unsafe {
            std::ptr::write_bytes(
                (&mut self.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                0,
                n.max(2),
            )
        };
        self.len = 0;
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// Set the length the kernel reported (clamped to the storage size).
    pub fn set_len(&mut self, len: libc::socklen_t) {
        self.len = len.min(Self::CAPACITY as libc::socklen_t);
    }

    /// Copy a sockaddr given as its bytes (at most `CAPACITY` of them are kept).
    pub fn copy_from(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(Self::CAPACITY);
        // SAFETY: `bytes` has `n` readable bytes; our storage has CAPACITY ≥ n writable bytes
        // and does not overlap a shared slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&mut self.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                n,
            )
        };
        self.len = n as libc::socklen_t;
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address family, or AF_UNSPEC when the kernel reported no address.
    pub fn family(&self) -> i32 {
        if (self.len as usize) < std::mem::size_of::<libc::sa_family_t>() {
            libc::AF_UNSPEC
        } else {
            self.storage.ss_family as i32
        }
    }

    /// The `len` bytes the kernel wrote.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `len` ≤ CAPACITY bytes of our own storage, initialised (zeroed or written).
        unsafe {
            std::slice::from_raw_parts(
                (&self.storage as *const libc::sockaddr_storage).cast::<u8>(),
                self.len as usize,
            )
        }
    }

    /// IPv4: (address bytes in network order, port).
    pub fn inet(&self) -> Option<([u8; 4], u16)> {
        if self.family() != libc::AF_INET
            || (self.len as usize) < std::mem::size_of::<libc::sockaddr_in>()
        {
            return None;
        }
        // SAFETY: family and length say the storage holds a sockaddr_in.
        let sin = unsafe { &*(self.as_ptr() as *const libc::sockaddr_in) };
        Some((
            sin.sin_addr.s_addr.to_ne_bytes(),
            u16::from_be(sin.sin_port),
        ))
    }

    /// IPv6: (address bytes, port, flowinfo, scope id), host order as the socket module gives
    /// them.
    pub fn inet6(&self) -> Option<([u8; 16], u16, u32, u32)> {
        if self.family() != libc::AF_INET6
            || (self.len as usize) < std::mem::size_of::<libc::sockaddr_in6>()
        {
            return None;
        }
        // SAFETY: family and length say the storage holds a sockaddr_in6.
        let sin6 = unsafe { &*(self.as_ptr() as *const libc::sockaddr_in6) };
        Some((
            sin6.sin6_addr.s6_addr,
            u16::from_be(sin6.sin6_port),
            u32::from_be(sin6.sin6_flowinfo),
            sin6.sin6_scope_id,
        ))
    }

    /// AF_UNIX: the bytes of `sun_path` as the socket module reads them — `Abstract` (Linux
    /// abstract namespace, every byte after the family) or `Path` (up to the first NUL).
    pub fn unix_path(&self) -> Option<UnixPath<'_>> {
        if self.family() != libc::AF_UNIX {
            return None;
        }
        let off = std::mem::size_of::<libc::sa_family_t>();
        let path = &self.as_bytes()[off..];
        if !path.is_empty() && path[0] == 0 {
            return Some(UnixPath::Abstract(path));
        }
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        Some(UnixPath::Path(&path[..end]))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum UnixPath<'a> {
    Path(&'a [u8]),
    Abstract(&'a [u8]),
}

/// Cache key: the address bytes (at most `sockaddr_in6`'s 28 for the cached families, or a
/// Unix path).
type Key = Box<[u8]>;

/// A bounded map from raw addresses to address objects `V`, with a reverse lookup by an
/// identity `usize` the caller gives each object (its pointer). When full, it is emptied and
/// refilled: a server with more peers than the capacity builds address objects as without a
/// cache, and never holds more than `capacity` of them.
pub struct AddrCache<V> {
    by_addr: HashMap<Key, (usize, V)>,
    by_id: HashMap<usize, RawAddr>,
    capacity: usize,
}

impl<V> AddrCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The object cached for `addr`.
    pub fn get(&self, addr: &RawAddr) -> Option<&V> {
        self.by_addr.get(addr.as_bytes()).map(|(_, v)| v)
    }

    /// The raw address of the cached object with identity `id`.
    pub fn addr_of(&self, id: usize) -> Option<&RawAddr> {
        self.by_id.get(&id)
    }

    /// Cache `value` (identity `id`) for `addr`. Returns the values dropped from the cache, so
    /// the caller can release them where it is safe to.
    pub fn insert(&mut self, addr: &RawAddr, id: usize, value: V) -> Vec<V> {
        let mut dropped = Vec::new();
        if self.by_addr.len() >= self.capacity {
            dropped.extend(self.by_addr.drain().map(|(_, (_, v))| v));
            self.by_id.clear();
        }
        if let Some((old_id, old)) = self.by_addr.insert(addr.as_bytes().into(), (id, value)) {
            self.by_id.remove(&old_id);
            dropped.push(old);
        }
        self.by_id.insert(id, addr.clone());
        dropped
    }

    /// Empty the cache, handing the values out.
    pub fn take_all(&mut self) -> Vec<V> {
        self.by_id.clear();
        self.by_addr.drain().map(|(_, (_, v))| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first `len` bytes of a sockaddr struct.
    fn bytes_of<T>(v: &T, len: usize) -> &[u8] {
        assert!(len <= std::mem::size_of::<T>());
        // SAFETY: `v` is a live, initialised value of at least `len` bytes (asserted).
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len) }
    }

    fn v4(a: [u8; 4], port: u16) -> RawAddr {
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes(a);
        let mut r = RawAddr::default();
        r.copy_from(bytes_of(&sin, std::mem::size_of_val(&sin)));
        r
    }

    #[test]
    fn decodes_inet_and_unix() {
        let a = v4([127, 0, 0, 1], 5353);
        assert_eq!(a.family(), libc::AF_INET);
        assert_eq!(a.inet(), Some(([127, 0, 0, 1], 5353)));
        assert_eq!(a.inet6(), None);
        assert_eq!(RawAddr::default().family(), libc::AF_UNSPEC);

        // SAFETY: sockaddr_un is plain old data; all-zero is valid.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in b"/tmp/x".iter().enumerate() {
            sun.sun_path[i] = *b as libc::c_char;
        }
        let mut u = RawAddr::default();
        u.copy_from(bytes_of(&sun, 2 + 7));
        assert_eq!(u.unix_path(), Some(UnixPath::Path(b"/tmp/x")));
        sun.sun_path[0] = 0;
        u.copy_from(bytes_of(&sun, 2 + 6));
        assert_eq!(u.unix_path(), Some(UnixPath::Abstract(b"\0tmp/x")));
        u.copy_from(bytes_of(&sun, 2));
        assert_eq!(u.unix_path(), Some(UnixPath::Path(b"")));
    }

    #[test]
    fn cache_maps_both_ways_and_stays_bounded() {
        let mut c = AddrCache::new(3);
        assert!(c.insert(&v4([1, 1, 1, 1], 1), 100, "a").is_empty());
        assert!(c.insert(&v4([1, 1, 1, 1], 2), 200, "b").is_empty());
        assert_eq!(c.get(&v4([1, 1, 1, 1], 1)), Some(&"a"));
        assert_eq!(c.get(&v4([1, 1, 1, 1], 3)), None);
        assert_eq!(c.addr_of(200).unwrap().inet(), Some(([1, 1, 1, 1], 2)));
        assert!(c.addr_of(300).is_none());
        // replacing an entry drops the old value and its identity
        assert_eq!(c.insert(&v4([1, 1, 1, 1], 2), 201, "b2"), vec!["b"]);
        assert!(c.addr_of(200).is_none());
        assert!(c.insert(&v4([1, 1, 1, 1], 3), 300, "c").is_empty());
        assert_eq!(c.len(), 3);
        // full: emptied, then the new one cached
        let mut dropped = c.insert(&v4([1, 1, 1, 1], 4), 400, "d");
        dropped.sort();
        assert_eq!(dropped, vec!["a", "b2", "c"]);
        assert_eq!(c.len(), 1);
        assert!(c.addr_of(100).is_none());
        assert_eq!(c.take_all(), vec!["d"]);
        assert!(c.is_empty());
    }
}
