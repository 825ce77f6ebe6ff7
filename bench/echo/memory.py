"""Memory per idle connection: RSS growth of a server on each loop per connection held open and idle
(see bench/README.md, "Memory per idle connection").

    python bench/echo/memory.py [--quick] [--conns 10000] [--reps 3] [--loops a,b]
                                [--styles protocol,streams] [--transports tcp,unix,tls] [--markdown]
    python bench/echo/memory.py --serve --loop ferroloop --style protocol --transport tcp   # one server

Each sample is a fresh server process (`--serve`, pinned to one CPU) on one loop:
  protocol  loop.create_server (create_unix_server) with a Protocol that keeps its transport
  streams   asyncio.start_server (start_unix_server) with a handler awaiting reader.read() (one task
            per connection, parked, as in any streams server)
The runner (pinned to the other CPU) opens --warm connections, waits until the server has them,
asks the server for its RSS (after gc.collect(), connections idle), opens --conns more, waits again,
asks again: RSS growth / --conns = bytes per idle connection. The server reads its commands from
stdin in a helper thread and answers from the loop (call_soon_threadsafe), so every loop is
measured the same way. RLIMIT_NOFILE is raised to the hard limit in both processes.
With --transports tls the server is TCP with ssl= (a self-signed certificate made by the runner),
and the runner completes each TLS handshake before counting the connection: an idle TLS connection
(handshake done, nothing sent), which holds the TLS protocol's receive buffer.
"""

import argparse
import asyncio
import functools
import gc
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netbench as nb  # noqa: E402

STYLES = ('protocol', 'streams')
TRANSPORTS = ('tcp', 'unix', 'tls')
PAGE = os.sysconf('SC_PAGE_SIZE')


def raise_nofile(need):
    """Raises the soft RLIMIT_NOFILE to the hard limit; exits if `need` fds would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < need:
        sys.exit(f'RLIMIT_NOFILE hard limit {hard} < {need} fds needed: lower --conns or raise the limit')


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * PAGE


# --- the server (fresh process per sample) ------------------------------------------------------
def serve(a):
    sys.path.insert(0, str(HERE.parent))
    from scenarios import server_loop
    raise_nofile(a.conns + 200)
    loop = server_loop(a.loop, a.cpu)
    count = 0

    class IdleProtocol(asyncio.Protocol):
        def connection_made(self, transport):
            nonlocal count
            self.transport = transport
            count += 1

        def connection_lost(self, exc):
            nonlocal count
            self.transport = None
            count -= 1

    async def handler(reader, writer):
        nonlocal count
        count += 1
        try:
            await reader.read()  # idle until the client closes
        finally:
            count -= 1
            writer.close()

    if a.transport == 'unix':
        try:
            os.unlink(a.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(a.path)
        shown = f'unix {a.path}'
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', 0))
        shown = '{} {}:{}'.format(a.transport, *sock.getsockname())
    sock.listen(4096)
    tls = None
    if a.transport == 'tls':
        import ssl
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(a.cert, a.key)

    def report():  # on the loop thread: collect garbage, then the count and RSS
        gc.collect()
        print(f'STAT {count} {rss_bytes()}', flush=True)

    def commands():  # helper thread: one line per request
        for line in sys.stdin:
            if line.strip() == 'stat':
                loop.call_soon_threadsafe(report)
        loop.call_soon_threadsafe(loop.stop)

    async def main():
        if a.style == 'protocol':
            if a.transport == 'unix':
                server = await loop.create_unix_server(IdleProtocol, sock=sock)
            else:
                server = await loop.create_server(IdleProtocol, sock=sock, ssl=tls)
        elif a.transport == 'unix':
            server = await asyncio.start_unix_server(handler, sock=sock)
        else:
            server = await asyncio.start_server(handler, sock=sock, ssl=tls)
        print(f'LISTENING {shown}', flush=True)
        return server

    try:
        server = loop.run_until_complete(main())
    except NotImplementedError as e:
        print(f'UNSUPPORTED {type(loop).__name__}: NotImplementedError {e}'.rstrip(), flush=True)
        sys.exit(3)
    threading.Thread(target=commands, daemon=True).start()
    loop.run_forever()
    server.close()


# --- the runner ---------------------------------------------------------------------------------
class Worker:
    def __init__(self, a, loop, style, transport):
        self.path = f'/tmp/ferroloop-idle-{os.getpid()}.sock'
        cmd = [a.python, __file__, '--serve', '--loop', loop, '--style', style, '--transport', transport,
               '--conns', str(a.conns + a.warm), '--path', self.path]
        if transport == 'tls':
            cmd += ['--cert', a.cert, '--key', a.key]
        if a.server_cpu is not None:
            cmd += ['--cpu', str(a.server_cpu)]
        self.err = open(f'/tmp/ferroloop-idle-{os.getpid()}.err', 'w+')
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, bufsize=1)

    def line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0].strip() if box else None

    def stat(self, timeout=10):
        self.proc.stdin.write('stat\n')
        self.proc.stdin.flush()
        line = self.line(timeout)
        if not line or not line.startswith('STAT '):
            raise RuntimeError(f'no STAT answer ({line!r}): {self.error_tail()}')
        _, count, rss = line.split()
        return int(count), int(rss)

    def wait_count(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            count, rss = self.stat()
            if count == n:
                return rss
            if time.monotonic() > deadline:
                raise RuntimeError(f'server holds {count} connections, expected {n}')
            time.sleep(0.02)

    def error_tail(self):
        self.err.flush()
        self.err.seek(0)
        lines = [x for x in self.err.read().splitlines() if x.strip()]
        return lines[-1] if lines else f'exit {self.proc.poll()}'

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        os.unlink(self.err.name)
        if os.path.exists(self.path):
            os.unlink(self.path)


@functools.cache
def client_tls():
    """The runner's TLS client context, made once (the server's certificate is self-signed)."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def open_conns(kind, addr, n, batch, worker, have):
    """Opens n connections in batches (waiting for the server to hold each batch, so the listen
    backlog never overflows); returns the sockets."""
    socks = []
    while len(socks) < n:
        for _ in range(min(batch, n - len(socks))):
            if kind == 'unix':
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(addr)
            else:
                host, _, port = addr.rpartition(':')
                s = socket.create_connection((host, int(port)))
                if kind == 'tls':
                    s = client_tls().wrap_socket(s, server_hostname='localhost')  # handshake done
            socks.append(s)
        worker.wait_count(have + len(socks))
    return socks


