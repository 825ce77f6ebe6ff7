"""create_future / create_task / task factories."""

import asyncio
import contextvars
import inspect
import re
import sys

import pytest

var = contextvars.ContextVar('var', default='default')

HAS_EAGER = hasattr(asyncio, 'eager_task_factory')  # 3.12+
CREATE_TASK_EAGER_START = 'eager_start' in inspect.signature(
    asyncio.BaseEventLoop.create_task).parameters or sys.version_info >= (3, 14)


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 3)
    assert loop.run_until_complete(fut) == 3


def test_future_callbacks_run_in_loop_in_order(loop):
    fut = loop.create_future()
    calls = []
    fut.add_done_callback(lambda f: calls.append(('cb1', f.result(), asyncio.get_running_loop() is loop)))
    fut.add_done_callback(lambda f: calls.append(('cb2', f.result(), asyncio.get_running_loop() is loop)))

    async def main():
        fut.set_result('r')
        assert calls == []  # done callbacks are scheduled with call_soon, not called synchronously
        await asyncio.sleep(0)
        return list(calls)

    assert loop.run_until_complete(main()) == [('cb1', 'r', True), ('cb2', 'r', True)]


def test_future_done_callback_context(loop):
    fut = loop.create_future()
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'ctx value')
    seen = []
    fut.add_done_callback(lambda f: seen.append(var.get()), context=ctx)
    loop.call_soon(fut.set_result, None)
    loop.run_until_complete(fut)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ['ctx value']


def test_create_task_default_name(loop):
    async def coro():
        return 1

    task = loop.create_task(coro())
    assert isinstance(task, asyncio.Task)
    assert re.fullmatch(r'Task-\d+', task.get_name())
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 1


def test_create_task_name(loop):
    async def coro():
        return asyncio.current_task().get_name()

    task = loop.create_task(coro(), name='my task')
    assert task.get_name() == 'my task'
    assert loop.run_until_complete(task) == 'my task'


def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'given')

    async def coro():
        seen = var.get()
        var.set('changed by task')
        await asyncio.sleep(0)
        return seen, var.get()

    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == ('given', 'changed by task')
    assert ctx[var] == 'changed by task'
    assert var.get() == 'default'


def test_create_task_copies_current_context(loop):
    async def coro():
        seen = var.get()
        var.set('inside')
        return seen

    var.set('outer')
    try:
        task = loop.create_task(coro())
        var.set('changed after create_task')
        assert loop.run_until_complete(task) == 'outer'
        assert var.get() == 'changed after create_task'
    finally:
        var.set('default')


def test_create_task_on_closed_loop(loop):
    loop.close()

    async def coro():
        pass

    c = coro()
    try:
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.create_task(c)
    finally:
        c.close()


def test_task_steps_interleave(loop):
    order = []

    async def worker(name):
        for i in range(3):
            order.append(f'{name}{i}')
            await asyncio.sleep(0)

    async def main():
        t1 = loop.create_task(worker('a'))
        t2 = loop.create_task(worker('b'))
        await t1
        await t2

    loop.run_until_complete(main())
    assert order == ['a0', 'b0', 'a1', 'b1', 'a2', 'b2']


def test_task_cancel(loop):
    events = []

    async def sleeper():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append('cancelled')
            raise

    async def main():
        t = loop.create_task(sleeper())
        await asyncio.sleep(0.01)
        t.cancel('because')
        with pytest.raises(asyncio.CancelledError):
            await t
        return t.cancelled()

    assert loop.run_until_complete(main()) is True
    assert events == ['cancelled']


def test_wait_for_and_timeout(loop):
    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(60), 0.02)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await asyncio.sleep(60)
        return asyncio.current_task().cancelling()

    t0 = loop.time()
    assert loop.run_until_complete(main()) == 0
    assert 0.04 <= loop.time() - t0 < 5


def test_sleep_durations(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.05)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.05


def test_current_task_and_all_tasks(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        t = loop.create_task(child())
        tasks = asyncio.all_tasks()
        await t
        return me, t, tasks

    me, t, tasks = loop.run_until_complete(main())
    assert tasks == {me, t}
    assert asyncio.all_tasks(loop) == set()


# -- task factories -----------------------------------------------------------------------------

def test_task_factory(loop):
    created = []

    def factory(lp, coro, **kwargs):
        created.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return 5

    task = loop.create_task(coro(), name='named')
    assert task.get_name() == 'named'
    assert loop.run_until_complete(task) == 5
    assert created[0][0] is loop

    # run_until_complete(coroutine) goes through the factory too
    assert loop.run_until_complete(coro()) == 5
    assert len(created) == 2

    ctx = contextvars.copy_context()
    loop.run_until_complete(loop.create_task(coro(), context=ctx))
    assert created[2][1].get('context') is ctx

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(coro())
    assert len(created) == 3


def test_task_factory_returning_custom_task(loop):
    class MyTask(asyncio.Task):
        pass

    loop.set_task_factory(lambda lp, coro, **kw: MyTask(coro, loop=lp, **kw))

    async def coro():
        return type(asyncio.current_task()).__name__

    assert loop.run_until_complete(coro()) == 'MyTask'


def test_set_task_factory_not_callable(loop):
    with pytest.raises(TypeError, match='^task factory must be a callable or None$'):
        loop.set_task_factory(1)


def test_eager_task_factory(loop):
    order = []

    async def child():
        order.append('child started')
        await asyncio.sleep(0)
        order.append('child resumed')
        return 'child'

    async def quick():
        order.append('quick')
        return 'quick'

    async def main():
        t = loop.create_task(child())
        order.append('after create_task(child)')
        q = loop.create_task(quick())
        done_immediately = q.done()
        order.append('after create_task(quick)')
        return await t, await q, done_immediately

    if HAS_EAGER:
        loop.set_task_factory(asyncio.eager_task_factory)
        assert loop.get_task_factory() is asyncio.eager_task_factory
        assert loop.run_until_complete(main()) == ('child', 'quick', True)
        assert order == ['child started', 'after create_task(child)', 'quick',
                         'after create_task(quick)', 'child resumed']
    else:
        # 3.11: no eager tasks; tasks start on the next iteration
        assert loop.run_until_complete(main()) == ('child', 'quick', False)
        assert order == ['after create_task(child)', 'after create_task(quick)', 'child started',
                         'quick', 'child resumed']


def test_eager_start(loop):
    order = []

    async def child():
        order.append('child')
        return 1

    async def main():
        if CREATE_TASK_EAGER_START:
            t = loop.create_task(child(), eager_start=True)
            order.append('created')
            return t.done()
        c = child()
        try:
            with pytest.raises(TypeError, match='eager_start'):
                loop.create_task(c, eager_start=True)
        finally:
            c.close()
        if HAS_EAGER:
            # 3.12/3.13: the Task constructor takes eager_start
            t = asyncio.Task(child(), loop=loop, eager_start=True)
            order.append('created')
            return t.done()
        return None

    result = loop.run_until_complete(main())
    if CREATE_TASK_EAGER_START or HAS_EAGER:
        assert result is True
        assert order == ['child', 'created']
    else:
        assert result is None
        assert order == []


@pytest.mark.expect_exception_handler
def test_task_exception_never_retrieved_logged(loop, caplog):
    import gc

    async def fail():
        raise ValueError('lost')

    t = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert t.done()
    del t
    gc.collect()
    records = [r for r in caplog.records if r.name == 'asyncio']
    assert len(records) == 1
    assert records[0].getMessage().startswith('Task exception was never retrieved\nfuture: <Task finished ')
    assert isinstance(records[0].exc_info[1], ValueError)
