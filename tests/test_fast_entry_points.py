"""create_task, create_future and get_debug as asyncio has them, whichever way they are called
(ferroloop gives them direct fast-call entry points, set on the Loop class), and the task factory
kept by the loop."""

import asyncio
import contextvars
import gc
import weakref

import pytest

import ferroloop

var = contextvars.ContextVar('var', default='default')


async def value(v):
    return v


def test_create_task_name_and_context_keywords(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'in ctx')

    async def read():
        return var.get()

    t1 = loop.create_task(read(), name='first')
    t2 = loop.create_task(read(), context=ctx)
    t3 = loop.create_task(read(), context=ctx, name='third')
    t4 = loop.create_task(value(4), name=None, context=None)
    results = loop.run_until_complete(asyncio.gather(t1, t2, t3, t4))
    assert results == ['default', 'in ctx', 'in ctx', 4]
    assert t1.get_name() == 'first' and t3.get_name() == 'third'
    assert t2.get_name().startswith('Task-')


@pytest.mark.parametrize('call, message', [
    (lambda lp, c: lp.create_task(c, nam='x'), r"unexpected keyword argument 'nam'"),
    (lambda lp, c: lp.create_task(c, 'name'), r'positional argument'),
    (lambda lp, c: lp.create_task(), r"missing 1 required positional argument: 'coro'"),
    (lambda lp, c: lp.create_task(coro=c), None),
])
def test_create_task_argument_errors(loop, call, message):
    coro = value(1)
    try:
        if message is None:  # by keyword: accepted
            task = call(loop, coro)
            assert loop.run_until_complete(task) == 1
            return
        with pytest.raises(TypeError, match=message):
            call(loop, coro)
    finally:
        coro.close()


def test_get_debug_and_create_future_take_no_arguments(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    with pytest.raises(TypeError):
        loop.get_debug(1)
    with pytest.raises(TypeError):
        loop.create_future(loop=loop)
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop


def test_task_factory_attribute(loop):
    calls = []

    def factory(lp, coro, **kw):
        calls.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    assert loop._task_factory is None
    loop.set_task_factory(factory)
    assert loop._task_factory is factory and loop.get_task_factory() is factory
    task = loop.create_task(value(7), name='n')
    assert loop.run_until_complete(task) == 7
    assert len(calls) == 1 and task.get_name() == 'n'
    loop._task_factory = None
    assert loop.get_task_factory() is None
    assert loop.run_until_complete(loop.create_task(value(8))) == 8
    assert len(calls) == 1


def test_cycle_through_task_factory_is_collected(flavor):
    lp = flavor.new_loop()

    def factory(loop_, coro, **kw):
        return asyncio.Task(coro, loop=loop_, **kw)

    factory.loop = lp  # loop -> factory -> loop
    lp.set_task_factory(factory)
    ref = weakref.ref(lp)
    lp.close()
    del lp, factory
    gc.collect()
    assert ref() is None


def test_entry_points_are_methods_of_the_class():
    # call_later, call_at, call_soon_threadsafe, create_task, create_future and get_debug are
    # method descriptors on ferroloop.Loop (not per-instance attributes): unbound calls work, a
    # non-loop `self` is refused, and the full argument parser still answers unusual calls.
    loop = ferroloop.Loop()
    try:
        _check_class_level_entry_points(loop)
    finally:
        loop.close()


def _check_class_level_entry_points(loop):
    cls = type(loop)
    for name in ('call_later', 'call_at', 'call_soon_threadsafe', 'create_task',
                 'create_future', 'get_debug'):
        assert name not in loop.__dict__, name
        assert name in cls.__dict__, name
        assert getattr(loop, name).__self__ is loop
    assert cls.get_debug(loop) is loop.get_debug()
    fut = cls.create_future(loop)
    assert fut.get_loop() is loop
    seen = []
    cls.call_later(loop, 0, seen.append, 'later')
    cls.call_soon_threadsafe(loop, seen.append, 'threadsafe')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['threadsafe', 'later']
    with pytest.raises(TypeError):
        cls.call_later(object(), 0, print)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'bogus'"):
        loop.call_later(0, print, bogus=1)


def test_subclass_overriding_class_level_entry_points_is_used(loop):
    # An override in a subclass comes first in the MRO, and super() reaches the fast entry point.
    seen = []

    class Sub(type(loop)):
        def create_future(self):
            seen.append('create_future')
            return super().create_future()

        def call_later(self, delay, callback, *args, context=None):
            seen.append('call_later')
            return super().call_later(delay, callback, *args, context=context)

    sub = Sub()
    try:
        async def main():
            await asyncio.sleep(0.001)
            return 'done'
        assert sub.run_until_complete(main()) == 'done'
    finally:
        sub.close()
    assert 'create_future' in seen and 'call_later' in seen


@pytest.mark.parametrize('name', ['call_soon', 'time'])
def test_assigning_and_deleting_per_loop_methods(loop, name):
    # call_soon and time behave as instance attributes would on asyncio's loop (ferroloop keeps
    # them in per-loop slots read by a data descriptor): deleting with nothing assigned raises,
    # an assignment is used (by tasks too), and deleting it brings the loop's own method back.
    own = getattr(loop, name)
    assert getattr(loop, name) == own
    with pytest.raises(AttributeError, match=name):
        delattr(loop, name)
    assert getattr(loop, name) == own
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return own(*args, **kwargs)

    setattr(loop, name, spy)
    assert getattr(loop, name) is spy

    async def main():
        await asyncio.sleep(0)
        return loop.time()

    loop.run_until_complete(main())
    assert calls  # the C Task's step scheduling, or main's loop.time()
    delattr(loop, name)
    assert getattr(loop, name) == own
    with pytest.raises(AttributeError, match=name):
        delattr(loop, name)
    other = type(loop)()
    try:
        assert getattr(other, name) != own  # bound to its own loop
    finally:
        other.close()


def test_mock_patch_of_per_loop_methods_is_undone(loop):
    from unittest import mock
    own_soon, own_time = loop.call_soon, loop.time
    with mock.patch.object(loop, 'time', return_value=123.0), \
            mock.patch.object(loop, 'call_soon') as soon:
        assert loop.time() == 123.0
        loop.call_soon(print)
        soon.assert_called_once_with(print)
    assert loop.call_soon == own_soon and loop.time == own_time
    assert loop.time() != 123.0


def test_per_loop_methods_through_the_class(loop):
    # Class attribute access gives a method that takes the loop, as a function on the class
    # does (ferroloop.Loop keeps these two in per-loop slots read by a data descriptor).
    cls = type(loop)
    seen = []
    cls.call_soon(loop, seen.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [1]
    assert abs(cls.time(loop) - loop.time()) < 1.0
    with pytest.raises((TypeError, AttributeError)):
        cls.call_soon(object(), print)


def test_per_loop_method_slots_on_the_class():
    # On ferroloop.Loop the two are data descriptors: a non-loop object is refused, and a loop
    # whose slots hold a cycle is still collected.
    cls = ferroloop.Loop
    for name in ('call_soon', 'time'):
        descr = cls.__dict__[name]
        assert getattr(cls, name) is getattr(ferroloop._ferroloop.LoopCore, name)
        assert name in repr(descr)
        with pytest.raises(TypeError):
            descr.__get__(object())
        with pytest.raises(TypeError):
            descr.__set__(object(), 1)
    lp = ferroloop.Loop()
    lp.call_soon = lambda *a, **k: lp  # slot -> lambda -> loop
    ref = weakref.ref(lp)
    lp.close()
    del lp
    gc.collect()
    assert ref() is None
