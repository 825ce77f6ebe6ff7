"""create_task, create_future and get_debug as asyncio has them, whichever way they are called
(ferroloop binds direct fast-call entry points for them on each loop), and the task factory
kept by the loop."""

import asyncio
import contextvars
import gc
import weakref

import pytest

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
