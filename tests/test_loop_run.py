"""run_forever / run_until_complete / stop / close / is_running / is_closed / time, and the loop's
registration as the running loop."""

import asyncio
import concurrent.futures
import threading
import time

import pytest

from conftest import mask_loop_name


# -- run_until_complete -------------------------------------------------------------------------

def test_run_until_complete_coroutine_result(loop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(main(21)) == 42
    assert not loop.is_running()


def test_run_until_complete_coroutine_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise ValueError('boom')

    with pytest.raises(ValueError, match='^boom$'):
        loop.run_until_complete(main())
    # the loop is still usable
    assert loop.run_until_complete(asyncio.sleep(0, 'ok')) == 'ok'


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, 'done')
    assert loop.run_until_complete(fut) == 'done'


def test_run_until_complete_future_exception(loop):
    fut = loop.create_future()
    exc = KeyError('k')
    loop.call_soon(fut.set_exception, exc)
    with pytest.raises(KeyError) as ei:
        loop.run_until_complete(fut)
    assert ei.value is exc


def test_run_until_complete_future_set_from_thread(loop):
    fut = loop.create_future()

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert loop.run_until_complete(fut) == t.ident
    finally:
        t.join()


def test_run_until_complete_task(loop):
    async def main():
        await asyncio.sleep(0.001)
        return 'task result'

    task = loop.create_task(main())
    assert loop.run_until_complete(task) == 'task result'
    assert task.done()


def test_run_until_complete_task_exception(loop):
    async def main():
        raise RuntimeError('task failed')

    task = loop.create_task(main())
    with pytest.raises(RuntimeError, match='^task failed$'):
        loop.run_until_complete(task)


def test_run_until_complete_cancelled_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_before_future_completed(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match=r'^Event loop stopped before Future completed\.$'):
        loop.run_until_complete(fut)
    assert not fut.done()
    # it can be run again and completed afterwards
    loop.call_soon(fut.set_result, 1)
    assert loop.run_until_complete(fut) == 1


def test_run_until_complete_not_awaitable(loop):
    with pytest.raises(TypeError, match='An asyncio.Future, a coroutine or an awaitable is required'):
        loop.run_until_complete(42)


def test_run_until_complete_future_of_another_loop(flavor, loop):
    other = flavor.new_loop()
    try:
        fut = other.create_future()
        with pytest.raises(
                ValueError,
                match=r'^The future belongs to a different loop than the one specified as the loop argument$'):
            loop.run_until_complete(fut)
    finally:
        other.close()


# -- run_forever / stop -------------------------------------------------------------------------

def test_run_forever_until_stop(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_later(0.01, calls.append, 2)
    loop.call_later(0.02, loop.stop)
    loop.call_later(10, calls.append, 'never')
    loop.run_forever()
    assert calls == [1, 2]
    assert not loop.is_running()


def test_stop_runs_callbacks_scheduled_before_stop(loop):
    calls = []

    def a():
        calls.append('a')
        loop.call_soon(calls.append, 'scheduled by a')

    loop.call_soon(a)
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, 'b')
    loop.run_forever()
    # b was already in the ready queue of the iteration in which stop() was called
    assert calls == ['a', 'b']
    # what a scheduled during that last iteration runs on the next run
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['a', 'b', 'scheduled by a']


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []

    def a():
        calls.append('a')
        loop.call_soon(calls.append, 'next iteration')

    loop.call_soon(a)
    loop.call_soon(calls.append, 'b')
    loop.call_later(60, calls.append, 'timer')
    loop.stop()
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 5
    assert calls == ['a', 'b']
    loop.stop()
    loop.run_forever()
    assert calls == ['a', 'b', 'next iteration']


def test_stop_before_run_forever_nothing_scheduled_returns(loop):
    loop.stop()
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 5
    assert not loop.is_running()


def test_stop_called_twice_in_one_iteration(loop):
    calls = []
    loop.call_soon(loop.stop)
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, 1)
    loop.run_forever()
    assert calls == [1]
    # _stopping is reset: the next run_forever runs until the next stop()
    loop.call_soon(calls.append, 2)
    loop.call_later(0.01, calls.append, 3)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == [1, 2, 3]


# Only one re-entrant call per test: on 3.13.0 a failed nested run_forever() runs the cleanup of
# run_forever (unregistering the running loop), so a second call would not fail the same way.
RUN_METHODS = {
    'run_forever': lambda lp: lp.run_forever(),
    'run_until_complete': lambda lp: lp.run_until_complete(lp.create_future()),
}


@pytest.mark.parametrize('method', sorted(RUN_METHODS))
def test_run_reentrant_raises(loop, method):
    errors = []

    def cb():
        try:
            RUN_METHODS[method](loop)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ['This event loop is already running']


def test_run_until_complete_inside_running_coroutine(loop):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match='^This event loop is already running$'):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        return 'ok'

    assert loop.run_until_complete(main()) == 'ok'


@pytest.mark.parametrize('method', sorted(RUN_METHODS))
@pytest.mark.parametrize('inner_kind', ['same', 'other'])
def test_run_inside_another_running_loop(flavor, other_flavor, loop, inner_kind, method):
    inner = (flavor if inner_kind == 'same' else other_flavor).new_loop()
    errors = []

    def cb():
        try:
            RUN_METHODS[method](inner)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    try:
        loop.call_soon(cb)
        loop.run_forever()
    finally:
        inner.close()
    assert errors == ['Cannot run the event loop while another loop is running']


def test_is_running(loop):
    seen = []
    assert loop.is_running() is False

    def cb():
        seen.append(loop.is_running())
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [True]
    assert loop.is_running() is False

    async def main():
        return loop.is_running()

    assert loop.run_until_complete(main()) is True
    assert loop.is_running() is False