def sample(a, loop, style, transport):
    w = Worker(a, loop, style, transport)
    socks = []
    try:
        line = w.line(30)
        if line and line.startswith('UNSUPPORTED '):
            return {'unsupported': line.split(' ', 1)[1]}
        if not line or not line.startswith('LISTENING '):
            return {'error': f'server did not start: {w.error_tail()}'}
        _, kind, addr = line.split(' ', 2)
        socks += open_conns(kind, addr, a.warm, a.batch, w, 0)
        rss0 = w.wait_count(a.warm)
        socks += open_conns(kind, addr, a.conns, a.batch, w, a.warm)
        rss1 = w.wait_count(a.warm + a.conns)
        return {'rss_before': rss0, 'rss_after': rss1, 'conns': a.conns,
                'bytes_per_conn': (rss1 - rss0) / a.conns}
    except (OSError, RuntimeError) as e:
        return {'error': f'{type(e).__name__}: {e}'}
    finally:
        for s in socks:
            s.close()
        w.stop()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--serve', action='store_true', help='run one server (used by the runner)')
    p.add_argument('--loop', choices=nb.LOOPS, help='--serve: the loop')
    p.add_argument('--style', choices=STYLES, default='protocol', help='--serve: the server style')
    p.add_argument('--transport', choices=TRANSPORTS, default='tcp', help='--serve: the transport')
    p.add_argument('--path', default='/tmp/ferroloop-idle.sock', help='--serve: the Unix socket path')
    p.add_argument('--cpu', type=int, help='--serve: pin to this CPU')
    p.add_argument('--cert', help='--serve --transport tls: the certificate (PEM)')
    p.add_argument('--key', help='--serve --transport tls: its key (PEM)')
    p.add_argument('--loops', type=nb.csv_list(nb.LOOPS), default=list(nb.LOOPS))
    p.add_argument('--styles', type=nb.csv_list(STYLES), default=list(STYLES))
    p.add_argument('--transports', type=nb.csv_list(TRANSPORTS), default=['tcp'])
    p.add_argument('--conns', type=int, help='idle connections measured (default 10000; --quick 2000)')
    p.add_argument('--warm', type=int, default=100, help='connections open before the first measure')
    p.add_argument('--batch', type=int, default=500, help='connections opened between two waits')
    p.add_argument('--reps', type=int, help='samples per case and loop (default 3; --quick 1)')
    p.add_argument('--quick', action='store_true', help='smoke run: 2000 connections, 1 rep')
    p.add_argument('--server-cpu', type=int, help='CPU of the servers (default: the first allowed)')
    p.add_argument('--client-cpu', type=int, help='CPU of this runner (default: the second allowed)')
    p.add_argument('--python', default=sys.executable, help='interpreter of the servers')
    p.add_argument('--markdown', action='store_true', help='also print a Markdown report')
    p.add_argument('--out', type=Path, default=HERE / 'results', help='where the raw JSON goes')
    a = p.parse_args(argv)
    a.conns = a.conns or (2000 if a.quick else 10000)
    a.reps = a.reps or (1 if a.quick else 3)
    if not a.serve:
        if 'tls' in a.transports:
            a.cert, a.key = nb.make_cert()
        srv, cli = nb.default_cpus()
        a.server_cpu = srv if a.server_cpu is None else a.server_cpu
        a.client_cpu = cli if a.client_cpu is None else a.client_cpu
    elif not a.loop:
        p.error('--serve needs --loop')
    return a


