"""Process-level faults on both loops: signals arriving during callbacks and while the loop is
blocked polling, os.fork() in a running program, call_soon_threadsafe from 8 threads while the
loop closes.

Signal tests use SIGUSR1/SIGUSR2/SIGWINCH (pytest-timeout uses SIGALRM); fork runs in a
subprocess so that the test process never forks.
"""

import asyncio
import contextvars
import gc
import json
import os
import signal
import threading
import time
import weakref

import pytest

from conftest import run_script


MAIN_TID = threading.main_thread().ident


def _send_later(delay, how, sig):
    """Deliver `sig` to this process from another thread after `delay` seconds."""
    def fire():
        if how == 'pthread_kill':
            signal.pthread_kill(MAIN_TID, sig)
        else:
            os.kill(os.getpid(), sig)
    t = threading.Timer(delay, fire)
    t.start()
    return t


# -- signals during a blocking poll ---------------------------------------------------------------

@pytest.mark.parametrize('how', ['pthread_kill', 'os_kill'])
def test_signal_wakes_blocking_poll(loop, how):
    """Nothing is ready and the only timer is 30 s away: the loop is blocked in its poll when the
    signal comes from another thread. The handler runs on the loop, in the main thread, in the
    context current when it was added, and the loop wakes long before the timer."""
    var = contextvars.ContextVar('var', default='unset')
    var.set('at-add')
    got = []

    def handler(tag):
        got.append((tag, threading.get_ident() == MAIN_TID,
                     asyncio.get_running_loop() is loop, var.get()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, 'usr1')
    var.set('later')
    far = loop.call_later(30, loop.stop)
    t = _send_later(0.2, how, signal.SIGUSR1)
    loop.run_forever()
    t.join()
    assert got == [('usr1', True, True, 'at-add')]
    assert loop.time() < far.when() - 20
    assert not far.cancelled()
    far.cancel()
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_python_handler_raising_during_blocking_poll(loop):
    """A plain signal.signal() handler (no add_signal_handler) that raises while the loop is
    blocked: the exception propagates out of run_forever, as KeyboardInterrupt does, and the loop
    can run again afterwards."""
    class Interrupt(Exception):
        pass

    def raising(signum, frame):
        raise Interrupt(signum)

    old = signal.signal(signal.SIGUSR2, raising)
    try:
        far = loop.call_later(30, loop.stop)
        t = _send_later(0.2, 'pthread_kill', signal.SIGUSR2)
        with pytest.raises(Interrupt) as ei:
            loop.run_forever()
        t.join()
        assert ei.value.args == (signal.SIGUSR2,)
        assert not loop.is_running()
        assert loop.time() < far.when() - 20
        far.cancel()
        assert loop.run_until_complete(asyncio.sleep(0.01, 'again')) == 'again'
    finally:
        signal.signal(signal.SIGUSR2, old)


# -- signals during callbacks ---------------------------------------------------------------------

def test_signals_during_long_callback(loop):
    """Three different signals arrive, 60 ms apart, while one callback runs (sleeping in small
    steps, so the signals interrupt its system calls). Each handler runs exactly once, after the
    callback has returned, never inside it."""
    events = []
    sigs = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)

    def handler(sig):
        events.append(('sig', sig))
        if len([e for e in events if e[0] == 'sig']) == len(sigs):
            loop.call_soon(loop.stop)

    for s in sigs:
        loop.add_signal_handler(s, handler, s)

    def sender():
        for s in sigs:
            time.sleep(0.06)
            signal.pthread_kill(MAIN_TID, s)

    def long_callback():
        events.append('cb-start')
        t = threading.Thread(target=sender)
        t.start()
        while t.is_alive():
            time.sleep(0.005)
        t.join()
        time.sleep(0.02)
        events.append('cb-end')

    loop.call_soon(long_callback)
    guard = loop.call_later(20, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert events[:2] == ['cb-start', 'cb-end'], events
    assert sorted(e[1] for e in events[2:]) == sorted(sigs), events
    for s in sigs:
        assert loop.remove_signal_handler(s)


def test_signal_sent_from_a_callback(loop):
    """os.kill() of our own process from inside a callback (the signal is delivered before kill
    returns): the handler runs later, as a callback of its own, after the sending callback."""
    events = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: events.append('handler'))

    def killer():
        events.append('before-kill')
        os.kill(os.getpid(), signal.SIGUSR1)
        events.append('after-kill')

    async def main():
        loop.call_later(0.01, killer)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if 'handler' in events:
                break

    loop.run_until_complete(main())
    assert events == ['before-kill', 'after-kill', 'handler']
    loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_while_loop_not_running(loop):
    """A signal that arrives between two runs of the loop is handled at the next run."""
    events = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: events.append('handler'))
    loop.run_until_complete(asyncio.sleep(0))
    signal.pthread_kill(MAIN_TID, signal.SIGUSR1)
    time.sleep(0.01)
    assert events == []
    loop.run_until_complete(asyncio.sleep(0.01))
    assert events == ['handler']
    loop.remove_signal_handler(signal.SIGUSR1)


