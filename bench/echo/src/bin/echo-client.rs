//! Request/response echo load client on epoll (one thread).
//!
//!     echo-client (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT) [--conns 32] [--size 1024]
//!                 [--warmup 1] [--duration 5 | --requests N] [--server-pid PID] [--timeout 10]
//!                 [--resend-ms 100] [--busy-poll]
//!
//! Each of `--conns` connections sends a `--size`-byte message, waits until the whole echo is back
//! (checking every byte: a per-connection pattern with the request number in the first 8 bytes),
//! then sends the next one. With `--udp` each "connection" is its own UDP socket (connected to the
//! server) sending one datagram and waiting for its echo; a datagram whose echo has not come back
//! after `--resend-ms` is sent again (counted in "resent"; the latency still counts from the first
//! send), and a stale echo of an earlier request is ignored (counted in "stale"), so a lost datagram
//! cannot stall the client. With `--tls` each connection is TCP + TLS (the system OpenSSL; the
//! handshake happens before the warm-up, without certificate verification, offering only the TLS 1.3
//! suite `--ciphersuites`, so every server negotiates the same cipher; reported as "cipher").
//!
//!     echo-client (--tcp | --tls) HOST:PORT --transfer BYTES [--server-pid PID]
//!
//! One-way transfer: one connection sends an 8-byte little-endian length, then BYTES bytes in 256 KiB
//! writes; the server answers "DONE" once it has them all. Prints bytes, seconds, MiB/s and the
//! server's CPU seconds over that window. After `--warmup` seconds the counters reset and the measurement runs
//! for `--duration` seconds (or until `--requests` echoes completed). Prints one JSON line:
//! requests, seconds, req_per_s, latency percentiles p50/p90/p99/p99.9/max (µs, send start -> last
//! echoed byte, from all samples of the window, sorted),
//! the client's CPU seconds, and with `--server-pid` the server's CPU seconds (utime + stime from
//! /proc/PID/stat, read exactly at the window edges) and its CPU µs per request.
//! `--busy-poll` polls epoll without sleeping (the client's CPU never idles, so waking it is cheap).
//! On a wrong echo, a closed connection or no progress for `--timeout` s: {"error": ...}, exit 1.
//!
//!     echo-client (--tcp | --unix | --udp | --tls) ADDR --rate REQ_PER_S [--conns 32] [--size 1024]
//!                 [--max-inflight 16] [--max-queued 25] [--warmup 1] [--duration 5] [--server-pid PID]
//!
//! Open loop (equal offered load): REQ_PER_S requests per second over all connections. Connection i
//! sends request k at t0 + (k * conns + i) / REQ_PER_S (a fixed interval of conns / REQ_PER_S per
//! connection, the connections staggered by 1 / REQ_PER_S), whether or not its earlier echoes are
//! back, with at most `--max-inflight` sent and unanswered per connection (a request due beyond that
//! waits for a slot). Streams check the echoed byte stream in order; UDP matches echoes to requests
//! by the request number and resends after `--resend-ms`. Latency counts from the scheduled send
//! time, so a server that falls behind is charged for the wait (no coordinated omission). The JSON
//! adds "mode": "open", "rate", "backlog_start"/"backlog_end" (requests due and not yet answered
//! at the window edges), "max_unsent" (most requests due but held back by the in-flight bound),
//! "queued_pct" (share of the window's sends that went out while the connection had an unanswered
//! request: the server could take several requests of that connection in one read) and
//! "overloaded" with the reasons in "overload": answered under 95 % of the rate, a backlog that grew
//! by more than 1 % of the window's requests (at least conns), or queued_pct above `--max-queued`.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslMode, SslStream, SslVerifyMode};

use ferroloop_echo_bench::{json_str, parse_flags, read, set_nodelay, set_nonblocking, write, Addr, Epoll};

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

#[allow(dead_code)] // the streams are only kept to own (and finally close) the fds
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Udp(UdpSocket),
    Tls(SslStream<TcpStream>),
}

struct Conn {
    stream: Stream,
    fd: RawFd,
    msg: Vec<u8>,
    seq: u64,
    sent: usize,
    recvd: usize,
    started: Instant,
    last_send: Instant,
    out_armed: bool,
}

struct Opts {
    addr: Addr,
    conns: usize,
    size: usize,
    warmup: f64,
    duration: f64,
    requests: Option<u64>,
    server_pid: Option<u32>,
    timeout: f64,
    resend: Duration,
    busy_poll: bool,
    ciphersuites: String,
    transfer: Option<u64>,
    rate: Option<f64>,
    max_inflight: usize,
    max_queued: f64,
}