def test_running_loop_registration(loop):
    seen = []

    def cb():
        seen.append(asyncio.get_running_loop())
        seen.append(asyncio._get_running_loop())
        seen.append(asyncio.get_event_loop())

    async def main():
        seen.append(asyncio.get_running_loop())
        seen.append(asyncio.get_event_loop())
        loop.call_soon(cb)
        await asyncio.sleep(0.001)
        return asyncio.current_task().get_loop()

    assert loop.run_until_complete(main()) is loop
    assert seen == [loop] * 5
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError, match='^no running event loop$'):
        asyncio.get_running_loop()


def test_running_loop_unregistered_after_exception(loop):
    def cb():
        raise KeyboardInterrupt

    loop.call_soon(cb)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert asyncio._get_running_loop() is None
    assert not loop.is_running()


def test_set_event_loop_get_event_loop(loop):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        asyncio.set_event_loop(loop)
        assert asyncio.get_event_loop() is loop
        assert asyncio.get_event_loop_policy().get_event_loop() is loop
        asyncio.set_event_loop(None)


def test_running_loop_wins_over_current_loop(flavor, loop):
    other = flavor.new_loop()
    try:
        asyncio.set_event_loop(other)

        async def main():
            return asyncio.get_event_loop(), asyncio.get_running_loop()

        assert loop.run_until_complete(main()) == (loop, loop)
        assert asyncio.get_event_loop() is other
    finally:
        asyncio.set_event_loop(None)
        other.close()


def test_running_loop_in_other_thread_not_visible(loop):
    seen = []

    def other_thread():
        seen.append(asyncio._get_running_loop())

    def cb():
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [None]


# -- close --------------------------------------------------------------------------------------

def test_close_running_loop_raises(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ['Cannot close a running event loop']
    assert not loop.is_closed()
    assert loop.run_until_complete(asyncio.sleep(0, 'alive')) == 'alive'


def test_close_is_idempotent_and_is_closed(loop):
    assert loop.is_closed() is False
    loop.close()
    assert loop.is_closed() is True
    loop.close()
    assert loop.is_closed() is True


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shutdown_calls = []

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.shutdown_calls.append(wait)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def test_close_shuts_default_executor_down(loop):
    ex = RecordingExecutor(max_workers=1)
    loop.set_default_executor(ex)
    assert loop.run_until_complete(loop.run_in_executor(None, pow, 2, 5)) == 32
    loop.close()
    assert ex.shutdown_calls == [False]
    loop.close()
    assert ex.shutdown_calls == [False]
    ex.shutdown(wait=True)


def test_close_drops_pending_callbacks(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_later(0, calls.append, 2)
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.run_forever()
    assert calls == []


def test_run_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.run_forever()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.run_until_complete(coro)
    finally:
        coro.close()


def test_loop_repr(flavor, loop):
    assert mask_loop_name(repr(loop)) == '<LOOP running=False closed=False debug=False>'
    seen = []
    loop.call_soon(lambda: seen.append(mask_loop_name(repr(loop))))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['<LOOP running=True closed=False debug=False>']
    loop.set_debug(True)
    loop.close()
    assert mask_loop_name(repr(loop)) == '<LOOP running=False closed=True debug=True>'


def test_loop_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


# -- time ---------------------------------------------------------------------------------------

def test_time_is_monotonic_clock(loop):
    for _ in range(100):
        t0 = time.monotonic()
        lt = loop.time()
        t1 = time.monotonic()
        assert type(lt) is float
        assert t0 <= lt <= t1


def test_time_advances_while_running(loop):
    seen = []
    t0 = loop.time()
    loop.call_later(0.05, lambda: (seen.append(loop.time()), loop.stop()))
    loop.run_forever()
    assert seen[0] - t0 >= 0.05
    assert loop.time() >= seen[0]


def test_time_on_closed_loop(loop):
    loop.close()
    t0 = time.monotonic()
    assert t0 <= loop.time() <= time.monotonic()


# -- threads ------------------------------------------------------------------------------------

def test_loop_in_a_thread(flavor):
    result = []

    def thread_main():
        lp = flavor.new_loop()
        try:
            async def main():
                await asyncio.sleep(0.001)
                return asyncio.get_running_loop() is lp
            result.append(lp.run_until_complete(main()))
        finally:
            lp.close()

    t = threading.Thread(target=thread_main)
    t.start()
    t.join()
    assert result == [True]


def test_two_loops_in_two_threads(flavor):
    results = {}

    def thread_main(n):
        lp = flavor.new_loop()
        try:
            async def main():
                total = 0
                for i in range(50):
                    await asyncio.sleep(0)
                    total += i
                return total, asyncio.get_running_loop() is lp
            results[n] = lp.run_until_complete(main())
        finally:
            lp.close()

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: (1225, True) for n in range(4)}


def test_sleep_zero_and_gather(loop):
    order = []

    async def worker(name, n):
        for i in range(n):
            order.append((name, i))
            await asyncio.sleep(0)
        return name

    async def main():
        return await asyncio.gather(worker('a', 3), worker('b', 2))

    assert loop.run_until_complete(main()) == ['a', 'b']
    assert order == [('a', 0), ('b', 0), ('a', 1), ('b', 1), ('a', 2)]


def test_subclass_overrides_of_hot_methods_are_used(loop):
    # ferroloop binds some methods on the instance for speed; a subclass override must win.
    class Sub(type(loop)):
        def time(self):
            return 42.0

        def create_future(self):
            fut = super().create_future()
            fut.made_by_sub = True
            return fut

    sub = Sub()
    try:
        assert sub.time() == 42.0
        assert sub.create_future().made_by_sub
    finally:
        sub.close()
