"""The per-message paths of socket transports (ferroloop reads and writes them in Rust, asyncio in
Python): every kind of write argument, the fall-backs to asyncio's own write, errors in
data_received, EOF, writes after the connection was lost, switching protocols mid-stream, and a
reset peer. Each test runs on asyncio and ferroloop and expects the same outcome."""

import asyncio
import logging
import socket
import struct

import pytest

from netutil import Harness


class Recorder(asyncio.Protocol):
    def __init__(self, loop, *, fail=None, keep_open=None):
        self.calls = []
        self.data = bytearray()
        self.fail = fail
        self.keep_open = keep_open
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append('made')

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data
        if self.fail is not None:
            raise self.fail

    def eof_received(self):
        self.calls.append('eof')
        return self.keep_open

    def connection_lost(self, exc):
        self.calls.append(('lost', type(exc).__name__ if exc else None))
        self.lost.set_result(exc)


def setup(loop):
    """Exception-handler capture and fd accounting, then a connected pair of Unix stream sockets
    (the test hands `a` to a transport, which closes it, and closes `b` itself)."""
    h = Harness(loop)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return h, a, b


async def connect(loop, sock, factory):
    tr, proto = await loop.create_connection(factory, sock=sock)
    return tr, proto


async def recv_exactly(loop, sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        assert chunk, (len(out), n)
        out += chunk
    return bytes(out)


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview', 'memoryview-slice'])
def test_write_kinds(loop, kind):
    h, a, b = setup(loop)
    payload = bytes(range(256)) * 4
    data = {'bytes': payload, 'bytearray': bytearray(payload), 'memoryview': memoryview(payload),
            'memoryview-slice': memoryview(b'xx' + payload + b'yy')[2:-2]}[kind]

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop))
        tr.write(data)
        assert tr.get_write_buffer_size() == 0   # taken by the socket at once
        assert await recv_exactly(loop, b, len(payload)) == payload
        tr.close()
        await proto.lost
        return proto.calls

    assert loop.run_until_complete(main()) == ['made', ('lost', None)]
    b.close()
    h.finish()


def test_write_bad_arguments_and_order(loop):
    h, a, b = setup(loop)

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop))
        out = []
        for bad in ('text', 42, None, [b'x']):
            with pytest.raises(TypeError) as e:
                tr.write(bad)
            out.append(str(e.value))
        tr.write(b'')                    # nothing, no error
        tr.write(b'one')
        tr.write(bytearray(b'two'))
        tr.writelines([b'three', memoryview(b'four')])
        assert await recv_exactly(loop, b, 15) == b'onetwothreefour'
        tr.write_eof()
        with pytest.raises(RuntimeError, match='Cannot call write\\(\\) after write_eof\\(\\)'):
            tr.write(b'late')
        assert await loop.sock_recv(b, 10) == b''
        tr.close()
        await proto.lost
        return out

    assert loop.run_until_complete(main()) == [
        "data argument must be a bytes-like object, not 'str'",
        "data argument must be a bytes-like object, not 'int'",
        "data argument must be a bytes-like object, not 'NoneType'",
        "data argument must be a bytes-like object, not 'list'",
    ]
    b.close()
    h.finish()


@pytest.mark.expect_exception_handler
def test_non_contiguous_memoryview_is_a_fatal_write_error(loop):
    h, a, b = setup(loop)

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop))
        tr.write(memoryview(b'abcdef')[::2])
        exc = await proto.lost
        return type(exc), proto.calls

    exc_type, calls = loop.run_until_complete(main())
    assert exc_type is BufferError
    assert calls == ['made', ('lost', 'BufferError')]
    assert [e['message'] for e in h.errors] == ['Fatal write error on socket transport']
    assert isinstance(h.errors[0]['exception'], BufferError)
    b.close()
    h.finish(check_errors=False)


