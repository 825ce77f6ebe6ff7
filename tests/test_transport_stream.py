"""Socket stream transports (TCP and Unix), method by method: what ``create_connection``,
``create_server``, ``create_unix_*`` and streams hand out, on both loops.

Covers every transport method, the write-flow-control edges (watermarks 0 and huge, pause inside
``data_received``, resume inside ``pause_writing``), EOF and half-close, resets in the middle of a
buffered write, a 100 MiB transfer with a checksum, and 10,000 concurrent connections. Every test
asserts exact bytes, exact protocol call sequences and what reached the exception handler."""

import asyncio
import gc
import hashlib
import os
import resource
import socket
import struct
import subprocess
import sys
import textwrap
import warnings

import pytest

FAMILIES = ['tcp', 'unix']
PY312 = sys.version_info >= (3, 12)


class Rec(asyncio.Protocol):
    """Records protocol calls (consecutive data_received calls as one 'data')."""

    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.keep_open = False
        self.on_data = None
        self.on_pause = None
        self.on_resume = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes) and data
        self.data += data
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        if self.on_data is not None:
            self.on_data(data)

    def eof_received(self):
        self.events.append('eof')
        self.eof.set_result(None)
        return self.keep_open

    def pause_writing(self):
        self.events.append(('pause', self.transport.get_write_buffer_size()))
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self):
        self.events.append(('resume', self.transport.get_write_buffer_size()))
        if self.on_resume is not None:
            self.on_resume()

    def connection_lost(self, exc):
        self.events.append(('lost', type(exc).__name__ if exc else None))
        self.lost.set_result(exc)


class Harness:
    def __init__(self, loop):
        self.loop = loop
        self.errors = []
        loop.set_exception_handler(lambda lp, ctx: self.errors.append(ctx))

    def run(self, coro, timeout=30):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture
def h(loop):
    return Harness(loop)


