"""The subprocess transport itself (loop.subprocess_exec/subprocess_shell): its class, reprs
before and after the exit, returncode and _wait, get_pipe_transport, signals after the exit,
close() of a running child, the unclosed-transport ResourceWarning, the exact sequence of
protocol calls (pipes closing before and after the exit, a child that exits before its pipes are
connected), asyncio's private attributes, 200 concurrent children and cancellation during the
spawn — each body on asyncio's loop and ferroloop, compared with the same expected values."""

import asyncio
import gc
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

PY = sys.executable


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture
def errors(errors, loop):
    """conftest's `errors`, with `loop` as the current loop: 3.11's child watcher attaches to it."""
    asyncio.set_event_loop(loop)
    return errors


class Rec(asyncio.SubprocessProtocol):
    """Records every protocol call, in order."""

    def __init__(self, loop):
        self.calls = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.lost = loop.create_future()

    def connection_made(self, tr):
        self.calls.append('connection_made')

    def pipe_data_received(self, fd, data):
        assert type(data) is bytes
        if not self.calls or self.calls[-1] != ('pipe_data_received', fd):
            self.calls.append(('pipe_data_received', fd))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.calls.append(('pipe_connection_lost', fd, exc))

    def process_exited(self):
        self.calls.append('process_exited')

    def connection_lost(self, exc):
        self.calls.append(('connection_lost', exc))
        self.lost.set_result(None)


