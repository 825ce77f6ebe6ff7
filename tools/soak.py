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

Every second it samples the process's resident memory (RSS) and open fds. It passes when there
was no error (no exception in any task, nothing reached the loop's exception handler, every echo
matched) and both RSS and fds are flat after warm-up: over the samples after `--warmup` seconds
(without it, the second half of the run), the last quarter is at most 2 % above the first quarter (RSS by median, fds by maximum, as the
number of fds in use moves with the connection churn). Prints a summary; exits 1 on failure.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
import zlib

PAGE = os.sysconf('SC_PAGE_SIZE')
GROWTH_LIMIT = 0.02


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * PAGE


def open_fds():
    return len(os.listdir('/proc/self/fd'))


class Soak:
    def __init__(self, args):
        self.args = args
        self.counts = {}
        self.errors = []
        self.stopping = False
        self.samples = []  # (t, rss, fds)
        self.rng = random.Random(args.seed)

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

    async def sampler(self, t0):
        while not self.stopping:
            self.samples.append((time.monotonic() - t0, rss_bytes(), open_fds()))
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

        t0 = time.monotonic()
        sampler = asyncio.create_task(self.sampler(t0))
        tasks = [asyncio.create_task(self.guarded(name, fn, *a)) for name, fn, *a in workers]
        deadline = t0 + self.args.seconds
        while time.monotonic() < deadline and not self.errors:
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if self.args.progress and int(time.monotonic() - t0) % 60 == 0:
                print(f'  {int(time.monotonic() - t0)} s: {self.samples[-1][1:]} '
                      f'{sum(self.counts.values())} operations', file=sys.stderr, flush=True)
        self.stopping = True
        done, pending = await asyncio.wait(tasks, timeout=60)
        if pending:
            self.error(f'{len(pending)} workers did not stop within 60 s')
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await sampler
        self.samples.append((time.monotonic() - t0, rss_bytes(), open_fds()))
        udp_tr.close()
        for srv in (tcp, unix, tls):
            srv.close()
            await srv.wait_closed()
        await asyncio.sleep(0.1)
        shutil.rmtree(tmpdir, ignore_errors=True)
        self.fds_after = open_fds()
        self.fds_before = fds_before
        self.elapsed = time.monotonic() - t0


def growth(samples, key, agg, warmup=0.0):
    """Growth after warm-up (the samples from `warmup` seconds on, or without one the second
    half of the run): its last quarter vs its first quarter."""
    half = [x for x in samples if x[0] >= warmup] if warmup else samples[len(samples) // 2:]
    w = max(3, len(half) // 4)
    if len(half) < 2 * w:
        return None, None, None
    first = agg([s[key] for s in half[:w]])
    last = agg([s[key] for s in half[-w:]])
    return first, last, (last - first) / first


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
    ap.add_argument('--loop', choices=('ferroloop', 'asyncio'), default='ferroloop')
    ap.add_argument('--json', help='also write the summary to this file')
    ap.add_argument('--progress', action='store_true', help='a line on stderr every minute')
    args = ap.parse_args()

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
    if not 0 <= args.warmup < args.seconds:
        ap.error('--warmup must be at least 0 and less than --seconds')
    rss = growth(s, 1, statistics.median, args.warmup)
    fds = growth(s, 2, max, args.warmup)
    summary = {
        'loop': args.loop,
        'python': sys.version.split()[0],
        'seconds': round(soak.elapsed, 1),
        'counts': dict(sorted(soak.counts.items())),
        'samples': len(s),
        'rss_mib': {'first': round(s[0][1] / 2**20, 1), 'last': round(s[-1][1] / 2**20, 1),
                    'max': round(max(x[1] for x in s) / 2**20, 1)},
        'fds': {'first': s[0][2], 'last': s[-1][2], 'max': max(x[2] for x in s),
                'before_servers': soak.fds_before, 'after_shutdown': soak.fds_after},
        'second_half_growth': {
            'rss_mib_first_last': None if rss[2] is None else [round(rss[0] / 2**20, 2),
                                                               round(rss[1] / 2**20, 2)],
            'rss_pct': None if rss[2] is None else round(100 * rss[2], 2),
            'fds_first_last': None if fds[2] is None else [fds[0], fds[1]],
            'fds_pct': None if fds[2] is None else round(100 * fds[2], 2)},
        'errors': soak.errors,
    }
    failures = list(soak.errors)
    if rss[2] is None:
        failures.append('run too short to judge growth (needs at least 12 samples)')
    else:
        if rss[2] > GROWTH_LIMIT:
            failures.append(f'RSS grew {100 * rss[2]:.2f} % after warm-up')
        if fds[2] > GROWTH_LIMIT:
            failures.append(f'open fds grew {100 * fds[2]:.2f} % after warm-up')
    if soak.fds_after != soak.fds_before:
        failures.append(f'{soak.fds_after - soak.fds_before} fds left open after shutdown')
    for key in ('tcp_roundtrips', 'unix_roundtrips', 'tls_roundtrips', 'udp_roundtrips',
                'timers_fired', 'subprocesses', 'executor_calls'):
        if not soak.counts.get(key):
            failures.append(f'no {key}')
    summary['result'] = 'FAIL' if failures else 'PASS'
    summary['failures'] = failures
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(summary, samples=[[round(t, 1), r, n] for t, r, n in s]), f)
            f.write('\n')
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
