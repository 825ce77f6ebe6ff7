"""Pipe transports (connect_read_pipe / connect_write_pipe): every transport method, reprs in each
state, EOF, pause/resume of reading, the write buffer with watermarks 0 and huge, write_eof, the
peer closing the pipe (EPIPE on a write, and the write end's reader registration), abort,
transfers with a checksum, bad input and the unclosed-transport ResourceWarning — each body on
asyncio's loop and ferroloop."""

import asyncio
import gc
import hashlib
import os
import re
import warnings

import pytest


class Rec(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.calls = []
        self.data = bytearray()
        self.lost = loop.create_future()
        self._want = None

    def connection_made(self, tr):
        self.tr = tr
        self.calls.append('made')

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data
        if self._want and len(self.data) >= self._want[0] and not self._want[1].done():
            self._want[1].set_result(None)

    def eof_received(self):
        self.calls.append('eof')

    def pause_writing(self):
        self.calls.append('pause')

    def resume_writing(self):
        self.calls.append('resume')

    def connection_lost(self, exc):
        self.calls.append('lost')
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait(self, n, timeout=10):
        if len(self.data) < n:
            self._want = (n, self.loop.create_future())
            await asyncio.wait_for(self._want[1], timeout)


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 30))


def drain_fd(fd):
    os.set_blocking(fd, False)
    got = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def test_read_pipe_methods_eof_and_reprs(loop, flavor, errors):
    r, w = os.pipe()

    async def main():
        p = Rec(loop)
        pipe = open(r, 'rb', buffering=0)
        tr, proto = await loop.connect_read_pipe(lambda: p, pipe)
        assert proto is p and p.calls == ['made']
        assert isinstance(tr, asyncio.ReadTransport)
        assert not isinstance(tr, asyncio.WriteTransport)
        assert type(tr).__name__ == '_UnixReadPipeTransport'
        tr.resume_reading = lambda: None    # instance attributes can be set, as on asyncio's
        del tr.resume_reading
        assert tr.get_extra_info('pipe') is pipe
        assert tr.get_extra_info('nothing', 7) == 7
        assert tr.get_protocol() is p
        assert repr(tr) == f'<_UnixReadPipeTransport fd={r} polling>'
        assert tr.is_reading() and not tr.is_closing()
        os.write(w, b'hello')
        await p.wait(5)
        tr.pause_reading()
        tr.pause_reading()                 # idempotent
        assert not tr.is_reading()
        assert repr(tr) == f'<_UnixReadPipeTransport fd={r} idle>'
        os.write(w, b' world')
        await asyncio.sleep(0.02)
        assert bytes(p.data) == b'hello'   # nothing while paused
        tr.resume_reading()
        await p.wait(11)
        assert bytes(p.data) == b'hello world'
        os.close(w)                        # EOF: eof_received, then connection_lost(None)
        assert await p.lost is None
        assert p.calls == ['made', 'eof', 'lost']
        assert tr.is_closing()
        assert repr(tr) == f'<_UnixReadPipeTransport closed fd={r} closed>'
        assert pipe.closed
        tr.close()                          # no-op once closed
    run(loop, main())
    assert errors == []


def test_read_pipe_close_and_set_protocol(loop, errors):
    r, w = os.pipe()

    async def main():
        p, p2 = Rec(loop), Rec(loop)
        tr, _ = await loop.connect_read_pipe(lambda: p, open(r, 'rb', buffering=0))
        tr.set_protocol(p2)
        assert tr.get_protocol() is p2
        os.write(w, b'to p2')
        await p2.wait(5)
        assert p.data == b'' and p2.data == b'to p2'
        tr.close()
        assert tr.is_closing() and not tr.is_reading()
        assert repr(tr) == f'<_UnixReadPipeTransport closing fd={r} idle>'
        tr.resume_reading()                 # no-op while closing
        assert await p2.lost is None
        assert p2.calls == ['lost'] and p.calls == ['made']
        os.close(w)
    run(loop, main())
    assert errors == []