def summarize(samples, cases, loops):
    def med(case, loop):
        vals = [r['bytes_per_conn'] for r in samples.get((case, loop), []) if 'bytes_per_conn' in r]
        return statistics.median(vals) if vals else None

    rows = []
    for case in cases:
        for loop in loops:
            results = samples[case, loop]
            vals = [r['bytes_per_conn'] for r in results if 'bytes_per_conn' in r]
            m = med(case, loop)
            peers = [x for x in (med(case, p) for p in nb.PEERS) if x]
            refs = {'asyncio': med(case, 'asyncio'), 'uvloop': med(case, 'uvloop'),
                    'best': min(peers) if peers else None}
            rows.append({
                'case': case, 'loop': loop, 'n': len(vals), 'bytes_per_conn': m,
                'rss_before': statistics.median(r['rss_before'] for r in results if 'rss_before' in r)
                if vals else None,
                'spread': (max(vals) - min(vals)) / m if m else None,
                'error': next((r['error'] for r in results if 'error' in r), None),
                'unsupported': next((r['unsupported'] for r in results if 'unsupported' in r), None),
                **{f'vs_{k}': (ref / m if ref and m else None) for k, ref in refs.items()},
            })
    return rows


def table(rows):
    head = ['style', 'transport', 'conns', 'loop', 'bytes/conn', 'RSS before MiB', 'spread',
            'vs asyncio', 'vs uvloop', f'vs {nb.BEST_LABEL}', 'note']
    body = []
    for r in rows:
        cells = [r['case'][0], r['case'][1], f'{r["case"][2]:,}', r['loop']]
        if r['bytes_per_conn'] is None:
            mark, note = ('–', 'not supported') if r['unsupported'] and not r['error'] else \
                ('ERROR', (r['error'] or 'no sample')[:90].replace('|', '/'))
            cells += [mark, '', '', '', '', '', note]
        else:
            cells += [nb.fmt_num(r['bytes_per_conn']), nb.fmt_num(r['rss_before'] / 2**20, 1),
                      f'{r["spread"]:.0%}'] + [nb.fmt_ratio(r[f'vs_{k}']) for k in ('asyncio', 'uvloop', 'best')]
            cells.append('')
        body.append(cells)
    return head, body


CAPTION = ('RSS growth of the server per idle connection (lower is better); vs X = X\'s bytes/conn / '
           'this one\'s (above 1 = smaller than X).')


def main(argv=None):
    a = parse_args(argv)
    if a.serve:
        return serve(a)
    raise_nofile(a.conns + a.warm + 200)
    if a.client_cpu is not None:
        os.sched_setaffinity(0, {a.client_cpu})
    versions, skipped = nb.probe_loops(a.python, a.loops)
    for loop, why in skipped.items():
        print(f'skipping {loop}: {why}', file=sys.stderr)
    loops = [lp for lp in a.loops if lp in versions]
    if not loops:
        sys.exit('no usable loop')
    cases = [(st, tr, a.conns) for tr in a.transports for st in a.styles]
    print(f'{len(cases)} cases x {len(loops)} loops x {a.reps} reps, {a.conns:,} idle connections each; '
          f'server on CPU {a.server_cpu}, runner on CPU {a.client_cpu}', file=sys.stderr)
    samples = {(c, lp): [] for c in cases for lp in loops}
    total, done = len(samples) * a.reps, 0
    for rep in range(a.reps):
        k = rep % len(loops)
        for case in cases:
            for loop in loops[k:] + loops[:k]:
                res = {'loop': loop, 'case': list(case), 'rep': rep, **sample(a, loop, case[0], case[1])}
                samples[case, loop].append(res)
                done += 1
                note = (f'{res["bytes_per_conn"]:,.0f} B/conn' if 'bytes_per_conn' in res
                        else res.get('error') or 'not supported')
                nb.progress(f'[{done}/{total}] rep {rep + 1} {case[0]}/{case[1]} {loop}: {note}')
        if not sys.stderr.isatty():
            print(f'rep {rep + 1}/{a.reps} done', file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    rows = summarize(samples, cases, loops)
    meta = {'date': nb.now_stamp(), 'machine': nb.machine(), 'versions': versions, 'skipped': skipped,
            'reps': a.reps, 'conns': a.conns, 'warm': a.warm, 'server_cpu': a.server_cpu}
    path = nb.save(a.out, 'memory', {'meta': meta, 'rows': rows,
                                     'samples': [r for v in samples.values() for r in v]})
    head, body = table(rows)
    print(nb.plain_table(head, body, left=4))
    print(CAPTION)
    print(f'\nraw: {path}')
    if a.markdown:
        m = meta['machine']
        print(f'\n### Memory per idle connection ({meta["date"][:8]})\n\n'
              f'{m["cpu_model"]}, {m["nproc"]} CPUs, {m["platform"]}. Loops: '
              + ', '.join(f'{k} {v}' for k, v in versions.items())
              + f'. Median of {a.reps} fresh server processes; {a.conns:,} idle connections after {a.warm} '
              f'warm ones; RSS (/proc/PID/statm) after gc.collect(). {CAPTION}\n')
        print(nb.markdown_table(head, body, left=4))
    failed = [r for r in rows if r['bytes_per_conn'] is None and r['loop'] == 'ferroloop']
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