async def connected(loop, family, tmp_path, client_factory=None, server_factory=None):
    """(client transport, client protocol, server transport, server protocol, server)."""
    servers = []
    server_factory = server_factory or (lambda: Rec(loop))
    client_factory = client_factory or (lambda: Rec(loop))

    def make_server():
        p = server_factory()
        servers.append(p)
        return p

    if family == 'tcp':
        srv = await loop.create_server(make_server, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        ctr, cp = await loop.create_connection(client_factory, '127.0.0.1', port)
    else:
        path = str(tmp_path / 's.sock')
        srv = await loop.create_unix_server(make_server, path)
        ctr, cp = await loop.create_unix_connection(client_factory, path)
    while not servers or getattr(servers[0], 'transport', None) is None:
        await asyncio.sleep(0.001)
    sp = servers[0]
    return ctr, cp, sp.transport, sp, srv


async def shut(srv, *transports):
    for t in transports:
        t.close()
    srv.close()
    await srv.wait_closed()
    await asyncio.sleep(0)


def checksum(data):
    return hashlib.sha256(data).hexdigest()


# -- types, reprs, extra info ---------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_transport_is_an_asyncio_transport_with_asyncios_repr(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path)
        assert isinstance(ctr, asyncio.Transport)
        assert isinstance(ctr, asyncio.ReadTransport) and isinstance(ctr, asyncio.WriteTransport)
        assert type(ctr).__name__ == '_SelectorSocketTransport'
        fd = ctr.get_extra_info('socket').fileno()
        assert repr(ctr) == f'<_SelectorSocketTransport fd={fd} read=polling write=<idle, bufsize=0>>'
        ctr.pause_reading()
        assert repr(ctr) == f'<_SelectorSocketTransport fd={fd} read=idle write=<idle, bufsize=0>>'
        assert ctr.get_protocol() is cp
        assert not ctr.is_closing()
        assert ctr.can_write_eof() is True
        ctr.close()
        assert ctr.is_closing()
        assert repr(ctr) == f'<_SelectorSocketTransport closing fd={fd} read=idle write=<idle, bufsize=0>>'
        await cp.lost
        assert repr(ctr) == f'<_SelectorSocketTransport closed fd={fd}>'
        await shut(srv, str_)
        return cp.events

    assert h.run(main()) == ['made', ('lost', None)]
    assert h.errors == []


@pytest.mark.parametrize('family', FAMILIES)
def test_extra_info(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path)
        sock = ctr.get_extra_info('socket')
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert ctr.get_extra_info('socket') is sock
        assert sock.family == (socket.AF_INET if family == 'tcp' else socket.AF_UNIX)
        peer = ctr.get_extra_info('peername')
        name = ctr.get_extra_info('sockname')
        assert str_.get_extra_info('peername') == name
        if family == 'tcp':
            assert peer == srv.sockets[0].getsockname()
        else:
            assert peer == str(tmp_path / 's.sock')
        assert ctr.get_extra_info('nothing') is None
        assert ctr.get_extra_info('nothing', 42) == 42
        # The server side: never asked before the connection is lost, still there afterwards.
        str_.close()
        await sp.lost
        assert str_.get_extra_info('sockname') == peer
        assert str_.get_extra_info('peername') == name
        assert isinstance(str_.get_extra_info('socket'), asyncio.trsock.TransportSocket)
        await shut(srv, ctr)

    h.run(main())
    assert h.errors == []


@pytest.mark.parametrize('host', ['127.0.0.1', '::1'])
def test_accepted_connection_socket_and_addresses(h, host):
    # A TCP server's transport: the socket asyncio makes in its accept (the listener's family,
    # type and proto, non-blocking, the same fd), and the addresses accept and getsockname gave.
    loop = h.loop
    if host == '::1' and not socket.has_ipv6:
        pytest.fail('IPv6 loopback needed')

    async def main():
        servers = []
        srv = await loop.create_server(lambda: servers.append(Rec(loop)) or servers[-1], host, 0)
        lsock = srv.sockets[0]
        ctr, cp = await loop.create_connection(lambda: Rec(loop), host, lsock.getsockname()[1])
        while not servers or servers[0].transport is None:
            await asyncio.sleep(0.001)
        str_ = servers[0].transport
        peer = str_.get_extra_info('peername')
        assert peer == ctr.get_extra_info('sockname')
        assert type(peer) is tuple and type(peer[0]) is str and type(peer[1]) is int
        assert len(peer) == (2 if host == '127.0.0.1' else 4)
        assert str_.get_extra_info('sockname') == lsock.getsockname()
        sock = str_._sock
        assert type(sock) is socket.socket and str_._sock is sock
        assert (sock.family, sock.type, sock.proto) == (lsock.family, lsock.type, lsock.proto)
        assert sock.gettimeout() == 0.0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        tsock = str_.get_extra_info('socket')
        assert isinstance(tsock, asyncio.trsock.TransportSocket)
        assert tsock.fileno() == sock.fileno() == str_._sock_fd
        ctr.write(b'ping')
        while bytes(servers[0].data) != b'ping':
            await asyncio.sleep(0.001)
        await shut(srv, ctr, str_)
        await servers[0].lost
        assert sock.fileno() == -1
        assert str_.get_extra_info('peername') == peer

    h.run(main())
    assert h.errors == []


def test_failing_protocol_factory_leaves_no_fd_open(h):
    loop = h.loop

    def fds():
        return len(os.listdir('/proc/self/fd'))

    async def main():
        calls = []

        def factory():
            calls.append(1)
            raise ZeroDivisionError

        srv = await loop.create_server(factory, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        before = fds()
        clients = [socket.create_connection(('127.0.0.1', port)) for _ in range(5)]
        while len(calls) < 5:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        gc.collect()
        # The accepted sockets are closed: each client sees EOF.
        for c in clients:
            c.settimeout(5)
            assert c.recv(1) == b''
            c.close()
        assert fds() == before
        srv.close()
        await srv.wait_closed()

    # asyncio frees each accepted socket unclosed: one ResourceWarning per connection.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        h.run(main())
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)
                and str(w.message).startswith('unclosed <socket.socket fd=')]
    assert len(unclosed) == 5