def test_write_pipe_methods_write_eof_and_reprs(loop, flavor, errors):
    r, w = os.pipe()

    async def main():
        p = Rec(loop)
        pipe = open(w, 'wb', buffering=0)
        tr, _ = await loop.connect_write_pipe(lambda: p, pipe)
        assert isinstance(tr, asyncio.WriteTransport)
        assert isinstance(tr, asyncio.Transport)   # asyncio's flow-control mixin is one
        assert type(tr).__name__ == '_UnixWritePipeTransport'
        tr.close = lambda: None             # instance attributes can be set, as on asyncio's
        del tr.close
        assert tr.get_extra_info('pipe') is pipe
        assert repr(tr) == f'<_UnixWritePipeTransport fd={w} idle bufsize=0>'
        assert tr.can_write_eof()
        assert tr.get_write_buffer_size() == 0
        assert tr.get_write_buffer_limits() == (16384, 65536)
        tr.write(b'one ')
        tr.write(bytearray(b'two '))
        tr.write(memoryview(b'xthreex')[1:-1])
        tr.write(b'')
        tr.writelines([b' four', bytearray(b' five')])
        assert drain_fd(r) == b'one two three four five'
        with pytest.raises(AssertionError):
            tr.write('text')
        with pytest.raises(AssertionError):
            tr.write(None)
        with pytest.raises(ValueError, match=r'high \(1\) must be >= low \(2\) must be >= 0'):
            tr.set_write_buffer_limits(high=1, low=2)
        tr.write_eof()
        assert tr.is_closing()
        assert repr(tr) == f'<_UnixWritePipeTransport closing fd={w} idle bufsize=0>'
        tr.write(b'ignored')               # after write_eof: counted, not written
        tr.write_eof()                     # no-op
        assert await p.lost is None
        assert p.calls == ['made', 'lost']
        assert repr(tr) == f'<_UnixWritePipeTransport closed fd={w} closed>'
        assert pipe.closed
        assert os.read(r, 100) == b''      # EOF for the reader
        tr.close()                         # no-op once closed
        os.close(r)
    run(loop, main())
    assert errors == []


@pytest.mark.parametrize('high', [0, 2 ** 40], ids=['zero', 'huge'])
def test_write_pipe_watermarks_zero_and_huge(loop, high, errors):
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main():
        p = Rec(loop)
        tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
        tr.set_write_buffer_limits(high=high, low=0)
        sent = bytearray()
        chunk = bytes(range(256)) * 64
        while tr.get_write_buffer_size() == 0:
            tr.write(chunk)
            sent += chunk
        assert p.calls == (['made', 'pause'] if high == 0 else ['made'])
        assert repr(tr).startswith(f'<_UnixWritePipeTransport fd={w} polling bufsize=')
        for _ in range(20):
            tr.write(chunk)
            sent += chunk
        assert p.calls == (['made', 'pause'] if high == 0 else ['made'])
        got = bytearray()
        while len(got) < len(sent):
            got += drain_fd(r)
            await asyncio.sleep(0.001)
        assert got == sent
        await asyncio.sleep(0.01)
        assert tr.get_write_buffer_size() == 0
        assert p.calls == (['made', 'pause', 'resume'] if high == 0 else ['made'])
        tr.close()
        assert await p.lost is None
        os.close(r)
    run(loop, main())
    assert errors == []


def test_write_pipe_close_flushes_buffer_abort_drops_it(loop, errors):
    async def main():
        for how in ('close', 'abort'):
            r, w = os.pipe()
            p = Rec(loop)
            tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
            sent = bytearray()
            while tr.get_write_buffer_size() == 0:
                tr.write(b'y' * 10000)
                sent += b'y' * 10000
            getattr(tr, how)()
            assert tr.is_closing()
            if how == 'abort':
                assert tr.get_write_buffer_size() == 0
                assert await p.lost is None
            else:
                got = bytearray()
                while not p.lost.done():
                    got += drain_fd(r)
                    await asyncio.sleep(0.001)
                got += drain_fd(r)
                assert got == sent
                assert await p.lost is None
            assert p.calls == ['made', 'lost']
            os.close(r)
    run(loop, main())
    assert errors == []