fn fail(msg: &str) -> ! {
    println!("{{\"error\": {}}}", json_str(msg));
    let _ = std::io::stdout().flush();
    std::process::exit(1)
}

fn usage() -> ! {
    eprintln!(
        "usage: echo-client (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT) [--conns N] [--size BYTES] \
         [--warmup S] [--duration S | --requests N] [--server-pid PID] [--timeout S] [--resend-ms MS] [--busy-poll] \
         [--ciphersuites TLS13SUITES] [--rate REQ_PER_S [--max-inflight N] [--max-queued PCT]] | (--tcp | --tls) HOST:PORT --transfer BYTES [--server-pid PID]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = parse_flags(&args).unwrap_or_else(|e| {
        eprintln!("{e}");
        usage()
    });
    let mut o = Opts {
        addr: Addr::Tcp(String::new()),
        conns: 1,
        size: 1024,
        warmup: 1.0,
        duration: 5.0,
        requests: None,
        server_pid: None,
        timeout: 10.0,
        resend: Duration::from_millis(100),
        busy_poll: false,
        ciphersuites: "TLS_AES_256_GCM_SHA384".to_string(),
        transfer: None,
        rate: None,
        max_inflight: 16,
        max_queued: 25.0,
    };
    let mut have_addr = false;
    for (k, v) in flags {
        let num = |v: &str| v.parse::<f64>().unwrap_or_else(|_| usage());
        match k.as_str() {
            "tcp" => (o.addr, have_addr) = (Addr::Tcp(v), true),
            "unix" => (o.addr, have_addr) = (Addr::Unix(v), true),
            "udp" => (o.addr, have_addr) = (Addr::Udp(v), true),
            "tls" => (o.addr, have_addr) = (Addr::Tls(v), true),
            "ciphersuites" => o.ciphersuites = v,
            "transfer" => o.transfer = Some(num(&v) as u64),
            "resend-ms" => o.resend = Duration::from_secs_f64(num(&v) / 1e3),
            "conns" => o.conns = num(&v) as usize,
            "size" => o.size = num(&v) as usize,
            "warmup" => o.warmup = num(&v),
            "duration" => o.duration = num(&v),
            "requests" => o.requests = Some(num(&v) as u64),
            "server-pid" => o.server_pid = Some(num(&v) as u32),
            "timeout" => o.timeout = num(&v),
            "busy-poll" => o.busy_poll = v != "0",
            "rate" => o.rate = Some(num(&v)),
            "max-inflight" => o.max_inflight = num(&v) as usize,
            "max-queued" => o.max_queued = num(&v),
            _ => usage(),
        }
    }
    if !have_addr || o.conns == 0 || o.size == 0 || o.max_inflight == 0 {
        usage()
    }
    if o.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        usage()
    }
    if o.rate.is_some() && matches!(o.addr, Addr::Udp(_)) && o.size < 8 {
        fail("--rate with --udp needs --size of at least 8 (the request number matches echoes to requests)")
    }
    o
}

/// utime + stime of a process (all its threads) in seconds.
fn proc_cpu(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the ")": field 3 (state) is f[0], so utime (14) is f[11], stime (15) is f[12]
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn tls_connector(o: &Opts) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap_or_else(|e| fail(&format!("TLS: {e}")));
    b.set_verify(SslVerifyMode::NONE); // the servers use a self-signed certificate made for the run
    b.set_ciphersuites(&o.ciphersuites).unwrap_or_else(|e| fail(&format!("--ciphersuites: {e}")));
    b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);
    b.build()
}

/// "TLSv1.3 TLS_AES_256_GCM_SHA384" of a TLS stream.
fn tls_cipher(s: &SslStream<TcpStream>) -> String {
    let ssl = s.ssl();
    format!("{} {}", ssl.version_str(), ssl.current_cipher().map_or("?", |c| c.name()))
}

