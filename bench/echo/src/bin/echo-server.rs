//! Plain-Rust echo server on level-triggered epoll, single thread: the reference ceiling of the
//! echo benchmark (what the kernel + one core allow without any event-loop framework).
//!
//!     echo-server --tcp 127.0.0.1:0        prints "LISTENING tcp 127.0.0.1:PORT" when ready
//!     echo-server --unix /tmp/echo.sock    prints "LISTENING unix /tmp/echo.sock"
//!     echo-server --udp 127.0.0.1:0        prints "LISTENING udp 127.0.0.1:PORT"
//!
//! UDP: one socket; on each wake-up it reads datagrams until EAGAIN and sends each straight back
//! to its sender (a send that would block drops the echo, as a full socket buffer drops datagrams).
//!
//! Each connection echoes what it reads; a write that does not complete parks the rest and stops
//! reading that connection until the socket is writable again (backpressure, no unbounded buffer).

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;

use ferroloop_echo_bench::{close, parse_flags, read, set_nodelay, set_nonblocking, write, Epoll};

const LISTENER: u64 = u64::MAX;
const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

struct Conn {
    pending: Vec<u8>, // echo bytes not yet written
    pos: usize,
}

fn usage() -> ! {
    eprintln!("usage: echo-server (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT)");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = parse_flags(&args).unwrap_or_else(|e| {
        eprintln!("{e}");
        usage()
    });
    let mut tcp = None;
    let mut unix = None;
    let mut udp = None;
    for (k, v) in flags {
        match k.as_str() {
            "tcp" => tcp = Some(v),
            "unix" => unix = Some(v),
            "udp" => udp = Some(v),
            _ => usage(),
        }
    }
    if let Some(a) = udp {
        if tcp.is_some() || unix.is_some() {
            usage()
        }
        serve_udp(&a)
    }
    // Keep the listener objects alive for the whole run.
    let (_tcp_l, _unix_l, lfd, is_tcp, shown): (Option<TcpListener>, Option<UnixListener>, RawFd, bool, String) =
        match (tcp, unix) {
            (Some(a), None) => {
                let l = TcpListener::bind(&a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                let shown = format!("tcp {}", l.local_addr().unwrap());
                let fd = l.as_raw_fd();
                (Some(l), None, fd, true, shown)
            }
            (None, Some(p)) => {
                let _ = std::fs::remove_file(&p);
                let l = UnixListener::bind(&p).unwrap_or_else(|e| panic!("bind {p}: {e}"));
                let fd = l.as_raw_fd();
                (None, Some(l), fd, false, format!("unix {p}"))
            }
            _ => usage(),
        };
    // std's listen backlog is 128; raise it like the Python servers' (they use 1024 or more).
    unsafe { libc::listen(lfd, 1024) };
    set_nonblocking(lfd).unwrap();
    let mut ep = Epoll::new(256).unwrap();
    ep.add(lfd, IN, LISTENER).unwrap();
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];

    println!("LISTENING {shown}");
    std::io::stdout().flush().unwrap();

    loop {
        for (ev, token) in ep.wait(-1).expect("epoll_wait") {
            if token == LISTENER {
                loop {
                    let fd = unsafe {
                        libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                    };
                    if fd < 0 {
                        break; // EAGAIN (or a transient accept error): back to epoll
                    }
                    if is_tcp {
                        let _ = set_nodelay(fd);
                    }
                    ep.add(fd, IN, fd as u64).unwrap();
                    conns.insert(fd, Conn { pending: Vec::new(), pos: 0 });
                }
                continue;
            }
            let fd = token as RawFd;
            let Some(conn) = conns.get_mut(&fd) else { continue };
            let mut dead = false;
            if ev & OUT != 0 && conn.pos < conn.pending.len() {
                match write(fd, &conn.pending[conn.pos..]) {
                    Ok(n) => conn.pos += n,
                    Err(_) => dead = true,
                }
                if !dead && conn.pos == conn.pending.len() {
                    conn.pending.clear();
                    conn.pos = 0;
                    ep.modify(fd, IN, token).unwrap();
                }
            } else if ev & (IN | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 {
                match read(fd, &mut buf) {
                    Ok(Some(0)) | Err(_) => dead = true,
                    Ok(None) => {}
                    Ok(Some(n)) => match write(fd, &buf[..n]) {
                        Ok(w) if w == n => {}
                        Ok(w) => {
                            conn.pending.extend_from_slice(&buf[w..n]);
                            conn.pos = 0;
                            ep.modify(fd, OUT, token).unwrap();
                        }
                        Err(_) => dead = true,
                    },
                }
            }
            if dead {
                let _ = ep.delete(fd);
                conns.remove(&fd);
                close(fd);
            }
        }
    }
}

fn serve_udp(addr: &str) -> ! {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_nonblocking(true).unwrap();
    let mut ep = Epoll::new(4).unwrap();
    ep.add(sock.as_raw_fd(), IN, 0).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    println!("LISTENING udp {}", sock.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    loop {
        if ep.wait(-1).expect("epoll_wait").is_empty() {
            continue;
        }
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    let _ = sock.send_to(&buf[..n], peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // e.g. ECONNREFUSED from an earlier send: back to epoll
            }
        }
    }
}
