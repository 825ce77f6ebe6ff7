"""Protocol transports over TCP and Unix sockets: flow control with a slow reader and a fast
writer (pause/resume_writing at the watermarks, pause/resume_reading), half-close (write_eof and
eof_received's return value) and closing a transport from inside its own callbacks.

Every test: exact bytes in order, exact protocol call sequences, no call of the loop's exception
handler, and the process's open fds back to what they were."""

import asyncio
import hashlib
import socket

import pytest

from netutil import Harness, fd_details, open_fds

FAMILIES = ['tcp', 'unix']


# -- helpers ------------------------------------------------------------------------------------

def pattern(n, seed=0):
    """n deterministic bytes in which any reordering or loss of a chunk shows."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b'%d:%d' % (seed, i)).digest() * 64   # 2 KiB blocks
        i += 1
    return bytes(out[:n])

class Recorder(asyncio.Protocol):
    """Records the protocol calls; consecutive data_received calls are recorded once as 'data'."""

    def __init__(self, loop, name='proto', high=None):
        self.loop = loop
        self.name = name
        self.high = high
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def record(self, ev):
        self.events.append(ev)

    def connection_made(self, transport):
        self.transport = transport
        if self.high is not None:
            transport.set_write_buffer_limits(high=self.high)
        self.record('made')
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes)
        assert data
        self.data += data
        if not self.events or self.events[-1] != 'data':
            self.record('data')

    def eof_received(self):
        self.record('eof')
        return None

    def pause_writing(self):
        self.record('pause')

    def resume_writing(self):
        self.record('resume')

    def connection_lost(self, exc):
        self.record(('lost', exc))
        if self.lost.done():
            raise AssertionError(f'{self.name}: connection_lost called twice')
        self.lost.set_result(exc)


async def open_pair(loop, family, server_proto, client_proto, tmp_path):
    """Connect client_proto to server_proto over `family`; the server stops listening at once."""
    made = []

    def factory():
        assert not made, 'a second connection reached the server'
        made.append(1)
        return server_proto

    if family == 'tcp':
        server = await loop.create_server(factory, '127.0.0.1', 0)
        addr = server.sockets[0].getsockname()
        ctr, _ = await loop.create_connection(lambda: client_proto, *addr)
    else:
        path = str(tmp_path / 'sock')
        server = await loop.create_unix_server(factory, path)
        ctr, _ = await loop.create_unix_connection(lambda: client_proto, path)
    await asyncio.wait_for(server_proto.made, 5)
    server.close()
    return server, ctr


async def close_server(server):
    server.close()
    await asyncio.wait_for(server.wait_closed(), 5)


def small_buffers(transport, size=64 * 1024):
    sock = transport.get_extra_info('socket')
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# -- 1. slow reader, fast writer -----------------------------------------------------------------

class FastWriter(Recorder):
    HIGH = 256 * 1024
    LOW = 64 * 1024
    CHUNK = 48 * 1024

    def __init__(self, loop, payload):
        super().__init__(loop, 'writer')
        self.payload = payload
        self.pos = 0
        self.paused = False
        self.pause_sizes = []
        self.resume_sizes = []
        self.write_violations = []
        self.writes = 0

    def connection_made(self, transport):
        super().connection_made(transport)
        small_buffers(transport)
        transport.set_write_buffer_limits(high=self.HIGH, low=self.LOW)
        assert transport.get_write_buffer_limits() == (self.LOW, self.HIGH)
        assert transport.get_write_buffer_size() == 0
        self.loop.call_soon(self.pump)

    def pump(self):
        tr = self.transport
        while not self.paused and self.pos < len(self.payload):
            chunk = self.payload[self.pos:self.pos + self.CHUNK]
            self.pos += len(chunk)
            before = tr.get_write_buffer_size()
            tr.write(chunk)
            self.writes += 1
            after = tr.get_write_buffer_size()
            if before > 0:
                # a non-empty buffer means write() only appends
                ok = after == before + len(chunk)
            else:
                ok = 0 <= after <= len(chunk)
            if not ok:
                self.write_violations.append((before, len(chunk), after))
        if self.pos == len(self.payload) and not self.paused:
            if 'eof_sent' not in self.events:
                assert tr.can_write_eof()
                tr.write_eof()
                self.record('eof_sent')

    def pause_writing(self):
        assert not self.paused, 'pause_writing twice'
        self.paused = True
        self.pause_sizes.append(self.transport.get_write_buffer_size())
        super().pause_writing()

    def resume_writing(self):
        assert self.paused, 'resume_writing without pause_writing'
        self.paused = False
        self.resume_sizes.append(self.transport.get_write_buffer_size())
        super().resume_writing()
        self.loop.call_soon(self.pump)


class SlowReader(Recorder):
    def __init__(self, loop):
        super().__init__(loop, 'reader')
        self.paused = False
        self.reads_while_paused = 0
        self.reads = 0

    def connection_made(self, transport):
        super().connection_made(transport)
        small_buffers(transport)

    def data_received(self, data):
        if self.paused:
            self.reads_while_paused += 1
        self.reads += 1
        super().data_received(data)
        self.transport.pause_reading()
        assert not self.transport.is_reading()
        self.paused = True
        self.loop.call_later(0.001, self.resume)

    def resume(self):
        self.paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()
            assert self.transport.is_reading()


@pytest.mark.parametrize('family', FAMILIES)
def test_slow_reader_fast_writer(loop, family, tmp_path):
    h = Harness(loop)
    payload = pattern(8 << 20)
    writer = FastWriter(loop, payload)
    reader = SlowReader(loop)

    async def main():
        server, _ = await open_pair(loop, family, reader, writer, tmp_path)
        await asyncio.wait_for(asyncio.gather(reader.lost, writer.lost), 30)
        await close_server(server)

    loop.run_until_complete(main())
    assert len(reader.data) == len(payload)
    assert reader.data == payload
    assert reader.reads_while_paused == 0
    assert reader.reads > 10
    # the writer was throttled, and the calls alternate pause, resume, pause, ...
    n = len(writer.pause_sizes)
    assert n >= 3, writer.events
    assert len(writer.resume_sizes) == n
    assert writer.events == (['made'] + ['pause', 'resume'] * n
                             + ['eof_sent', 'eof', ('lost', None)])
    assert all(s > FastWriter.HIGH for s in writer.pause_sizes), writer.pause_sizes
    assert all(s <= FastWriter.LOW for s in writer.resume_sizes), writer.resume_sizes
    assert writer.write_violations == []
    assert writer.transport.get_write_buffer_size() == 0
    assert reader.events == ['made', 'data', 'eof', ('lost', None)]
    h.finish()


@pytest.mark.parametrize('family', FAMILIES)
def test_write_buffer_size_accounting(loop, family, tmp_path):
    """A reader that never reads: the buffer holds exactly what the kernel did not take; pause
    fires once past the high mark, then draining resumes below the low mark."""
    h = Harness(loop)
    server_p = Recorder(loop, 'server')
    client_p = Recorder(loop, 'client')
    payload = pattern(16 << 20, seed=3)

    async def main():
        server, ctr = await open_pair(loop, family, server_p, client_p, tmp_path)
        server_p.transport.pause_reading()
        small_buffers(ctr)
        ctr.set_write_buffer_limits(high=100_000)
        assert ctr.get_write_buffer_limits() == (25_000, 100_000)
        ctr.write(payload[:1])
        await asyncio.sleep(0.05)
        assert ctr.get_write_buffer_size() == 0
        ctr.write(payload[1:])
        size = ctr.get_write_buffer_size()
        assert 0 < size < len(payload) - 1
        assert client_p.events == ['made', 'pause']
        # the kernel is full: another write only appends
        ctr.write(b'tail')
        assert ctr.get_write_buffer_size() == size + 4
        await asyncio.sleep(0.05)
        assert client_p.events == ['made', 'pause']
        server_p.transport.resume_reading()
        ctr.write_eof()
        await asyncio.wait_for(asyncio.gather(server_p.lost, client_p.lost), 20)
        await close_server(server)

    loop.run_until_complete(main())
    assert server_p.data == payload + b'tail'
    assert client_p.events == ['made', 'pause', 'resume', 'eof', ('lost', None)]
    assert server_p.events == ['made', 'data', 'eof', ('lost', None)]
    h.finish()


# -- 3. half-close -------------------------------------------------------------------------------

class HalfCloseServer(Recorder):
    def __init__(self, loop, eof_ret, response):
        super().__init__(loop, 'server', high=64 << 20)  # no pause_writing here
        self.eof_ret = eof_ret
        self.response = response

    def eof_received(self):
        super().eof_received()
        self.loop.call_soon(self.after_eof)
        return self.eof_ret

    def after_eof(self):
        tr = self.transport
        self.record(('closing', tr.is_closing()))
        if not tr.is_closing():
            # still open: answer now, after eof_received returned
            assert tr.can_write_eof()
            tr.write(self.response)
            tr.write_eof()
            tr.write_eof()  # no-op
            self.record('eof_sent')
            self.loop.call_later(0.05, tr.close)


@pytest.mark.parametrize('eof_ret', [True, False, None], ids=['True', 'False', 'None'])
@pytest.mark.parametrize('family', FAMILIES)
def test_half_close(loop, family, eof_ret, tmp_path):
    h = Harness(loop)
    response = pattern(1 << 20, seed=7)
    request = pattern(300_000, seed=8)
    server_p = HalfCloseServer(loop, eof_ret, response)
    client_p = Recorder(loop, 'client', high=64 << 20)

    async def main():
        server, ctr = await open_pair(loop, family, server_p, client_p, tmp_path)
        assert ctr.can_write_eof()
        ctr.write(request)
        ctr.write_eof()
        assert not ctr.is_closing()
        with pytest.raises(RuntimeError, match=r'^Cannot call write\(\) after write_eof\(\)$'):
            ctr.write(b'more')
        ctr.write_eof()  # no-op
        await asyncio.wait_for(asyncio.gather(server_p.lost, client_p.lost), 10)
        await close_server(server)

    loop.run_until_complete(main())
    assert server_p.data == request
    if eof_ret:
        assert server_p.events == ['made', 'data', 'eof', ('closing', False), 'eof_sent',
                                   ('lost', None)]
        assert client_p.data == response
        assert client_p.events == ['made', 'data', 'eof', ('lost', None)]
    else:
        assert server_p.events == ['made', 'data', 'eof', ('closing', True), ('lost', None)]
        assert client_p.data == b''
        assert client_p.events == ['made', 'eof', ('lost', None)]
    h.finish()


@pytest.mark.parametrize('family', FAMILIES)
def test_half_close_streams(loop, family, tmp_path):
    """The same through streams: write_eof, then the other direction keeps flowing."""
    h = Harness(loop)
    request = pattern(500_000, seed=1)
    response = pattern(2 << 20, seed=2)

    async def handle(reader, writer):
        got = await reader.read()          # until EOF
        assert got == request
        assert reader.at_eof()
        assert writer.can_write_eof()
        writer.write(response)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        if family == 'tcp':
            server = await asyncio.start_server(handle, '127.0.0.1', 0)
            r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        else:
            path = str(tmp_path / 's')
            server = await asyncio.start_unix_server(handle, path)
            r, w = await asyncio.open_unix_connection(path)
        w.write(request)
        await w.drain()
        w.write_eof()
        got = await asyncio.wait_for(r.read(), 10)
        assert got == response
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    h.finish()


# -- 8. closing a transport from its own callbacks ----------------------------------------------

class CloseIn(Recorder):
    def __init__(self, loop, where, eof_ret=None):
        super().__init__(loop, 'client')
        self.where = where
        self.eof_ret = eof_ret

    def _close(self):
        self.transport.close()
        assert self.transport.is_closing()
        self.transport.close()   # idempotent
        self.record('closed')

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.where == 'pause_writing':
            transport.set_write_buffer_limits(high=1024)
        if self.where == 'connection_made':
            self._close()

    def data_received(self, data):
        super().data_received(data)
        if self.where == 'data_received' and 'closed' not in self.events:
            self._close()

    def eof_received(self):
        super().eof_received()
        if self.where == 'eof_received':
            self._close()
        return self.eof_ret

    def pause_writing(self):
        super().pause_writing()
        if self.where == 'pause_writing':
            self._close()


class Sink(Recorder):
    def __init__(self, loop, send=b'', eof=False):
        super().__init__(loop, 'server')
        self.send = send
        self.eof = eof

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.send:
            transport.write(self.send)
        if self.eof:
            transport.write_eof()


@pytest.mark.parametrize('where', ['connection_made', 'data_received', 'eof_received-None',
                                   'eof_received-True', 'pause_writing'])
@pytest.mark.parametrize('family', FAMILIES)
def test_close_from_callback(loop, family, where, tmp_path):
    h = Harness(loop)
    big = pattern(8 << 20, seed=9)
    where, _, ret = where.partition('-')
    eof_ret = {'': None, 'None': None, 'True': True}[ret]
    client_p = CloseIn(loop, where, eof_ret)
    if where == 'data_received':
        server_p = Sink(loop, send=b'hello')
    elif where == 'eof_received':
        server_p = Sink(loop, send=b'bye', eof=True)
    else:
        server_p = Sink(loop)

    async def main():
        server, ctr = await open_pair(loop, family, server_p, client_p, tmp_path)
        if where == 'pause_writing':
            small_buffers(ctr)
            ctr.write(big)         # pause_writing -> close() inside write()
            assert ctr.is_closing()
        await asyncio.wait_for(asyncio.gather(server_p.lost, client_p.lost), 10)
        await close_server(server)

    loop.run_until_complete(main())
    lost = [('lost', None)]
    if where == 'connection_made':
        assert client_p.events == ['made', 'closed'] + lost
        assert server_p.events == ['made', 'eof'] + lost
        assert server_p.data == b''
    elif where == 'data_received':
        assert client_p.events == ['made', 'data', 'closed'] + lost
        assert client_p.data == b'hello'
        assert server_p.events == ['made', 'eof'] + lost
    elif where == 'eof_received':
        assert client_p.events == ['made', 'data', 'eof', 'closed'] + lost
        assert client_p.data == b'bye'
        assert server_p.events == ['made', 'eof'] + lost
    else:  # pause_writing: close() flushes the buffer first
        assert client_p.events == ['made', 'pause', 'closed', 'resume'] + lost
        assert server_p.data == big
        assert server_p.events == ['made', 'data', 'eof'] + lost
    h.finish()
