"""OSErrors raised by the loop read as CPython's own: type (the subclass for the errno), errno,
strerror, args and str() equal to what `PyErr_SetFromErrno` makes, on both loops.

Each case reaches the error through ferroloop's Rust code (the poller for readers and writers,
the socket syscalls of `sock_*` and of the socket transports) and compares the exception with
`OSError(errno, os.strerror(errno))`, which CPython turns into the same subclass. The
``[asyncio]`` variants check the expectation itself.
"""

import asyncio
import errno
import os
import socket
import tempfile

import pytest


def assert_cpython_oserror(exc, code):
    ref = OSError(code, os.strerror(code))
    assert type(exc) is type(ref), (exc, ref)
    assert exc.errno == code
    assert exc.strerror == ref.strerror == os.strerror(code)
    assert exc.args == ref.args
    assert str(exc) == str(ref)
    assert '(os error' not in str(exc)


def closed_fd():
    """An fd number that is not open (checked)."""
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError):
        os.fstat(r)
    return r


# -- readers and writers: the poller's errors ------------------------------------------------------

@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_add_on_closed_fd(loop, method):
    fd = closed_fd()
    with pytest.raises(OSError) as info:
        getattr(loop, method)(fd, lambda: None)
    assert_cpython_oserror(info.value, errno.EBADF)
    # nothing stays registered
    assert not getattr(loop, method.replace('add', 'remove'))(fd)


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_add_on_regular_file(loop, method):
    # epoll refuses regular files: EPERM, i.e. PermissionError
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError) as info:
            getattr(loop, method)(f.fileno(), lambda: None)
        assert_cpython_oserror(info.value, errno.EPERM)


# -- sock_* calls ----------------------------------------------------------------------------------

def test_sock_sendall_to_closed_peer(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.close()

    async def main():
        await loop.sock_sendall(a, b'x' * 100)

    try:
        with pytest.raises(BrokenPipeError) as info:
            loop.run_until_complete(main())
        assert_cpython_oserror(info.value, errno.EPIPE)
    finally:
        a.close()


def test_sock_recv_after_reset(loop):
    # A Unix socket whose peer closed with unread data gets ECONNRESET on recv.
    a, b = socket.socketpair()
    a.setblocking(False)
    a.send(b'unread')
    b.close()

    async def main():
        return await loop.sock_recv(a, 100)

    try:
        with pytest.raises(ConnectionResetError) as info:
            loop.run_until_complete(main())
        assert_cpython_oserror(info.value, errno.ECONNRESET)
    finally:
        a.close()


def test_sock_recv_waiting_then_reset(loop):
    # The error arrives while sock_recv waits (the retry from the reader callback).
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        a.send(b'unread')
        b.close()
        return await task

    try:
        with pytest.raises(ConnectionResetError) as info:
            loop.run_until_complete(main())
        assert_cpython_oserror(info.value, errno.ECONNRESET)
    finally:
        a.close()


# -- socket transports -----------------------------------------------------------------------------

class Recorder(asyncio.Protocol):
    def __init__(self, loop):
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self, loop):
        self.lost = loop.create_future()
        self.buf = bytearray(1024)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        pass

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_transport_write_to_closed_peer(loop):
    a, b = socket.socketpair()

    async def main():
        transport, proto = await loop.create_connection(lambda: Recorder(loop), sock=a)
        b.close()
        transport.write(b'x' * 100)
        return await asyncio.wait_for(proto.lost, 5)

    exc = loop.run_until_complete(main())
    assert isinstance(exc, BrokenPipeError)
    assert_cpython_oserror(exc, errno.EPIPE)


@pytest.mark.parametrize('protocol', [Recorder, BufferedRecorder], ids=['Protocol', 'BufferedProtocol'])
def test_transport_read_after_reset(loop, protocol):
    a, b = socket.socketpair()

    async def main():
        transport, proto = await loop.create_connection(lambda: protocol(loop), sock=a)
        transport.write(b'unread by the peer')
        await asyncio.sleep(0.01)
        b.close()
        return await asyncio.wait_for(proto.lost, 5)

    exc = loop.run_until_complete(main())
    assert isinstance(exc, ConnectionResetError)
    assert_cpython_oserror(exc, errno.ECONNRESET)