def test_transports_are_registered_on_the_loop(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        fd = ctr.get_extra_info('socket').fileno()
        assert loop._transports[fd] is ctr
        with pytest.raises(RuntimeError, match='is used by transport'):
            loop._ensure_fd_no_transport(fd)
        await shut(srv, ctr, str_)
        await cp.lost

    h.run(main())


# -- write ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_write_types_and_errors(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path)
        for bad in ('text', 1, None, [b'x']):
            with pytest.raises(TypeError) as e:
                ctr.write(bad)
            assert str(e.value) == ("data argument must be a bytes-like object, not "
                                    f"{type(bad).__name__!r}")
        ctr.write(b'')
        ctr.write(b'ab')
        ctr.write(bytearray(b'cd'))
        ctr.write(memoryview(b'xefx')[1:3])
        ctr.write(memoryview(bytearray(b'gh')))
        ctr.writelines([b'ij', bytearray(b'kl'), memoryview(b'mn')])
        ctr.writelines([])
        while len(sp.data) < 14:
            await asyncio.sleep(0.001)
        assert bytes(sp.data) == b'abcdefghijklmn'
        ctr.write_eof()
        ctr.write_eof()  # twice: no-op
        with pytest.raises(RuntimeError) as e:
            ctr.write(b'x')
        assert str(e.value) == 'Cannot call write() after write_eof()'
        with pytest.raises(RuntimeError) as e:
            ctr.writelines([b'x'])
        assert str(e.value) == ('Cannot call writelines() after write_eof()' if PY312 else
                                'Cannot call write() after write_eof()')
        await sp.eof
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


def test_write_after_connection_lost_is_dropped_and_logged(h, tmp_path, caplog):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        ctr.abort()
        await cp.lost
        with caplog.at_level('WARNING', logger='asyncio'):
            for _ in range(7):
                ctr.write(b'x')
        assert ctr._conn_lost == 8
        assert [r.getMessage() for r in caplog.records] == ['socket.send() raised exception.'] * 3
        await shut(srv, str_)

    h.run(main())
    assert h.errors == []


def test_mutating_a_written_bytearray_does_not_change_what_is_sent(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path)
        str_.pause_reading()
        big = bytearray(b'a' * (4 << 20))
        ctr.write(big)        # the socket takes part of it; the rest is buffered
        assert ctr.get_write_buffer_size() > 0
        if PY312:
            # asyncio 3.12+ keeps a view of the bytearray: its later content is sent
            ctr.abort()
            await shut(srv, str_)
            return None
        big[-1:] = b'Z'
        str_.resume_reading()
        while len(sp.data) < (4 << 20):
            await asyncio.sleep(0.001)
        await shut(srv, ctr, str_)
        return bytes(sp.data[-1:])

    assert h.run(main()) in (None, b'a')


# -- flow control --------------------------------------------------------------------------------

def fill_until_paused(tr, chunk=b'x' * 65536, limit=10000):
    for _ in range(limit):
        tr.write(chunk)
        if tr.get_write_buffer_size():
            return
    raise AssertionError('socket never filled')


@pytest.mark.parametrize('family', FAMILIES)
def test_pause_and_resume_writing_at_the_marks(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path)
        assert ctr.get_write_buffer_limits() == (16384, 65536)
        str_.pause_reading()
        ctr.set_write_buffer_limits(high=100000, low=1000)
        assert ctr.get_write_buffer_limits() == (1000, 100000)
        fill_until_paused(ctr, b'y' * 1000)
        sizes = []
        while ctr.get_write_buffer_size() <= 100000:
            assert cp.events == ['made']
            ctr.write(b'z' * 1000)
            sizes.append(ctr.get_write_buffer_size())
        assert cp.events == ['made', ('pause', sizes[-1])]
        ctr.write(b'w' * 10)  # already paused: no second call
        assert cp.events == ['made', ('pause', sizes[-1])]
        str_.resume_reading()
        await asyncio.sleep(0)
        while ctr.get_write_buffer_size():
            await asyncio.sleep(0.001)
        # resume_writing once, when the buffer drained to the low-water mark or below
        assert len(cp.events) == 3 and cp.events[2][0] == 'resume'
        assert cp.events[2][1] <= 1000
        await shut(srv, ctr, str_)
        await cp.lost

    h.run(main())
    assert h.errors == []


def test_watermark_zero_pauses_on_any_buffered_byte(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path)
        ctr.set_write_buffer_limits(0)
        assert ctr.get_write_buffer_limits() == (0, 0)
        ctr.write(b'fits')       # sent at once: nothing buffered, no pause
        assert cp.events == ['made']
        str_.pause_reading()
        fill_until_paused(ctr)
        assert cp.events == ['made', ('pause', ctr.get_write_buffer_size())]
        str_.resume_reading()
        while len(cp.events) < 3:
            await asyncio.sleep(0.001)
        assert cp.events[2] == ('resume', 0)
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


def test_huge_watermark_never_pauses_and_limits_keep_their_values(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path)
        ctr.set_write_buffer_limits(high=2 ** 100)
        assert ctr.get_write_buffer_limits() == (2 ** 98, 2 ** 100)
        ctr.set_write_buffer_limits(high=1e30, low=0.5)
        assert ctr.get_write_buffer_limits() == (0.5, 1e30)
        str_.pause_reading()
        for _ in range(100):
            ctr.write(b'q' * 65536)
        assert ctr.get_write_buffer_size() > 65536
        assert cp.events == ['made']
        # Lowering the high-water mark under the buffered size pauses at once.
        ctr.set_write_buffer_limits(high=10)
        assert cp.events == ['made', ('pause', ctr.get_write_buffer_size())]
        with pytest.raises(ValueError) as e:
            ctr.set_write_buffer_limits(high=1, low=2)
        assert str(e.value) == 'high (1) must be >= low (2) must be >= 0'
        with pytest.raises(ValueError):
            ctr.set_write_buffer_limits(high=-1)
        assert ctr.get_write_buffer_limits() == (2, 10)
        ctr.abort()
        await cp.lost
        await shut(srv, str_)

    h.run(main())
    assert h.errors == []


def test_writing_inside_resume_writing_and_raising_limits_inside_pause_writing(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path)
        ctr.set_write_buffer_limits(high=0)
        str_.pause_reading()
        calls = []

        def on_pause():
            # raising the marks inside pause_writing: no resume_writing from that
            ctr.set_write_buffer_limits(high=10 ** 9)
            calls.append('pause')

        def on_resume():
            calls.append('resume')
            if calls.count('resume') == 1:
                ctr.write(b'after-resume')

        cp.on_pause = on_pause
        cp.on_resume = on_resume
        fill_until_paused(ctr)
        assert calls == ['pause']
        assert ctr.get_write_buffer_limits() == (250000000, 10 ** 9)
        expected = ctr.get_write_buffer_size()
        str_.resume_reading()
        while ctr.get_write_buffer_size():
            await asyncio.sleep(0.001)
        while not sp.data.endswith(b'after-resume'):
            await asyncio.sleep(0.001)
        assert calls == ['pause', 'resume']
        assert expected > 0
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


@pytest.mark.expect_exception_handler
def test_pause_writing_failure_goes_to_the_exception_handler(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path)
        exc = ZeroDivisionError('boom')

        def on_pause():
            raise exc

        cp.on_pause = on_pause
        str_.pause_reading()
        fill_until_paused(ctr, b'x' * (1 << 20))
        assert len(h.errors) == 1
        ctx = h.errors[0]
        assert ctx['message'] == 'protocol.pause_writing() failed'
        assert ctx['exception'] is exc
        assert ctx['transport'] is ctr
        assert ctx['protocol'] is cp
        ctr.abort()
        await shut(srv, str_)

    h.run(main())


@pytest.mark.parametrize('family', FAMILIES)
def test_pause_reading_inside_data_received_stops_data_at_once(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path)
        seen = []

        def on_data(data):
            seen.append(len(data))
            str_.pause_reading()
            assert not str_.is_reading()

        sp.on_data = on_data
        for _ in range(50):
            ctr.write(b'p' * 1000)
            await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0.002)
        assert len(seen) == 1       # nothing after pause_reading returned
        sp.on_data = None
        str_.pause_reading()        # paused twice: no-op
        str_.resume_reading()
        assert str_.is_reading()
        str_.resume_reading()       # resumed twice: no-op
        while len(sp.data) < 50000:
            await asyncio.sleep(0.001)
        assert bytes(sp.data) == b'p' * 50000
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


