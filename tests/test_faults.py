"""Fault injection on both loops: the process runs out of file descriptors while accepting, the
peer resets or closes the connection in the middle of a large write, the peer half-closes, ICMP
errors on a connected UDP socket, thousands of timers cancelled from inside callbacks.

Each scenario runs on asyncio (the reference) and on ferroloop with the same assertions. The
process-wide faults (RLIMIT_NOFILE) run in a subprocess, so the change stays there.
"""

import asyncio
import errno
import gc
import json
import socket
import struct
import threading
import weakref

import pytest

from conftest import run_script
from netutil import Harness

MiB = 1 << 20
FAMILIES = [pytest.param(socket.AF_INET, id='tcp'), pytest.param(socket.AF_UNIX, id='unix')]


# -- EMFILE while accepting: pause, retry, resume, no busy loop ---------------------------------

EMFILE_PAUSE_SCRIPT = r'''
import errno, json, os, resource, socket, time

async def main():
    loop = asyncio.get_running_loop()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((loop.time(), ctx)))

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
        def data_received(self, data):
            self.tr.write(data[::-1])

    server = await loop.create_server(Echo, '127.0.0.1', 0, backlog=20)
    addr = server.sockets[0].getsockname()
    clients = [socket.socket() for _ in range(4)]
    for c in clients:
        c.setblocking(False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    fillers = []
    try:
        while True:
            fillers.append(os.open('/dev/null', os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    for i, c in enumerate(clients):
        await loop.sock_connect(c, addr)
        await loop.sock_sendall(c, b'ping %d' % i)
    # Out of fds for 2.5 s: asyncio reports the failures, stops watching the listening socket
    # and retries after ACCEPT_RETRY_DELAY (1 s). The loop must sleep in between, not spin.
    t0 = loop.time()
    cpu0 = time.process_time()
    await asyncio.sleep(2.5)
    cpu = time.process_time() - cpu0
    for fd in fillers:
        os.close(fd)
    replies = sorted([(await asyncio.wait_for(loop.sock_recv(c, 100), 5)).decode()
                      for c in clients])
    times = sorted({round(t - t0, 1) for t, _ in contexts})
    # group the reports into bursts (one per accept attempt)
    bursts = []
    for t, ctx in contexts:
        if not bursts or t - bursts[-1][0] > 0.5:
            bursts.append([t, 0])
        bursts[-1][1] += 1
    kinds = sorted({(ctx['message'], type(ctx['exception']).__name__,
                     errno.errorcode[ctx['exception'].errno]) for _, ctx in contexts})
    for c in clients:
        c.close()
    server.close()
    await server.wait_closed()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print('RESULT ' + json.dumps({
        'cpu': cpu,
        'burst_sizes': [n for _, n in bursts],
        'burst_gaps': [round(b[0] - a[0], 2) for a, b in zip(bursts, bursts[1:])],
        'kinds': kinds,
        'replies': replies,
    }))

loop = FACTORY()
try:
    loop.run_until_complete(main())
finally:
    loop.close()
'''


def test_emfile_accept_pauses_without_spinning(flavor):
    """While accept() fails with EMFILE the loop reports it in bursts about a second apart (one
    burst of `backlog` failures per attempt), uses next to no CPU between the attempts, and
    serves the waiting clients once descriptors are free again."""
    proc = run_script(flavor.name, EMFILE_PAUSE_SCRIPT, timeout=40)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert len(lines) == 1, proc.stdout + proc.stderr
    out = json.loads(lines[0][len('RESULT '):])
    assert out['kinds'] == [['socket.accept() out of system resource', 'OSError', 'EMFILE']]
    # 2.5 s out of fds: attempts at about 0, 1 and 2 s, each of `backlog` (20) accept() calls;
    # every failure schedules its own retry, and retries a few microseconds apart can land in
    # different iterations, so a later burst can hold several attempts
    assert len(out['burst_sizes']) in (2, 3, 4), out
    assert out['burst_sizes'][0] == 20, out
    assert all(n % 20 == 0 for n in out['burst_sizes']), out
    assert all(0.8 <= gap <= 1.6 for gap in out['burst_gaps']), out
    # a loop spinning on the readable listening socket would burn ~2.5 s of CPU here
    assert out['cpu'] < 0.5, out
    assert out['replies'] == sorted(f'{i} gnip' for i in range(4))
    assert proc.stderr == ''


