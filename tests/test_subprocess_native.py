"""Subprocesses: exit codes, deaths by signal, send_signal/terminate/kill, 200 concurrent
children, wait() after exit, data through the pipes (checksummed), communicate() with a large
input, the SubprocessTransport API, and on ferroloop the exit watched through a pidfd (no
watcher thread, no fd left behind) unless the program chose a child watcher — each body on
asyncio's loop and ferroloop."""

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import warnings

import pytest

from netutil import open_fds

PY = sys.executable


def run(loop, coro, timeout=60):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def pattern(n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b'%d' % i).digest() * 64
        i += 1
    return bytes(out[:n])


@pytest.fixture
def errors(errors, loop):
    """conftest's `errors`, with `loop` as the current loop: 3.11's child watcher attaches to it."""
    asyncio.set_event_loop(loop)
    return errors


@pytest.mark.parametrize('code', [0, 1, 3, 255])
def test_exit_codes(loop, errors, code):
    async def main():
        p = await asyncio.create_subprocess_exec('sh', '-c', f'exit {code}')
        assert p.returncode is None or p.returncode == code
        assert await p.wait() == code
        assert p.returncode == code
        assert await p.wait() == code            # again, after exit
    run(loop, main())
    assert errors == []


@pytest.mark.parametrize('how', ['terminate', 'kill', 'send_signal', 'self'])
def test_signals(loop, errors, how):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'import os, signal, sys, time\n'
                      'sys.stdout.write("ready\\n"); sys.stdout.flush()\n'
                      'if sys.argv[1] == "self": os.kill(os.getpid(), signal.SIGUSR1)\n'
                      'time.sleep(60)', how, stdout=subprocess.PIPE)
        assert await p.stdout.readline() == b'ready\n'
        if how == 'terminate':
            p.terminate()
            want = -signal.SIGTERM
        elif how == 'kill':
            p.kill()
            want = -signal.SIGKILL
        elif how == 'send_signal':
            p.send_signal(signal.SIGINT)
            want = -signal.SIGINT
        else:
            want = -signal.SIGUSR1
        assert await p.wait() == want
        # signalling an exited process is a no-op (asyncio: ProcessLookupError is swallowed)
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        assert p.returncode == want
    run(loop, main())
    assert errors == []


def test_200_concurrent_children(loop, errors):
    async def one(i):
        p = await asyncio.create_subprocess_exec('sh', '-c', f'exit {i % 256}')
        return await p.wait()

    before = open_fds()

    async def main():
        codes = await asyncio.gather(*(one(i) for i in range(200)))
        assert codes == [i % 256 for i in range(200)]
    run(loop, main(), timeout=120)
    run(loop, asyncio.sleep(0.05))
    assert open_fds() == before
    assert errors == []


def test_wait_long_after_exit_and_returncode_before_wait(loop, errors):
    async def main():
        p = await asyncio.create_subprocess_exec('true')
        for _ in range(200):
            if p.returncode is not None:
                break
            await asyncio.sleep(0.01)
        assert p.returncode == 0                 # known without wait()
        assert await p.wait() == 0
    run(loop, main())
    assert errors == []


def test_pipe_data_integrity(loop, errors):
    data = pattern(3 << 20)

    async def main():
        p = await asyncio.create_subprocess_exec('cat', stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE)

        async def feed():
            for i in range(0, len(data), 100_000):
                p.stdin.write(data[i:i + 100_000])
                await p.stdin.drain()
            p.stdin.close()

        got, _ = await asyncio.gather(p.stdout.read(), feed())
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert await p.wait() == 0
    run(loop, main())
    assert errors == []


def test_communicate_large_input_and_stderr(loop, errors):
    data = pattern(8 << 20)

    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, '-c', 'import sys, hashlib\n'
                      'd = sys.stdin.buffer.read()\n'
                      'sys.stdout.write(hashlib.sha256(d).hexdigest())\n'
                      'sys.stderr.write(str(len(d)))\n'
                      'sys.exit(7)',
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate(data)
        assert out.decode() == hashlib.sha256(data).hexdigest()
        assert err == str(len(data)).encode()
        assert p.returncode == 7
    run(loop, main())
    assert errors == []


