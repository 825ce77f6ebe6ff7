"""Memory that must not grow with use: the same operation repeated N times, on both loops, leaves
the number of live Python allocations (``sys.getallocatedblocks()`` after a full collection)
bounded by a small constant, not by something proportional to N.

Found by the soak (tools/soak.py): the TLS path and ``sock_sendall`` used to leak one to three
int objects per partial read or write (the start and stop of a slice object made through PyO3's
``PySlice::new``, which never released them).
"""

import asyncio
import gc
import socket
import ssl
import sys

import pytest

N = 300
# What may remain after N repetitions: caches filled lazily (free lists, interned names), never
# one object per repetition.
SLACK = N // 3


def live_blocks():
    gc.collect()
    return sys.getallocatedblocks()


@pytest.fixture(scope='module')
def tls_contexts():
    trustme = pytest.importorskip('trustme')  # requirements-dev.txt installs it
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert('localhost').configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('size', [100, 17000, 40000])
def test_tls_echo_round_trips_leave_nothing_behind(loop, tls_contexts, size):
    """Messages of one record, of two and of three (TLS records carry at most 16 KiB): each
    round trip is a write of the application's data and reads of records, both ways."""
    server_ctx, client_ctx = tls_contexts

    async def main():
        srv = await loop.create_server(Echo, '127.0.0.1', 0, ssl=server_ctx)
        reader, writer = await asyncio.open_connection(
            *srv.sockets[0].getsockname(), ssl=client_ctx, server_hostname='localhost')
        msg = b'x' * size

        async def round_trips(n):
            for _ in range(n):
                writer.write(msg)
                assert await reader.readexactly(size) == msg

        await round_trips(50)  # warm-up: buffers, caches
        before = live_blocks()
        await round_trips(N)
        grown = live_blocks() - before
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return grown

    grown = loop.run_until_complete(main())
    assert grown < SLACK, f'{grown} more live blocks after {N} round trips of {size} B'


@pytest.mark.timeout(60)
def test_tls_connections_leave_nothing_behind(loop, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def main():
        srv = await loop.create_server(Echo, '127.0.0.1', 0, ssl=server_ctx)
        addr = srv.sockets[0].getsockname()

        async def connections(n):
            for _ in range(n):
                reader, writer = await asyncio.open_connection(
                    *addr, ssl=client_ctx, server_hostname='localhost')
                writer.write(b'ping')
                assert await reader.readexactly(4) == b'ping'
                writer.close()
                await writer.wait_closed()

        await connections(20)
        before = live_blocks()
        await connections(N // 3)
        grown = live_blocks() - before
        srv.close()
        await srv.wait_closed()
        return grown

    grown = loop.run_until_complete(main())
    assert grown < SLACK, f'{grown} more live blocks after {N // 3} TLS connections'


@pytest.mark.timeout(60)
def test_sock_sendall_partial_sends_leave_nothing_behind(loop):
    """A sock_sendall larger than the socket buffers sends in many parts (a slice per part)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    data = b'y' * (256 * 1024)

    async def main():
        async def drain(n):
            got = 0
            while got < n:
                got += len(await loop.sock_recv(b, 65536))

        async def send(times):
            for _ in range(times):
                await asyncio.gather(loop.sock_sendall(a, data), drain(len(data)))

        # Warm-up: free lists, caches and pools grow for a while (measured: up to ~150 blocks in
        # a round of 30 calls right after a 10-call warm-up, then a few dozen at random, on both
        # loops). A leak of one object per partial send (about 60 per call) grows every round by
        # thousands, so the smallest of three rounds is judged.
        await send(40)
        rounds = []
        for _ in range(3):
            before = live_blocks()
            await send(30)
            rounds.append(live_blocks() - before)
        return min(rounds)

    try:
        grown = loop.run_until_complete(main())
    finally:
        a.close()
        b.close()
    assert grown < SLACK, f'{grown} more live blocks after 30 sock_sendall calls of 256 KiB'
