"""add_reader / add_writer semantics on both loops: level-triggered dispatch, replacement of a
registered callback, remove_* return values, fds owned by transports, invalid fds and objects.

asyncio's selector loop is the reference: every expectation below is what
asyncio.selector_events.BaseSelectorEventLoop does on 3.11-3.13.
"""

import asyncio
import os
import selectors
import socket

import pytest

from conftest import fmt_cb
from netutil import reused_fd_number


def fd_registered(loop, fd):
    # iterate: asyncio's selector mapping raises ValueError on `-1 in mapping`
    return fd in set(loop._selector.get_map())


class Ticker:
    """Counts loop iterations: a callback that re-schedules itself with call_soon."""

    def __init__(self, loop):
        self.loop = loop
        self.n = 0
        self.handle = loop.call_soon(self._tick)

    def _tick(self):
        self.n += 1
        self.handle = self.loop.call_soon(self._tick)

    def cancel(self):
        self.handle.cancel()


def run_iterations(loop, n):
    """Run exactly n more loop iterations (asyncio.sleep(0) yields one iteration each)."""
    async def spin():
        for _ in range(n):
            await asyncio.sleep(0)
    loop.run_until_complete(spin())


# -- level-triggered dispatch --------------------------------------------------------------------

def test_reader_level_triggered_partial_reads(loop, pair):
    """A reader that consumes one byte per call is called again on each following iteration
    until the data is gone, then no more."""
    a, b = pair
    b.send(b'abcdefghij')
    ticker = Ticker(loop)
    calls = []

    def reader(tag, other):
        try:
            data = a.recv(1)
        except BlockingIOError:
            calls.append(('spurious', ticker.n))
            return
        calls.append((tag, other, data, ticker.n))

    assert loop.add_reader(a.fileno(), reader, 'tag', 42) is None
    run_iterations(loop, 20)
    ticker.cancel()
    assert [c[:3] for c in calls] == [('tag', 42, bytes([ch])) for ch in b'abcdefghij']
    ticks = [c[3] for c in calls]
    # one call per iteration, on consecutive iterations
    assert [t2 - t1 for t1, t2 in zip(ticks, ticks[1:])] == [1] * 9, ticks
    # level-triggered: no data left -> never called again, but still registered
    assert fd_registered(loop, a.fileno())
    b.send(b'Z')
    run_iterations(loop, 3)
    assert calls[-1][2] == b'Z'
    assert len(calls) == 11
    assert loop.remove_reader(a.fileno()) is True
    assert not fd_registered(loop, a.fileno())


def test_writer_level_triggered(loop, pair):
    """A writable socket's writer is called once per iteration while registered."""
    a, _b = pair
    ticker = Ticker(loop)
    ticks = []

    def writer():
        ticks.append(ticker.n)
        if len(ticks) == 5:
            assert loop.remove_writer(a) is True

    assert loop.add_writer(a, writer) is None
    run_iterations(loop, 10)
    ticker.cancel()
    assert len(ticks) == 5
    assert [t2 - t1 for t1, t2 in zip(ticks, ticks[1:])] == [1] * 4, ticks
    assert not fd_registered(loop, a.fileno())


def test_reader_not_called_after_remove_in_same_iteration(loop, pair):
    """A writer callback removing the reader of the same fd: the reader is not called."""
    a, b = pair
    b.send(b'x')
    calls = []

    def writer():
        calls.append('w')
        loop.remove_reader(a)
        loop.remove_writer(a)

    def reader():
        calls.append('r')
        loop.remove_reader(a)
        loop.remove_writer(a)

    loop.add_reader(a, reader)
    loop.add_writer(a, writer)
    run_iterations(loop, 3)
    # whichever runs first removes both: the other one (a cancelled handle) must not run
    assert calls in (['w'], ['r'])
    assert not fd_registered(loop, a.fileno())


# -- replacing and removing ----------------------------------------------------------------------

