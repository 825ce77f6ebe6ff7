"""Volume: >= 100 MiB through a Unix socket (streams) and through TCP (protocols, both directions
at once), checked by hash; >= 5,000 concurrent connections to one server, every client echoed."""

import asyncio
import functools
import hashlib
import resource
import time

import pytest

from netutil import Harness, open_fds

MiB = 1 << 20

@functools.lru_cache(maxsize=None)
def base_block(seed):
    return hashlib.shake_256(b'block %d' % seed).digest(MiB)


def chunk(seed, i):
    """1 MiB chunk number i: its index in the first 8 bytes, so loss or reordering shows."""
    return i.to_bytes(8, 'big') + base_block(seed)[8:]


@functools.lru_cache(maxsize=None)
def expected_digest(seed, n):
    h = hashlib.sha256()
    for i in range(n):
        h.update(chunk(seed, i))
    return h.hexdigest()

# -- 2. large transfers --------------------------------------------------------------------------

N_CHUNKS = 100   # 100 MiB


@pytest.mark.timeout(60)
def test_100mib_unix_streams(loop, tmp_path):
    h = Harness(loop)
    path = str(tmp_path / 'big.sock')
    expected = expected_digest(1, N_CHUNKS)

    async def handle(reader, writer):
        hasher = hashlib.sha256()
        total = 0
        while True:
            data = await reader.read(4 * MiB)
            if not data:
                break
            total += len(data)
            hasher.update(data)
        writer.write(b'%d %s' % (total, hasher.hexdigest().encode()))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        t0 = time.monotonic()
        for i in range(N_CHUNKS):
            writer.write(chunk(1, i))
            await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 30)
        elapsed = time.monotonic() - t0
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return answer, elapsed

    answer, elapsed = loop.run_until_complete(main())
    print(f'100 MiB over a Unix socket (streams): {elapsed:.2f} s')
    assert answer == b'%d %s' % (N_CHUNKS * MiB, expected.encode())
    assert elapsed < 20
    h.finish()


class Duplex(asyncio.Protocol):
    """Sends n chunks of `seed` (obeying pause/resume_writing) while hashing what it receives;
    closes once it has sent everything and received the peer's EOF."""

    def __init__(self, loop, seed, n):
        self.loop = loop
        self.seed = seed
        self.n = n
        self.i = 0
        self.paused = False
        self.pauses = 0
        self.hasher = hashlib.sha256()
        self.received = 0
        self.eof_sent = False
        self.got_eof = False
        self.calls = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.calls.append('made')
        self.transport = transport
        self.pump()

    def pump(self):
        while not self.paused and self.i < self.n:
            self.transport.write(chunk(self.seed, self.i))
            self.i += 1
        if self.i == self.n and not self.paused and not self.eof_sent:
            self.transport.write_eof()
            self.eof_sent = True
            self.maybe_close()

    def pause_writing(self):
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_writing(self):
        assert self.paused
        self.paused = False
        self.loop.call_soon(self.pump)

    def data_received(self, data):
        assert not self.got_eof
        self.received += len(data)
        self.hasher.update(data)

    def eof_received(self):
        self.calls.append('eof')
        self.got_eof = True
        self.maybe_close()
        return True

    def maybe_close(self):
        if self.eof_sent and self.got_eof:
            self.transport.close()

    def connection_lost(self, exc):
        self.calls.append(('lost', exc))
        self.done.set_result(None)


