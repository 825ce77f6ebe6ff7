"""sock_recv / sock_sendall argument handling and outcomes (ferroloop makes the syscalls in Rust for
plain non-blocking sockets and calls the socket's own methods otherwise). Each test runs on asyncio
and ferroloop and expects the same result or exception."""

import asyncio
import socket
import ssl

import pytest

from netutil import Harness, reused_fd_number


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 10))


def outcome(loop, coro):
    try:
        return 'ok', run(loop, coro)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize('n', [0, 1, 5, 300 * 1024])
def test_recv_sizes(loop, pair, n):
    a, b = pair
    b.send(b'hello world')
    expected = b'hello world'[:n] if n else b''
    assert run(loop, loop.sock_recv(a, n)) == expected


@pytest.mark.parametrize('n', [-1, 'x', None, 2.5])
def test_recv_bad_sizes(loop, pair, n):
    a, b = pair
    b.send(b'data')
    expected = {-1: ('ValueError', 'negative buffersize in recv'),
                'x': ('TypeError', "'str' object cannot be interpreted as an integer"),
                None: ('TypeError', "'NoneType' object cannot be interpreted as an integer"),
                2.5: ('TypeError', "'float' object cannot be interpreted as an integer")}[n]
    assert outcome(loop, loop.sock_recv(a, n)) == expected


