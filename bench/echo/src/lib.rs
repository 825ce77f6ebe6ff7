//! Shared bits of `echo-client` and `echo-server`: epoll, raw non-blocking I/O, addresses.

use std::io;
use std::os::unix::io::RawFd;

/// `--tcp HOST:PORT`, `--unix PATH`, `--udp HOST:PORT` or `--tls HOST:PORT` (TCP + TLS).
#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(String),
    Unix(String),
    Udp(String),
    Tls(String),
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity] })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        cvt(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(|_| ())
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: forever); the ready (events, token) pairs.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<Vec<(u32, u64)>> {
        let n = unsafe {
            libc::epoll_wait(self.fd, self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms)
        };
        self.ready(n)
    }

    /// `wait` with a nanosecond timeout (`epoll_pwait2`, Linux 5.11): the open-loop client sleeps
    /// exactly until its next scheduled send.
    pub fn wait_ns(&mut self, timeout_ns: u64) -> io::Result<Vec<(u32, u64)>> {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: the events buffer holds `events.len()` entries; `ts` outlives the call; no sigmask.
        let n = unsafe {
            libc::epoll_pwait2(self.fd, self.events.as_mut_ptr(), self.events.len() as i32, &ts, std::ptr::null())
        };
        self.ready(n)
    }

    /// The (events, token) pairs of a wait that returned `n` (an interrupted wait: none).
    fn ready(&self, n: i32) -> io::Result<Vec<(u32, u64)>> {
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        Ok(self.events[..n as usize].iter().map(|e| (e.events, e.u64)).collect())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

/// `read(2)`; `Ok(None)` on EAGAIN.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) }) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => read(fd, buf),
        Err(e) => Err(e),
    }
}

/// `send(2)` without SIGPIPE; `Ok(0)` on EAGAIN.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL;
    match cvt_size(unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), flags) }) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => write(fd, buf),
        Err(e) => Err(e),
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(|_| ())
}

pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

pub fn close(fd: RawFd) {
    unsafe { libc::close(fd) };
}

/// Parses `--flag value` pairs; bare `--flag` gets the value "1".
pub fn parse_flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(name) = a.strip_prefix("--") else { return Err(format!("unexpected argument {a:?}")) };
        if let Some((k, v)) = name.split_once('=') {
            out.push((k.to_string(), v.to_string()));
            i += 1;
        } else if i + 1 < args.len() && !args[i + 1].starts_with("--") {
            out.push((name.to_string(), args[i + 1].clone()));
            i += 2;
        } else {
            out.push((name.to_string(), "1".to_string()));
            i += 1;
        }
    }
    Ok(out)
}

/// Minimal JSON string escaping for error messages.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