fn connect(addr: &Addr, tls: Option<&SslConnector>) -> (Stream, RawFd) {
    match addr {
        Addr::Tls(a) => {
            let s = TcpStream::connect(a).unwrap_or_else(|e| fail(&format!("connect {a}: {e}")));
            set_nodelay(s.as_raw_fd()).unwrap();
            let cfg = tls.unwrap().configure().unwrap().verify_hostname(false).use_server_name_indication(false);
            // blocking handshake: connections are set up before the warm-up
            let s = cfg.connect("localhost", s).unwrap_or_else(|e| fail(&format!("TLS handshake with {a}: {e}")));
            let fd = s.get_ref().as_raw_fd();
            (Stream::Tls(s), fd)
        }
        Addr::Tcp(a) => {
            let s = TcpStream::connect(a).unwrap_or_else(|e| fail(&format!("connect {a}: {e}")));
            let fd = s.as_raw_fd();
            set_nodelay(fd).unwrap();
            (Stream::Tcp(s), fd)
        }
        Addr::Unix(p) => {
            let s = UnixStream::connect(p).unwrap_or_else(|e| fail(&format!("connect {p}: {e}")));
            let fd = s.as_raw_fd();
            (Stream::Unix(s), fd)
        }
        Addr::Udp(a) => {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("bind: {e}")));
            s.connect(a).unwrap_or_else(|e| fail(&format!("connect {a}: {e}")));
            let fd = s.as_raw_fd();
            (Stream::Udp(s), fd)
        }
    }
}

/// Byte j of connection i's message (the first 8 bytes are overwritten by the request number).
fn pattern(i: usize, j: usize) -> u8 {
    (j.wrapping_mul(31) ^ i.wrapping_mul(97) ^ (j >> 8)) as u8
}

fn stamp(c: &mut Conn) {
    let seq = c.seq.to_le_bytes();
    let k = c.msg.len().min(8);
    c.msg[..k].copy_from_slice(&seq[..k]);
}

fn tls_err(e: openssl::ssl::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Reads what is there: `Ok(None)` when nothing is (EAGAIN, or TLS wants more bytes), `Ok(Some(0))` at EOF.
fn stream_read(stream: &mut Stream, fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match stream {
        Stream::Tls(s) => match s.ssl_read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(None),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(Some(0)),
            Err(e) if e.code() == ErrorCode::SYSCALL && e.io_error().is_none() => Ok(Some(0)),
            Err(e) => Err(tls_err(e)),
        },
        _ => read(fd, buf),
    }
}

/// One echoed datagram of client `i`: its length, `None` when the socket is drained; any error,
/// or a datagram of another size than `expected`, ends the run.
fn recv_datagram(fd: RawFd, buf: &mut [u8], expected: usize, i: usize) -> Option<usize> {
    let n = match read(fd, buf) {
        Ok(Some(n)) => n,
        Ok(None) => return None,
        Err(e) => fail(&format!("client {i}: recv: {e}")),
    };
    if n != expected {
        fail(&format!("client {i}: a {n}-byte datagram, expected {expected}"));
    }
    Some(n)
}

/// What connection `i` has received: the count, `None` when nothing is there now; the server
/// closing the connection, or any error, ends the run.
fn recv_stream(stream: &mut Stream, fd: RawFd, buf: &mut [u8], i: usize) -> Option<usize> {
    match stream_read(stream, fd, buf) {
        Ok(Some(0)) => fail(&format!("connection {i}: server closed the connection")),
        Ok(Some(n)) => Some(n),
        Ok(None) => None,
        Err(e) => fail(&format!("connection {i}: recv: {e}")),
    }
}

/// Writes what fits: the count, 0 when nothing fits now (EAGAIN, or TLS must wait).
fn stream_write(stream: &mut Stream, fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    match stream {
        Stream::Tls(s) => match s.ssl_write(buf) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(0),
            Err(e) => Err(tls_err(e)),
        },
        _ => write(fd, buf),
    }
}

/// Starts (or continues) sending the current message; arms EPOLLOUT while bytes remain.
fn pump(ep: &Epoll, c: &mut Conn, token: u64) {
    if c.sent < c.msg.len() {
        match stream_write(&mut c.stream, c.fd, &c.msg[c.sent..]) {
            Ok(n) => c.sent += n,
            Err(e) => fail(&format!("send: {e}")),
        }
    }
    let want_out = c.sent < c.msg.len();
    if want_out != c.out_armed {
        ep.modify(c.fd, if want_out { IN | OUT } else { IN }, token).unwrap();
        c.out_armed = want_out;
    }
}

/// Sends the current request as one datagram. EAGAIN (a full socket buffer) counts as a loss:
/// the resend timer sends it again.
fn send_datagram(c: &mut Conn, now: Instant) {
    match write(c.fd, &c.msg) {
        Ok(_) => {}
        Err(e) => fail(&format!("sendto: {e}")),
    }
    c.last_send = now;
}

