"""asyncio streams (``start_server`` / ``open_connection``) over the socket stream transport.

ferroloop feeds an ``asyncio.StreamReaderProtocol``'s reader without running its Python
``data_received``/``feed_data`` when those are asyncio's own; these tests pin that this is
invisible: the classes users get, the buffer, the waiter, read flow control, errors, and every
way of replacing those methods (subclass, class patch, instance attribute) on both loops.
"""

import asyncio
import hashlib
import socket

import pytest

pytestmark = pytest.mark.timeout(60)


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


async def pair(limit=2 ** 16, **kw):
    """(server reader, server writer, client reader, client writer, server)."""
    accepted = asyncio.get_running_loop().create_future()

    def cb(r, w):
        accepted.set_result((r, w))

    srv = await asyncio.start_server(cb, '127.0.0.1', 0, limit=limit, **kw)
    port = srv.sockets[0].getsockname()[1]
    cr, cw = await asyncio.open_connection('127.0.0.1', port, limit=limit)
    sr, sw = await accepted
    return sr, sw, cr, cw, srv


async def shut(srv, *writers):
    for w in writers:
        w.close()
    for w in writers:
        try:
            await w.wait_closed()
        except (ConnectionError, BufferError, AssertionError):
            pass
    srv.close()
    await srv.wait_closed()


async def until(cond, what):
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f'timed out waiting for {what}')


