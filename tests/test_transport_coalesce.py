"""Socket stream writes made during one batch of callbacks: ferroloop holds them and sends them
together at the end of the batch (writes made inside the transport's own reader callback, in
``data_received``/``buffer_updated``, when the protocol returns); everything asyncio makes
observable stays as asyncio has it.

Each body runs on both loops and checks what asyncio guarantees: byte order (held, buffered,
bytes and other bytes-like objects, ``writelines``), ``get_write_buffer_size()``, when
``pause_writing`` comes (high-water mark 0: nothing is held), ``close``/``abort``/``write_eof``
after held writes, direct use of the socket, ``sendfile``, a loop stopped (or interrupted by
SystemExit/KeyboardInterrupt) right after a write, and a send error (a fatal write error, then
``connection_lost``); for the reader callback's writes also that a transport read later in the
same batch finds them sent, and the same checks when they are mixed with other writes, followed
by ``close``, by an exception from ``data_received``, by a send error or by ``pause_writing``."""

import asyncio
import socket

import pytest


class Rec(asyncio.Protocol):
    def __init__(self):
        self.events = []
        self.transport = None
        self.in_write = False

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def data_received(self, data):
        self.events.append(('data', data))

    def eof_received(self):
        self.events.append('eof')
        return True

    def pause_writing(self):
        self.events.append(('pause', self.in_write))

    def resume_writing(self):
        self.events.append('resume')

    def connection_lost(self, exc):
        self.events.append(('lost', type(exc).__name__ if exc else None))


def recv_all(sock, timeout=5.0):
    """Everything the peer can read until EOF (blocking, with a timeout)."""
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def recv_now(sock):
    """What the peer can read right now (non-blocking)."""
    sock.setblocking(False)
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


@pytest.fixture
def conn(loop):
    """(transport, protocol, peer socket) over a socketpair; the transport is closed afterwards."""
    a, b = socket.socketpair()
    proto = Rec()
    tr, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda: proto, a))
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    yield tr, proto, b, errors
    if not tr.is_closing():
        tr.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    b.close()


def run_cb(loop, cb):
    """Run `cb` as one callback, then let the loop finish the iteration (and a few more)."""
    res = []
    loop.call_soon(lambda: res.append(cb()))
    loop.run_until_complete(asyncio.sleep(0.01))
    return res[0]


def test_writes_of_one_callback_arrive_in_order(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'a')
        ba = bytearray(b'b')
        tr.write(ba)
        ba[0] = ord('Z')   # written already: the change must not show
        tr.write(memoryview(b'xcx')[1:2])
        tr.write(b'')
        tr.write(b'd' * 1000)
        tr.writelines([b'e', bytearray(b'f'), memoryview(b'g')])
        tr.write(b'h')
        return tr.get_write_buffer_size()

    assert run_cb(loop, cb) == 0
    tr.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert recv_all(peer) == b'ab' + b'c' + b'd' * 1000 + b'efgh'
    assert proto.events == ['made', ('lost', None)]
    assert errors == []


def test_many_transports_written_in_one_callback(loop):
    pairs = [socket.socketpair() for _ in range(40)]
    trs = []
    for a, _ in pairs:
        tr, _ = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
        trs.append(tr)

    def cb():
        for i, tr in enumerate(trs):
            tr.write(b'%d:' % i)
        for i, tr in enumerate(reversed(trs)):
            tr.write(b'<%d>' % i)

    try:
        run_cb(loop, cb)
        for i, (_, b) in enumerate(pairs):
            assert recv_now(b) == b'%d:<%d>' % (i, len(trs) - 1 - i)
    finally:
        for tr in trs:
            tr.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        for _, b in pairs:
            b.close()


def test_buffer_size_and_repr_report_what_asyncio_reports(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'x' * 100)
        size = tr.get_write_buffer_size()
        # asyncio sent the bytes in write(): the peer has them now
        got = recv_now(peer)
        return size, got, repr(tr)

    size, got, r = run_cb(loop, cb)
    assert (size, got) == (0, b'x' * 100)
    assert 'bufsize=0' in r
    assert errors == []