def test_add_reader_replaces_and_cancels_old_handle(loop, pair):
    a, b = pair
    calls = []
    loop.add_reader(a, lambda: calls.append('old'))
    key = loop._selector.get_key(a.fileno())
    assert key.events == selectors.EVENT_READ
    old_reader, writer = key.data
    assert writer is None
    assert not old_reader.cancelled()

    def new():
        calls.append(('new', a.recv(10)))

    loop.add_reader(a.fileno(), new)
    assert old_reader.cancelled()
    key = loop._selector.get_key(a.fileno())
    new_reader, writer = key.data
    assert writer is None
    assert new_reader is not old_reader
    assert not new_reader.cancelled()
    assert key.events == selectors.EVENT_READ
    b.send(b'hello')
    run_iterations(loop, 3)
    assert calls == [('new', b'hello')]
    assert loop.remove_reader(a) is True
    assert new_reader.cancelled()


def test_add_writer_replaces_and_cancels_old_handle(loop, pair):
    a, _b = pair
    calls = []
    loop.add_writer(a, lambda: calls.append('old'))
    old_writer = loop._selector.get_key(a).data[1]

    def new():
        calls.append('new')
        loop.remove_writer(a)

    loop.add_writer(a, new)
    assert old_writer.cancelled()
    run_iterations(loop, 3)
    assert calls == ['new']


def test_reader_and_writer_independent(loop, pair):
    a, _b = pair
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    loop.add_writer(fd, lambda: None)
    key = loop._selector.get_key(fd)
    assert key.events == selectors.EVENT_READ | selectors.EVENT_WRITE
    reader, writer = key.data
    assert reader is not None and writer is not None
    assert loop.remove_writer(fd) is True
    assert writer.cancelled() and not reader.cancelled()
    key = loop._selector.get_key(fd)
    assert key.events == selectors.EVENT_READ
    assert key.data == (reader, None)
    assert loop.remove_writer(fd) is False
    assert loop.remove_reader(fd) is True
    assert reader.cancelled()
    assert not fd_registered(loop, fd)
    with pytest.raises(KeyError):
        loop._selector.get_key(fd)


def test_remove_return_values(loop, pair):
    a, _b = pair
    fd = a.fileno()
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is False
    loop.add_writer(fd, lambda: None)
    assert loop.remove_reader(fd) is False       # only a writer: untouched
    assert fd_registered(loop, fd)
    assert loop.remove_writer(a) is True         # file object and fd are the same key
    assert loop.remove_writer(a) is False
    loop.add_reader(a, lambda: None)
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False
    assert not fd_registered(loop, fd)


def test_remove_reader_of_socket_closed_while_registered(loop):
    """asyncio's selector finds a closed (fileno() == -1) socket object by identity: removing
    its reader then returns True and unregisters the old fd."""
    a, b = socket.socketpair()
    try:
        fd = a.fileno()
        loop.add_reader(a, lambda: None)
        a.close()
        assert a.fileno() == -1
        assert loop.remove_reader(a) is True
        assert not fd_registered(loop, fd)
        assert not fd_registered(loop, fd)
    finally:
        a.close()
        b.close()


def test_closed_loop(flavor):
    lp = flavor.new_loop()
    a, b = socket.socketpair()
    try:
        lp.add_reader(a, lambda: None)
        lp.close()
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            lp.add_reader(a, lambda: None)
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            lp.add_writer(b, lambda: None)
        assert lp.remove_reader(a) is False
        assert lp.remove_writer(a) is False
    finally:
        lp.close()
        a.close()
        b.close()


# -- fds owned by transports ---------------------------------------------------------------------

def test_fd_owned_by_transport(loop, pair):
    a, b = pair
    tr, _proto = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=a))
    try:
        run_iterations(loop, 2)
        assert 'read=polling' in repr(tr)   # the transport's repr reads loop._selector
        fd = a.fileno()
        for meth in (loop.add_reader, loop.add_writer):
            for fileobj in (fd, a):
                with pytest.raises(RuntimeError) as ei:
                    meth(fileobj, lambda: None)
                assert str(ei.value) == f'File descriptor {fileobj!r} is used by transport {tr!r}'
        for meth in (loop.remove_reader, loop.remove_writer):
            with pytest.raises(RuntimeError) as ei:
                meth(fd)
            assert str(ei.value) == f'File descriptor {fd!r} is used by transport {tr!r}'
        # the transport's own reader is untouched
        key = loop._selector.get_key(fd)
        assert key.events == selectors.EVENT_READ
        # a closing transport no longer owns the fd
        tr.close()
        assert loop.remove_reader(fd) is False  # close() already removed the transport's reader
        loop.add_reader(fd, lambda: None)
        assert loop.remove_reader(fd) is True
    finally:
        tr.close()
        run_iterations(loop, 3)
    b.close()


