"""run_in_executor / default executor / shutdown_default_executor, async generator hooks."""

import asyncio
import concurrent.futures
import gc
import inspect
import sys
import threading
import time
import warnings

import pytest

HAS_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 12)
# 3.12.0/3.12.1 accept timeout= but wait for the executor's shutdown before applying it to the join
# of the helper thread (so no warning); later versions wrap the wait in asyncio.timeout().
SHUTDOWN_TIMEOUT_ENFORCED = 'timeouts.timeout' in inspect.getsource(
    asyncio.BaseEventLoop.shutdown_default_executor)


# -- executors ----------------------------------------------------------------------------------

def test_run_in_executor_default(loop):
    main_thread = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident(), threading.current_thread().name

    fut = loop.run_in_executor(None, work, 2, 3)
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    result, tid, name = loop.run_until_complete(fut)
    assert result == 5
    assert tid != main_thread
    assert name.startswith('asyncio_')


def test_run_in_executor_exception(loop):
    def work():
        raise ZeroDivisionError('in thread')

    with pytest.raises(ZeroDivisionError, match='^in thread$'):
        loop.run_until_complete(loop.run_in_executor(None, work))


def test_run_in_executor_many_concurrent(loop):
    async def main():
        return await asyncio.gather(*[loop.run_in_executor(None, pow, i, 2) for i in range(50)])

    assert loop.run_until_complete(main()) == [i * i for i in range(50)]


def test_run_in_executor_blocking_wakes_loop(loop):
    # the loop waits on nothing but the executor result; the completion wakes it up
    loop.call_later(60, lambda: None)
    t0 = time.monotonic()
    assert loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0.1)) is None
    assert time.monotonic() - t0 < 3


def test_run_in_executor_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='custom') as ex:
        name = loop.run_until_complete(loop.run_in_executor(ex, lambda: threading.current_thread().name))
    assert name.startswith('custom')


def test_run_in_executor_process_like_executor(loop):
    class SyncExecutor(concurrent.futures.Executor):
        def submit(self, fn, *args):
            f = concurrent.futures.Future()
            f.set_result(fn(*args))
            return f

    assert loop.run_until_complete(loop.run_in_executor(SyncExecutor(), max, 3, 9)) == 9


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='mydefault')
    loop.set_default_executor(ex)
    name = loop.run_until_complete(loop.run_in_executor(None, lambda: threading.current_thread().name))
    assert name.startswith('mydefault')
    loop.run_until_complete(loop.shutdown_default_executor())
    assert ex._shutdown


def test_set_default_executor_type_check(loop):
    class NotThreadPool(concurrent.futures.Executor):
        pass

    with pytest.raises(TypeError, match='^executor must be ThreadPoolExecutor instance$'):
        loop.set_default_executor(NotThreadPool())


def test_run_in_executor_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.run_in_executor(None, print)


def test_run_in_executor_debug_checks(loop):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match=r'^coroutines cannot be used with run_in_executor\(\)$'):
        loop.run_in_executor(None, coro_func)


def test_shutdown_default_executor(loop):
    def work():
        time.sleep(0.05)
        return threading.current_thread()

    thread = loop.run_until_complete(loop.run_in_executor(None, work))
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match='^Executor shutdown has been called$'):
        loop.run_in_executor(None, print)
    # a given executor still works
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, pow, 2, 2)) == 4


def test_shutdown_default_executor_without_executor(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None
    with pytest.raises(RuntimeError, match='^Executor shutdown has been called$'):
        loop.run_in_executor(None, print)


def test_shutdown_default_executor_timeout(loop):
    started = threading.Event()

    def blocked():
        started.set()
        time.sleep(0.5)

    fut = loop.run_in_executor(None, blocked)
    started.wait(5)
    if HAS_SHUTDOWN_TIMEOUT:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter('always')
            t0 = time.monotonic()
            loop.run_until_complete(loop.shutdown_default_executor(timeout=0.1))
            elapsed = time.monotonic() - t0
        msgs = [str(w.message) for w in rec if w.category is RuntimeWarning]
        if SHUTDOWN_TIMEOUT_ENFORCED:
            assert elapsed < 0.4
            assert msgs == ['The executor did not finishing joining its threads within 0.1 seconds.']
        else:
            assert elapsed >= 0.3
            assert msgs == []
    else:
        with pytest.raises(TypeError, match='timeout'):
            loop.shutdown_default_executor(timeout=0.1)
    loop.run_until_complete(fut)


def test_shutdown_default_executor_timeout_not_reached(loop):
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0.01))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        if HAS_SHUTDOWN_TIMEOUT:
            loop.run_until_complete(loop.shutdown_default_executor(timeout=5))
        else:
            loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match='^Executor shutdown has been called$'):
        loop.run_in_executor(None, print)