# -- ECONNRESET / EPIPE in the middle of a large write ------------------------------------------

class Writer(asyncio.Protocol):
    def __init__(self, loop):
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def data_received(self, data):
        self.events.append('data')

    def eof_received(self):
        self.events.append('eof')

    def pause_writing(self):
        self.events.append('pause')

    def resume_writing(self):
        self.events.append('resume')

    def connection_lost(self, exc):
        self.events.append('lost')
        if not self.lost.done():
            self.lost.set_result(exc)


def _abort(sock):
    """Close `sock` so that its peer sees an error: RST for TCP (SO_LINGER 0), a vanished peer
    for Unix sockets (EPIPE on the next write)."""
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()


def _connected_pair(family):
    if family == socket.AF_UNIX:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock = socket.create_server(('127.0.0.1', 0))
    a = socket.create_connection(lsock.getsockname())
    b, _ = lsock.accept()
    lsock.close()
    return a, b


def _reader_thread(sock, nbytes, got, then):
    sock.setblocking(True)
    n = 0
    while n < nbytes:
        data = sock.recv(min(MiB, nbytes - n))
        if not data:
            break
        n += len(data)
    got.append(n)
    then(sock)


# (family, when) -> the errno the writer sees, identical on both loops by construction of the test:
# a TCP peer's RST gives ECONNRESET (or EPIPE once the socket knows), a vanished Unix peer EPIPE.
EXPECTED = {
    socket.AF_INET: (ConnectionResetError, BrokenPipeError),
    socket.AF_UNIX: (BrokenPipeError, ConnectionResetError),
}


@pytest.mark.parametrize('when', ['before_write', 'mid_write'])
@pytest.mark.parametrize('family', FAMILIES)
def test_protocol_peer_fails_during_large_write(loop, family, when):
    """A 48 MiB write whose peer dies before the write (the error comes from write()'s own send
    attempt or the first writable event) or after reading 3 MiB of it (the error comes while the
    rest is buffered): connection_lost gets the OSError once, nothing reaches the exception
    handler, the buffer is dropped, further writes are ignored, no fd leaks."""
    h = Harness(loop)
    mine, peer = _connected_pair(family)
    got = []

    async def main():
        proto = Writer(loop)
        tr, _ = await loop.create_connection(lambda: proto, sock=mine)
        if when == 'before_write':
            _abort(peer)  # the loop has not seen it yet: write()'s own send() fails
            t = None
        else:
            t = threading.Thread(target=_reader_thread, args=(peer, 3 * MiB, got, _abort))
            t.start()
        tr.write(b'\x5a' * (48 * MiB))
        exc = await asyncio.wait_for(proto.lost, 10)
        if t is not None:
            await loop.run_in_executor(None, t.join, 10)
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        tr.write(b'ignored')
        tr.close()
        await asyncio.sleep(0.02)
        return proto, exc

    proto, exc = loop.run_until_complete(main())
    assert isinstance(exc, EXPECTED[family]), repr(exc)
    assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
    assert proto.events.count('lost') == 1
    assert proto.events[0] == 'made' and proto.events[-1] == 'lost'
    assert set(proto.events) <= {'made', 'pause', 'lost'}, proto.events
    if when == 'mid_write':
        assert got == [3 * MiB]
        assert proto.events == ['made', 'pause', 'lost']
    assert h.errors == []
    h.finish()