/// `--transfer BYTES`: one blocking connection, length header, the bytes, wait for "DONE".
fn transfer(o: &Opts, tls: Option<&SslConnector>, total: u64) {
    let (mut stream, _) = connect(&o.addr, tls);
    let mut chunk: Vec<u8> = (0..256 * 1024).map(|j| pattern(0, j)).collect();
    let cipher = if let Stream::Tls(s) = &stream { tls_cipher(s) } else { String::from("none") };
    let (srv0, cli0) = (o.server_pid.and_then(proc_cpu), self_cpu());
    let t0 = Instant::now();
    let sink: &mut dyn Write = match &mut stream {
        Stream::Tls(s) => s,
        Stream::Tcp(s) => s,
        _ => fail("--transfer needs --tcp or --tls"),
    };
    sink.write_all(&total.to_le_bytes()).unwrap_or_else(|e| fail(&format!("send: {e}")));
    let mut left = total;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        chunk[0] ^= 1; // not the same bytes every time
        sink.write_all(&chunk[..k]).unwrap_or_else(|e| fail(&format!("send: {e}")));
        left -= k as u64;
    }
    sink.flush().unwrap();
    let mut ack = [0u8; 4];
    let got = match &mut stream {
        Stream::Tls(s) => s.read_exact(&mut ack),
        Stream::Tcp(s) => s.read_exact(&mut ack),
        _ => unreachable!(),
    };
    got.unwrap_or_else(|e| fail(&format!("waiting for DONE: {e}")));
    if &ack != b"DONE" {
        fail(&format!("expected DONE, got {ack:?}"));
    }
    let secs = t0.elapsed().as_secs_f64();
    let (srv1, cli1) = (o.server_pid.and_then(proc_cpu), self_cpu());
    let mut out = format!(
        "{{\"bytes\": {total}, \"seconds\": {secs:.6}, \"mib_per_s\": {:.1}, \"client_cpu_s\": {:.4}, \"cipher\": {}",
        total as f64 / secs / 1048576.0,
        cli1 - cli0,
        json_str(&cipher)
    );
    if let (Some(a), Some(b)) = (srv0, srv1) {
        out += &format!(", \"server_cpu_s\": {:.4}", b - a);
    }
    println!("{out}}}");
}

