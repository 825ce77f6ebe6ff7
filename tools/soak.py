"""Soak test: mixed load on one ferroloop loop for a while, watching memory and file descriptors.

    python tools/soak.py --seconds 600

Load, all on loopback, all in this process (clients and servers on the same loop):
  * TCP and Unix-socket echo: --connections client tasks for each family; every task makes a
    connection, does --churn round trips of 1 B .. 64 KiB (checked byte for byte), closes it and
    starts over, so connections are opened and closed all the time;
  * UDP echo (connected datagram endpoints), TLS echo (self-signed certificate made at start with
    trustme) with connection churn too;
  * timer churn: batches of call_later timers, half of them cancelled;
  * subprocesses: `cat` through pipes;
  * executor calls: run_in_executor on the default executor.

Workloads (--only, comma-separated): tcp, unix, tls, udp, timers, subprocess, executor. --loop
asyncio runs the same load on the stdlib's selector loop, the reference: what grows there too
comes from the interpreter, the allocator or the load, not from ferroloop.

Every second it samples, after a full garbage collection (gc.collect(): without it the live
Python memory saw-tooths with the collector, as closed transports and other cyclic garbage wait
in the oldest generation for a full collection, and a slow leak hides in the teeth):
  * blocks: live Python allocations (sys.getallocatedblocks(), pymalloc blocks);
  * malloc_used: live malloc memory (glibc's mallinfo2: uordblks + hblkhd): Rust structures,
    buffers, OpenSSL, Python objects above 512 bytes; unlike RSS it does not count free memory
    kept in the heap (fragmentation) or the heap's high-water mark;
  * rss: resident memory; fds: open file descriptors.
The samples are kept in arrays of doubles, so keeping them adds no Python object.

Verdict. It passes when there was no error (no exception in any task, nothing reached the loop's
exception handler, every echo matched, no fd left open after shutdown) and every metric is flat
after warm-up. Flat: over the judged window (the samples from --warmup seconds on, without it
the second half of the run), a least-squares line through the samples grows by at most 2 % of
its starting value, or by at most 3 standard deviations of the samples around the line (the
metric's own noise: buffers and connections in flight come and go; fds move with the connection
churn). A leak is linear growth of live memory: a line fits it closely, and over a window long
enough it exceeds both bounds. Memory that only rises towards a plateau (the heap's high-water
mark, pymalloc arenas, Vec capacities that never shrink) does so in the first tens of seconds
under this load; the judged window starts after it.

SOAK_INJECT_LEAK=transports (every server-side transport kept alive) or SOAK_INJECT_LEAK=<n>
(n bytes kept per connection) adds a leak on purpose, to check that the verdict catches one.
--diag T1,T2,... records, at those times, the live objects by type, the cyclic garbage a full
collection finds, pymalloc's arenas (sys._debugmallocstats) and mallinfo2, and prints what
changed (with --tracemalloc, also the allocation sites). Prints a JSON summary; exits 1 on
failure.
"""

import argparse
import array
import asyncio
import ctypes
import gc
import io
import json
import os
import random
import shutil
import socket
import ssl
import sys
import tempfile
import time
import tracemalloc
import zlib

PAGE = os.sysconf('SC_PAGE_SIZE')
GROWTH_LIMIT = 0.02
MIN_SAMPLES = 20
# What is judged (see judge()); the names are the sample keys.
METRICS = {
    'blocks': 'live Python allocations (pymalloc blocks after a full collection)',
    'malloc_used': 'live malloc memory (mallinfo2 uordblks + hblkhd)',
    'rss': 'RSS',
    'fds': 'open fds',
}


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * PAGE


def open_fds():
    return len(os.listdir('/proc/self/fd'))


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
        'fordblks', 'keepcost')]


def _mallinfo2_fn():
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    fn.argtypes = []
    return fn


MALLINFO2 = _mallinfo2_fn()


def malloc_stats():
    """glibc's heap: bytes handed out by malloc and still in use (small chunks + mmapped blocks),
    and bytes free inside the heap (fragmentation, not returned to the kernel)."""
    if MALLINFO2 is None:
        return None, None
    m = MALLINFO2()
    return m.uordblks + m.hblkhd, m.fordblks