# -- invalid fds and objects ---------------------------------------------------------------------

@pytest.mark.parametrize('method', ['add_reader', 'add_writer', 'remove_reader', 'remove_writer'])
def test_negative_fd(loop, method):
    args = (lambda: None,) if method.startswith('add') else ()
    with pytest.raises(ValueError) as ei:
        getattr(loop, method)(-1, *args)
    assert str(ei.value) == 'Invalid file descriptor: -1'
    assert not fd_registered(loop, -1)


@pytest.mark.parametrize('method', ['add_reader', 'add_writer', 'remove_reader', 'remove_writer'])
@pytest.mark.parametrize('bad', [object(), 1.5, None, '3', b'3'], ids=['object', 'float', 'None', 'str', 'bytes'])
def test_invalid_file_object(loop, method, bad):
    args = (lambda: None,) if method.startswith('add') else ()
    with pytest.raises(ValueError) as ei:
        getattr(loop, method)(bad, *args)
    assert str(ei.value) == f'Invalid file object: {bad!r}'
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_closed_socket_object(loop, method):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError) as ei:
        getattr(loop, method)(s, lambda: None)
    assert str(ei.value) == 'Invalid file descriptor: -1'


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_closed_fd_ebadf(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as ei:
        getattr(loop, method)(r, lambda: None)
    assert type(ei.value) is OSError
    assert ei.value.errno == 9  # EBADF
    assert not fd_registered(loop, r)
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_regular_file_eperm(loop, method, tmp_path):
    p = tmp_path / 'f'
    p.write_bytes(b'data')
    with open(p, 'rb') as f:
        with pytest.raises(PermissionError) as ei:
            getattr(loop, method)(f, lambda: None)
        assert ei.value.errno == 1  # EPERM: epoll refuses regular files
        assert not fd_registered(loop, f.fileno())


# -- more dispatch semantics ---------------------------------------------------------------------

def test_remove_reader_after_fd_closed(loop):
    """The fd was closed while registered (epoll forgot it): removing it still returns True."""
    r, w = os.pipe()
    loop.add_reader(r, lambda: None)
    loop.add_writer(w, lambda: None)
    run_iterations(loop, 2)
    os.close(r)
    os.close(w)
    assert loop.remove_reader(r) is True
    assert loop.remove_writer(w) is True
    assert not fd_registered(loop, r) and not fd_registered(loop, w)
    run_iterations(loop, 2)


def test_reader_called_on_hangup(loop):
    """A pipe whose write end is closed: the reader is called (read returns b'')."""
    r, w = os.pipe()
    got = []

    def reader():
        got.append(os.read(r, 100))
        if got[-1] == b'':
            loop.remove_reader(r)

    try:
        loop.add_reader(r, reader)
        os.write(w, b'last')
        os.close(w)
        run_iterations(loop, 5)
        assert got == [b'last', b'']
    finally:
        os.close(r)


def test_writer_called_on_error(loop):
    """A pipe whose read end is closed: the writer is called and the write fails with EPIPE."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    got = []

    def writer():
        try:
            os.write(w, b'x')
        except BrokenPipeError:
            got.append('EPIPE')
            loop.remove_writer(w)
        else:
            got.append('ok')

    try:
        os.close(r)
        loop.add_writer(w, writer)
        run_iterations(loop, 5)
        assert got == ['EPIPE']
    finally:
        os.close(w)


def test_reader_before_writer_same_fd(loop, pair):
    """An fd both readable and writable: the reader runs before the writer, each iteration."""
    a, b = pair
    b.send(b'x')
    order = []
    loop.add_reader(a, order.append, 'r')
    loop.add_writer(a, order.append, 'w')
    run_iterations(loop, 3)
    loop.remove_reader(a)
    loop.remove_writer(a)
    assert len(order) >= 4
    assert order == ['r', 'w'] * (len(order) // 2)


def test_cancelled_handle_removes_registration(loop, pair):
    """Cancelling the registered handle directly: never called; asyncio then unregisters the
    fd the next time it is reported ready."""
    a, b = pair
    calls = []
    loop.add_reader(a, calls.append, 'r')
    reader = loop._selector.get_key(a).data[0]
    reader.cancel()
    b.send(b'x')
    run_iterations(loop, 3)
    assert calls == []
    assert not fd_registered(loop, a.fileno())


@pytest.mark.expect_exception_handler
def test_reader_callback_exception(loop, pair):
    """An exception in a reader goes to the exception handler; the reader stays registered and,
    level-triggered, runs again."""
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    calls = []

    def reader():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError('boom')
        a.recv(10)
        loop.remove_reader(a)

    loop.add_reader(a, reader)
    handle = loop._selector.get_key(a).data[0]
    b.send(b'x')
    run_iterations(loop, 5)
    assert len(calls) == 2
    assert len(contexts) == 1
    ctx = contexts[0]
    assert sorted(ctx) == ['exception', 'handle', 'message']
    assert ctx['handle'] is handle
    assert ctx['message'] == f'Exception in callback {fmt_cb(reader, ())}'
    assert isinstance(ctx['exception'], ValueError) and str(ctx['exception']) == 'boom'


def test_reader_runs_in_context_of_add(loop, pair):
    import contextvars
    var = contextvars.ContextVar('var', default='default')
    a, b = pair
    seen = []

    def reader():
        seen.append(var.get())
        var.set('changed-inside')
        a.recv(10)
        loop.remove_reader(a)

    token = var.set('at-add')
    loop.add_reader(a, reader)
    var.reset(token)
    b.send(b'x')
    run_iterations(loop, 3)
    assert seen == ['at-add']
    assert var.get() == 'default'


def test_all_ready_fds_dispatched_in_one_iteration(loop):
    """asyncio polls for as many events as there are registered fds: every ready fd's reader
    runs in the same iteration."""
    import resource
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(3000, (soft - 100) // 2)
    assert n >= 1000
    pairs = [socket.socketpair() for _ in range(n)]
    ticker = Ticker(loop)
    seen = []
    try:
        for a, b in pairs:
            a.setblocking(False)
            loop.add_reader(a, lambda a=a: (seen.append(ticker.n), a.recv(1),
                                            loop.remove_reader(a)))
        for a, b in pairs:
            b.send(b'x')
        run_iterations(loop, 5)
        ticker.cancel()
        assert len(seen) == n
        assert len(set(seen)) == 1, f'readers spread over iterations {sorted(set(seen))}'
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_removed_reader_stays_silent_and_re_adding_works(loop, pair):
    """After remove_reader, data arriving runs nothing (ferroloop keeps the epoll registration
    parked, not deleted); adding a reader again sees the data already waiting."""
    a, b = pair
    calls = []
    loop.add_reader(a, calls.append, 'first')
    loop.remove_reader(a)
    b.send(b'x')
    run_iterations(loop, 3)
    assert calls == []
    loop.add_reader(a, calls.append, 'second')
    run_iterations(loop, 1)
    assert calls and set(calls) == {'second'}
    loop.remove_reader(a)


@pytest.mark.parametrize('dup', [False, True], ids=['plain', 'dup-kept-open'])
def test_reader_on_reused_fd_number(loop, dup):
    """remove_reader, close, and a new socket that gets the same fd number: its reader works.
    With a dup of the old socket still open (the kernel keeps the old registration), the old
    socket's activity must not make the loop spin or hide the new socket's data."""
    old_a, old_b = socket.socketpair()
    fd = old_a.fileno()
    calls = []
    loop.add_reader(fd, calls.append, 'old')
    loop.remove_reader(fd)
    with reused_fd_number(old_a, old_b, dup) as (new_a, new_b):
        got = []

        def on_new():
            try:
                got.append(new_a.recv(100))
            except BlockingIOError:   # a spurious wake-up is allowed, a lost byte is not
                pass

        loop.add_reader(new_a, on_new)
        if dup:
            old_b.send(b'to the old socket')   # readable on the dup only
        new_b.send(b'to the new socket')
        run_iterations(loop, 5)
        assert got == [b'to the new socket']
        assert calls == []
        loop.remove_reader(new_a)