fn main() {
    let o = parse();
    let connector = matches!(o.addr, Addr::Tls(_)).then(|| tls_connector(&o));
    if let Some(total) = o.transfer {
        return transfer(&o, connector.as_ref(), total);
    }
    if let Some(rate) = o.rate {
        return open_loop(&o, connector.as_ref(), rate);
    }
    let mut ep = Epoll::new(1024).unwrap();
    let mut conns: Vec<Conn> = (0..o.conns)
        .map(|i| {
            let (stream, fd) = connect(&o.addr, connector.as_ref());
            set_nonblocking(fd).unwrap();
            Conn {
                stream,
                fd,
                msg: (0..o.size).map(|j| pattern(i, j)).collect(),
                seq: 0,
                sent: 0,
                recvd: 0,
                started: Instant::now(),
                last_send: Instant::now(),
                out_armed: false,
            }
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        ep.add(c.fd, IN, i as u64).unwrap();
    }
    let mut buf = vec![0u8; 256 * 1024];

    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(o.warmup);
    let mut measuring = o.warmup <= 0.0;
    let mut m_start = t0;
    let mut m_end = t0 + Duration::from_secs_f64(o.duration);
    let (mut srv0, mut cli0) = (o.server_pid.and_then(proc_cpu), self_cpu());
    let mut done: u64 = 0;
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut last_progress = t0;
    let stall = Duration::from_secs_f64(o.timeout);

    let udp = matches!(o.addr, Addr::Udp(_));
    let (mut resent, mut stale): (u64, u64) = (0, 0);
    let mut last_scan = t0;
    for (i, c) in conns.iter_mut().enumerate() {
        stamp(c);
        c.started = Instant::now();
        if udp {
            send_datagram(c, c.started);
        } else {
            pump(&ep, c, i as u64);
        }
    }

    loop {
        let wait_ms = if o.busy_poll { 0 } else if udp { 5 } else { 100 };
        let events = ep.wait(wait_ms).unwrap_or_else(|e| fail(&format!("epoll_wait: {e}")));
        for (ev, token) in events {
            let i = token as usize;
            let c = &mut conns[i];
            if udp {
                // one read = one datagram; drain the socket
                while let Some(n) = recv_datagram(c.fd, &mut buf, c.msg.len(), i) {
                    let k = n.min(8);
                    if buf[..k] != c.msg[..k] {
                        stale += 1; // the echo of an earlier (resent) request
                        continue;
                    }
                    if buf[..n] != c.msg[..] {
                        let off = (0..n).find(|&k| buf[k] != c.msg[k]).unwrap();
                        fail(&format!("client {i}: wrong echo at byte {off} of request {}", c.seq));
                    }
                    let now = Instant::now();
                    last_progress = now;
                    if measuring {
                        done += 1;
                        lat_ns.push((now - c.started).as_nanos() as u64);
                    }
                    c.seq += 1;
                    stamp(c);
                    c.started = now;
                    send_datagram(c, now);
                }
                continue;
            }
            if ev & OUT != 0 {
                pump(&ep, c, token);
            }
            if ev & (IN | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) == 0 {
                continue;
            }
            loop {
                let want = c.msg.len() - c.recvd;
                let Some(n) = recv_stream(&mut c.stream, c.fd, &mut buf, i) else { break };
                if n > want || n > c.sent - c.recvd {
                    fail(&format!("connection {i}: {n} bytes received but only {} expected", want.min(c.sent - c.recvd)));
                }
                if buf[..n] != c.msg[c.recvd..c.recvd + n] {
                    let off = (0..n).find(|&k| buf[k] != c.msg[c.recvd + k]).unwrap();
                    fail(&format!("connection {i}: wrong echo at byte {} of request {}", c.recvd + off, c.seq));
                }
                c.recvd += n;
                if c.recvd == c.msg.len() {
                    let now = Instant::now();
                    last_progress = now;
                    if measuring {
                        done += 1;
                        lat_ns.push((now - c.started).as_nanos() as u64);
                    }
                    c.seq += 1;
                    stamp(c);
                    c.sent = 0;
                    c.recvd = 0;
                    c.started = now;
                    pump(&ep, c, token);
                }
            }
        }
        let now = Instant::now();
        if udp && now - last_scan >= Duration::from_millis(5) {
            last_scan = now;
            for c in conns.iter_mut() {
                if now - c.last_send >= o.resend {
                    send_datagram(c, now); // lost (or slow): send the same request again
                    if measuring {
                        resent += 1;
                    }
                }
            }
        }
        if !measuring && now >= warm_end {
            measuring = true;
            (srv0, cli0) = (o.server_pid.and_then(proc_cpu), self_cpu());
            (resent, stale) = (0, 0);
            m_start = Instant::now();
            m_end = m_start + Duration::from_secs_f64(o.duration);
        } else if measuring && (o.requests.map_or(now >= m_end, |r| done >= r)) {
            break;
        }
        if now - last_progress > stall {
            fail(&format!("no echo completed for {:.0} s", o.timeout));
        }
    }
    let (srv1, cli1) = (o.server_pid.and_then(proc_cpu), self_cpu());
    let secs = m_start.elapsed().as_secs_f64();
    let lat = Latency::of(&mut lat_ns);
    let (pct, mean, max) = (|p| lat.pct(p), lat.mean, lat.max);
    let mut out = format!(
        "{{\"conns\": {}, \"size\": {}, \"requests\": {}, \"seconds\": {:.6}, \"req_per_s\": {:.1}, \
         \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \"max_us\": {:.1}, \
         \"mean_us\": {:.1}, \"client_cpu_s\": {:.4}",
        o.conns, o.size, done, secs, done as f64 / secs, pct(0.50), pct(0.90), pct(0.99), pct(0.999), max, mean,
        cli1 - cli0
    );
    if udp {
        out += &format!(", \"resent\": {resent}, \"stale\": {stale}");
    }
    print_report(out, conns.first().map(|c| &c.stream), (srv0, srv1), done);
}


/// Latency figures of a run, in µs, from its per-request latencies in ns.
struct Latency<'a> {
    sorted: &'a [u64],
    mean: f64,
    max: f64,
}

impl<'a> Latency<'a> {
    fn of(lat_ns: &'a mut [u64]) -> Self {
        lat_ns.sort_unstable();
        let n = lat_ns.len();
        let mean = if n == 0 { 0.0 } else { lat_ns.iter().sum::<u64>() as f64 / n as f64 / 1e3 };
        let max = lat_ns.last().map_or(0.0, |&x| x as f64 / 1e3);
        Latency { sorted: lat_ns, mean, max }
    }

    /// The `p` quantile (0..1).
    fn pct(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            0.0
        } else {
            self.sorted[((n as f64 * p) as usize).min(n - 1)] as f64 / 1e3
        }
    }
}