def test_is_reading_after_close_and_resume_after_close(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        ctr.pause_reading()
        ctr.close()
        assert not ctr.is_reading()
        ctr.resume_reading()
        assert not ctr.is_reading()
        await cp.lost
        await shut(srv, str_)
        return cp.events

    assert h.run(main()) == ['made', ('lost', None)]
    assert h.errors == []


# -- EOF, close, abort, errors -------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_half_close_both_ways(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path)
        sp.keep_open = True
        ctr.write(b'request')
        ctr.write_eof()
        await sp.eof
        assert bytes(sp.data) == b'request'
        str_.write(b'reply after eof')
        str_.write_eof()
        await cp.eof
        assert bytes(cp.data) == b'reply after eof'
        await cp.lost            # eof_received returned False: the client closes
        assert str_.is_reading() and not str_.is_closing()
        str_.close()             # the server stopped reading at EOF: it closes itself
        await sp.lost
        await shut(srv)
        return cp.events, sp.events

    c, s = h.run(main())
    assert c == ['made', 'data', 'eof', ('lost', None)]
    assert s == ['made', 'data', 'eof', ('lost', None)]
    assert h.errors == []


def test_write_eof_with_buffered_data_sends_everything_first(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path)
        sp.keep_open = True
        str_.pause_reading()
        payload = os.urandom(3 << 20)
        ctr.write(payload)
        assert ctr.get_write_buffer_size() > 0
        ctr.write_eof()
        assert ctr.get_write_buffer_size() > 0
        str_.resume_reading()
        await sp.eof
        assert checksum(sp.data) == checksum(payload)
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


def test_close_flushes_the_buffer_then_calls_connection_lost(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        ctr.set_write_buffer_limits(high=1 << 30)
        str_.pause_reading()
        payload = os.urandom(5 << 20)
        ctr.write(payload)
        ctr.close()
        ctr.close()
        for _ in range(5):
            await asyncio.sleep(0)
        assert cp.events == ['made']   # not before the buffer is sent
        str_.resume_reading()
        await cp.lost
        await sp.eof
        assert checksum(sp.data) == checksum(payload)
        await shut(srv, str_)
        return cp.events

    assert h.run(main()) == ['made', ('lost', None)]
    assert h.errors == []


def test_abort_drops_the_buffer(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        ctr.set_write_buffer_limits(high=1 << 30)
        str_.pause_reading()
        ctr.write(b'a' * (8 << 20))
        assert ctr.get_write_buffer_size() > 0
        ctr.abort()
        assert ctr.get_write_buffer_size() == 0
        assert ctr.is_closing()
        await cp.lost
        ctr.abort()
        ctr.close()
        str_.resume_reading()
        await sp.lost
        assert len(sp.data) < 8 << 20
        await shut(srv)
        return cp.events

    assert h.run(main()) == ['made', ('lost', None)]
    assert h.errors == []


def test_reset_in_the_middle_of_a_buffered_write(h, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        str_.pause_reading()
        ctr.write(b'r' * (8 << 20))
        assert ctr.get_write_buffer_size() > 0
        # the peer resets the connection (RST) while data is still buffered
        sock = str_.get_extra_info('socket')
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        str_.abort()
        exc = await cp.lost
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
        assert ctr.get_write_buffer_size() == 0
        assert ctr.is_closing()
        await shut(srv)
        return cp.events

    events = h.run(main())
    assert events[0] == 'made' and events[-1][0] == 'lost'
    assert events[-1][1] in ('ConnectionResetError', 'BrokenPipeError')
    assert h.errors == []   # OSErrors are not reported to the exception handler


@pytest.mark.expect_exception_handler
def test_error_in_data_received_is_fatal_with_asyncios_context(h, tmp_path):
    loop = h.loop
    exc = ValueError('bad data')

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)

        def on_data(data):
            raise exc

        sp.on_data = on_data
        ctr.write(b'x')
        got = await sp.lost
        assert got is exc
        await cp.lost
        await shut(srv)
        return sp, str_

    sp, str_ = h.run(main())
    assert len(h.errors) == 1
    ctx = h.errors[0]
    assert ctx['message'] == 'Fatal error: protocol.data_received() call failed.'
    assert ctx['exception'] is exc
    assert ctx['transport'] is str_
    assert ctx['protocol'] is sp
    assert sp.events == ['made', 'data', ('lost', 'ValueError')]


@pytest.mark.expect_exception_handler
def test_error_in_eof_received_is_fatal(h, tmp_path):
    loop = h.loop
    exc = KeyError('eof')

    class P(Rec):
        def eof_received(self):
            raise exc

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path,
                                                 server_factory=lambda: P(loop))
        ctr.write_eof()
        assert await sp.lost is exc
        await shut(srv, ctr)

    h.run(main())
    assert [c['message'] for c in h.errors] == ['Fatal error: protocol.eof_received() call failed.']


def test_unclosed_transport_warns(flavor, tmp_path):
    loop = flavor.new_loop()
    try:
        async def main():
            ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
            ctr.pause_reading()   # the loop holds no reference to it any more
            fd = ctr.get_extra_info('socket').fileno()
            held.extend((ctr, fd, str_, srv))
            cp.transport = None

        held = []
        loop.run_until_complete(main())
        ctr, fd, str_, srv = held
        del held[:]
        gc.collect()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            del ctr
            gc.collect()
        msgs = [str(x.message) for x in w if issubclass(x.category, ResourceWarning)
                and f'fd={fd} ' in str(x.message)]
        assert msgs == [f'unclosed transport <_SelectorSocketTransport fd={fd} read=idle '
                        'write=<idle, bufsize=0>>'], msgs
        with pytest.raises(OSError):   # __del__ closed the socket
            os.fstat(fd)
        loop.run_until_complete(shut(srv, str_))
    finally:
        loop.close()


# -- BufferedProtocol, sendfile, streams ----------------------------------------------------------

class BufEcho(asyncio.BufferedProtocol):
    def __init__(self, size):
        self.buf = bytearray(size)
        self.transport = None
        self.calls = []

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.calls.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        pass


@pytest.mark.parametrize('family', FAMILIES)
def test_buffered_protocol_echo(h, family, tmp_path):
    loop = h.loop

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path,
                                                 server_factory=lambda: BufEcho(777))
        payload = os.urandom(300000)
        ctr.write(payload)
        while len(cp.data) < len(payload):
            await asyncio.sleep(0.001)
        assert checksum(cp.data) == checksum(payload)
        assert set(sp.calls) == {-1}
        # switching protocols on the fly (as start_tls does): a plain Protocol now
        new = Rec(loop)
        new.transport = str_
        str_.set_protocol(new)
        assert str_.get_protocol() is new
        ctr.write(b'to the new protocol')
        while len(new.data) < 19:
            await asyncio.sleep(0.001)
        assert bytes(new.data) == b'to the new protocol'
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


@pytest.mark.expect_exception_handler
def test_empty_get_buffer_is_fatal(h, tmp_path):
    loop = h.loop

    class Empty(BufEcho):
        def get_buffer(self, sizehint):
            return bytearray()

        def connection_lost(self, exc):
            self.lost = exc

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'unix', tmp_path,
                                                 server_factory=lambda: Empty(1))
        ctr.write(b'x')
        await cp.lost
        await shut(srv)
        return sp

    sp = h.run(main())
    assert isinstance(sp.lost, RuntimeError)
    assert str(sp.lost) == 'get_buffer() returned an empty buffer'
    assert [c['message'] for c in h.errors] == ['Fatal error: protocol.get_buffer() call failed.']