def test_many_signals_while_busy_no_loss_of_loop(loop):
    """A burst of 200 SIGUSR1 sent while the loop is running short callbacks and timers: the
    handler runs at least once and at most 200 times (signals of one number coalesce), every
    callback and timer still runs, and nothing reaches the exception handler."""
    hits = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    loop.add_signal_handler(signal.SIGUSR1, hits.append, 1)
    ticks = []

    def burst():
        for _ in range(200):
            signal.pthread_kill(MAIN_TID, signal.SIGUSR1)

    async def main():
        t = threading.Thread(target=burst)
        t.start()
        for i in range(300):
            loop.call_soon(ticks.append, i)
            loop.call_later(0.001 * (i % 10), ticks.append, -1)
            await asyncio.sleep(0)
        await loop.run_in_executor(None, t.join)
        await asyncio.sleep(0.05)

    loop.run_until_complete(main())
    assert 1 <= len(hits) <= 200
    assert sorted(x for x in ticks if x >= 0) == list(range(300))
    assert ticks.count(-1) == 300
    assert errors == []
    loop.remove_signal_handler(signal.SIGUSR1)


# -- os.fork() in a running program -------------------------------------------------------------

FORK_SCRIPT = r'''
import json, os, signal, socket, threading, traceback, warnings
warnings.filterwarnings('ignore', 'This process .* is multi-threaded', DeprecationWarning)


async def echo_roundtrip(size):
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    payload = os.urandom(size)
    wa.write(payload)
    wa.write_eof()
    got = await asyncio.wait_for(rb.read(), 10)
    for w in (wa, wb):
        w.close()
        await w.wait_closed()
    return got == payload


async def child_main():
    loop = asyncio.get_running_loop()
    out = {}
    fired = []
    for i in range(10):
        loop.call_later(0.001 * i, fired.append, i)
    fut = loop.create_future()
    threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, 'ts')).start()
    out['threadsafe'] = await asyncio.wait_for(fut, 5)
    out['echo'] = await echo_roundtrip(1 << 20)
    out['executor'] = await loop.run_in_executor(None, sum, range(10))
    hit = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, hit.set_result, 'usr2')
    os.kill(os.getpid(), signal.SIGUSR2)
    out['signal'] = await asyncio.wait_for(hit, 5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, '-c', 'print("sub")', stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 20)
    out['subprocess'] = (proc.returncode, stdout.decode().strip())
    await asyncio.sleep(0.02)
    out['timers'] = fired
    out['loop_type'] = type(loop).__name__
    return out


def in_child(wfd):
    code = 1
    try:
        # 3.12+ clear the running loop in a forked child; 3.11 needs this
        asyncio.events._set_running_loop(None)
        loop = FACTORY()
        try:
            out = loop.run_until_complete(child_main())
        finally:
            loop.close()
        os.write(wfd, json.dumps(out).encode())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


async def parent_main():
    loop = asyncio.get_running_loop()
    hits = []
    loop.add_signal_handler(signal.SIGUSR1, hits.append, 'usr1')
    assert await loop.run_in_executor(None, sum, [1, 2]) == 3   # executor threads exist at fork
    ticks = [0]

    async def ticker():
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.005)

    tick_task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        in_child(wfd)
    os.close(wfd)
    ticks_at_fork = ticks[0]
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    with os.fdopen(rfd, 'rb') as f:
        child = json.loads(f.read() or b'null')
    await asyncio.sleep(0.05)
    out = {'child_status': os.waitstatus_to_exitcode(status), 'child': child,
           'parent_ticked': ticks[0] > ticks_at_fork}
    os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(100):
        await asyncio.sleep(0.005)
        if hits:
            break
    out['parent_signal'] = hits
    out['parent_echo'] = await echo_roundtrip(1 << 20)
    out['parent_executor'] = await loop.run_in_executor(None, sum, range(5))
    tick_task.cancel()
    print('RESULT ' + json.dumps(out))

loop = FACTORY()
try:
    loop.run_until_complete(parent_main())
finally:
    loop.close()
'''