def test_echo_keeps_asyncios_classes_order_and_bytes(h):
    payload = bytes(range(256)) * 4096 * 3   # 3 MiB

    async def main():
        sr, sw, cr, cw, srv = await pair()
        assert type(sr) is asyncio.StreamReader and type(sw) is asyncio.StreamWriter
        assert type(sw._protocol) is asyncio.StreamReaderProtocol

        async def echo():
            while data := await sr.read(65536):
                assert isinstance(sr._buffer, bytearray)
                sw.write(data)
                await sw.drain()
            sw.write_eof()

        t = asyncio.ensure_future(echo())
        cw.write(payload)
        cw.write_eof()
        got = await cr.read()
        await t
        await shut(srv, sw, cw)
        return got

    got = h.run(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert h.errors == []


def test_readexactly_readline_and_buffer_between_reads(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        cw.write(b'line one\nline two\n12345')
        assert await sr.readline() == b'line one\n'
        assert await sr.readuntil(b'\n') == b'line two\n'
        assert await sr.readexactly(3) == b'123'
        await until(lambda: bytes(sr._buffer) == b'45', 'the rest in the buffer')
        cw.write(b'678')
        assert await sr.readexactly(5) == b'45678'
        assert sr._waiter is None and not sr._buffer
        await shut(srv, sw, cw)

    h.run(main())


def test_read_flow_control_pauses_above_twice_the_limit_and_resumes(h):
    async def main():
        sr, sw, cr, cw, srv = await pair(limit=1000)
        cw.write(b'x' * 20000)
        await until(lambda: sr._paused, 'the reader to pause its transport')
        assert sw.transport.is_reading() is False
        assert len(sr._buffer) > 2000
        got = b''
        while len(got) < 20000:
            got += await sr.read(500)
        assert got == b'x' * 20000
        assert sr._paused is False
        assert sw.transport.is_reading() is True
        await shut(srv, sw, cw)

    h.run(main())


def test_a_transport_that_cannot_pause_is_forgotten(h):
    class NoPause:
        def __init__(self):
            self.calls = 0

        def pause_reading(self):
            self.calls += 1
            raise NotImplementedError

    class Pauses:
        def __init__(self):
            self.calls = 0

        def pause_reading(self):
            self.calls += 1

    async def main():
        sr, sw, cr, cw, srv = await pair(limit=10)
        real = sr._transport
        fake = sr._transport = NoPause()
        cw.write(b'y' * 30)
        await until(lambda: len(sr._buffer) >= 30, 'the data')
        assert fake.calls == 1 and sr._transport is None and sr._paused is False
        sr._buffer.clear()
        pauses = sr._transport = Pauses()
        cw.write(b'z' * 30)
        await until(lambda: len(sr._buffer) >= 30, 'the data')
        assert pauses.calls == 1 and sr._paused is True and sr._transport is pauses
        sr._transport = real
        await shut(srv, sw, cw)

    h.run(main())


def test_a_float_limit_is_compared_as_python_does(h):
    async def main():
        sr, sw, cr, cw, srv = await pair(limit=10.5)
        cw.write(b'a' * 21)   # 21 > 2 * 10.5 is False: no pause
        await until(lambda: len(sr._buffer) == 21, 'the data')
        assert sr._paused is False
        cw.write(b'a')        # 22 > 21.0
        await until(lambda: sr._paused, 'the pause')
        assert await sr.read(100) == b'a' * 22
        await shut(srv, sw, cw)

    h.run(main())


def test_a_cancelled_reader_leaves_the_data_for_the_next_read(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        t = asyncio.ensure_future(sr.read(100))
        await asyncio.sleep(0.01)
        waiter = sr._waiter
        assert waiter is not None
        t.cancel()
        # the data arrives while the cancelled waiter is still the reader's
        cw.write(b'late')
        with pytest.raises(asyncio.CancelledError):
            await t
        assert await sr.read(100) == b'late'
        assert waiter.cancelled()
        await shut(srv, sw, cw)

    h.run(main())
    assert h.errors == []


def test_an_instance_attribute_feed_data_is_called(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        calls = []
        original = sr.feed_data

        def spy(data):
            calls.append(bytes(data))
            original(data)

        sr.feed_data = spy
        cw.write(b'spied')
        assert await sr.read(100) == b'spied'
        del sr.feed_data
        cw.write(b'again')
        assert await sr.read(100) == b'again'
        await shut(srv, sw, cw)
        return calls

    assert h.run(main()) == [b'spied']


def test_an_instance_attribute_wakeup_waiter_and_data_received_are_called(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        proto = sw._protocol
        calls = []
        wake = sr._wakeup_waiter
        received = proto.data_received
        sr._wakeup_waiter = lambda: (calls.append('wake'), wake())
        proto.data_received = lambda data: (calls.append('data'), received(data))
        cw.write(b'x')
        assert await sr.read(100) == b'x'
        seen = list(calls)
        await shut(srv, sw, cw)
        return seen

    assert h.run(main()) == ['data', 'wake']


def test_patched_classes_and_subclasses_are_called(h, monkeypatch):
    calls = []

    class Reader(asyncio.StreamReader):
        def feed_data(self, data):
            calls.append(('sub', bytes(data)))
            super().feed_data(data)

    async def main():
        sr, sw, cr, cw, srv = await pair()
        original = asyncio.StreamReader.feed_data

        def patched(self, data):
            calls.append(('patched', bytes(data)))
            original(self, data)

        monkeypatch.setattr(asyncio.StreamReader, 'feed_data', patched)
        cw.write(b'one')
        assert await sr.read(100) == b'one'
        monkeypatch.undo()
        cw.write(b'two')
        assert await sr.read(100) == b'two'
        # a reader of another class behind the protocol
        sub = Reader(limit=2 ** 16)
        sub.set_transport(sw.transport)
        sw._protocol._stream_reader_wr = __import__('weakref').ref(sub)
        cw.write(b'three')
        assert await sub.read(100) == b'three'
        sw._protocol._stream_reader_wr = __import__('weakref').ref(sr)
        await shut(srv, sw, cw)

    h.run(main())
    assert calls == [('patched', b'one'), ('sub', b'three')]


@pytest.mark.expect_exception_handler
def test_an_exported_buffer_is_a_fatal_data_received_error(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        cw.write(b'first')
        await until(lambda: len(sr._buffer) == 5, 'the data')
        view = memoryview(sr._buffer)
        cw.write(b'second')
        await until(lambda: sw.transport.is_closing(), 'the fatal error')
        view.release()
        with pytest.raises(BufferError):
            await sr.read(100)
        await shut(srv, sw, cw)
        return sw.transport

    tr = h.run(main())
    assert len(h.errors) == 1
    ctx = h.errors[0]
    assert ctx['message'] == 'Fatal error: protocol.data_received() call failed.'
    assert type(ctx['exception']) is BufferError
    assert ctx['transport'] is tr


@pytest.mark.expect_exception_handler
def test_data_after_feed_eof_fails_the_assert_as_asyncio(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        sr.feed_eof()
        cw.write(b'after eof')
        await until(lambda: sw.transport.is_closing(), 'the fatal error')
        await shut(srv, sw, cw)

    h.run(main())
    assert len(h.errors) == 1
    exc = h.errors[0]['exception']
    assert type(exc) is AssertionError and str(exc) == 'feed_data after feed_eof'


def test_a_dead_reader_drops_the_data(h):
    async def main():
        sr, sw, cr, cw, srv = await pair()
        proto = sw._protocol
        proto._stream_reader_wr = None
        cw.write(b'nobody')
        await asyncio.sleep(0.05)
        assert not sr._buffer
        proto._stream_reader_wr = __import__('weakref').ref(sr)
        cw.write(b'somebody')
        assert await sr.read(100) == b'somebody'
        await shut(srv, sw, cw)

    h.run(main())
    assert h.errors == []


def test_unix_streams(h, tmp_path):
    path = str(tmp_path / 's.sock')

    async def main():
        accepted = asyncio.get_running_loop().create_future()
        srv = await asyncio.start_unix_server(lambda r, w: accepted.set_result((r, w)), path)
        cr, cw = await asyncio.open_unix_connection(path)
        sr, sw = await accepted
        cw.write(b'unix')
        assert await sr.readexactly(4) == b'unix'
        sw.write(b'back')
        assert await cr.readexactly(4) == b'back'
        await shut(srv, sw, cw)

    h.run(main())
    assert socket.AF_UNIX