def test_shell_and_transport_api(loop, errors):
    calls = []

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.out = bytearray()
            self.exited = loop.create_future()
            self.lost = loop.create_future()

        def connection_made(self, tr):
            calls.append('made')

        def pipe_data_received(self, fd, data):
            self.out += data

        def pipe_connection_lost(self, fd, exc):
            calls.append(('pipe_lost', fd))

        def process_exited(self):
            calls.append('exited')
            self.exited.set_result(None)

        def connection_lost(self, exc):
            calls.append('lost')
            self.lost.set_result(exc)

    async def main():
        tr, proto = await loop.subprocess_shell(Proto, 'read x; echo "got $x"; exit 5',
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=None)
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert isinstance(tr.get_pid(), int) and tr.get_pid() > 0
        assert tr.get_returncode() is None
        assert tr.get_pipe_transport(2) is None
        w = tr.get_pipe_transport(0)
        assert isinstance(w, asyncio.WriteTransport)
        assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
        w.write(b'hello\n')
        await proto.exited
        assert await proto.lost is None
        assert tr.get_returncode() == 5
        assert bytes(proto.out) == b'got hello\n'
        assert calls[0] == 'made' and calls[-1] == 'lost' and 'exited' in calls
        assert ('pipe_lost', 1) in calls
        tr.close()
    run(loop, main())
    assert errors == []


def test_failed_exec_raises_and_leaves_nothing(loop, errors):
    before = open_fds()

    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec('/nonexistent/program')
    run(loop, main())
    assert open_fds() == before
    assert errors == []


def test_no_watcher_thread_on_ferroloop(loop, flavor, errors):
    # ferroloop watches the child through a pidfd; asyncio 3.11's default watcher starts a
    # thread per child (3.12+: a pidfd too).
    seen = []

    async def main():
        before = set(threading.enumerate())
        p = await asyncio.create_subprocess_exec(PY, '-c', 'import time; time.sleep(0.3)')
        seen.extend(t.name for t in set(threading.enumerate()) - before)
        assert await p.wait() == 0
    run(loop, main())
    waiter_threads = [n for n in seen if n.startswith('asyncio-waitpid')]
    if flavor.name == 'ferroloop':
        assert waiter_threads == []
    elif sys.version_info < (3, 12):
        assert len(waiter_threads) == 1
    assert errors == []


with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)   # 3.12+: child watchers are deprecated

    class MyWatcher(asyncio.ThreadedChildWatcher):
        pass


def test_explicit_child_watcher_is_used(loop, flavor, errors):
    # A program that chose a watcher of its own gets it, on both loops.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        watcher = MyWatcher()
        policy.set_child_watcher(watcher)
    seen = []
    try:
        async def main():
            p = await asyncio.create_subprocess_exec(PY, '-c', 'import time; time.sleep(0.3)')
            seen.extend(t.name for t in threading.enumerate())
            assert await p.wait() == 0
        run(loop, main())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            policy.set_child_watcher(None)
        watcher.close()
    assert [n for n in seen if n.startswith('asyncio-waitpid')]
    assert errors == []


def test_child_reaped_elsewhere_reports_255(loop, flavor, errors, caplog):
    p = run(loop, asyncio.create_subprocess_exec('sh', '-c', 'sleep 0.2; exit 3'))
    # reap it behind the loop's back while the loop is not running (asyncio 3.11's watcher
    # thread may win the race)
    try:
        os.waitpid(p.pid, 0)
        who = 'reaped here'
    except ChildProcessError:
        who = 'watcher won'
    with caplog.at_level('WARNING', logger='asyncio'):
        code = run(loop, p.wait())
    if who == 'reaped here':
        assert code == 255
        assert any('255' in r.getMessage() for r in caplog.records)
    else:
        assert code == 3 and flavor.name == 'asyncio' and sys.version_info < (3, 12)
    if flavor.name == 'ferroloop':
        assert who == 'reaped here'
    assert errors == []


# -- read pipes (connect_read_pipe) ---------------------------------------------------------------

class PipeRec(asyncio.Protocol):
    def __init__(self, loop):
        self.calls = []
        self.data = bytearray()
        self.lost = loop.create_future()
        self.on_data = None

    def connection_made(self, tr):
        self.tr = tr
        self.calls.append('made')

    def data_received(self, data):
        self.data += data
        if self.on_data:
            self.on_data(data)

    def eof_received(self):
        self.calls.append('eof')

    def connection_lost(self, exc):
        self.calls.append('lost')
        self.lost.set_result(exc)


def test_read_pipe_integrity_eof_and_repr(loop, flavor, errors):
    data = pattern(8 << 20)
    r, w = os.pipe()

    async def main():
        p = PipeRec(loop)
        tr, _ = await loop.connect_read_pipe(lambda: p, open(r, 'rb', buffering=0))
        assert isinstance(tr, asyncio.ReadTransport)
        assert repr(tr).startswith('<_UnixReadPipeTransport fd=') and 'polling' in repr(tr)
        if flavor.name == 'ferroloop':
            assert type(tr._read_ready).__name__ == 'PipeReadCore'

        def writer():
            with open(w, 'wb', buffering=0) as f:
                for i in range(0, len(data), 1 << 20):
                    f.write(data[i:i + (1 << 20)])

        t = threading.Thread(target=writer)
        t.start()
        assert await p.lost is None
        t.join()
        assert hashlib.sha256(p.data).digest() == hashlib.sha256(data).digest()
        assert p.calls == ['made', 'eof', 'lost']
        assert tr.is_closing()
        tr.close()
    run(loop, main())
    assert errors == []


