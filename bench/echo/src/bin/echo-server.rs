//! Plain-Rust echo server on level-triggered epoll, single thread: the reference ceiling of the
//! echo benchmark (what the kernel + one core allow without any event-loop framework).
//!
//!     echo-server --tcp 127.0.0.1:0        prints "LISTENING tcp 127.0.0.1:PORT" when ready
//!     echo-server --unix /tmp/echo.sock    prints "LISTENING unix /tmp/echo.sock"
//!     echo-server --udp 127.0.0.1:0        prints "LISTENING udp 127.0.0.1:PORT"
//!
//!     echo-server --tls 127.0.0.1:0 --cert CERT.pem --key KEY.pem [--sink]
//!                                          prints "LISTENING tls 127.0.0.1:PORT"
//!
//! TLS: TCP + TLS through the system OpenSSL (the library of Python's ssl module): non-blocking
//! handshakes on the same epoll loop, then each decrypted read is encrypted back at once. With
//! `--sink` (for `echo-client --transfer`) it reads an 8-byte little-endian length, swallows that
//! many bytes and answers "DONE".
//!
//! UDP: one socket; on each wake-up it reads datagrams until EAGAIN and sends each straight back
//! to its sender (a send that would block drops the echo, as a full socket buffer drops datagrams).
//!
//! Each connection echoes what it reads; a write that does not complete parks the rest and stops
//! reading that connection until the socket is writable again (backpressure, no unbounded buffer).

use std::collections::HashMap;

use openssl::ssl::{ErrorCode, Ssl, SslAcceptor, SslFiletype, SslMethod, SslMode, SslStream};
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
    eprintln!("usage: echo-server (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT | --tls HOST:PORT --cert PEM --key PEM [--sink])");
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
    let (mut tls, mut cert, mut key, mut sink) = (None, None, None, false);
    for (k, v) in flags {
        match k.as_str() {
            "tcp" => tcp = Some(v),
            "unix" => unix = Some(v),
            "udp" => udp = Some(v),
            "tls" => tls = Some(v),
            "cert" => cert = Some(v),
            "key" => key = Some(v),
            "sink" => sink = v != "0",
            _ => usage(),
        }
    }
    if let Some(a) = tls {
        let (Some(cert), Some(key)) = (cert, key) else { usage() };
        serve_tls(&a, &cert, &key, sink)
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

struct TlsConn {
    s: SslStream<std::net::TcpStream>,
    handshaking: bool,
    pending: Vec<u8>, // encrypted-to-be echo bytes that did not fit yet
    pos: usize,
    want: Option<u64>, // --sink: the announced length
    head: Vec<u8>,
    got: u64,
}

enum Step {
    Ok,
    Wait(u32), // epoll interest to wait with
    Dead,
}

fn tls_step(r: Result<(), openssl::ssl::Error>) -> Step {
    match r {
        Ok(()) => Step::Ok,
        Err(e) if e.code() == ErrorCode::WANT_READ => Step::Wait(IN),
        Err(e) if e.code() == ErrorCode::WANT_WRITE => Step::Wait(OUT),
        Err(_) => Step::Dead,
    }
}

/// Writes `data` (or the parked rest); Wait(OUT) with the rest parked if the socket is full.
fn tls_write(c: &mut TlsConn, data: &[u8]) -> Step {
    let mut off = 0;
    while off < data.len() {
        match c.s.ssl_write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if matches!(e.code(), ErrorCode::WANT_WRITE | ErrorCode::WANT_READ) => {
                c.pending.extend_from_slice(&data[off..]);
                return Step::Wait(OUT);
            }
            Err(_) => return Step::Dead,
        }
    }
    Step::Ok
}

/// Handshake, parked writes, then reads until OpenSSL wants more bytes; the interest to wait with.
fn tls_service(c: &mut TlsConn, buf: &mut [u8], sink: bool) -> Step {
    if c.handshaking {
        match tls_step(c.s.accept()) {
            Step::Ok => c.handshaking = false,
            other => return other,
        }
    }
    if c.pos < c.pending.len() {
        let rest = std::mem::take(&mut c.pending);
        let from = c.pos;
        c.pos = 0;
        match tls_write(c, &rest[from..]) {
            Step::Ok => {}
            other => return other,
        }
    }
    loop {
        let n = match c.s.ssl_read(buf) {
            Ok(n) => n,
            Err(e) if e.code() == ErrorCode::WANT_READ => return Step::Wait(IN),
            Err(e) if e.code() == ErrorCode::WANT_WRITE => return Step::Wait(OUT),
            Err(_) => return Step::Dead, // close_notify, EOF or a TLS error
        };
        if !sink {
            match tls_write(c, &buf[..n]) {
                Step::Ok => continue,
                other => return other, // stop reading until the echo drains (backpressure)
            }
        }
        let mut data = &buf[..n];
        if c.want.is_none() {
            let k = (8 - c.head.len()).min(data.len());
            c.head.extend_from_slice(&data[..k]);
            data = &data[k..];
            if c.head.len() == 8 {
                c.want = Some(u64::from_le_bytes(c.head[..8].try_into().unwrap()));
            }
        }
        c.got += data.len() as u64;
        if let Some(w) = c.want {
            if c.got >= w {
                c.want = None;
                c.head.clear();
                c.got = 0;
                if let Step::Dead = tls_write(c, b"DONE") {
                    return Step::Dead;
                }
            }
        }
    }
}

fn serve_tls(addr: &str, cert: &str, key: &str, sink: bool) -> ! {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_certificate_chain_file(cert).unwrap_or_else(|e| panic!("--cert {cert}: {e}"));
    b.set_private_key_file(key, SslFiletype::PEM).unwrap_or_else(|e| panic!("--key {key}: {e}"));
    b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);
    let acceptor = b.build();
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let lfd = l.as_raw_fd();
    unsafe { libc::listen(lfd, 1024) };
    set_nonblocking(lfd).unwrap();
    let mut ep = Epoll::new(256).unwrap();
    ep.add(lfd, IN, LISTENER).unwrap();
    let mut conns: HashMap<RawFd, (TlsConn, u32)> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    println!("LISTENING tls {}", l.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    loop {
        for (_ev, token) in ep.wait(-1).expect("epoll_wait") {
            if token == LISTENER {
                while let Ok((stream, _)) = l.accept() {
                    let fd = stream.as_raw_fd();
                    let _ = stream.set_nonblocking(true);
                    let _ = set_nodelay(fd);
                    let ssl = Ssl::new(acceptor.context()).unwrap();
                    let s = SslStream::new(ssl, stream).unwrap();
                    let c = TlsConn { s, handshaking: true, pending: Vec::new(), pos: 0, want: None, head: Vec::new(), got: 0 };
                    ep.add(fd, IN, fd as u64).unwrap();
                    conns.insert(fd, (c, IN));
                }
                continue;
            }
            let fd = token as RawFd;
            let Some((c, interest)) = conns.get_mut(&fd) else { continue };
            match tls_service(c, &mut buf, sink) {
                Step::Wait(want) => {
                    if want != *interest {
                        ep.modify(fd, want, token).unwrap();
                        *interest = want;
                    }
                }
                Step::Ok | Step::Dead => {
                    let _ = ep.delete(fd);
                    conns.remove(&fd); // drops the stream: closes the fd
                }
            }
        }
    }
}
