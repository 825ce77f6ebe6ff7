"""Regressions for defects a new user meets: unclosed loops, NaN delays, odd fd numbers.

Each body runs on asyncio (the reference) and on ferroloop.
"""

import asyncio
import gc
import math
import sys
import warnings
import weakref

import pytest

from conftest import run_script

NAN = float('nan')

# 3.13's asyncio rounds the poll timeout with math.ceil(), so a loop about to block with a NaN
# deadline on top of its timer heap raises ValueError out of run_forever (a NaN timer found due at
# the end of a busy iteration still runs); 3.11 and 3.12 run it at once, as ferroloop does on every
# version (README's compatibility table). 3.13's asyncio.sleep() rejects NaN itself.
NAN_BREAKS_ASYNCIO_LOOP = sys.version_info >= (3, 13)
SLEEP_REJECTS_NAN = sys.version_info >= (3, 13)


def run_nan(flavor, loop, aw):
    """run_until_complete(aw) where a NaN-deadline timer is scheduled."""
    if flavor.name == 'asyncio' and NAN_BREAKS_ASYNCIO_LOOP:
        with pytest.raises(ValueError, match='cannot convert float NaN to integer'):
            loop.run_until_complete(aw)
        return None
    return loop.run_until_complete(aw)


# -- unclosed loops ------------------------------------------------------------------------------

def test_unclosed_loop_with_pending_timer_is_collected(flavor):
    lp = flavor.new_loop()
    lp.call_later(3600, print)          # loop -> timer -> loop, the timer held only by the loop
    lp.call_soon(print, 'never')        # and a ready callback
    ref = weakref.ref(lp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        del lp
        for _ in range(3):
            gc.collect()
    assert ref() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith('unclosed event loop') for m in messages), messages


def test_unclosed_loop_with_reader_is_collected(flavor, pair):
    a, _ = pair
    lp = flavor.new_loop()
    lp.add_reader(a, print)             # loop -> reader handle -> loop
    ref = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)
        del lp
        for _ in range(3):
            gc.collect()
    assert ref() is None


def test_unclosed_loops_release_their_fds(flavor):
    # 600 forgotten loops, each with a timer an hour away: the process must not keep their fds.
    res = run_script(flavor.name, """
        import gc, os, warnings
        warnings.simplefilter('ignore', ResourceWarning)
        gc.collect()
        before = len(os.listdir('/proc/self/fd'))
        for _ in range(600):
            loop = FACTORY()
            loop.call_later(3600, print)
            del loop
        gc.collect()
        after = len(os.listdir('/proc/self/fd'))
        print(before, after)
        """)
    assert res.returncode == 0, res.stderr
    before, after = map(int, res.stdout.split())
    assert after <= before + 1, (before, after)


def test_unclosed_loops_under_low_fd_limit(flavor):
    # With a 1024-descriptor limit, 3000 forgotten loops with pending timers never hit EMFILE:
    # the collector finds them as it runs by itself (no explicit gc.collect()).
    res = run_script(flavor.name, """
        import resource, warnings
        warnings.simplefilter('ignore', ResourceWarning)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        for i in range(3000):
            loop = FACTORY()
            loop.call_later(3600, print)
            loop.call_soon(print)
            del loop
        print('ok')
        """, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 'ok'


# -- NaN delays ------------------------------------------------------------------------------------

def test_call_later_nan_runs_at_once(flavor, loop):
    calls = []
    h = loop.call_later(NAN, calls.append, 'nan')
    assert math.isnan(h.when())
    loop.call_soon(calls.append, 'soon')
    t0 = loop.time()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == ['soon', 'nan']
    assert loop.time() - t0 < 2


def test_call_at_nan_runs_at_once(flavor, loop):
    calls = []
    h = loop.call_at(NAN, calls.append, 'nan')
    assert math.isnan(h.when())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == ['nan']


def test_nan_timer_cancelled_does_not_run(loop):
    calls = []
    h = loop.call_later(NAN, calls.append, 'nan')
    h.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == []


def test_sleep_nan_returns(flavor, loop):
    # No other timer pending: asyncio's heap has the NaN timer on top, and it runs at once.
    # (With other timers pending, where asyncio's heapq puts a NaN entry decides when it runs.)
    if SLEEP_REJECTS_NAN:
        with pytest.raises(ValueError, match='Invalid delay: NaN'):
            loop.run_until_complete(asyncio.sleep(NAN, 'woke'))
    else:
        assert loop.run_until_complete(asyncio.sleep(NAN, 'woke')) == 'woke'


def test_wait_for_nan_times_out(flavor, loop):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), NAN)
        return 'done'

    t0 = loop.time()
    if flavor.name == 'asyncio' and NAN_BREAKS_ASYNCIO_LOOP:
        run_nan(flavor, loop, main())
        return
    assert loop.run_until_complete(main()) == 'done'
    assert loop.time() - t0 < 5


def test_timeout_nan_expires(flavor, loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(NAN):
                await asyncio.sleep(10)
        return 'done'

    t0 = loop.time()
    if flavor.name == 'asyncio' and NAN_BREAKS_ASYNCIO_LOOP:
        run_nan(flavor, loop, main())
        return
    assert loop.run_until_complete(main()) == 'done'
    assert loop.time() - t0 < 5


def test_nan_timer_does_not_hide_later_timers(flavor, loop):
    calls = []
    loop.call_later(NAN, calls.append, 'nan')
    loop.call_later(0.02, calls.append, 'later')
    loop.run_until_complete(asyncio.sleep(0.05))
    assert sorted(calls) == ['later', 'nan']


# -- odd fd numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize('fd', [2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64])
@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_add_reader_huge_fd(loop, fd, method):
    with pytest.raises(OverflowError) as exc:
        getattr(loop, method)(fd, print)
    assert str(exc.value) == 'Python int too large to convert to C int'


@pytest.mark.parametrize('fd', [-1, -2 ** 40])
def test_add_reader_negative_fd(loop, fd):
    with pytest.raises(ValueError) as exc:
        loop.add_reader(fd, print)
    assert str(exc.value) == f'Invalid file descriptor: {fd}'


@pytest.mark.parametrize('fd', [2 ** 31, 2 ** 40])
@pytest.mark.parametrize('method', ['remove_reader', 'remove_writer'])
def test_remove_reader_huge_fd(loop, fd, method):
    # never registered: nothing to remove
    assert getattr(loop, method)(fd) is False


@pytest.mark.parametrize('method', ['remove_reader', 'remove_writer'])
def test_remove_reader_negative_fd(loop, method):
    with pytest.raises(ValueError) as exc:
        getattr(loop, method)(-1)
    assert str(exc.value) == 'Invalid file descriptor: -1'
