"""Failures: the peer resets the connection while we write a lot; accept() when the process is
out of file descriptors (in a subprocess, so the RLIMIT_NOFILE change stays there)."""

import asyncio
import json
import os
import socket
import struct
import threading

import pytest

from netutil import Harness, open_fds
from conftest import run_script

MiB = 1 << 20

# -- 4. connection reset mid-write ---------------------------------------------------------------

class BigWriter(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.calls = []
        self.lost = loop.create_future()
        self.lost_count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append('made')

    def data_received(self, data):
        self.calls.append('data')

    def eof_received(self):
        self.calls.append('eof')

    def pause_writing(self):
        self.calls.append('pause')

    def resume_writing(self):
        self.calls.append('resume')

    def connection_lost(self, exc):
        self.lost_count += 1
        self.calls.append('lost')
        if not self.lost.done():
            self.lost.set_result(exc)


def _peer_reads_then_resets(conn, family, nbytes, got):
    """Peer thread: read nbytes, then abort the connection (TCP: RST through SO_LINGER 0;
    Unix: close with unread data queued)."""
    conn.setblocking(True)
    n = 0
    while n < nbytes:
        data = conn.recv(min(MiB, nbytes - n))
        if not data:
            break
        n += len(data)
    got.append(n)
    if family == socket.AF_INET:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    conn.close()


def _listener(family, tmp_path):
    if family == socket.AF_INET:
        lsock = socket.socket()
        lsock.bind(('127.0.0.1', 0))
    else:
        lsock = socket.socket(socket.AF_UNIX)
        lsock.bind(str(tmp_path / 'reset.sock'))
    lsock.listen(1)
    return lsock


FAMILIES = [pytest.param(socket.AF_INET, id='tcp'), pytest.param(socket.AF_UNIX, id='unix')]


@pytest.mark.parametrize('family', FAMILIES)
def test_reset_mid_write_protocol(loop, family, tmp_path):
    h = Harness(loop)
    lsock = _listener(family, tmp_path)
    proto = BigWriter(loop)
    got = []

    async def main():
        if family == socket.AF_INET:
            tr, _ = await loop.create_connection(lambda: proto, *lsock.getsockname())
        else:
            tr, _ = await loop.create_unix_connection(lambda: proto, lsock.getsockname())
        conn, _ = lsock.accept()
        t = threading.Thread(target=_peer_reads_then_resets, args=(conn, family, 2 * MiB, got))
        t.start()
        tr.write(b'\xab' * (64 * MiB))
        assert tr.get_write_buffer_size() > 0
        exc = await asyncio.wait_for(proto.lost, 10)
        await loop.run_in_executor(None, t.join, 10)
        # the transport is dead: writes are silently dropped, close() is a no-op
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        for _ in range(3):
            tr.write(b'more')
        tr.close()
        tr.close()
        tr.abort()
        for _ in range(5):
            await asyncio.sleep(0.01)
        return exc

    exc = loop.run_until_complete(main())
    lsock.close()
    assert got == [2 * MiB]
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), repr(exc)
    assert proto.lost_count == 1
    assert proto.calls == ['made', 'pause', 'lost'], proto.calls
    # asyncio treats an OSError on a socket transport as a connection failure: connection_lost
    # gets it, the loop's exception handler does not
    assert h.errors == []
    h.finish()


@pytest.mark.parametrize('family', FAMILIES)
def test_reset_mid_write_streams(loop, family, tmp_path):
    h = Harness(loop)
    lsock = _listener(family, tmp_path)
    got = []

    async def main():
        if family == socket.AF_INET:
            reader, writer = await asyncio.open_connection(*lsock.getsockname())
        else:
            reader, writer = await asyncio.open_unix_connection(lsock.getsockname())
        conn, _ = lsock.accept()
        t = threading.Thread(target=_peer_reads_then_resets, args=(conn, family, 2 * MiB, got))
        t.start()
        block = b'\xcd' * MiB
        written = 0
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as ei:
            for _ in range(1000):
                writer.write(block)
                written += len(block)
                await asyncio.wait_for(writer.drain(), 10)
        await loop.run_in_executor(None, t.join, 10)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return written, ei.value

    written, exc = loop.run_until_complete(main())
    lsock.close()
    assert got == [2 * MiB]
    assert 2 * MiB <= written < 1000 * MiB
    assert h.errors == []
    h.finish()


