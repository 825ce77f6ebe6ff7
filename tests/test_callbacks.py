"""call_soon / call_soon_threadsafe, Handle objects, contexts, bad input."""

import asyncio
import contextvars
import functools
import gc
import re
import sys
import threading
import time
import weakref

import pytest

from conftest import args_shown, fmt_cb, lineno, src

var = contextvars.ContextVar('var', default='default')


def cb():
    pass


def cb_args(*args):
    pass


def get_context(handle):
    # asyncio.Handle.get_context() is 3.12+; on 3.11 compare the _context slot
    if sys.version_info >= (3, 12):
        return handle.get_context()
    return handle._context


# -- ordering -----------------------------------------------------------------------------------

def test_call_soon_fifo(loop):
    calls = []
    for i in range(100):
        loop.call_soon(calls.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == list(range(100))


def test_call_soon_args(loop):
    calls = []
    loop.call_soon(lambda *a: calls.append(a), 1, 'two', None)
    loop.call_soon(calls.append, ())
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [(1, 'two', None), ()]


def test_callbacks_scheduled_by_callbacks_run_next_iteration(loop):
    calls = []

    def a():
        calls.append('a')
        loop.call_soon(calls.append, 'a2')

    def b():
        calls.append('b')
        loop.call_soon(calls.append, 'b2')

    loop.call_soon(a)
    loop.call_soon(b)
    loop.call_soon(calls.append, 'c')
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ['a', 'b', 'c', 'a2', 'b2']


def test_call_soon_and_threadsafe_interleave_fifo(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_soon_threadsafe(calls.append, 2)
    loop.call_soon(calls.append, 3)
    loop.call_soon_threadsafe(calls.append, 4)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2, 3, 4]


def test_due_timers_run_after_already_ready_callbacks(loop):
    # asyncio appends due timers to the ready queue behind the callbacks already there
    calls = []
    loop.call_soon(calls.append, 'soon1')
    loop.call_later(0, calls.append, 'later0')
    loop.call_later(-1, calls.append, 'later-1')
    loop.call_soon(calls.append, 'soon2')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls[:2] == ['soon1', 'soon2']
    assert sorted(calls[2:]) == ['later-1', 'later0']
    assert calls.index('later-1') < calls.index('later0')


# -- Handle objects -----------------------------------------------------------------------------

def test_call_soon_returns_handle(loop):
    h = loop.call_soon(cb)
    assert type(h).__name__ == 'Handle'
    assert h.cancelled() is False
    assert not hasattr(h, 'when')
    assert h._callback is cb
    assert h._args == ()
    assert h._loop is loop
    assert h._source_traceback is None


def test_handle_cancel(loop):
    calls = []
    h = loop.call_soon(calls.append, 1)
    assert h.cancel() is None
    assert h.cancelled() is True
    h.cancel()
    assert h.cancelled() is True
    # asyncio drops the callback and arguments of a cancelled handle (outside debug mode)
    assert h._callback is None
    assert h._args is None
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == []


def test_cancel_from_another_callback_same_iteration(loop):
    calls = []
    h2 = None

    def first():
        calls.append('first')
        h2.cancel()

    loop.call_soon(first)
    h2 = loop.call_soon(calls.append, 'second')
    loop.call_soon(calls.append, 'third')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['first', 'third']


def test_handle_repr(loop):
    h = loop.call_soon(cb)
    assert repr(h) == f'<Handle cb() at {src(cb)}>'
    assert str(h) == repr(h)
    h.cancel()
    assert repr(h) == '<Handle cancelled>'


def test_handle_repr_with_args(loop):
    h = loop.call_soon(cb_args, 1, 'x')
    shown = "1, 'x'" if args_shown(False) else ''
    assert repr(h) == f'<Handle cb_args({shown}) at {src(cb_args)}>'
    assert repr(h) == f'<Handle {fmt_cb(cb_args, (1, "x"))}>'


def test_handle_repr_partial_and_method_and_builtin(loop):
    p = functools.partial(cb_args, 5)
    h = loop.call_soon(p)
    assert repr(h) == f'<Handle {fmt_cb(p, ())}>'
    assert repr(h).endswith(f' at {src(cb_args)}>')

    class Obj:
        def meth(self):
            pass

    o = Obj()
    h = loop.call_soon(o.meth)
    assert repr(h) == f'<Handle {fmt_cb(o.meth, ())}>'
    assert repr(h).startswith('<Handle test_handle_repr_partial_and_method_and_builtin.<locals>.Obj.meth()')

    h = loop.call_soon(print)
    assert repr(h) == '<Handle print()>'

    lam = lambda: None  # noqa: E731
    h = loop.call_soon(lam)
    assert repr(h) == f'<Handle {fmt_cb(lam, ())}>'
    assert '<lambda>()' in repr(h)


def test_handle_repr_in_debug_mode(loop):
    loop.set_debug(True)
    h = loop.call_soon(cb_args, 7); line = lineno()  # noqa: E702
    assert repr(h) == f'<Handle cb_args(7) at {src(cb_args)} created at {__file__}:{line}>'
    h.cancel()
    # debug mode keeps the callback in the repr of a cancelled handle (asyncio: Handle._repr)
    assert repr(h) == f'<Handle cancelled cb_args(7) at {src(cb_args)} created at {__file__}:{line}>'
    assert h._callback is None


def test_handle_after_run(flavor, loop):
    # asyncio leaves a handle untouched when it has run: same repr, same _callback/_args.
    # ferroloop releases the callback and arguments once run (README compatibility page:
    # handles are not GC-tracked, releasing breaks cycles), as asyncio does on cancel().
    calls = []
    h = loop.call_soon(cb_args, 1)
    th = loop.call_later(0, cb_args, 2)
    before = repr(h), repr(th)
    loop.call_soon(calls.append, 'ran')
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ['ran']
    assert not h.cancelled() and not th.cancelled()
    if flavor.name == 'asyncio':
        assert (repr(h), repr(th)) == before
        assert h._callback is cb_args and h._args == (1,)
        assert th._callback is cb_args and th._args == (2,)
    else:
        assert h._callback is None and h._args is None
        assert th._callback is None and th._args is None
        assert repr(h) == '<Handle>'
        assert re.fullmatch(r'<TimerHandle when=[0-9.]+>', repr(th)), repr(th)


def test_handle_after_run_frees_cycle(loop):
    # The reason for the release above: an object holding its own timer handle is collectable
    # once the timer fired, with or without the cyclic GC seeing the handle.
    class Owner:
        def __init__(self, lp):
            self.timer = lp.call_soon(self.fire)

        def fire(self):
            pass

    o = Owner(loop)
    ref = weakref.ref(o)
    loop.call_soon(loop.stop)
    loop.run_forever()
    del o
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize('how', ['call_soon', 'call_soon_with_many_waiting', 'call_later'])
def test_cycle_through_handle_context_is_collected(loop, how):
    # ferroloop keeps a handle's own copy of the context away from the cyclic GC while the handle
    # is pending (timers; call_soon when many callbacks wait); a cycle made through that context
    # must still be collected once the handle is gone, and the context must be an ordinary
    # (tracked) object for whoever still holds it.
    class Box:
        pass

    refs = []

    def callback():
        b = Box()
        b.ctx = get_context(h)
        var.set(b)  # the context now references b, which references the context
        refs.append(weakref.ref(b))

    if how == 'call_soon_with_many_waiting':
        for _ in range(300):
            loop.call_soon(cb)
    if how == 'call_later':
        h = loop.call_later(0, callback)
        kept = loop.call_later(0, cb)
    else:
        h = loop.call_soon(callback)
        kept = loop.call_soon(cb)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert refs
    ctx = get_context(kept)
    del h, kept
    gc.collect()
    assert refs and refs[0]() is None
    assert gc.is_tracked(ctx)


def test_handles_created_after_many_ran_are_fresh(loop):
    # ferroloop reuses the objects of handles nobody referenced any more; a new handle must never
    # show anything of an old one: not cancelled, its own callback, arguments and context.
    ran = []
    ctx_var = contextvars.ContextVar('ctx_var')

    def self_cancelling(i):
        ran.append(i)
        holder[i].cancel()  # cancelled while running, then forgotten
        holder[i] = None

    holder = {}
    for i in range(300):
        holder[i] = loop.call_soon(self_cancelling, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == list(range(300))

    seen = []
    ctx = contextvars.copy_context()
    ctx.run(ctx_var.set, 'mine')
    handles = [loop.call_soon(lambda j=j: seen.append((j, ctx_var.get('none'))), context=ctx)
               for j in range(3)]
    handles.append(loop.call_soon(cb_args, 'x', 'y'))
    assert not any(h.cancelled() for h in handles)
    assert handles[3]._args == ('x', 'y') and handles[3]._callback is cb_args
    assert get_context(handles[0]) is ctx
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [(0, 'mine'), (1, 'mine'), (2, 'mine')]


def test_burst_of_handles_reused_in_next_burst(flavor, loop):
    # Thousands of handles pending at once (a producer thread ahead of the loop) go back to the
    # handle pool together; the next burst reuses them: each must be fresh, with its own
    # arguments and its own copy of its producer's context.
    n = 3000
    ctx_var = contextvars.ContextVar('ctx_var', default='unset')

    for burst in range(3):
        seen = []
        cancelled = []

        def callback(i):
            seen.append((i, ctx_var.get()))
            ctx_var.set('changed by callback')

        def produce():
            handles = []
            for i in range(n):
                ctx_var.set(f'{burst}-{i}')
                h = loop.call_soon_threadsafe(callback, i)
                if i % 500 == 0:
                    h.cancel()
                    cancelled.append(i)
                handles.append(h)
            assert [h.cancelled() for h in handles].count(True) == len(cancelled)
            assert handles[1]._args == (1,) and handles[1]._callback is callback
            loop.call_soon_threadsafe(loop.stop)

        t = threading.Thread(target=produce)
        t.start()
        t.join()
        loop.run_forever()
        expected = [(i, f'{burst}-{i}') for i in range(n) if i not in cancelled]
        assert seen == expected
    loop.close()
    # The pool is trimmed on close; a new loop still gets fresh handles.
    other = flavor.new_loop()
    try:
        got = []
        h = other.call_soon(got.append, 'x')
        assert not h.cancelled() and h._args == ('x',)
        other.call_soon(other.stop)
        other.run_forever()
        assert got == ['x']
    finally:
        other.close()


def test_weakly_referenced_handle_dies(loop):
    refs = []

    def make():
        h = loop.call_soon(cb)
        refs.append(weakref.ref(h))

    for _ in range(5):
        make()
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert all(r() is None for r in refs)


def test_handle_weakref(loop):
    h = loop.call_soon(cb)
    r = weakref.ref(h)
    assert r() is h


# -- contexts -----------------------------------------------------------------------------------

def test_callback_runs_in_copy_of_callers_context(loop):
    seen = []

    def callback():
        seen.append(var.get())
        var.set('set by callback')
        seen.append(var.get())

    var.set('before')
    h = loop.call_soon(callback)
    var.set('after call_soon')
    loop.call_soon(loop.stop)
    try:
        loop.run_forever()
        assert seen == ['before', 'set by callback']
        assert var.get() == 'after call_soon'
        ctx = get_context(h)
        assert isinstance(ctx, contextvars.Context)
        assert ctx[var] == 'set by callback'
    finally:
        var.set('default')


def test_each_handle_gets_its_own_context_copy(loop):
    seen = []

    def setter():
        var.set('from setter')

    def getter():
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(getter)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['default']


def test_call_soon_context_argument(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'in ctx')
    seen = []

    def callback(tag):
        seen.append((tag, var.get()))
        var.set(f'mutated by {tag}')

    h1 = loop.call_soon(callback, 'a', context=ctx)
    h2 = loop.call_soon(callback, 'b', context=ctx)
    h3 = loop.call_soon_threadsafe(callback, 'c', context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [('a', 'in ctx'), ('b', 'mutated by a'), ('c', 'mutated by b')]
    assert ctx[var] == 'mutated by c'
    assert var.get() == 'default'
    assert get_context(h1) is ctx
    assert get_context(h2) is ctx
    assert get_context(h3) is ctx


def test_call_later_and_call_at_context_argument(loop):
    ctx = contextvars.copy_context()
    seen = []

    def callback(tag):
        seen.append((tag, var.get()))
        var.set(tag)

    h1 = loop.call_later(0.001, callback, 'later', context=ctx)
    h2 = loop.call_at(loop.time() + 0.002, callback, 'at', context=ctx)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert seen == [('later', 'default'), ('at', 'later')]
    assert ctx[var] == 'at'
    assert get_context(h1) is ctx
    assert get_context(h2) is ctx


def test_context_none_means_copy(loop):
    var.set('outer')
    try:
        h = loop.call_soon(cb, context=None)
        ctx = get_context(h)
        assert isinstance(ctx, contextvars.Context)
        assert ctx[var] == 'outer'
    finally:
        var.set('default')


# -- call_soon_threadsafe -----------------------------------------------------------------------

def test_call_soon_threadsafe_wakes_blocked_loop(loop):
    loop.call_later(60, cb)
    stopped_from = []

    def worker():
        time.sleep(0.2)
        loop.call_soon_threadsafe(lambda: (stopped_from.append(threading.get_ident()), loop.stop()))

    t = threading.Thread(target=worker)
    t0 = time.monotonic()
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
    elapsed = time.monotonic() - t0
    assert elapsed < 3, f'loop woke up after {elapsed:.2f}s'
    assert stopped_from == [threading.get_ident()]


def test_call_soon_threadsafe_wakes_loop_with_nothing_scheduled(loop):
    def worker():
        time.sleep(0.2)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t0 = time.monotonic()
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
    assert time.monotonic() - t0 < 3


def test_call_soon_threadsafe_stop_directly(loop):
    # the callback is loop.stop itself, scheduled while the loop waits on a 60 s timer
    loop.call_later(60, cb)
    t = threading.Timer(0.1, loop.call_soon_threadsafe, args=(loop.stop,))
    t0 = time.monotonic()
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
    assert time.monotonic() - t0 < 3


def test_call_soon_threadsafe_many_threads(loop):
    n_threads, per_thread = 8, 200
    results = []
    done = []

    def worker(n):
        for i in range(per_thread):
            loop.call_soon_threadsafe(results.append, (n, i))
        loop.call_soon_threadsafe(done.append, n)

    def check_done():
        if len(done) == n_threads:
            loop.stop()
        else:
            loop.call_later(0.005, check_done)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(n_threads)]
    loop.call_soon(lambda: [t.start() for t in threads])
    loop.call_soon(check_done)
    loop.run_forever()
    for t in threads:
        t.join()
    assert len(results) == n_threads * per_thread
    for n in range(n_threads):
        # per-thread FIFO order
        assert [i for (m, i) in results if m == n] == list(range(per_thread))


def test_call_soon_threadsafe_returns_handle(loop):
    h = loop.call_soon_threadsafe(cb)
    assert type(h).__name__ == 'Handle'
    assert repr(h) == f'<Handle cb() at {src(cb)}>'
    h.cancel()
    assert h.cancelled()


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_calls_on_closed_loop(loop, method):
    loop.close()
    args = {'call_soon': (), 'call_soon_threadsafe': (), 'call_later': (0,), 'call_at': (1.0,)}[method]
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        getattr(loop, method)(*args, cb)


@pytest.mark.expect_exception_handler
def test_non_callable_callback_without_debug(loop):
    # outside debug mode asyncio doesn't check the callback: the TypeError happens when it runs and
    # goes to the exception handler
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    h = loop.call_soon(1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx['message'] == 'Exception in callback 1()'
    assert type(ctx['exception']) is TypeError
    assert str(ctx['exception']) == "'int' object is not callable"
    assert ctx['handle'] is h


@pytest.mark.expect_exception_handler
def test_coroutine_passed_to_call_soon_without_debug(loop):
    async def coro_func():
        pass

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    coro = coro_func()
    try:
        loop.call_soon(coro)
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        coro.close()
    assert len(contexts) == 1
    assert type(contexts[0]['exception']) is TypeError
    assert str(contexts[0]['exception']) == "'coroutine' object is not callable"


@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_debug_checks_callback(loop, method):
    loop.set_debug(True)
    pre = {'call_soon': (), 'call_soon_threadsafe': (), 'call_later': (0,), 'call_at': (1.0,)}[method]
    # asyncio's call_later() delegates to call_at(), whose name is in the message
    name = 'call_at' if method == 'call_later' else method

    async def coro_func():
        pass

    coro = coro_func()
    try:
        with pytest.raises(TypeError) as ei:
            getattr(loop, method)(*pre, coro)
        assert str(ei.value) == f'coroutines cannot be used with {name}()'
    finally:
        coro.close()
    with pytest.raises(TypeError) as ei:
        getattr(loop, method)(*pre, coro_func)
    assert str(ei.value) == f'coroutines cannot be used with {name}()'
    with pytest.raises(TypeError) as ei:
        getattr(loop, method)(*pre, 'not callable')
    assert str(ei.value) == f"a callable object was expected by {name}(), got 'not callable'"
    with pytest.raises(TypeError) as ei:
        getattr(loop, method)(*pre, None)
    assert str(ei.value) == f'a callable object was expected by {name}(), got None'


def test_call_soon_without_callback(loop):
    with pytest.raises(TypeError):
        loop.call_soon()


def test_call_soon_unknown_keyword(loop):
    with pytest.raises(TypeError):
        loop.call_soon(cb, foo=1)


@pytest.mark.expect_exception_handler
def test_handle_run_directly(loop):
    calls = []
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    var.set('caller')
    try:
        h = loop.call_soon(lambda x: calls.append((x, var.get())), 'arg')
        var.set('changed')
        h._run()
        assert calls == [('arg', 'caller')]
        bad = loop.call_soon(cb_args, 1, 2)
        bad2 = loop.call_soon(lambda: 1 / 0)
        bad2._run()
        assert len(contexts) == 1
        assert isinstance(contexts[0]['exception'], ZeroDivisionError)
        assert contexts[0]['handle'] is bad2
        bad.cancel()
    finally:
        var.set('default')


def test_many_callbacks(loop):
    n = 100_000
    counter = [0]

    def inc():
        counter[0] += 1

    for _ in range(n):
        loop.call_soon(inc)
    loop.call_soon(loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert counter[0] == n
    assert time.monotonic() - t0 < 10


def test_callback_chain(loop):
    # a callback rescheduling itself runs once per iteration
    count = [0]

    def step():
        count[0] += 1
        if count[0] < 10_000:
            loop.call_soon(step)
        else:
            loop.stop()

    loop.call_soon(step)
    loop.run_forever()
    assert count[0] == 10_000


def test_current_handle_in_debug_mode(loop):
    loop.set_debug(True)
    seen = []
    h = loop.call_soon(lambda: seen.append(loop._current_handle))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [h]
    assert loop._current_handle is None


@pytest.mark.expect_exception_handler
def test_stop_and_exception_in_same_callback(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def cb_stop_and_fail():
        loop.stop()
        raise ValueError('after stop')

    loop.call_soon(cb_stop_and_fail)
    loop.run_forever()
    assert len(contexts) == 1
    assert not loop.is_running()


def test_subclass_overriding_call_soon_is_used(loop):
    # Tasks schedule their steps with loop.call_soon: an override in a subclass must see them
    # (ferroloop binds call_soon on the instance for speed, but only when it is not overridden).
    seen = []

    class Sub(type(loop)):
        def call_soon(self, callback, *args, context=None):
            seen.append(callback)
            return super().call_soon(callback, *args, context=context)

    sub = Sub()
    try:
        async def main():
            await asyncio.sleep(0)
            return 'done'
        assert sub.run_until_complete(main()) == 'done'
    finally:
        sub.close()
    assert len(seen) >= 2  # the first step and the step after sleep(0)