def test_recv_waits_then_gets_data(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        assert loop._selector.get_key(a.fileno()) is not None   # a reader waits
        b.send(b'late')
        data = await task
        await asyncio.sleep(0)
        with pytest.raises(KeyError):
            loop._selector.get_key(a.fileno())   # and is gone once the data came
        return data

    assert run(loop, main()) == b'late'


def test_recv_eof_and_reset(loop):
    h = Harness(loop)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.close()
    assert run(loop, loop.sock_recv(a, 10)) == b''
    a.close()
    h.finish()


def test_recv_closed_socket(loop, pair):
    a, b = pair
    a.close()
    kind, _ = outcome(loop, loop.sock_recv(a, 10))
    assert kind == 'OSError'


def test_recv_blocking_socket_in_debug_mode(loop, pair):
    a, b = pair
    a.setblocking(True)
    loop.set_debug(True)
    assert outcome(loop, loop.sock_recv(a, 10)) == ('ValueError', 'the socket must be non-blocking')
    assert outcome(loop, loop.sock_sendall(a, b'x')) == ('ValueError',
                                                         'the socket must be non-blocking')


def test_recv_socket_with_timeout_uses_its_own_recv(loop, pair):
    """A socket with a timeout (not 0) is waited on by socket.recv itself, as with asyncio."""
    a, b = pair
    a.settimeout(0.05)
    b.send(b'now')
    assert run(loop, loop.sock_recv(a, 10)) == b'now'


def test_ssl_socket_rejected(loop):
    ctx = ssl.create_default_context()
    raw = socket.socket()
    s = ctx.wrap_socket(raw, server_hostname='example.org', do_handshake_on_connect=False)
    try:
        s.setblocking(False)
        assert outcome(loop, loop.sock_recv(s, 1)) == ('TypeError', 'Socket cannot be of type SSLSocket')
        assert outcome(loop, loop.sock_sendall(s, b'x')) == ('TypeError',
                                                             'Socket cannot be of type SSLSocket')
    finally:
        s.close()


@pytest.mark.parametrize('data', [b'bytes', bytearray(b'bytearray'), memoryview(b'memoryview'),
                                  memoryview(b'xsliced')[1:]])
def test_sendall_kinds(loop, pair, data):
    a, b = pair
    assert run(loop, loop.sock_sendall(a, data)) is None
    assert b.recv(100) == bytes(data)


@pytest.mark.parametrize('data', ['text', 42, None])
def test_sendall_bad_data(loop, pair, data):
    a, b = pair
    kind, msg = outcome(loop, loop.sock_sendall(a, data))
    assert kind == 'TypeError'
    assert msg == f"a bytes-like object is required, not '{type(data).__name__}'"


def test_sendall_large_waits_for_the_reader(loop, pair):
    a, b = pair
    payload = bytes(range(256)) * 40000   # ~10 MB, far more than the socket buffer

    async def main():
        send = asyncio.ensure_future(loop.sock_sendall(a, payload))
        got = bytearray()
        while len(got) < len(payload):
            chunk = await loop.sock_recv(b, 1 << 16)
            assert chunk
            got += chunk
        assert await send is None
        return bytes(got)

    assert run(loop, main()) == payload


def test_sendall_to_closed_peer(loop, pair):
    a, b = pair
    b.close()
    kind, _ = outcome(loop, loop.sock_sendall(a, b'x' * 100))
    assert kind == 'BrokenPipeError'


def test_fd_owned_by_transport(loop, pair):
    a, b = pair

    async def main():
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        try:
            b.send(b'x')
            with pytest.raises(RuntimeError, match='is used by transport'):
                # raised once the call has to wait (asyncio checks after its first attempt)
                await loop.sock_sendall(a, b'y' * (64 << 20))
        finally:
            tr.close()
            await asyncio.sleep(0)

    run(loop, main())


# -- waits on the same fd, one after another (ferroloop keeps an edge-triggered registration
#    between them; see core::io_registry) -----------------------------------------------------

def test_many_waits_in_a_row(loop, pair):
    """Each sock_recv waits (nothing is there yet), then the data comes from a later callback;
    and sock_sendall waits for room more than once."""
    a, b = pair

    async def main():
        got = []
        for i in range(50):
            loop.call_later(0.001 if i % 2 else 0, b.send, b'm%d' % i)
            got.append(await loop.sock_recv(a, 100))
        return got

    assert run(loop, main()) == [b'm%d' % i for i in range(50)]
    # Now the other direction, several full send buffers.
    blob = bytes(range(256)) * 8192  # 2 MiB

    async def reader():
        chunks = []
        while sum(map(len, chunks)) < len(blob):
            await asyncio.sleep(0.001)
            try:
                chunks.append(b.recv(1 << 16))
            except BlockingIOError:
                pass
        return b''.join(chunks)

    async def both():
        for _ in range(2):
            r = loop.create_task(reader())
            await loop.sock_sendall(a, blob)
            assert await r == blob

    run(loop, both())


@pytest.mark.parametrize('dup', [False, True], ids=['plain', 'dup-kept-open'])
def test_recv_on_reused_fd_number(loop, dup):
    """sock_recv on a socket, close it, and a new socket gets the same fd number: sock_recv on
    the new one must still be woken (the old one's registration is gone, or — with a dup kept
    open — still reports the old socket's data, which must not be taken for the new one's)."""
    old_a, old_b = socket.socketpair()
    old_a.setblocking(False)

    async def wait_once(sock, peer, data):
        loop.call_later(0.01, peer.send, data)
        return await loop.sock_recv(sock, 100)

    assert run(loop, wait_once(old_a, old_b, b'old')) == b'old'
    with reused_fd_number(old_a, old_b, dup) as (new_a, new_b):
        if dup:
            old_b.send(b'to the old socket')  # readable on the dup only
        assert run(loop, wait_once(new_a, new_b, b'new')) == b'new'
        assert run(loop, wait_once(new_a, new_b, b'again')) == b'again'


def test_reader_after_sock_recv_is_level_triggered(loop, pair):
    """A reader added to an fd that sock_recv waited on runs on every iteration while data
    stays unread (level-triggered, as asyncio's), however the fd was registered before."""
    a, b = pair

    async def wait_once():
        loop.call_later(0.01, b.send, b'x')
        return await loop.sock_recv(a, 100)

    assert run(loop, wait_once()) == b'x'
    calls = []
    loop.add_reader(a, calls.append, 1)
    b.send(b'unread')

    async def spin():
        for _ in range(5):
            await asyncio.sleep(0)

    run(loop, spin())
    loop.remove_reader(a)
    assert len(calls) >= 3, calls
    assert a.recv(100) == b'unread'


def test_transport_after_sock_recv_gets_data(loop, pair):
    """connect_accepted_socket on a socket that sock_recv waited on: the transport reads."""
    a, b = pair

    async def main():
        loop.call_later(0.01, b.send, b'first')
        assert await loop.sock_recv(a, 100) == b'first'
        got = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                if not got.done():
                    got.set_result(data)

        tr, _ = await loop.connect_accepted_socket(P, a)
        loop.call_later(0.01, b.send, b'second')
        try:
            return await got
        finally:
            tr.close()

    assert run(loop, main()) == b'second'


def test_cancelled_wait_then_new_wait(loop, pair):
    """A cancelled sock_recv loses no data, and the next one on the same fd is woken."""
    a, b = pair

    async def main():
        t = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        b.send(b'after cancel')
        first = await loop.sock_recv(a, 100)
        loop.call_later(0.01, b.send, b'later')
        return first, await loop.sock_recv(a, 100)

    assert run(loop, main()) == (b'after cancel', b'later')