def test_socket_from_get_extra_info_comes_after_the_writes(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'first')
        sock = tr.get_extra_info('socket')
        return recv_now(peer), sock.fileno() >= 0

    assert run_cb(loop, cb) == (b'first', True)


def test_high_water_zero_sends_in_write(loop, conn):
    tr, proto, peer, errors = conn
    tr.set_write_buffer_limits(high=0)

    def cb():
        proto.in_write = True
        tr.write(b'now')
        proto.in_write = False
        return recv_now(peer)

    assert run_cb(loop, cb) == b'now'
    assert proto.events == ['made']


@pytest.mark.parametrize('high', [0, 1, 4096, 65536])
def test_pause_writing_comes_inside_the_write_that_overflows(loop, conn, high):
    tr, proto, peer, errors = conn
    tr.get_extra_info('socket').setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tr.set_write_buffer_limits(high=high)
    chunk = b'y' * 1000
    total = 0

    def cb():
        nonlocal total
        for _ in range(2000):
            proto.in_write = True
            tr.write(chunk)
            proto.in_write = False
            total += len(chunk)
            if len(proto.events) > 1:
                break
        return tr.get_write_buffer_size()

    size = run_cb(loop, cb)
    assert proto.events == ['made', ('pause', True)]
    assert size > high
    # the peer reads everything: resume_writing, and every byte arrives once, in order
    got = bytearray()
    peer.setblocking(False)

    async def drain():
        while len(got) < total:
            try:
                got.extend(peer.recv(1 << 16))
            except BlockingIOError:
                await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(drain(), 10))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert bytes(got) == chunk * (total // len(chunk))
    assert proto.events == ['made', ('pause', True), 'resume']
    assert tr.get_write_buffer_size() == 0
    assert errors == []


def test_lower_limits_after_held_writes(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'z' * 1000)
        tr.set_write_buffer_limits(high=10)   # the kernel took the 1000 bytes: no pause
        return tr.get_write_buffer_size()

    assert run_cb(loop, cb) == 0
    assert proto.events == ['made']
    assert recv_now(peer) == b'z' * 1000


def test_close_after_held_writes(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'bye')
        tr.close()
        return tr.is_closing()

    assert run_cb(loop, cb) is True
    assert recv_all(peer) == b'bye'
    assert proto.events == ['made', ('lost', None)]
    assert errors == []


def test_abort_after_held_writes(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'sent before abort')
        tr.abort()
        tr.write(b'dropped')   # after abort: the connection is lost

    run_cb(loop, cb)
    assert recv_all(peer) == b'sent before abort'
    assert proto.events == ['made', ('lost', None)]
    assert errors == []


def test_write_eof_after_held_writes(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'half')
        tr.write_eof()
        with pytest.raises(RuntimeError, match='after write_eof'):
            tr.write(b'no')
        return tr.get_write_buffer_size()

    assert run_cb(loop, cb) == 0
    assert recv_all(peer) == b'half'
    peer.sendall(b'still reading')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert proto.events == ['made', ('data', b'still reading')]
    assert errors == []


def test_stop_right_after_a_write(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'before stop')
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert recv_now(peer) == b'before stop'


@pytest.mark.parametrize('exc', [KeyboardInterrupt, SystemExit])
def test_interrupting_exception_right_after_a_write(loop, conn, exc):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'one ')
        tr.write(b'two')
        raise exc

    def other():
        tr.write(b' three')   # not run in this iteration: the batch stopped at cb

    loop.call_soon(cb)
    loop.call_soon(other)
    with pytest.raises(exc):
        loop.run_forever()
    assert recv_now(peer) == b'one two'
    loop.run_until_complete(asyncio.sleep(0.01))
    assert recv_now(peer) == b' three'


def test_send_error_is_a_fatal_write_error(loop, conn):
    tr, proto, peer, errors = conn
    tr.pause_reading()   # the peer's close is seen by the write, not by a read
    peer.close()

    def cb():
        tr.write(b'lost')
        tr.write(b'lost too')

    run_cb(loop, cb)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert proto.events == ['made', ('lost', 'BrokenPipeError')]
    assert tr.is_closing()
    assert tr.get_write_buffer_size() == 0
    assert errors == []   # an OSError: logged in debug mode only, as asyncio does