def test_executor_callback_from_thread_via_future(loop):
    # concurrent.futures.Future completion in a worker thread -> call_soon_threadsafe into the loop
    cf = concurrent.futures.Future()
    afut = asyncio.wrap_future(cf, loop=loop)
    threading.Timer(0.05, cf.set_result, args=('from timer thread',)).start()
    assert loop.run_until_complete(afut) == 'from timer thread'


def test_run_coroutine_threadsafe(loop):
    results = []

    async def coro(x):
        await asyncio.sleep(0.001)
        return x * 3

    def worker():
        results.append(asyncio.run_coroutine_threadsafe(coro(7), loop).result(5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    assert results == [21]


# -- async generators ---------------------------------------------------------------------------

def test_asyncgen_hooks_installed_while_running_and_restored(loop):
    calls = []

    def firstiter(agen):
        calls.append('outer firstiter')

    def finalizer(agen):
        calls.append('outer finalizer')

    old = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    try:
        seen = []

        async def main():
            hooks = sys.get_asyncgen_hooks()
            seen.append((hooks.firstiter, hooks.finalizer))

        loop.run_until_complete(main())
        firstiter_in, finalizer_in = seen[0]
        assert firstiter_in is not None and firstiter_in is not firstiter
        assert finalizer_in is not None and finalizer_in is not finalizer
        assert getattr(firstiter_in, '__self__', None) is loop
        assert getattr(finalizer_in, '__self__', None) is loop
        hooks = sys.get_asyncgen_hooks()
        assert hooks.firstiter is firstiter
        assert hooks.finalizer is finalizer
    finally:
        sys.set_asyncgen_hooks(*old)
    assert calls == []


def test_asyncgen_hooks_restored_after_base_exception(loop):
    old = sys.get_asyncgen_hooks()

    def boom():
        raise KeyboardInterrupt

    loop.call_soon(boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert sys.get_asyncgen_hooks() == old


def test_shutdown_asyncgens_finalizes_unfinished(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append(('finalized', asyncio.get_running_loop() is loop))

    g = agen()

    async def main():
        return await g.__anext__()

    assert loop.run_until_complete(main()) == 1
    assert events == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == [('finalized', True)]
    del g


def test_shutdown_asyncgens_without_generators(loop):
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None


def test_asyncgen_garbage_collected_while_running_is_finalized_on_loop(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append(('finalized', asyncio.get_running_loop() is loop))

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)
        return list(events)

    assert loop.run_until_complete(main()) == [('finalized', True)]


@pytest.mark.expect_exception_handler
def test_shutdown_asyncgens_error_reaches_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError('in finally')

    g = agen()

    async def main():
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    ctx = contexts[0]
    assert set(ctx) == {'message', 'exception', 'asyncgen'}
    assert ctx['message'] == f'an error occurred during closing of asynchronous generator {g!r}'
    assert isinstance(ctx['exception'], ValueError)
    assert ctx['asyncgen'] is g


def test_asyncgen_first_iterated_after_shutdown_warns(loop):
    async def agen():
        yield 1

    loop.run_until_complete(loop.shutdown_asyncgens())
    g = agen()

    async def main():
        return await g.__anext__()

    with pytest.warns(ResourceWarning) as rec:
        assert loop.run_until_complete(main()) == 1
    msgs = [str(w.message) for w in rec if w.category is ResourceWarning]
    assert msgs == [f'asynchronous generator {g!r} was scheduled after loop.shutdown_asyncgens() call']
    loop.run_until_complete(g.aclose())


def test_asyncio_run_style_shutdown(flavor):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append('agen finalized')

    keep = []

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()
        asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.01)
        return 'done'

    assert flavor.run(main()) == 'done'
    assert events == ['agen finalized']