@pytest.mark.parametrize('when', ['before_write', 'mid_write'])
@pytest.mark.parametrize('family', FAMILIES)
def test_streams_peer_fails_during_large_write(loop, family, when):
    """The same through streams: drain() raises the OSError, later drains and reads raise too
    (or read EOF), close/wait_closed finish, nothing reaches the exception handler."""
    h = Harness(loop)
    mine, peer = _connected_pair(family)
    got = []

    async def main():
        if family == socket.AF_UNIX:
            reader, writer = await asyncio.open_unix_connection(sock=mine)
        else:
            reader, writer = await asyncio.open_connection(sock=mine)
        if when == 'before_write':
            _abort(peer)  # the loop has not seen it yet: write()'s own send() fails
            t = None
        else:
            t = threading.Thread(target=_reader_thread, args=(peer, 3 * MiB, got, _abort))
            t.start()
        writer.write(b'\xa5' * (48 * MiB))
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as ei:
            await asyncio.wait_for(writer.drain(), 10)
        if t is not None:
            await loop.run_in_executor(None, t.join, 10)
        assert writer.transport.is_closing()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            await asyncio.wait_for(writer.drain(), 5)
        try:
            tail = await asyncio.wait_for(reader.read(), 5)
        except (ConnectionResetError, BrokenPipeError):
            tail = None
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return ei.value, tail

    exc, tail = loop.run_until_complete(main())
    assert isinstance(exc, EXPECTED[family]), repr(exc)
    assert tail in (None, b'')
    if when == 'mid_write':
        assert got == [3 * MiB]
    assert h.errors == []
    h.finish()


# -- peer half-close ------------------------------------------------------------------------------

class HalfClose(asyncio.Protocol):
    """Records events; eof_received returns `ret` (or raises it if it is an exception)."""

    def __init__(self, loop, ret, reply=None):
        self.loop = loop
        self.ret = ret
        self.reply = reply
        self.events = []
        self.data = bytearray()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def data_received(self, data):
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data += data

    def eof_received(self):
        self.events.append('eof')
        if isinstance(self.ret, BaseException):
            raise self.ret
        if self.reply is not None:
            # still inside eof_received: writing is allowed, the transport is open
            self.transport.write(self.reply)
        return self.ret

    def connection_lost(self, exc):
        self.events.append(('lost', type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize('ret', [True, 1, 'yes', False, 0, None],
                         ids=['True', 'one', 'str', 'False', 'zero', 'None'])
@pytest.mark.parametrize('family', FAMILIES)
def test_half_close_eof_received_return_values(loop, family, ret):
    """The peer shuts down its sending side. A truthy return from eof_received keeps the
    transport open for writing (the peer then gets the reply and our EOF after close()); a falsy
    one closes it at once. The reply written inside eof_received is delivered in both cases."""
    h = Harness(loop)
    mine, peer = _connected_pair(family)
    peer.setblocking(False)

    async def main():
        proto = HalfClose(loop, ret, reply=b'reply-in-eof')
        tr, _ = await loop.create_connection(lambda: proto, sock=mine)
        await loop.sock_sendall(peer, b'request')
        peer.shutdown(socket.SHUT_WR)
        for _ in range(200):
            if 'eof' in proto.events:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        closing_after_eof = tr.is_closing()
        if not closing_after_eof:
            tr.write(b'+after')
            tr.close()
        await asyncio.wait_for(proto.lost, 5)
        received = bytearray()
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)
            if not chunk:
                break
            received += chunk
        peer.close()
        return proto, closing_after_eof, bytes(received)

    proto, closing_after_eof, received = loop.run_until_complete(main())
    assert bytes(proto.data) == b'request'
    assert proto.events == ['made', 'data', 'eof', ('lost', None)]
    assert closing_after_eof == (not ret)
    assert received == (b'reply-in-eof+after' if ret else b'reply-in-eof')
    assert h.errors == []
    h.finish()


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.expect_exception_handler
def test_half_close_eof_received_raises(loop, family):
    """eof_received raising: asyncio's 'Fatal error: protocol.eof_received() call failed.' reaches
    the exception handler and the transport is closed with that exception."""
    h = Harness(loop)
    mine, peer = _connected_pair(family)
    peer.setblocking(False)
    boom = ValueError('boom')

    async def main():
        proto = HalfClose(loop, boom)
        await loop.create_connection(lambda: proto, sock=mine)
        peer.shutdown(socket.SHUT_WR)
        exc = await asyncio.wait_for(proto.lost, 5)
        peer.close()
        return proto, exc

    proto, exc = loop.run_until_complete(main())
    assert exc is boom
    assert proto.events == ['made', 'eof', ('lost', 'ValueError')]
    assert [(c['message'], c['exception']) for c in h.errors] == [
        ('Fatal error: protocol.eof_received() call failed.', boom)]
    assert {'transport', 'protocol'} <= set(h.errors[0])
    h.finish(check_errors=False)


@pytest.mark.parametrize('family', FAMILIES)
def test_half_close_both_directions_streams(loop, family, tmp_path):
    """Both sides write_eof in turn; each keeps reading what the other sent before its EOF. A
    server that has seen EOF can still send 4 MiB (StreamReaderProtocol keeps the transport
    open); after both EOFs the connection closes without an error."""
    h = Harness(loop)
    request = bytes(range(256)) * 4096          # 1 MiB
    response = bytes(reversed(range(256))) * 16384  # 4 MiB
    seen = {}

    async def handle(reader, writer):
        got = await reader.read()
        seen['server_got'] = len(got)
        seen['server_at_eof'] = reader.at_eof()
        seen['server_closing_after_eof'] = writer.transport.is_closing()
        writer.write(response)
        await writer.drain()
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b'x')
        writer.close()
        await writer.wait_closed()

    async def main():
        if family == socket.AF_UNIX:
            path = str(tmp_path / 's')
            server = await asyncio.start_unix_server(handle, path)
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            server = await asyncio.start_server(handle, '127.0.0.1', 0)
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(request)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    got = loop.run_until_complete(main())
    assert got == response
    assert seen == {'server_got': len(request), 'server_at_eof': True,
                    'server_closing_after_eof': False}
    assert h.errors == []
    h.finish()