def join_watcher_threads():
    """Wait for asyncio 3.11's ThreadedChildWatcher threads to end: until then a thread may hold
    the transport (its arguments), and the transport outlives the test's last reference."""
    deadline = time.monotonic() + 10
    while any(t.name.startswith('asyncio-waitpid-') for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def norm(text):
    """A repr with the pid and fd numbers replaced by N."""
    return re.sub(r'(pid|fd)=\d+', r'\1=N', text)


def test_class_and_isinstance(loop, flavor, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'true')
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert isinstance(tr, asyncio.BaseTransport)
        assert type(tr).__name__ == '_UnixSubprocessTransport'
        if flavor.name == 'ferroloop':
            assert type(tr).__module__ == 'ferroloop._subprocess'
        assert await tr._wait() == 0
        tr.close()
    run(loop, main())
    assert errors == []


def test_repr_before_and_after_exit(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(
            lambda: Rec(loop), PY, '-c', 'import sys; sys.stdin.read()',
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pid = tr.get_pid()
        r = repr(tr)
        assert f'pid={pid} ' in r
        assert norm(r) == ('<_UnixSubprocessTransport pid=N running '
                           'stdin=<_UnixWritePipeTransport fd=N idle bufsize=0> '
                           'stdout=<_UnixReadPipeTransport fd=N polling>>'), r
        tr.get_pipe_transport(0).close()
        await proto.lost
        assert norm(repr(tr)) == ('<_UnixSubprocessTransport pid=N returncode=0 '
                                  'stdin=<_UnixWritePipeTransport closed fd=N closed> '
                                  'stdout=<_UnixReadPipeTransport closed fd=N closed>>')
        tr.close()
        assert norm(repr(tr)).startswith('<_UnixSubprocessTransport closed pid=N returncode=0 ')

        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'true', stdin=None,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await proto.lost
        assert norm(repr(tr)) == ('<_UnixSubprocessTransport pid=N returncode=0 '
                                  'stdout=<_UnixReadPipeTransport closed fd=N closed> '
                                  'stderr=<_UnixReadPipeTransport closed fd=N closed>>')
        tr.close()
    run(loop, main())
    assert errors == []


@pytest.mark.parametrize('code', [0, 7])
def test_returncode_and_wait(loop, errors, code):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'sh', '-c', f'exit {code}')
        assert tr.get_returncode() in (None, code)
        waiters = [asyncio.ensure_future(tr._wait()) for _ in range(3)]
        assert await tr._wait() == code
        assert [await w for w in waiters] == [code] * 3
        await proto.lost
        assert tr.get_returncode() == code
        assert await tr._wait() == code          # after connection_lost: at once
        assert tr.get_extra_info('subprocess').returncode == code
        tr.close()
    run(loop, main())
    assert errors == []


def test_get_pipe_transport(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(
            lambda: Rec(loop), 'cat', stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        kinds = [type(tr.get_pipe_transport(fd)).__name__ for fd in (0, 1, 2)]
        assert kinds == ['_UnixWritePipeTransport', '_UnixReadPipeTransport',
                         '_UnixReadPipeTransport']
        assert isinstance(tr.get_pipe_transport(0), asyncio.WriteTransport)
        assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
        assert tr.get_pipe_transport(3) is None
        assert tr.get_pipe_transport('x') is None
        tr.get_pipe_transport(0).write(b'hello')
        tr.get_pipe_transport(0).close()
        await proto.lost
        assert bytes(proto.data[1]) == b'hello'
        tr.close()

        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'true', stdin=None,
                                               stdout=subprocess.DEVNULL, stderr=None)
        assert [tr.get_pipe_transport(fd) for fd in (0, 1, 2)] == [None, None, None]
        await proto.lost
        tr.close()
    run(loop, main())
    assert errors == []


@pytest.mark.parametrize('how', ['send_signal', 'terminate', 'kill'])
def test_signals_after_exit(loop, errors, how):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'true')
        await proto.lost
        args = (signal.SIGTERM,) if how == 'send_signal' else ()
        with pytest.raises(ProcessLookupError):
            getattr(tr, how)(*args)
        with pytest.raises(ProcessLookupError):
            tr._check_proc()
        assert tr._proc is None
        tr.close()
    run(loop, main())
    assert errors == []


def test_signal_running_child(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'sleep', '30')
        tr.send_signal(signal.SIGUSR1)
        assert await tr._wait() == -signal.SIGUSR1
        await proto.lost
        tr.close()
    run(loop, main())
    assert errors == []


def test_close_kills_running_child(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(
            lambda: Rec(loop), 'sleep', '30', stdin=None, stdout=subprocess.PIPE, stderr=None)
        assert not tr.is_closing()
        tr.close()
        assert tr.is_closing()
        assert tr.get_pipe_transport(1).is_closing()
        assert await tr._wait() == -signal.SIGKILL
        await proto.lost
        assert tr.get_returncode() == -signal.SIGKILL
        assert proto.calls[0] == 'connection_made'
        assert proto.calls[-1] == ('connection_lost', None)
        assert sorted(map(str, proto.calls[1:-1])) == sorted(map(str, [
            ('pipe_connection_lost', 1, None), 'process_exited']))
        tr.close()                               # again: nothing
    run(loop, main())
    assert errors == []


def test_close_in_debug_mode_logs_the_kill(loop, errors, caplog):
    loop.set_debug(True)

    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'sleep', '30', stdin=None,
                                               stdout=None, stderr=None)
        caplog.clear()
        with caplog.at_level('DEBUG', logger='asyncio'):
            tr.close()
        msgs = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
        assert len(msgs) == 1 and norm(msgs[0]) == (
            'Close running child process: kill '
            '<_UnixSubprocessTransport closed pid=N running>'), msgs
        assert await tr._wait() == -signal.SIGKILL
        await proto.lost
    run(loop, main())
    assert errors == []


def test_unclosed_transport_resource_warning(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'true', stdin=None,
                                               stdout=subprocess.DEVNULL, stderr=None)
        await proto.lost
        return tr

    tr = run(loop, main())
    join_watcher_threads()
    text = norm(repr(tr))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always')
        del tr
        gc.collect()
    msgs = [str(w.message) for w in got if issubclass(w.category, ResourceWarning)]
    assert [norm(m) for m in msgs] == [f'unclosed transport {text}']
    assert text == '<_UnixSubprocessTransport pid=N returncode=0>'
    assert errors == []


def test_closed_transport_no_warning(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'true')
        await proto.lost
        tr.close()
        return tr

    tr = run(loop, main())
    join_watcher_threads()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always')
        del tr
        gc.collect()
    assert [w for w in got if issubclass(w.category, ResourceWarning)] == []
    assert errors == []


def test_call_order_pipes_close_before_exit(loop, errors):
    async def main():
        code = ('import os, sys, time\n'
                'sys.stdout.write("out"); sys.stdout.flush()\n'
                'sys.stderr.write("err"); sys.stderr.flush()\n'
                'os.close(1); os.close(2)\n'
                'sys.stdin.read()\n')
        tr, proto = await loop.subprocess_exec(
            lambda: Rec(loop), PY, '-c', code, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while len(proto.calls) < 5:
            await asyncio.sleep(0.01)
        tr.get_pipe_transport(0).close()         # the child exits after its pipes closed
        await proto.lost
        tr.close()
        return proto

    proto = run(loop, main())
    assert proto.calls[0] == 'connection_made'
    for fd in (1, 2):
        assert (proto.calls.index(('pipe_data_received', fd))
                < proto.calls.index(('pipe_connection_lost', fd, None)))
    assert sorted(map(str, proto.calls[1:5])) == sorted(map(str, [
        ('pipe_data_received', 1), ('pipe_data_received', 2),
        ('pipe_connection_lost', 1, None), ('pipe_connection_lost', 2, None)])), proto.calls
    assert proto.calls[5:] == [('pipe_connection_lost', 0, None), 'process_exited',
                               ('connection_lost', None)], proto.calls
    assert bytes(proto.data[1]) == b'out' and bytes(proto.data[2]) == b'err'
    assert errors == []


def test_call_order_exit_before_pipes_close(loop, errors):
    async def main():
        # The child exits at once; a grandchild keeps its stdout open a while, then writes.
        tr, proto = await loop.subprocess_exec(
            lambda: Rec(loop), 'sh', '-c', '(sleep 0.5; echo late) & exit 3',
            stdin=None, stdout=subprocess.PIPE, stderr=None)
        await proto.lost
        tr.close()
        return proto

    proto = run(loop, main())
    assert proto.calls == ['connection_made', 'process_exited', ('pipe_data_received', 1),
                           ('pipe_connection_lost', 1, None), ('connection_lost', None)]
    assert bytes(proto.data[1]) == b'late\n'
    assert errors == []


def test_child_exits_before_pipes_are_connected(loop, errors):
    orig = loop.connect_read_pipe

    async def slow_connect_read_pipe(*args, **kwargs):
        # the child has exited (and asyncio's watcher reported it) before the pipe connects
        await asyncio.sleep(0.5)
        return await orig(*args, **kwargs)

    async def main():
        loop.connect_read_pipe = slow_connect_read_pipe
        try:
            tr, proto = await loop.subprocess_exec(
                lambda: Rec(loop), 'sh', '-c', 'echo hi; exit 5', stdin=None,
                stdout=subprocess.PIPE, stderr=None)
        finally:
            del loop.connect_read_pipe
        assert tr.get_returncode() == 5
        assert await tr._wait() == 5
        await proto.lost
        tr.close()
        return proto

    proto = run(loop, main())
    assert proto.calls == ['connection_made', 'process_exited', ('pipe_data_received', 1),
                           ('pipe_connection_lost', 1, None), ('connection_lost', None)]
    assert bytes(proto.data[1]) == b'hi\n'
    assert errors == []


def test_private_attributes(loop, errors):
    async def main():
        tr, proto = await loop.subprocess_exec(lambda: Rec(loop), 'cat',
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=None)
        popen = tr.get_extra_info('subprocess')
        assert isinstance(popen, subprocess.Popen)
        assert tr._proc is popen and tr._extra['subprocess'] is popen
        assert tr._pid == popen.pid == tr.get_pid()
        assert tr._returncode is None
        assert tr._protocol is proto and tr.get_protocol() is proto
        assert tr._loop is loop
        assert tr._closed is False and tr._finished is False
        assert tr._exit_waiters == [] and tr._pending_calls is None
        assert sorted(tr._pipes) == [0, 1]
        assert tr._pipes[1].pipe is tr.get_pipe_transport(1)
        assert tr._pipes is tr._pipes
        w = asyncio.ensure_future(tr._wait())
        await asyncio.sleep(0)
        assert len(tr._exit_waiters) == 1
        tr.get_pipe_transport(0).close()
        assert await w == 0
        await proto.lost
        assert tr._returncode == 0 and tr._finished is True
        assert tr._exit_waiters is None
        assert tr._proc is None and tr._protocol is None and tr._loop is None
        tr.close()
        assert tr._closed is True
    run(loop, main())
    assert errors == []


def test_200_concurrent_children(loop, errors):
    async def one(i):
        tr, proto = await loop.subprocess_exec(
            lambda: Rec(loop), 'sh', '-c', f'echo {i}; exit {i % 5}', stdout=subprocess.PIPE)
        rc = await tr._wait()
        await proto.lost
        tr.close()
        return rc, bytes(proto.data[1]), proto.calls[0], proto.calls[-1]

    async def main():
        return await asyncio.gather(*(one(i) for i in range(200)))

    got = run(loop, main(), timeout=50)
    assert got == [(i % 5, b'%d\n' % i, 'connection_made', ('connection_lost', None))
                   for i in range(200)]
    assert errors == []


def test_cancelled_during_spawn_kills_and_waits(loop, errors):
    async def main():
        task = asyncio.ensure_future(loop.subprocess_exec(
            lambda: Rec(loop), 'sleep', '30', stdout=subprocess.PIPE))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always')
        run(loop, main())
        gc.collect()
    assert [str(w.message) for w in got if issubclass(w.category, ResourceWarning)] == []
    assert errors == []


def test_popen_failure_leaves_nothing(loop, errors):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.subprocess_exec(lambda: Rec(loop), '/nonexistent/program',
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always')
        run(loop, main())
        gc.collect()
    assert [str(w.message) for w in got if issubclass(w.category, ResourceWarning)] == []
    assert errors == []


def test_process_api_through_transport(loop, errors):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]);'
                      'sys.stderr.write("e"); sys.exit(2)',
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate(b'abc' * 1000)
        assert (out, err, p.returncode) == ((b'abc' * 1000)[::-1], b'e', 2)
        assert await p.wait() == 2
        assert re.fullmatch(r'<Process \d+>', repr(p)), repr(p)
        # communicate() can return before the transport has finished: when the exit is seen
        # before the last pipe closes, the transport's connection_lost is only scheduled
        # (call_soon), and until it runs kill() finds the exited Popen and does nothing.
        # The callbacks already queued run within a few iterations.
        for _ in range(5):
            await asyncio.sleep(0)
        with pytest.raises(ProcessLookupError):
            p.kill()
    run(loop, main())
    assert errors == []