def test_sendfile_over_the_transport(h, tmp_path):
    loop = h.loop
    path = tmp_path / 'data.bin'
    payload = os.urandom(1 << 20)
    path.write_bytes(payload)

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, 'tcp', tmp_path)
        ctr.write(b'head:')
        with open(path, 'rb') as f:
            sent = await loop.sendfile(ctr, f)
        assert sent == len(payload)
        ctr.write(b':tail')
        ctr.write_eof()
        await sp.eof
        assert checksum(sp.data) == checksum(b'head:' + payload + b':tail')
        assert ctr.is_reading()
        await shut(srv, ctr, str_)

    h.run(main())
    assert h.errors == []


def test_streams_over_unix_and_tcp(h, tmp_path):
    loop = h.loop

    async def handle(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port)
        payload = os.urandom(2 << 20)
        w.write(payload)
        w.write_eof()
        got = await r.read()
        assert checksum(got) == checksum(payload)
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    h.run(main())
    assert h.errors == []


# -- volume ---------------------------------------------------------------------------------------

class Echo(asyncio.Protocol):
    # Stops reading while its own write buffer is above the high-water mark (asyncio 3.12+'s
    # get_write_buffer_size is linear in the number of buffered chunks: an unbounded buffer
    # makes a long echo quadratic there).
    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.write_eof()
        return True