def test_write_pipe_peer_closed(loop, errors):
    # The reader registration on the write end reports the read end closing: connection_lost
    # (None) with nothing buffered, BrokenPipeError with data pending; a write into a pipe whose
    # read end is already gone fails with EPIPE: connection_lost(BrokenPipeError).
    async def main():
        r, w = os.pipe()
        p = Rec(loop)
        tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
        await asyncio.sleep(0)
        os.close(r)
        assert await p.lost is None
        assert p.calls == ['made', 'lost']

        r, w = os.pipe()
        p = Rec(loop)
        tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
        while tr.get_write_buffer_size() == 0:
            tr.write(b'z' * 10000)
        await asyncio.sleep(0)
        os.close(r)
        assert isinstance(await p.lost, BrokenPipeError)
        assert tr.get_write_buffer_size() == 0

        r, w = os.pipe()
        p = Rec(loop)
        tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
        os.close(r)
        tr.write(b'into nothing')          # EPIPE at once (fatal, an OSError: no handler call)
        assert tr.is_closing()
        for _ in range(6):
            tr.write(b'more')              # counted
        exc = await p.lost
        assert isinstance(exc, BrokenPipeError) and exc.errno == 32
        assert p.calls == ['made', 'lost']
    run(loop, main())
    assert errors == []


def test_transfer_32mib_checksummed(loop, errors):
    data = os.urandom(1 << 20) * 32
    r, w = os.pipe()

    async def main():
        reader = Rec(loop)
        rt, _ = await loop.connect_read_pipe(lambda: reader, open(r, 'rb', buffering=0))
        writer = Rec(loop)
        wt, _ = await loop.connect_write_pipe(lambda: writer, open(w, 'wb', buffering=0))
        view = memoryview(data)
        for i in range(0, len(data), 100_000):
            wt.write(view[i:i + 100_000])
            if wt.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.001)
        wt.write_eof()
        assert await writer.lost is None
        assert await reader.lost is None
        assert len(reader.data) == len(data)
        assert hashlib.sha256(reader.data).digest() == hashlib.sha256(data).digest()
        assert reader.calls == ['made', 'eof', 'lost']
        assert 'pause' in writer.calls and writer.calls[-1] == 'lost'
    run(loop, main())
    assert errors == []


def test_not_a_pipe_is_refused(loop, tmp_path):
    f = open(tmp_path / 'file', 'wb+')

    async def main():
        with pytest.raises(ValueError, match='Pipe transport is for pipes/sockets only.'):
            await loop.connect_read_pipe(asyncio.Protocol, f)
        with pytest.raises(ValueError, match='Pipe transport is only for pipes, sockets and '
                                             'character devices'):
            await loop.connect_write_pipe(asyncio.Protocol, f)
    run(loop, main())
    f.close()


@pytest.mark.parametrize('kind', ['read', 'write'])
def test_unclosed_pipe_transport_warns(loop, kind):
    r, w = os.pipe()

    async def main():
        if kind == 'read':
            t, _ = await loop.connect_read_pipe(asyncio.Protocol, open(r, 'rb', buffering=0))
        else:
            t, _ = await loop.connect_write_pipe(asyncio.Protocol, open(w, 'wb', buffering=0))
        await asyncio.sleep(0)
        return t

    t = run(loop, main())
    pipe = t.get_extra_info('pipe')
    loop._remove_reader(pipe.fileno())   # the loop's own reference (both kinds register a reader)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        del t
        gc.collect()
        gc.collect()
    assert any(issubclass(x.category, ResourceWarning) and
               re.match(r'unclosed transport <_Unix(Read|Write)PipeTransport fd=\d+ ',
                        str(x.message)) for x in caught), [str(x.message) for x in caught]
    assert pipe.closed
    os.close(w if kind == 'read' else r)