WORKLOADS = ('tcp', 'unix', 'tls', 'udp', 'timers', 'subprocess', 'executor')


class Soak:
    def __init__(self, args):
        self.args = args
        self.counts = {}
        self.errors = []
        self.stopping = False
        # The samples, a column per key (see sample()): arrays of doubles, so that keeping them
        # adds no Python object per sample to what is measured.
        self.columns = {}
        self.rng = random.Random(args.seed)
        self.checkpoints = {}  # t -> diagnostics taken then (--diag)
        # A deliberate leak, to show that the checker catches one: SOAK_INJECT_LEAK=transports keeps
        # every server-side transport alive, SOAK_INJECT_LEAK=<n> keeps n bytes per connection.
        self.inject = os.environ.get('SOAK_INJECT_LEAK', '')
        self.leaked = []

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def error(self, what):
        if len(self.errors) < 50:
            self.errors.append(what)

    def payload(self):
        size = self.rng.choice((1, 100, 1024, 4096, 16384, 65536))
        return self.rng.randbytes(size)

    async def guarded(self, name, coro_fn, *args):
        """Run one worker until stopping; any exception is an error of the soak."""
        try:
            await coro_fn(*args)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reported
            self.error(f'{name}: {type(e).__name__}: {e}')

    # -- servers ----------------------------------------------------------------------------------

    async def echo_handler(self, reader, writer):
        if self.inject == 'transports':
            self.leaked.append(writer.transport)
        elif self.inject:
            self.leaked.append(bytes(int(self.inject)))
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError) as e:
            self.error(f'echo server: {e!r}')
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionResetError, BrokenPipeError):
                pass

    class UdpEcho(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    class UdpClient(asyncio.DatagramProtocol):
        def __init__(self):
            self.waiter = None

        def datagram_received(self, data, addr):
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(data)

        def error_received(self, exc):
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)

    # -- workers ----------------------------------------------------------------------------------

    async def stream_client(self, kind, open_conn):
        while not self.stopping:
            reader, writer = await open_conn()
            self.count(f'{kind}_connections')
            try:
                for _ in range(self.args.churn):
                    if self.stopping:
                        break
                    data = self.payload()
                    writer.write(data)
                    got = await asyncio.wait_for(reader.readexactly(len(data)), 30)
                    if got != data:
                        self.error(f'{kind}: echo mismatch ({len(got)} bytes)')
                    self.count(f'{kind}_roundtrips')
                    if self.args.pace:
                        await asyncio.sleep(self.args.pace)
                if writer.can_write_eof():  # TCP, Unix: half-close, the server then closes
                    writer.write_eof()
                    tail = await asyncio.wait_for(reader.read(), 30)
                    if tail:
                        self.error(f'{kind}: unexpected data at EOF')
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
                    self.error(f'{kind}: close: {e!r}')

    async def udp_client(self, loop, addr):
        while not self.stopping:
            transport, proto = await loop.create_datagram_endpoint(
                self.UdpClient, remote_addr=addr)
            self.count('udp_endpoints')
            try:
                for _ in range(self.args.churn * 5):
                    if self.stopping:
                        break
                    data = self.rng.randbytes(self.rng.choice((1, 64, 512, 1400, 8000)))
                    proto.waiter = loop.create_future()
                    transport.sendto(data)
                    try:
                        got = await asyncio.wait_for(proto.waiter, 2)
                    except asyncio.TimeoutError:
                        self.count('udp_lost')  # loopback can drop under load; not an error
                        continue
                    if got != data:
                        self.error('udp: echo mismatch')
                    self.count('udp_roundtrips')
                    if self.args.pace:
                        await asyncio.sleep(self.args.pace)
            finally:
                transport.close()

    async def timers(self, loop):
        fired = [0]

        def tick():
            fired[0] += 1

        while not self.stopping:
            handles = [loop.call_later(self.rng.random() * 0.05, tick) for _ in range(200)]
            for h in handles[::2]:
                h.cancel()
            self.count('timers_scheduled', len(handles))
            self.count('timers_cancelled', len(handles[::2]))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.06)
        self.count('timers_fired', fired[0])

    async def subprocesses(self):
        while not self.stopping:
            data = self.rng.randbytes(self.rng.choice((0, 1000, 65536, 300000)))
            proc = await asyncio.create_subprocess_exec(
                'cat', stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(data), 30)
            if out != data or proc.returncode != 0:
                self.error(f'subprocess: returncode {proc.returncode}, {len(out)} bytes back')
            self.count('subprocesses')
            await asyncio.sleep(0.02)

    async def executor(self, loop):
        while not self.stopping:
            data = self.rng.randbytes(4096)
            crc = await loop.run_in_executor(None, zlib.crc32, data)
            if crc != zlib.crc32(data):
                self.error('executor: wrong result')
            self.count('executor_calls')
            if self.args.pace:
                await asyncio.sleep(self.args.pace)

    def sample(self, t0):
        # Live Python allocations are read after a full collection: without it they saw-tooth
        # with the collector (cyclic garbage, such as closed transports, waits in the oldest
        # generation for a full collection) and hide a slow leak. The collection is forced once
        # per sample, a few milliseconds a second.
        blocks_before = sys.getallocatedblocks()
        gc.collect()
        used, free = malloc_stats()
        s = {'t': time.monotonic() - t0, 'rss': rss_bytes(), 'fds': open_fds(),
             'blocks': sys.getallocatedblocks(), 'blocks_before_collect': blocks_before,
             'malloc_used': used, 'malloc_free': free}
        if self.args.loop == 'ferroloop':
            import ferroloop  # noqa: PLC0415
            st = ferroloop.stats(asyncio.get_running_loop())
            for k in ('readers', 'writers', 'timers_pending', 'ready_now'):
                s[k] = st[k]
        cols = self.columns
        if not cols:
            cols.update((k, array.array('d')) for k in s)
        for k, col in cols.items():
            v = s.get(k)
            col.append(float('nan') if v is None else v)

    @property
    def samples(self):
        """The samples as dicts (for the verdict and --json)."""
        keys = list(self.columns)
        return [{k: (None if v != v else int(v) if k != 't' else v)
                 for k, v in zip(keys, row)} for row in zip(*self.columns.values())]

    def last_t(self):
        return self.columns['t'][-1]

    def checkpoint(self, t):
        """--diag: what lives in the process now (compared between checkpoints at the end)."""
        # What a full collection finds: cyclic garbage that the generational collector has not
        # reached yet (objects in the oldest generation wait for a full collection).
        blocks_before = sys.getallocatedblocks()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            garbage = {}
            for o in gc.garbage:
                name = type(o).__qualname__
                garbage[name] = garbage.get(name, 0) + 1
            gc.garbage.clear()
        finally:
            gc.set_debug(0)
        gc.collect()
        types = {}
        for o in gc.get_objects():
            name = type(o).__qualname__
            types[name] = types.get(name, 0) + 1
        buf = io.StringIO()
        r, w = os.pipe()
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(w, 2)
        os.close(w)
        try:
            sys._debugmallocstats()  # CPython writes to the C-level stderr
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        with os.fdopen(r) as f:
            buf.write(f.read())
        arenas = {}
        for line in buf.getvalue().splitlines():
            if line.startswith('# arenas') or line.startswith('Total'):
                key, _, val = line.rpartition('=')
                arenas[key.strip()] = val.strip()
        m = MALLINFO2() if MALLINFO2 else None
        self.checkpoints[t] = {
            'types': types, 'objects': sum(types.values()), 'blocks': sys.getallocatedblocks(),
            'blocks_before_collect': blocks_before, 'garbage': garbage,
            'gc_stats': gc.get_stats(),
            'pymalloc': arenas, 'rss': rss_bytes(),
            'mallinfo2': {k: getattr(m, k) for k, _ in m._fields_} if m else None,
            'tracemalloc': tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None}

    async def sampler(self, t0):
        pending = sorted(self.args.diag) if self.args.diag else []
        while not self.stopping:
            self.sample(t0)
            if pending and self.last_t() >= pending[0]:
                self.checkpoint(pending.pop(0))
            await asyncio.sleep(1)

    # -- main -------------------------------------------------------------------------------------

    async def main(self):
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(
            lambda lp, ctx: self.error(f"exception handler: {ctx.get('message')} "
                                       f"{ctx.get('exception')!r}"))
        import trustme  # noqa: PLC0415 - only the soak needs it
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert('localhost').configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)

        tmpdir = tempfile.mkdtemp(prefix='soak')
        upath = os.path.join(tmpdir, 'echo.sock')
        fds_before = open_fds()
        tcp = await asyncio.start_server(self.echo_handler, '127.0.0.1', 0, backlog=256)
        unix = await asyncio.start_unix_server(self.echo_handler, upath, backlog=256)
        tls = await asyncio.start_server(self.echo_handler, '127.0.0.1', 0, ssl=server_ctx,
                                         backlog=256)
        udp_tr, _ = await loop.create_datagram_endpoint(self.UdpEcho,
                                                        local_addr=('127.0.0.1', 0))
        taddr = tcp.sockets[0].getsockname()
        tlsaddr = tls.sockets[0].getsockname()
        uaddr = udp_tr.get_extra_info('sockname')

        n = self.args.connections
        workers = []
        for i in range(n):
            workers.append(('tcp', self.stream_client, 'tcp',
                            lambda: asyncio.open_connection(*taddr)))
            workers.append(('unix', self.stream_client, 'unix',
                            lambda: asyncio.open_unix_connection(upath)))
        for i in range(max(1, n // 8)):
            workers.append(('tls', self.stream_client, 'tls',
                            lambda: asyncio.open_connection(*tlsaddr, ssl=client_ctx,
                                                            server_hostname='localhost')))
            workers.append(('udp', self.udp_client, loop, uaddr))
        workers.append(('timers', self.timers, loop))
        workers.append(('subprocess', self.subprocesses))
        workers.append(('subprocess', self.subprocesses))
        for _ in range(4):
            workers.append(('executor', self.executor, loop))
        workers = [w for w in workers if w[0] in self.args.only]

        t0 = time.monotonic()
        sampler = asyncio.create_task(self.sampler(t0))
        tasks = [asyncio.create_task(self.guarded(name, fn, *a)) for name, fn, *a in workers]
        deadline = t0 + self.args.seconds
        while time.monotonic() < deadline and not self.errors:
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if self.args.progress and int(time.monotonic() - t0) % 60 == 0:
                print(f'  {int(time.monotonic() - t0)} s: {self.samples[-1]} '
                      f'{sum(self.counts.values())} operations', file=sys.stderr, flush=True)
        self.stopping = True
        done, pending = await asyncio.wait(tasks, timeout=60)
        if pending:
            self.error(f'{len(pending)} workers did not stop within 60 s')
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await sampler
        self.sample(t0)
        udp_tr.close()
        for srv in (tcp, unix, tls):
            srv.close()
            await srv.wait_closed()
        await asyncio.sleep(0.1)
        shutil.rmtree(tmpdir, ignore_errors=True)
        self.fds_after = open_fds()
        self.fds_before = fds_before
        self.elapsed = time.monotonic() - t0


def fit(points):
    """Least-squares line through (t, y) points: intercept, slope, residual standard deviation."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mt) ** 2 for t, _ in points)
    b = sum((t - mt) * (y - my) for t, y in points) / sxx
    a = my - b * mt
    sd = (sum((y - a - b * t) ** 2 for t, y in points) / (n - 2)) ** 0.5
    return a, b, sd


def judge(samples, key, warmup=0.0, limit=GROWTH_LIMIT):
    """The growth of one metric over the judged window (the samples from `warmup` seconds on, or
    without one the second half of the run), from a least-squares line through all of them:
    slope x window length. It passes when that growth is at most `limit` of the line's value at
    the window's start, or within 3 standard deviations of the samples around the line (the
    metric's own noise: in-flight buffers and connections come and go; a leak grows on and
    does not hide in its noise for long)."""
    window = [x for x in samples if x['t'] >= warmup] if warmup else samples[len(samples) // 2:]
    points = [(x['t'], x[key]) for x in window if x.get(key) is not None]
    if len(points) < MIN_SAMPLES:
        return None
    a, b, sd = fit(points)
    t0, t1 = points[0][0], points[-1][0]
    start = a + b * t0
    growth = b * (t1 - t0)
    allowed = max(limit * start, 3 * sd)
    return {'start': start, 'growth': growth, 'pct': 100 * growth / start if start else 0.0,
            'noise_sd': sd, 'allowed': allowed, 'ok': growth <= allowed}


def report_checkpoints(cps, out):
    """--diag: what changed between the first and the last checkpoint."""
    if len(cps) < 2:
        return
    (t1, a), (t2, b) = sorted(cps.items())[0], sorted(cps.items())[-1]
    p = lambda *x: print(*x, file=out)  # noqa: E731
    p(f'--- diagnostics: {t1:.0f} s -> {t2:.0f} s')
    p(f'RSS {a["rss"] / 2**20:.2f} -> {b["rss"] / 2**20:.2f} MiB; gc objects {a["objects"]} -> '
      f'{b["objects"]}; pymalloc blocks {a["blocks"]} -> {b["blocks"]}')
    if a['mallinfo2']:
        p('mallinfo2 (MiB):', ', '.join(
            f'{k} {a["mallinfo2"][k] / 2**20:.2f} -> {b["mallinfo2"][k] / 2**20:.2f}'
            for k in ('arena', 'uordblks', 'fordblks', 'hblkhd', 'keepcost')))
    for t, c in sorted(cps.items()):
        top = sorted(c['garbage'].items(), key=lambda kv: -kv[1])[:10]
        p(f'at {t:.0f} s: pymalloc blocks {c["blocks_before_collect"]} before a full collection, '
          f'{c["blocks"]} after; its cyclic garbage: {sum(c["garbage"].values())} objects',
          ', '.join(f'{k} {n}' for k, n in top))
        p(f'   collections per generation: {[g["collections"] for g in c["gc_stats"]]}')
    p('pymalloc:', '; '.join(f'{k} {a["pymalloc"].get(k)} -> {v}' for k, v in b['pymalloc'].items()))
    diff = sorted(((b['types'].get(k, 0) - a['types'].get(k, 0), k)
                   for k in set(a['types']) | set(b['types'])), reverse=True)
    p('gc objects by type, largest changes:',
      ', '.join(f'{k} {d:+d}' for d, k in diff[:12] if d), '|',
      ', '.join(f'{k} {d:+d}' for d, k in diff[-5:] if d < 0))
    if a['tracemalloc'] and b['tracemalloc']:
        p('tracemalloc, largest changes:')
        for st in b['tracemalloc'].compare_to(a['tracemalloc'], 'lineno')[:15]:
            p('  ', st)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--seconds', type=float, default=600)
    ap.add_argument('--warmup', type=float, default=0,
                    help='seconds of warm-up not judged (default: the first half of the run)')
    ap.add_argument('--connections', type=int, default=32,
                    help='client connections per stream family (TCP, Unix); TLS and UDP get 1/8')
    ap.add_argument('--churn', type=int, default=20, help='round trips per connection')
    ap.add_argument('--pace', type=float, default=0.002,
                    help='pause of each client between round trips, seconds (0: flat out)')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--loop', choices=('ferroloop', 'asyncio'), default='ferroloop',
                    help='the loop under test; asyncio (the stdlib selector loop) is the reference')
    ap.add_argument('--only', default=','.join(WORKLOADS),
                    help=f'comma-separated workloads to run (default all: {",".join(WORKLOADS)})')
    ap.add_argument('--diag', default='',
                    help='comma-separated times (s) at which to record live objects by type, '
                         'pymalloc arenas and malloc stats, compared at the end')
    ap.add_argument('--tracemalloc', action='store_true',
                    help='with --diag: also trace Python allocations (slow) and compare them')
    ap.add_argument('--expect-leak', action='store_true',
                    help='check the checker (with SOAK_INJECT_LEAK): pass only when there was no '
                         'error and the verdict found memory growth')
    ap.add_argument('--json', help='also write the summary and every sample to this file')
    ap.add_argument('--progress', action='store_true', help='a line on stderr every minute')
    args = ap.parse_args()
    args.only = [w.strip() for w in args.only.split(',') if w.strip()]
    bad = set(args.only) - set(WORKLOADS)
    if bad:
        ap.error(f'unknown workload(s): {", ".join(sorted(bad))}')
    args.diag = [float(x) for x in args.diag.split(',') if x.strip()]
    if not 0 <= args.warmup < args.seconds:
        ap.error('--warmup must be at least 0 and less than --seconds')
    if args.tracemalloc:
        tracemalloc.start(8)

    if args.loop == 'ferroloop':
        import ferroloop  # noqa: PLC0415
        loop = ferroloop.new_event_loop()
    else:
        loop = asyncio.SelectorEventLoop()
    soak = Soak(args)
    try:
        loop.run_until_complete(soak.main())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()

    s = soak.samples
    report_checkpoints(soak.checkpoints, sys.stderr)
    mib = lambda v: round(v / 2**20, 2)  # noqa: E731
    units = {'rss': mib, 'malloc_used': mib, 'blocks': round, 'fds': lambda v: round(v, 1)}
    verdicts = {k: judge(s, k, args.warmup) for k in METRICS}
    summary = {
        'loop': args.loop,
        'python': sys.version.split()[0],
        'workloads': args.only,
        'seconds': round(soak.elapsed, 1),
        'counts': dict(sorted(soak.counts.items())),
        'samples': len(s),
        'rss_mib': {'first': mib(s[0]['rss']), 'last': mib(s[-1]['rss']),
                    'max': mib(max(x['rss'] for x in s))},
        'fds': {'first': s[0]['fds'], 'last': s[-1]['fds'], 'max': max(x['fds'] for x in s),
                'before_servers': soak.fds_before, 'after_shutdown': soak.fds_after},
        'judged_from_s': args.warmup or round(s[len(s) // 2]['t'], 1),
        # per metric, over the judged window: the fitted line's value at its start, its growth
        # over the window (absolute and %), the samples' noise around it, the growth allowed
        'growth': {k: None if v is None else {
            'start': units[k](v['start']), 'growth': units[k](v['growth']),
            'pct': round(v['pct'], 2), 'noise_sd': units[k](v['noise_sd']),
            'allowed': units[k](v['allowed']), 'ok': v['ok']} for k, v in verdicts.items()},
        'errors': soak.errors,
    }
    if soak.inject:
        summary['injected_leak'] = soak.inject
    failures = list(soak.errors)
    for k, v in verdicts.items():
        if v is None:
            if k != 'malloc_used':  # mallinfo2 needs glibc >= 2.33
                failures.append(f'run too short to judge {k} (needs {MIN_SAMPLES} samples '
                                'after warm-up)')
        elif not v['ok']:
            failures.append(f'{METRICS[k]} grew {units[k](v["growth"])} ({v["pct"]:.2f} %) '
                            f'after warm-up, more than the {units[k](v["allowed"])} allowed')
    if soak.fds_after != soak.fds_before:
        failures.append(f'{soak.fds_after - soak.fds_before} fds left open after shutdown')
    expected = {'tcp': 'tcp_roundtrips', 'unix': 'unix_roundtrips', 'tls': 'tls_roundtrips',
                'udp': 'udp_roundtrips', 'timers': 'timers_fired', 'subprocess': 'subprocesses',
                'executor': 'executor_calls'}
    for w in args.only:
        if not soak.counts.get(expected[w]):
            failures.append(f'no {expected[w]}')
    if args.expect_leak:
        grew = [k for k, v in verdicts.items() if v is not None and not v['ok']]
        others = [f for f in failures if not any(f.startswith(METRICS[k]) for k in grew)]
        failures = others + ([] if grew else ['no growth found, though a leak was injected'])
    summary['result'] = 'FAIL' if failures else 'PASS'
    summary['failures'] = failures
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(summary, samples=s), f)
            f.write('\n')
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