# -- 6. accept() out of file descriptors --------------------------------------------------------

EMFILE_SCRIPT = r'''
import errno, json, os, resource, socket

async def main():
    loop = asyncio.get_running_loop()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
        def data_received(self, data):
            self.tr.write(data.upper())

    server = await loop.create_server(Echo, '127.0.0.1', 0)
    lsock = server.sockets[0]
    addr = lsock.getsockname()
    lfd = lsock.fileno()
    registered = lambda: lfd in set(loop._selector.get_map())
    out = {'listening_registered_at_start': registered()}
    clients = [socket.socket() for _ in range(3)]
    for c in clients:
        c.setblocking(False)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    fillers = []
    try:
        while True:
            fillers.append(os.open('/dev/null', os.O_RDONLY))
    except OSError as e:
        out['fill_errno'] = errno.errorcode[e.errno]
    # the kernel completes the handshakes; the server's accept() fails with EMFILE
    for i, c in enumerate(clients):
        await loop.sock_connect(c, addr)
        await loop.sock_sendall(c, b'hello %d' % i)
    t_out = loop.time()
    await asyncio.sleep(0.3)
    summary = [
        {'message': ctx.get('message'),
         'exception': type(ctx.get('exception')).__name__,
         'errno': errno.errorcode.get(getattr(ctx.get('exception'), 'errno', None)),
         'keys': sorted(ctx)}
        for ctx in contexts]
    out['contexts_while_out'] = len(contexts)
    out['distinct_contexts'] = [d for i, d in enumerate(summary) if d not in summary[:i]]
    out['listening_registered_while_out'] = registered()
    out['server_serving_while_out'] = server.is_serving()
    for fd in fillers:
        os.close(fd)
    replies = []
    for c in clients:
        replies.append((await asyncio.wait_for(loop.sock_recv(c, 100), 5)).decode())
    out['replies'] = replies
    out['delay_ok'] = 0.8 <= loop.time() - t_out <= 4
    out['listening_registered_after'] = registered()
    # new connections are served normally
    more = []
    for i in range(5):
        r, w = await asyncio.open_connection(*addr)
        w.write(b'again %d' % i)
        more.append((await asyncio.wait_for(r.read(100), 5)).decode())
        w.close()
        await w.wait_closed()
    out['more'] = more
    out['contexts_total'] = len(contexts)
    for c in clients:
        c.close()
    server.close()
    await server.wait_closed()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print('RESULT ' + json.dumps(out))

loop = FACTORY()
try:
    loop.run_until_complete(main())
finally:
    loop.close()
'''


@pytest.mark.timeout(60)
def test_accept_out_of_fds(flavor):
    proc = run_script(flavor.name, EMFILE_SCRIPT, timeout=40)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert len(lines) == 1, proc.stdout + proc.stderr
    out = json.loads(lines[0][len('RESULT '):])
    assert out == {
        'listening_registered_at_start': True,
        'fill_errno': 'EMFILE',
        # asyncio's _accept_connection does not stop at the first EMFILE: it keeps calling
        # accept() `backlog` times (100 by default) in the same tick, reporting each failure
        'contexts_while_out': 100,
        'distinct_contexts': [{
            'message': 'socket.accept() out of system resource',
            'exception': 'OSError',
            'errno': 'EMFILE',
            'keys': ['exception', 'message', 'socket'],
        }],
        # asyncio stops watching the listening socket and retries after ACCEPT_RETRY_DELAY
        'listening_registered_while_out': False,
        'server_serving_while_out': True,
        'replies': ['HELLO 0', 'HELLO 1', 'HELLO 2'],
        'delay_ok': True,
        'listening_registered_after': True,
        'more': [f'AGAIN {i}' for i in range(5)],
        'contexts_total': 100,
    }, proc.stderr
    assert proc.stderr == ''