@pytest.mark.timeout(60)
def test_100mib_tcp_protocols_full_duplex(loop):
    """100 MiB each way at the same time over one TCP connection."""
    h = Harness(loop)
    server_p = Duplex(loop, 2, N_CHUNKS)
    client_p = Duplex(loop, 3, N_CHUNKS)

    async def main():
        server = await loop.create_server(lambda: server_p, '127.0.0.1', 0)
        t0 = time.monotonic()
        await loop.create_connection(lambda: client_p, *server.sockets[0].getsockname())
        await asyncio.wait_for(asyncio.gather(server_p.done, client_p.done), 40)
        elapsed = time.monotonic() - t0
        server.close()
        await server.wait_closed()
        return elapsed

    elapsed = loop.run_until_complete(main())
    print(f'2 x 100 MiB over TCP (protocols, full duplex): {elapsed:.2f} s')
    for p, peer_seed in ((server_p, 3), (client_p, 2)):
        assert p.received == N_CHUNKS * MiB
        assert p.hasher.hexdigest() == expected_digest(peer_seed, N_CHUNKS)
        assert p.calls == ['made', 'eof', ('lost', None)]
        assert p.pauses > 0
        assert p.transport.get_write_buffer_size() == 0
    assert elapsed < 20
    h.finish()


# -- 5. many concurrent connections --------------------------------------------------------------

class EchoServer(asyncio.Protocol):
    def __init__(self, registry):
        self.registry = registry

    def connection_made(self, transport):
        self.transport = transport
        self.registry.append(self)
        self.lost = False

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        assert exc is None
        assert not self.lost
        self.lost = True


class EchoClient(asyncio.Protocol):
    def __init__(self, loop, msg):
        self.msg = msg
        self.data = bytearray()
        self.echoed = loop.create_future()
        self.lost = loop.create_future()
        self.calls = []

    def connection_made(self, transport):
        self.calls.append('made')
        self.transport = transport

    def data_received(self, data):
        if not self.calls or self.calls[-1] != 'data':
            self.calls.append('data')
        self.data += data
        if len(self.data) >= len(self.msg) and not self.echoed.done():
            self.echoed.set_result(bytes(self.data))

    def eof_received(self):
        self.calls.append('eof')

    def connection_lost(self, exc):
        self.calls.append(('lost', exc))
        self.lost.set_result(exc)


@pytest.mark.timeout(120)
def test_many_concurrent_connections(loop):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        _many_connections(loop, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _many_connections(loop, limit):
    h = Harness(loop)
    # two fds per connection (client and server side) plus headroom
    n = min(5000, (limit - len(h.fds_before) - 200) // 2)
    print(f'\nconcurrent connections: N = {n} (RLIMIT_NOFILE hard limit {limit})')
    assert n >= 1000, f'RLIMIT_NOFILE hard limit {limit} allows only {n} connections'
    registry = []

    async def main():
        server = await loop.create_server(lambda: EchoServer(registry), '127.0.0.1', 0,
                                          backlog=4096)
        addr = server.sockets[0].getsockname()
        sem = asyncio.Semaphore(500)
        clients = [EchoClient(loop, b'message %06d|' % i * (1 + i % 7)) for i in range(n)]

        async def connect(p):
            async with sem:
                await loop.create_connection(lambda: p, *addr)

        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(connect(p) for p in clients)), 60)
        # every connection is accepted and open at the same time
        while len(registry) < n:
            await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 60
        assert len(registry) == n
        assert not any(s.lost for s in registry)
        assert not any(c.transport.is_closing() for c in clients)
        t1 = time.monotonic()
        for c in clients:
            c.transport.write(c.msg)
        echoes = await asyncio.wait_for(asyncio.gather(*(c.echoed for c in clients)), 60)
        t2 = time.monotonic()
        assert [e == c.msg for e, c in zip(echoes, clients)] == [True] * n
        # the servers close first (their side keeps TIME_WAIT, not the clients' ephemeral ports)
        for s in registry:
            s.transport.close()
        await asyncio.wait_for(asyncio.gather(*(c.lost for c in clients)), 60)
        server.close()
        await server.wait_closed()
        assert all(s.lost for s in registry)
        assert all(c.calls == ['made', 'data', 'eof', ('lost', None)] for c in clients), \
            [c.calls for c in clients if c.calls != ['made', 'data', 'eof', ('lost', None)]][:3]
        print(f'connect {t1 - t0:.2f} s, echo {t2 - t1:.2f} s, close {time.monotonic() - t2:.2f} s')

    loop.run_until_complete(main())
    h.finish()