@pytest.mark.timeout(240)
@pytest.mark.parametrize('family', FAMILIES)
def test_100_mib_echo_with_checksum(h, family, tmp_path):
    loop = h.loop
    total = 100 << 20

    class Sink(Rec):
        def __init__(self, loop):
            super().__init__(loop)
            self.digest = hashlib.sha256()
            self.n = 0

        def data_received(self, data):
            self.digest.update(data)
            self.n += len(data)

    async def main():
        ctr, cp, str_, sp, srv = await connected(loop, family, tmp_path,
                                                 client_factory=lambda: Sink(loop),
                                                 server_factory=Echo)
        sent = hashlib.sha256()
        block = bytearray(os.urandom(1 << 20))
        resumed = asyncio.Event()
        cp.resume_writing = resumed.set
        cp.pause_writing = resumed.clear
        resumed.set()
        for i in range(total // len(block)):
            block[:8] = i.to_bytes(8, 'little')
            data = bytes(block)
            sent.update(data)
            ctr.write(data)
            await resumed.wait()
        ctr.write_eof()
        await cp.eof
        assert cp.n == total
        assert cp.digest.hexdigest() == sent.hexdigest()
        await shut(srv, ctr, str_)

    h.run(main(), timeout=220)
    assert h.errors == []


CLIENT = textwrap.dedent('''
    import socket, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    socks = []
    for i in range(n):
        s = socket.create_connection((host, port))
        socks.append(s)
    for i, s in enumerate(socks):
        s.sendall(b'%08d' % i)
    bad = 0
    for i, s in enumerate(socks):
        got = b''
        while len(got) < 8:
            part = s.recv(8 - len(got))
            if not part:
                break
            got += part
        bad += got != b'%08d' % i
    for s in socks:
        s.close()
    print('bad', bad)
''')


@pytest.mark.timeout(300)
def test_10000_concurrent_connections(h):
    loop = h.loop
    n = 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 500
    if soft < want:
        assert hard == resource.RLIM_INFINITY or hard >= want, (soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    made = []
    lost = []

    class Srv(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            made.append(transport)

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        srv = await loop.create_server(Srv, '127.0.0.1', 0, backlog=4096)
        port = srv.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c', CLIENT, '127.0.0.1', str(port), str(n),
            stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert out.split() == [b'bad', b'0']
        while len(lost) < n:
            await asyncio.sleep(0.01)
        assert len(made) == n
        assert len({id(t) for t in made}) == n
        assert all(e is None for e in lost)
        assert all(t.is_closing() for t in made)
        srv.close()
        await srv.wait_closed()

    try:
        h.run(main(), timeout=280)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert h.errors == []


# -- the bytes objects handed to data_received ----------------------------------------------------

class Collect(asyncio.Protocol):
    """Acknowledges every message; what it does with `data` is the test's `on_data`."""

    def __init__(self, on_data):
        self.on_data = on_data
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.on_data(data)
        self.transport.write(b'.')


async def one_message_per_read(loop, family, tmp_path, on_data, messages):
    """Sends `messages` one at a time, each after the previous one's acknowledgement, so every
    read gets exactly one message."""
    ctr, cp, st, sp, srv = await connected(
        loop, family, tmp_path, server_factory=lambda: Collect(on_data))
    for m in messages:
        cp.data.clear()
        ctr.write(m)
        while not cp.data:
            await asyncio.sleep(0.001)
    await shut(srv, ctr, st)


def messages_of(sizes):
    return [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]


# sizes going up and down, so that a bytes object made for one message could be reused for the next
SIZES = [1000, 999, 600, 1000, 501, 2, 3, 4000, 2001, 3999, 1000, 4000, 4000, 100]


@pytest.mark.parametrize('family', FAMILIES)
def test_data_received_bytes_dropped_by_the_protocol_have_fresh_contents_length_and_hash(
        h, family, tmp_path):
    msgs = messages_of(SIZES)
    seen = []

    def on_data(data):
        assert type(data) is bytes
        fresh = bytes(bytearray(data))
        # the hash is computed on the object itself (and cached on it), then the object dropped
        seen.append((len(data), hash(data) == hash(fresh), data == fresh, fresh,
                     data.decode('latin-1') == fresh.decode('latin-1')))

    h.run(one_message_per_read(h.loop, family, tmp_path, on_data, msgs))
    assert [s[0] for s in seen] == SIZES
    assert all(s[1] and s[2] and s[4] for s in seen)
    assert [s[3] for s in seen] == msgs
    assert h.errors == []


@pytest.mark.parametrize('family', FAMILIES)
def test_data_received_bytes_kept_by_the_protocol_never_change(h, family, tmp_path):
    msgs = messages_of(SIZES)
    kept, hashes, keys = [], [], {}

    def on_data(data):
        n = len(kept)
        if n % 3 == 0:
            kept.append(data)                   # the object itself
        elif n % 3 == 1:
            kept.append(memoryview(data))       # a view of it
        else:
            keys[data] = n                      # as a dict key (hash cached on it)
            kept.append(data)
        hashes.append(hash(data))

    h.run(one_message_per_read(h.loop, family, tmp_path, on_data, msgs))
    assert [bytes(k) for k in kept] == msgs
    assert [hash(bytes(k)) for k in kept] == hashes
    assert all(keys[m] == i for i, m in enumerate(msgs) if i % 3 == 2)
    assert h.errors == []


@pytest.mark.parametrize('family', FAMILIES)
def test_data_received_bytes_written_and_buffered_are_sent_unchanged(h, family, tmp_path):
    # the server echoes every message, but the client does not read: once the sockets' buffers
    # are full the echoes wait in the server transport's buffer (by reference) while later
    # messages are read
    async def main():
        loop = h.loop
        ctr, cp, st, sp, srv = await connected(loop, family, tmp_path)
        sp.on_data = st.write
        ctr.pause_reading()
        sent = []
        while st.get_write_buffer_size() == 0:
            assert len(sent) < 100_000, 'the echoes never had to wait'
            batch = messages_of([1000] * 100)
            sent += batch
            ctr.write(b''.join(batch))
            while len(sp.data) < len(sent) * 1000:
                await asyncio.sleep(0.001)
        ctr.resume_reading()
        while len(cp.data) < len(sent) * 1000:
            await asyncio.sleep(0.001)
        assert bytes(cp.data) == b''.join(sent)
        await shut(srv, ctr, st)

    h.run(main())
    assert h.errors == []