def test_sendfile_after_held_writes(loop, conn, tmp_path):
    tr, proto, peer, errors = conn
    path = tmp_path / 'f'
    path.write_bytes(b'F' * 50000)

    async def main():
        tr.write(b'head:')
        with open(path, 'rb') as f:
            n = await loop.sendfile(tr, f)
        tr.write(b':tail')
        return n

    got = bytearray()

    async def reader():
        peer.setblocking(False)
        while len(got) < 50010:
            try:
                got.extend(peer.recv(1 << 16))
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def both():
        return await asyncio.gather(main(), reader())

    n, _ = loop.run_until_complete(asyncio.wait_for(both(), 10))
    assert n == 50000
    assert bytes(got) == b'head:' + b'F' * 50000 + b':tail'
    assert errors == []


def test_writelines_after_held_writes_keeps_order(loop, conn):
    tr, proto, peer, errors = conn

    def cb():
        tr.write(b'1')
        tr.writelines([b'2', b'3'])
        tr.write(b'4')
        tr.writelines([])
        tr.write(b'5')
        return tr.get_write_buffer_size()

    assert run_cb(loop, cb) == 0
    assert recv_now(peer) == b'12345'


def test_write_outside_the_loop_is_sent_at_once(loop, conn):
    tr, proto, peer, errors = conn
    tr.write(b'not running')
    assert recv_now(peer) == b'not running'


# Writes made inside the reader callback (data_received / buffer_updated) are sent when the
# protocol returns to it, not at the end of the batch: a transport read later in the same batch
# sees them sent, as with asyncio, whose write sends at once.

def peek(sock):
    """What the peer could read now, left unread."""
    try:
        return sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b''


class Replier(asyncio.Protocol):
    """Replies with two writes per message; records, for the repliers that ran before it,
    whether their peer can already read their reply."""

    def __init__(self, name, peer, ran):
        self.name, self.peer, self.ran = name, peer, ran
        self.seen = []

    def connection_made(self, transport):
        self.transport = transport

    def reply(self, data):
        self.seen.extend(peek(p) for p in self.ran)
        self.transport.write(b'reply:' + data)
        self.transport.write(b'!')
        self.ran.append(self.peer)

    def data_received(self, data):
        self.reply(data)


class BufferedReplier(Replier, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint):
        self.buf = bytearray(100)
        return self.buf

    def buffer_updated(self, nbytes):
        self.reply(bytes(self.buf[:nbytes]))


@pytest.mark.parametrize('cls', [Replier, BufferedReplier])
def test_writes_in_the_reader_callback_are_sent_when_it_returns(loop, cls):
    pairs = [socket.socketpair() for _ in range(4)]
    ran = []
    protos = []
    for i, (a, b) in enumerate(pairs):
        proto = cls(i, b, ran)
        loop.run_until_complete(loop.connect_accepted_socket(lambda p=proto: p, a))
        protos.append(proto)
    try:
        for i, (_, b) in enumerate(pairs):
            b.sendall(b'm%d' % i)   # all readable in the same poll, so one batch

        async def replies():
            while len(ran) < len(pairs):
                await asyncio.sleep(0.001)

        loop.run_until_complete(asyncio.wait_for(replies(), 5))
        for i, proto in enumerate(protos):
            # every reply of a callback that ran before this one was on the wire already
            assert all(s.startswith(b'reply:m') and s.endswith(b'!') for s in proto.seen), proto.seen
        assert sum(len(p.seen) for p in protos) == len(pairs) * (len(pairs) - 1) // 2
        for i, (_, b) in enumerate(pairs):
            assert recv_now(b) == b'reply:m%d!' % i
    finally:
        for p in protos:
            p.transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        for a, b in pairs:
            b.close()