/// Ends a run's JSON report `out` with the fields both modes share (the TLS cipher, the server's
/// CPU over the window from `srv` = (start, end) CPU seconds, per reply) and prints it.
fn print_report(mut out: String, first: Option<&Stream>, srv: (Option<f64>, Option<f64>), done: u64) {
    if let Some(Stream::Tls(t)) = first {
        out += &format!(", \"cipher\": {}", json_str(&tls_cipher(t)));
    }
    if let (Some(a), Some(b)) = srv {
        let per = if done > 0 { (b - a) / done as f64 * 1e6 } else { 0.0 };
        out += &format!(", \"server_cpu_s\": {:.4}, \"server_cpu_us_per_req\": {:.3}", b - a, per);
    }
    out += "}";
    println!("{out}");
}

// --- open loop (--rate) ----------------------------------------------------------------------------

/// CLOCK_MONOTONIC in nanoseconds (the time base of the open-loop schedule).
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One open-loop connection: requests k = 0, 1, 2, ... are due at `sched(i, k)` whether or not
/// earlier echoes are back, at most `--max-inflight` of them sent and not yet answered.
struct OConn {
    stream: Stream,
    fd: RawFd,
    tmpl: Vec<u8>, // the message; its first 8 bytes carry the request number
    next_k: u64,   // the next request to send
    answered: u64, // echoes completed
    // streams: the echoed byte stream is checked in order
    recv_off: usize,
    bytes_out: u64,
    bytes_in: u64,
    out: Vec<u8>,
    out_off: usize,
    out_armed: bool,
    // UDP: (request, last send) of the datagrams awaiting their echo
    pending: std::collections::VecDeque<(u64, u64)>,
}