# -- ICMP errors on UDP reaching error_received --------------------------------------------------

class Udp(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.events = []
        self.errors = []
        self.got = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append('made')

    def datagram_received(self, data, addr):
        self.got.append(data)

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.events.append(('lost', exc))
        self.lost.set_result(exc)


@pytest.mark.parametrize('family', [socket.AF_INET, socket.AF_INET6], ids=['ipv4', 'ipv6'])
def test_udp_icmp_errors_then_recovery(loop, family):
    """A connected UDP endpoint sends to a closed loopback port: each ICMP port-unreachable comes
    back as error_received(ConnectionRefusedError), never as connection_lost or an exception
    handler call. Once something listens on that port, the same endpoint exchanges datagrams."""
    host = '127.0.0.1' if family == socket.AF_INET else '::1'
    try:
        probe = socket.socket(family, socket.SOCK_DGRAM)
        probe.bind((host, 0))
    except OSError:
        pytest.fail(f'no {host} loopback on this machine')
    port = probe.getsockname()[1]
    probe.close()
    h = Harness(loop)

    async def main():
        tr, proto = await loop.create_datagram_endpoint(lambda: Udp(loop),
                                                        remote_addr=(host, port), family=family)
        for i in range(5):
            tr.sendto(b'lost %d' % i)
            for _ in range(100):
                await asyncio.sleep(0.005)
                if len(proto.errors) > i:
                    break
        n_errors = len(proto.errors)
        assert not tr.is_closing()
        # now the port answers
        srv = socket.socket(family, socket.SOCK_DGRAM)
        srv.bind((host, port))
        srv.setblocking(False)
        tr.sendto(b'hello')
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(srv, 100), 5)
        srv.sendto(data.upper(), addr)
        for _ in range(200):
            if proto.got:
                break
            await asyncio.sleep(0.005)
        srv.close()
        tr.close()
        await asyncio.wait_for(proto.lost, 5)
        return proto, n_errors

    proto, n_errors = loop.run_until_complete(main())
    assert n_errors == 5
    assert all(type(e) is ConnectionRefusedError and e.errno == errno.ECONNREFUSED
               for e in proto.errors), proto.errors
    assert proto.got == [b'HELLO']
    assert proto.events == ['made', ('lost', None)]
    assert h.errors == []
    h.finish()