def test_read_pipe_pause_resume(loop, errors):
    r, w = os.pipe()

    async def main():
        p = PipeRec(loop)
        tr, _ = await loop.connect_read_pipe(lambda: p, open(r, 'rb', buffering=0))
        p.on_data = lambda d: tr.pause_reading()
        os.write(w, b'first')
        while not p.data:
            await asyncio.sleep(0.001)
        assert not tr.is_reading()
        os.write(w, b'second')
        await asyncio.sleep(0.05)
        assert bytes(p.data) == b'first'         # nothing while paused
        p.on_data = None
        tr.resume_reading()
        assert tr.is_reading()
        while len(p.data) < 11:
            await asyncio.sleep(0.001)
        assert bytes(p.data) == b'firstsecond'
        os.close(w)
        assert await p.lost is None
        assert p.calls == ['made', 'eof', 'lost']
    run(loop, main())
    assert errors == []


@pytest.mark.expect_exception_handler
def test_read_pipe_error_in_data_received_goes_to_handler(loop, errors):
    r, w = os.pipe()

    async def main():
        p = PipeRec(loop)

        def boom(d):
            if d.startswith(b'boom'):
                raise ZeroDivisionError
        p.on_data = boom
        tr, _ = await loop.connect_read_pipe(lambda: p, open(r, 'rb', buffering=0))
        os.write(w, b'boom')
        while not errors:
            await asyncio.sleep(0.001)
        assert isinstance(errors[0]['exception'], ZeroDivisionError)
        os.write(w, b'more')
        os.close(w)
        assert await p.lost is None
        assert bytes(p.data) == b'boommore'
    run(loop, main())
    assert len(errors) == 1


# -- write pipes (connect_write_pipe) -------------------------------------------------------------

class WPipeRec(asyncio.Protocol):
    def __init__(self, loop):
        self.calls = []
        self.lost = loop.create_future()

    def connection_made(self, tr):
        self.calls.append('made')

    def pause_writing(self):
        self.calls.append('pause')

    def resume_writing(self):
        self.calls.append('resume')

    def connection_lost(self, exc):
        self.calls.append('lost')
        self.lost.set_result(exc)


def test_write_pipe_integrity_and_flow_control(loop, flavor, errors):
    data = pattern(8 << 20)
    r, w = os.pipe()
    got = []

    def reader():
        with open(r, 'rb', buffering=0) as f:
            while True:
                b = f.read(1 << 16)
                if not b:
                    return
                got.append(b)

    async def main():
        p = WPipeRec(loop)
        tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
        assert isinstance(tr, asyncio.WriteTransport)
        assert repr(tr).startswith('<_UnixWritePipeTransport fd=')
        tr.set_write_buffer_limits(high=1 << 16)
        pieces = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
        tr.write(pieces[0])
        tr.writelines([bytearray(pieces[1]), memoryview(pieces[2])])
        for piece in pieces[3:]:
            tr.write(piece)
        assert tr.get_write_buffer_size() > 0    # nobody reads yet
        assert p.calls == ['made', 'pause']
        t = threading.Thread(target=reader)
        t.start()
        while tr.get_write_buffer_size():
            await asyncio.sleep(0.005)
        assert p.calls == ['made', 'pause', 'resume']
        tr.close()
        assert await p.lost is None
        await loop.run_in_executor(None, t.join)
        assert hashlib.sha256(b''.join(got)).digest() == hashlib.sha256(data).digest()
        tr.write(b'after close')                 # counted, not written
    run(loop, main())
    assert errors == []


def test_write_pipe_broken_pipe(loop, errors):
    r, w = os.pipe()

    async def main():
        p = WPipeRec(loop)
        tr, _ = await loop.connect_write_pipe(lambda: p, open(w, 'wb', buffering=0))
        tr.write(b'x')
        os.close(r)
        for _ in range(100):
            if p.lost.done():
                break
            tr.write(b'y' * 1000)
            await asyncio.sleep(0.001)
        exc = await p.lost
        assert isinstance(exc, BrokenPipeError) and exc.args == (32, 'Broken pipe')
        assert p.calls[0] == 'made' and p.calls[-1] == 'lost'
    run(loop, main())
    assert errors == []