class Scripted(Rec):
    """Runs `script(transport, data)` in data_received."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.out = []

    def data_received(self, data):
        super().data_received(data)
        self.out.append(self.script(self.transport, data))


@pytest.fixture
def scripted(loop):
    """Make (transport, protocol, peer, errors) with a Scripted protocol; closed afterwards."""
    made = []

    def make(script):
        a, b = socket.socketpair()
        proto = Scripted(script)
        tr, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda: proto, a))
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        made.append((tr, b))
        return tr, proto, b, errors

    yield make
    for tr, b in made:
        if not tr.is_closing():
            tr.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    for _, b in made:
        b.close()


def test_reader_callback_writes_mixed_with_buffer_size_and_other_writes(loop, scripted):
    def script(tr, data):
        tr.write(b'a')
        size = tr.get_write_buffer_size()
        first = recv_now(peer)
        tr.write(b'b')
        tr.write(bytearray(b'c'))
        tr.write(memoryview(b'xdx')[1:2])
        tr.writelines([b'e'])
        tr.write(b'f')
        return size, first

    tr, proto, peer, errors = scripted(script)
    peer.sendall(b'go')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert proto.out == [(0, b'a')]
    assert recv_now(peer) == b'bcdef'
    assert tr.get_write_buffer_size() == 0
    assert errors == []


def test_reader_callback_write_then_later_callback_write_keep_order(loop, scripted):
    def script(tr, data):
        tr.write(b'1')
        loop.call_soon(tr.write, b'2')
        tr.write(b'3')

    tr, proto, peer, errors = scripted(script)
    peer.sendall(b'go')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert recv_now(peer) == b'132'
    assert errors == []


def test_reader_callback_write_then_close(loop, scripted):
    def script(tr, data):
        tr.write(b'last words')
        tr.close()
        tr.write(b'dropped')   # the connection is lost once closed with nothing buffered

    tr, proto, peer, errors = scripted(script)
    peer.sendall(b'go')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert recv_all(peer) == b'last words'
    assert proto.events == ['made', ('data', b'go'), ('lost', None)]
    assert errors == []


@pytest.mark.expect_exception_handler
def test_data_received_raises_after_a_write(loop, scripted):
    def script(tr, data):
        tr.write(b'partial')
        raise ValueError('boom')

    tr, proto, peer, errors = scripted(script)
    peer.sendall(b'go')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert recv_all(peer) == b'partial'
    assert proto.events == ['made', ('data', b'go'), ('lost', 'ValueError')]
    assert [e['message'] for e in errors] == ['Fatal error: protocol.data_received() call failed.']


@pytest.mark.parametrize('exc', [KeyboardInterrupt, SystemExit])
def test_interrupting_exception_from_data_received_after_a_write(loop, scripted, exc):
    def script(tr, data):
        tr.write(b'sent')
        raise exc

    tr, proto, peer, errors = scripted(script)
    peer.sendall(b'go')
    with pytest.raises(exc):
        loop.run_until_complete(asyncio.sleep(1))
    assert recv_now(peer) == b'sent'
    assert errors == []


def test_send_error_of_a_reader_callback_write(loop, scripted):
    def script(tr, data):
        tr.write(b'nobody reads this')

    tr, proto, peer, errors = scripted(script)
    peer.shutdown(socket.SHUT_RD)   # the peer still writes, but our sends fail with EPIPE
    peer.sendall(b'go')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert proto.events == ['made', ('data', b'go'), ('lost', 'BrokenPipeError')]
    assert tr.is_closing()
    assert errors == []


def test_pause_writing_inside_a_reader_callback_write(loop, scripted):
    def script(tr, data):
        proto.in_write = True
        tr.write(b'w' * 300_000)   # over the high-water mark: sent in write, the rest buffered
        proto.in_write = False
        return tr.get_write_buffer_size()

    tr, proto, peer, errors = scripted(script)
    tr.get_extra_info('socket').setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.sendall(b'go')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert proto.events == ['made', ('data', b'go'), ('pause', True)]
    assert proto.out[0] > 0
    got = bytearray()
    peer.setblocking(False)

    async def drain():
        while len(got) < 300_000:
            try:
                got.extend(peer.recv(1 << 16))
            except BlockingIOError:
                await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(drain(), 10))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert bytes(got) == b'w' * 300_000
    assert proto.events[-1] == 'resume'
    assert errors == []