@pytest.mark.expect_exception_handler
def test_udp_error_received_raising(loop):
    """error_received itself raising: asyncio's datagram transport lets it propagate out of the
    read callback, so the exception handler gets it as an 'Exception in callback'; the endpoint
    stays open and later errors still reach error_received."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('127.0.0.1', 0))
    dead = s.getsockname()
    s.close()
    h = Harness(loop)

    class Raising(Udp):
        def error_received(self, exc):
            super().error_received(exc)
            raise KeyError(len(self.errors))

    async def main():
        tr, proto = await loop.create_datagram_endpoint(lambda: Raising(loop), remote_addr=dead)
        for i in range(2):
            tr.sendto(b'x')
            for _ in range(100):
                await asyncio.sleep(0.005)
                if len(proto.errors) > i:
                    break
        closing = tr.is_closing()
        tr.close()
        await asyncio.wait_for(proto.lost, 5)
        return proto, closing

    proto, closing = loop.run_until_complete(main())
    assert not closing
    assert len(proto.errors) == 2
    assert [type(c.get('exception')) for c in h.errors] == [KeyError, KeyError]
    assert [c['exception'].args for c in h.errors] == [(1,), (2,)]
    h.finish(check_errors=False)


# -- 10,000 timers cancelled from inside callbacks ------------------------------------------------

class Token:
    """A callback argument whose lifetime the test watches."""


def test_ten_thousand_timers_cancelled_from_callbacks(loop):
    """10,000 timers over 20 deadlines 1 ms apart (500 share each deadline). A quarter is
    cancelled up front; every timer that runs cancels up to three others that have not run yet:
    two of its own deadline (often already in the same ready batch) and one of a later deadline.
    A cancelled timer never runs, every timer either runs or is cancelled, the arguments of
    cancelled timers are released at once, and the loop ends with nothing scheduled."""
    N, GROUPS = 10_000, 20
    ran = set()
    bad = []
    handles = [None] * N
    cancelled_pending = set()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def cb(i, token):
        if handles[i].cancelled() or i in cancelled_pending or i in ran:
            bad.append(i)
        ran.add(i)
        g = i % GROUPS
        for j in (i + GROUPS, i + 2 * GROUPS, i + 37 * GROUPS + 5):
            if j < N and j % GROUPS >= g and j not in ran and not handles[j].cancelled():
                handles[j].cancel()
                cancelled_pending.add(j)
        handles[i].cancel()  # cancelling oneself while running: no effect on this run

    async def main():
        base = loop.time() + 0.05
        tokens = [Token() for _ in range(N)]
        for i in range(N):
            handles[i] = loop.call_at(base + (i % GROUPS) * 0.001, cb, i, tokens[i])
        refs = [weakref.ref(t) for t in tokens]
        del tokens
        for i in range(0, N, 4):
            handles[i].cancel()
        gc.collect()
        # the arguments of a cancelled timer are released as soon as cancel() returns
        assert all(refs[i]() is None for i in range(0, N, 4))
        assert all(refs[i]() is not None for i in range(1, N, 4))
        await asyncio.sleep(base - loop.time() + 0.1)
        return refs

    refs = loop.run_until_complete(main())
    upfront = set(range(0, N, 4))
    assert bad == []
    assert errors == []
    assert ran.isdisjoint(cancelled_pending | upfront)
    assert len(ran) + len(cancelled_pending) + len(upfront) == N
    # the cancellations from callbacks really happened, many of them in the same batch
    assert len(cancelled_pending) > 2000
    assert len(ran) > 1000
    gc.collect()
    assert all(r() is None for r in refs)
    assert all(h.cancelled() for h in handles)
    n_left = len(loop._scheduled) if hasattr(loop, '_scheduled') else loop._scheduled_count
    assert n_left == 0
