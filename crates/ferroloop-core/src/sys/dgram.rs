//! recvfrom(2) / sendto(2) / send(2) for datagram sockets, with the peer address as raw bytes.

use std::io;
use std::os::fd::RawFd;

use crate::dgram::RawAddr;

/// What a non-blocking datagram syscall did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    /// EAGAIN / EWOULDBLOCK: try again when the fd is ready.
    WouldBlock,
    /// EINTR: a signal arrived first (the caller checks signals, then retries).
    Interrupted,
}

fn outcome(n: isize) -> io::Result<Outcome<usize>> {
    if n >= 0 {
        return Ok(Outcome::Done(n as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Outcome::WouldBlock),
        Some(libc::EINTR) => Ok(Outcome::Interrupted),
        _ => Err(err),
    }
}

/// `recvfrom(fd, buf)`: the datagram's length (truncated to `buf.len()`, as recvfrom does) and
/// the sender's address written into `addr` (length 0 when the kernel reports none).
pub fn recvfrom(fd: RawFd, buf: &mut [u8], addr: &mut RawAddr) -> io::Result<Outcome<usize>> {
    addr.clear();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is a live, exclusively borrowed slice of `buf.len()` bytes and `addr.storage`
    // a sockaddr_storage with `len` bytes of room; the kernel writes within both and sets `len`.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            addr.as_mut_ptr(),
            &mut len,
        )
    };
    let r = outcome(n)?;
    if let Outcome::Done(_) = r {
        addr.set_len(len);
    }
    Ok(r)
}

/// `send(fd, data)` on a connected datagram socket: the byte count the kernel took.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<Outcome<usize>> {
    // SAFETY: `data` is a live slice for the duration of the call; send only reads it.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
    outcome(n)
}

/// `sendto(fd, data, addr)` with an address as the kernel reported it.
pub fn sendto(fd: RawFd, data: &[u8], addr: &RawAddr) -> io::Result<Outcome<usize>> {
    // SAFETY: `data` is a live slice; `addr` points at `addr.len()` initialised bytes of a
    // sockaddr_storage. sendto only reads both.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            addr.as_ptr(),
            addr.len(),
        )
    };
    outcome(n)
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

    fn dgram_pair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors; the result is checked.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        (fds[0], fds[1])
    }

    fn close(fd: RawFd) {
        // SAFETY: the test owns `fd`.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn send_recvfrom_and_eagain() {
        let (a, b) = dgram_pair();
        let mut buf = [0u8; 16];
        let mut addr = RawAddr::default();
        assert_eq!(
            recvfrom(b, &mut buf, &mut addr).unwrap(),
            Outcome::WouldBlock
        );
        assert_eq!(send(a, b"hello").unwrap(), Outcome::Done(5));
        assert_eq!(send(a, b"").unwrap(), Outcome::Done(0));
        assert_eq!(recvfrom(b, &mut buf, &mut addr).unwrap(), Outcome::Done(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(recvfrom(b, &mut buf, &mut addr).unwrap(), Outcome::Done(0));
        assert_eq!(
            recvfrom(b, &mut buf, &mut addr).unwrap(),
            Outcome::WouldBlock
        );
        // A datagram longer than the buffer is truncated, never split.
        assert_eq!(send(a, &[7u8; 40]).unwrap(), Outcome::Done(40));
        assert_eq!(recvfrom(b, &mut buf, &mut addr).unwrap(), Outcome::Done(16));
        assert_eq!(
            recvfrom(b, &mut buf, &mut addr).unwrap(),
            Outcome::WouldBlock
        );
        close(a);
        close(b);
    }

    #[test]
    fn sendto_the_address_recvfrom_reported() {
        // SAFETY: plain socket(2) calls; results checked.
        let (s, c) = unsafe {
            (
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0),
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0),
            )
        };
        assert!(s >= 0 && c >= 0);
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sin` is a valid sockaddr_in of `len` bytes; getsockname writes within it.
        unsafe {
            assert_eq!(
                libc::bind(s, (&sin as *const libc::sockaddr_in).cast(), len),
                0
            );
            assert_eq!(
                libc::getsockname(s, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len),
                0
            );
        }
        let mut server = RawAddr::default();
        server.copy_from(bytes_of(&sin, len as usize));
        assert_eq!(sendto(c, b"ping", &server).unwrap(), Outcome::Done(4));
        let mut buf = [0u8; 8];
        let mut from = RawAddr::default();
        // loopback delivery is synchronous
        assert_eq!(recvfrom(s, &mut buf, &mut from).unwrap(), Outcome::Done(4));
        assert_eq!(from.family(), libc::AF_INET);
        assert_eq!(sendto(s, b"pong", &from).unwrap(), Outcome::Done(4));
        assert_eq!(recvfrom(c, &mut buf, &mut from).unwrap(), Outcome::Done(4));
        assert_eq!(&buf[..4], b"pong");
        assert_eq!(from.as_bytes(), server.as_bytes());
        close(s);
        close(c);
    }

    #[test]
    fn errors_are_errors() {
        let mut buf = [0u8; 4];
        let mut addr = RawAddr::default();
        let err = recvfrom(-1, &mut buf, &mut addr).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(
            send(-1, b"x").unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