def test_large_writes_buffer_in_order(loop):
    """Writes the socket cannot take at once: the rest is buffered, later writes queue behind it,
    flow control is called, and every byte arrives once and in order."""
    h, a, b = setup(loop)
    chunks = [bytes([i]) * (1 << 20) for i in range(8)]
    events = []

    class Flow(Recorder):
        def pause_writing(self):
            events.append('pause')

        def resume_writing(self):
            events.append('resume')

    async def main():
        tr, proto = await connect(loop, a, lambda: Flow(loop))
        for i, c in enumerate(chunks):
            tr.write(c if i % 3 == 0 else bytearray(c) if i % 3 == 1 else memoryview(c))
        assert tr.get_write_buffer_size() > 0
        got = await recv_exactly(loop, b, sum(map(len, chunks)))
        tr.close()
        await proto.lost
        return got

    assert loop.run_until_complete(main()) == b''.join(chunks)
    assert events == ['pause', 'resume']
    b.close()
    h.finish()


@pytest.mark.expect_exception_handler
def test_data_received_error_reaches_handler_and_closes(loop):
    h, a, b = setup(loop)
    boom = ValueError('boom')

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop, fail=boom))
        await loop.sock_sendall(b, b'hello')
        exc = await proto.lost
        return tr, proto, exc

    tr, proto, exc = loop.run_until_complete(main())
    assert exc is boom
    assert proto.calls == ['made', ('lost', 'ValueError')]
    assert bytes(proto.data) == b'hello'
    assert len(h.errors) == 1
    ctx = h.errors[0]
    assert ctx['message'] == 'Fatal error: protocol.data_received() call failed.'
    assert ctx['exception'] is boom and ctx['transport'] is tr and ctx['protocol'] is proto
    assert boom.__traceback__ is not None
    b.close()
    h.finish(check_errors=False)


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_data_received_base_exceptions_propagate(loop, pair, exc_type):
    a, b = pair
    made = []

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop, fail=exc_type()))
        made.append((tr, proto))
        await loop.sock_sendall(b, b'x')
        await asyncio.sleep(10)

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    # the BaseException left the transport open: close it as its owner would
    tr, proto = made[0]
    assert not tr.is_closing()
    tr.close()
    loop.run_until_complete(proto.lost)


@pytest.mark.parametrize('keep_open', [None, True])
def test_eof(loop, keep_open):
    h, a, b = setup(loop)

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop, keep_open=keep_open))
        await loop.sock_sendall(b, b'last words')
        b.shutdown(socket.SHUT_WR)
        if keep_open:
            while 'eof' not in proto.calls:
                await asyncio.sleep(0.01)
            assert not tr.is_closing()
            tr.write(b'reply after eof')
            assert await recv_exactly(loop, b, 15) == b'reply after eof'
            tr.close()
        await proto.lost
        return bytes(proto.data), proto.calls

    data, calls = loop.run_until_complete(main())
    assert data == b'last words'
    assert calls == ['made', 'eof', ('lost', None)]
    b.close()
    h.finish()


def test_writes_after_connection_lost_warn(loop, caplog):
    """asyncio counts writes after the connection was lost and logs a warning from the fifth on."""
    h, a, b = setup(loop)

    async def main():
        tr, proto = await connect(loop, a, lambda: Recorder(loop))
        tr.abort()
        await proto.lost
        with caplog.at_level(logging.WARNING, logger='asyncio'):
            for _ in range(7):
                tr.write(b'x')
        return [r.getMessage() for r in caplog.records if r.name == 'asyncio']

    assert loop.run_until_complete(main()) == ['socket.send() raised exception.'] * 3
    b.close()
    h.finish()


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop):
        self.buf = bytearray(7)   # small on purpose: many get_buffer/buffer_updated rounds
        self.data = bytearray()
        self.calls = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append('made')

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.calls.append('eof')

    def connection_lost(self, exc):
        self.calls.append('lost')
        self.lost.set_result(exc)