def test_fork_in_running_program(flavor):
    """A program forks from inside a coroutine while its loop runs (with a signal handler, an
    executor, a ticking task). The child starts a new loop and uses timers, call_soon_threadsafe,
    streams, the executor, a signal handler and a subprocess; the parent's loop carries on and
    still has its signal handler, I/O and executor."""
    proc = run_script(flavor.name, FORK_SCRIPT, timeout=50)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert len(lines) == 1, proc.stdout + proc.stderr
    out = json.loads(lines[0][len('RESULT '):])
    loop_type = 'Loop' if flavor.name == 'ferroloop' else '_UnixSelectorEventLoop'
    assert out == {
        'child_status': 0,
        'child': {'threadsafe': 'ts', 'echo': True, 'executor': 45, 'signal': 'usr2',
                  'subprocess': [0, 'sub'], 'timers': list(range(10)), 'loop_type': loop_type},
        'parent_ticked': True,
        'parent_signal': ['usr1'],
        'parent_echo': True,
        'parent_executor': 10,
    }, proc.stderr
    assert proc.stderr == ''


# -- call_soon_threadsafe from 8 threads while the loop closes -----------------------------------

class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


@pytest.mark.parametrize('closing', ['after_run', 'never_run'])
def test_threadsafe_from_8_threads_while_closing(flavor, closing):
    """8 threads call call_soon_threadsafe as fast as they can while the loop runs, stops and
    closes (or is closed without ever running). No crash, no hang: every thread ends with
    RuntimeError('Event loop is closed'), callbacks queued before close() ran or were dropped,
    and once the loop is gone every callback object is released."""
    for _ in range(3):
        loop = flavor.new_loop()
        barrier = threading.Barrier(9)
        outcome = [None] * 8
        calls = [0] * 8
        refs = []

        def worker(k):
            cb = Counter()
            refs.append(weakref.ref(cb))
            barrier.wait()
            try:
                while True:
                    loop.call_soon_threadsafe(cb)
                    calls[k] += 1
            except BaseException as e:  # noqa: BLE001 - the test inspects it
                outcome[k] = e

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        barrier.wait()
        if closing == 'after_run':
            loop.run_until_complete(asyncio.sleep(0.05))
        else:
            time.sleep(0.02)
        loop.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert [(type(e), str(e)) for e in outcome] == [(RuntimeError, 'Event loop is closed')] * 8
        assert sum(calls) > 0
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.call_soon_threadsafe(print)
        del loop, threads, outcome
        gc.collect()
        assert [r() for r in refs] == [None] * 8