/// `--rate R`: open loop. Connection i sends request k at t0 + (k * conns + i) / R, so each
/// connection sends every conns / R seconds and the connections are staggered by 1 / R; latency
/// counts from that scheduled time (so a server that falls behind is charged for the wait).
fn open_loop(o: &Opts, tls: Option<&SslConnector>, rate: f64) {
    let udp = matches!(o.addr, Addr::Udp(_));
    let n = o.conns;
    let mut ep = Epoll::new(1024).unwrap();
    let mut conns: Vec<OConn> = (0..n)
        .map(|i| {
            let (stream, fd) = connect(&o.addr, tls);
            set_nonblocking(fd).unwrap();
            OConn {
                stream,
                fd,
                tmpl: (0..o.size).map(|j| pattern(i, j)).collect(),
                next_k: 0,
                answered: 0,
                recv_off: 0,
                bytes_out: 0,
                bytes_in: 0,
                out: Vec::with_capacity(o.size * o.max_inflight),
                out_off: 0,
                out_armed: false,
                pending: std::collections::VecDeque::with_capacity(o.max_inflight),
            }
        })
        .collect();
    for (i, c) in conns.iter().enumerate() {
        ep.add(c.fd, IN, i as u64).unwrap();
    }
    // SAFETY: prctl with integer arguments only. Timer slack 1 ns: epoll_pwait2 wakes on time, not
    // up to 50 µs late (the default slack), so the sends keep their schedule.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let mut buf = vec![0u8; 256 * 1024];
    let mut dgram = vec![0u8; o.size];
    let head = o.size.min(8);

    let t0 = now_ns();
    let ns_per_req = 1e9 / rate;
    let sched = |i: usize, k: u64| t0 + ((k * n as u64 + i as u64) as f64 * ns_per_req) as u64;
    // requests of connection i due by `now`
    let due = |i: usize, now: u64| {
        let x = now.saturating_sub(t0) as f64 / ns_per_req; // global requests due
        if x < i as f64 {
            0
        } else {
            ((x - i as f64) / n as f64) as u64 + 1
        }
    };
    let backlog = |conns: &[OConn], now: u64| -> u64 {
        conns.iter().enumerate().map(|(i, c)| due(i, now).saturating_sub(c.answered)).sum()
    };
    let warm_end = t0 + (o.warmup * 1e9) as u64;
    let mut measuring = o.warmup <= 0.0;
    let (mut m_start, mut m_end) = (t0, t0 + (o.duration * 1e9) as u64);
    let (mut srv0, mut cli0) = (o.server_pid.and_then(proc_cpu), self_cpu());
    let mut done: u64 = 0;
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut last_progress = t0;
    let stall = (o.timeout * 1e9) as u64;
    let resend = o.resend.as_nanos() as u64;
    let (mut resent, mut stale): (u64, u64) = (0, 0);
    let (mut backlog_start, mut max_unsent): (u64, u64) = (0, 0);
    // sends of the window, and those that went out while the connection had an unanswered request
    // (which lets a server take several requests of a connection in one read)
    let (mut sends, mut behind): (u64, u64) = (0, 0);
    let mut last_scan = t0;

    loop {
        let now = now_ns();
        if !measuring && now >= warm_end {
            measuring = true;
            (srv0, cli0) = (o.server_pid.and_then(proc_cpu), self_cpu());
            (resent, stale, max_unsent, sends, behind) = (0, 0, 0, 0, 0);
            m_start = now_ns();
            m_end = m_start + (o.duration * 1e9) as u64;
            backlog_start = backlog(&conns, m_start);
        } else if measuring && o.requests.map_or(now >= m_end, |r| done >= r) {
            break;
        }
        if now.saturating_sub(last_progress) > stall {
            fail(&format!("no echo completed for {:.0} s", o.timeout));
        }
        // send what is due, up to --max-inflight unanswered per connection
        let mut next_due = u64::MAX;
        let mut unsent = 0;
        for (i, c) in conns.iter_mut().enumerate() {
            let mut queued = false;
            loop {
                let at = sched(i, c.next_k);
                if at > now {
                    next_due = next_due.min(at);
                    break;
                }
                if c.next_k - c.answered >= o.max_inflight as u64 {
                    unsent += due(i, now).saturating_sub(c.next_k);
                    break; // sent again when an echo frees a slot
                }
                if measuring {
                    sends += 1;
                    behind += (c.next_k > c.answered) as u64;
                }
                let seq = c.next_k.to_le_bytes();
                if udp {
                    dgram.copy_from_slice(&c.tmpl);
                    dgram[..head].copy_from_slice(&seq[..head]);
                    // EAGAIN (a full socket buffer) counts as a loss: the resend scan sends it again
                    write(c.fd, &dgram).unwrap_or_else(|e| fail(&format!("sendto: {e}")));
                    c.pending.push_back((c.next_k, now));
                } else {
                    if c.out_off == c.out.len() {
                        c.out.clear();
                        c.out_off = 0;
                    }
                    let start = c.out.len();
                    c.out.extend_from_slice(&c.tmpl);
                    c.out[start..start + head].copy_from_slice(&seq[..head]);
                    queued = true;
                }
                c.next_k += 1;
            }
            if queued {
                pump_out(&ep, c, i as u64);
            }
        }
        if measuring {
            max_unsent = max_unsent.max(unsent);
        }
        // sleep until the next scheduled send (or an echo; at most 5 ms for UDP's resend scan)
        let cap = if udp { 5_000_000 } else { 100_000_000 };
        let wait = if o.busy_poll { 0 } else { next_due.saturating_sub(now_ns()).min(cap) };
        let events = ep.wait_ns(wait).unwrap_or_else(|e| fail(&format!("epoll_pwait2: {e}")));
        for (ev, token) in events {
            let i = token as usize;
            let c = &mut conns[i];
            if udp {
                while let Some(got) = recv_datagram(c.fd, &mut buf, o.size, i) {
                    let k = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    let Some(pos) = c.pending.iter().position(|&(p, _)| p == k) else {
                        stale += 1; // a duplicate echo of a resent request
                        continue;
                    };
                    if buf[8..got] != c.tmpl[8..] {
                        let off = (8..got).find(|&j| buf[j] != c.tmpl[j]).unwrap();
                        fail(&format!("client {i}: wrong echo at byte {off} of request {k}"));
                    }
                    c.pending.remove(pos);
                    c.answered += 1;
                    let t = now_ns();
                    last_progress = t;
                    if measuring {
                        done += 1;
                        lat_ns.push(t.saturating_sub(sched(i, k)));
                    }
                }
                continue;
            }
            if ev & OUT != 0 {
                pump_out(&ep, c, token);
            }
            if ev & (IN | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) == 0 {
                continue;
            }
            while let Some(got) = recv_stream(&mut c.stream, c.fd, &mut buf, i) {
                if c.bytes_in + got as u64 > c.bytes_out {
                    fail(&format!("connection {i}: {got} bytes received but only {} expected", c.bytes_out - c.bytes_in));
                }
                c.bytes_in += got as u64;
                let t = now_ns();
                let mut p = 0;
                while p < got {
                    // the echo of request c.answered, from byte c.recv_off
                    let j0 = c.recv_off;
                    let m = (o.size - j0).min(got - p);
                    let seg = &buf[p..p + m];
                    let seq = c.answered.to_le_bytes();
                    let split = head.clamp(j0, j0 + m); // bytes j0..split carry the request number
                    let bad = (j0..split).find(|&j| seg[j - j0] != seq[j]).or_else(|| {
                        (seg[split - j0..] != c.tmpl[split..j0 + m])
                            .then(|| (split..j0 + m).find(|&j| seg[j - j0] != c.tmpl[j]).unwrap())
                    });
                    if let Some(j) = bad {
                        fail(&format!("connection {i}: wrong echo at byte {j} of request {}", c.answered));
                    }
                    c.recv_off += m;
                    p += m;
                    if c.recv_off == o.size {
                        if measuring {
                            done += 1;
                            lat_ns.push(t.saturating_sub(sched(i, c.answered)));
                        }
                        c.answered += 1;
                        c.recv_off = 0;
                        last_progress = t;
                    }
                }
            }
        }
        if udp {
            let now = now_ns();
            if now - last_scan >= 5_000_000 {
                last_scan = now;
                for c in conns.iter_mut() {
                    for e in c.pending.iter_mut() {
                        if now - e.1 >= resend {
                            dgram.copy_from_slice(&c.tmpl);
                            dgram[..head].copy_from_slice(&e.0.to_le_bytes()[..head]);
                            write(c.fd, &dgram).unwrap_or_else(|err| fail(&format!("sendto: {err}")));
                            e.1 = now;
                            if measuring {
                                resent += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    let end = now_ns();
    let (srv1, cli1) = (o.server_pid.and_then(proc_cpu), self_cpu());
    let backlog_end = backlog(&conns, end);
    let secs = (end - m_start) as f64 / 1e9;
    let achieved = done as f64 / secs;
    // can the server keep up? the rate it answered, and whether the unanswered backlog grew
    let growth = backlog_end as i64 - backlog_start as i64;
    let allowed = (0.01 * rate * secs).max(n as f64);
    let mut why = Vec::new();
    if achieved < 0.95 * rate {
        why.push(format!("answered {achieved:.0} req/s, below 95 % of {rate:.0}"));
    }
    if growth as f64 > allowed {
        why.push(format!("backlog grew by {growth} requests over the window"));
    }
    let queued_pct = if sends > 0 { 100.0 * behind as f64 / sends as f64 } else { 0.0 };
    if queued_pct > o.max_queued {
        why.push(format!(
            "{queued_pct:.0} % of requests went out behind an unanswered one on their connection \
             (kept up by taking several requests of a connection per read)"
        ));
    }
    let lat = Latency::of(&mut lat_ns);
    let (pct, mean, max) = (|p| lat.pct(p), lat.mean, lat.max);
    let mut out = format!(
        "{{\"mode\": \"open\", \"rate\": {rate:.1}, \"max_inflight\": {}, \"conns\": {}, \"size\": {}, \
         \"requests\": {done}, \"seconds\": {secs:.6}, \"req_per_s\": {achieved:.1}, \
         \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \"max_us\": {max:.1}, \
         \"mean_us\": {mean:.1}, \"client_cpu_s\": {:.4}, \"backlog_start\": {backlog_start}, \
         \"backlog_end\": {backlog_end}, \"max_unsent\": {max_unsent}, \"queued_pct\": {queued_pct:.2}, \
         \"overloaded\": {}",
        o.max_inflight,
        n,
        o.size,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        cli1 - cli0,
        !why.is_empty()
    );
    if !why.is_empty() {
        out += &format!(", \"overload\": {}", json_str(&why.join("; ")));
    }
    if udp {
        out += &format!(", \"resent\": {resent}, \"stale\": {stale}");
    }
    print_report(out, conns.first().map(|c| &c.stream), (srv0, srv1), done);
}

/// Writes what it can of an open-loop connection's queued requests; EPOLLOUT while bytes remain.
fn pump_out(ep: &Epoll, c: &mut OConn, token: u64) {
    if c.out_off < c.out.len() {
        match stream_write(&mut c.stream, c.fd, &c.out[c.out_off..]) {
            Ok(k) => {
                c.out_off += k;
                c.bytes_out += k as u64;
            }
            Err(e) => fail(&format!("send: {e}")),
        }
    }
    let want_out = c.out_off < c.out.len();
    if want_out != c.out_armed {
        ep.modify(c.fd, if want_out { IN | OUT } else { IN }, token).unwrap();
        c.out_armed = want_out;
    }
}