def test_set_protocol_switches_between_plain_and_buffered(loop):
    h, a, b = setup(loop)

    async def main():
        tr, first = await connect(loop, a, lambda: Recorder(loop))
        await loop.sock_sendall(b, b'to the plain one')
        while len(first.data) < 16:
            await asyncio.sleep(0.01)
        second = Buffered(loop)
        tr.set_protocol(second)
        await loop.sock_sendall(b, b'to the buffered one')
        while len(second.data) < 19:
            await asyncio.sleep(0.01)
        third = Recorder(loop)
        tr.set_protocol(third)
        await loop.sock_sendall(b, b'plain again')
        b.shutdown(socket.SHUT_WR)
        await third.lost
        return bytes(first.data), bytes(second.data), bytes(third.data), third.calls

    assert loop.run_until_complete(main()) == (
        b'to the plain one', b'to the buffered one', b'plain again', ['eof', ('lost', None)])
    b.close()
    h.finish()


async def tcp_pair(loop):
    """A connected pair of non-blocking TCP sockets over loopback: (client, accepted)."""
    lsock = socket.create_server(('127.0.0.1', 0))
    lsock.setblocking(False)
    with lsock:
        cli = socket.socket()
        cli.setblocking(False)
        await loop.sock_connect(cli, lsock.getsockname())
        srv, _ = await loop.sock_accept(lsock)
    return cli, srv


def test_peer_reset(loop):
    """A peer that resets the connection: the read fails with ConnectionResetError, which
    reaches connection_lost (not the exception handler, as it is an OSError)."""
    h = Harness(loop)

    async def main():
        cli, srv = await tcp_pair(loop)
        with cli:
            tr, proto = await connect(loop, srv, lambda: Recorder(loop))
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            cli.close()   # RST
            exc = await proto.lost
        return type(exc), getattr(exc, 'errno', None), proto.calls

    exc_type, errno_, calls = loop.run_until_complete(main())
    assert exc_type is ConnectionResetError and errno_ == 104
    assert calls == ['made', ('lost', 'ConnectionResetError')]
    h.finish()


def test_write_to_reset_peer(loop):
    h = Harness(loop)

    async def main():
        cli, srv = await tcp_pair(loop)
        tr, proto = await connect(loop, srv, lambda: Recorder(loop))
        tr.pause_reading()   # only the write can notice the reset
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        cli.close()
        await asyncio.sleep(0.05)
        tr.write(b'into the void')
        exc = await proto.lost
        return type(exc), proto.calls

    exc_type, calls = loop.run_until_complete(main())
    assert exc_type in (ConnectionResetError, BrokenPipeError)
    assert calls == ['made', ('lost', exc_type.__name__)]
    h.finish()


class BadBuffered(asyncio.BufferedProtocol):
    def __init__(self, loop, get_buffer):
        self._get_buffer = get_buffer
        self.lost = loop.create_future()

    def get_buffer(self, sizehint):
        assert sizehint == -1
        return self._get_buffer()

    def buffer_updated(self, nbytes):
        raise ValueError(f'buffer_updated({nbytes})')

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def _raise_key_error():
    raise KeyError('no buffer')


@pytest.mark.parametrize('get_buffer, message, exc_type', [
    (_raise_key_error, 'Fatal error: protocol.get_buffer() call failed.', KeyError),
    (lambda: bytearray(), 'Fatal error: protocol.get_buffer() call failed.', RuntimeError),
    (lambda: None, 'Fatal error: protocol.get_buffer() call failed.', TypeError),
    (lambda: b'read-only', 'Fatal read error on socket transport', TypeError),
    (lambda: bytearray(10), 'Fatal error: protocol.buffer_updated() call failed.', ValueError),
], ids=['raises', 'empty', 'none', 'read-only', 'buffer-updated-raises'])
@pytest.mark.expect_exception_handler
def test_buffered_protocol_errors(loop, get_buffer, message, exc_type):
    h, a, b = setup(loop)

    async def main():
        tr, proto = await connect(loop, a, lambda: BadBuffered(loop, get_buffer))
        await loop.sock_sendall(b, b'data')
        return await proto.lost

    exc = loop.run_until_complete(main())
    assert type(exc) is exc_type
    assert [e['message'] for e in h.errors] == [message]
    assert h.errors[0]['exception'] is exc
    if exc_type is ValueError:
        assert str(exc) == 'buffer_updated(4)'
    b.close()
    h.finish(check_errors=False)
