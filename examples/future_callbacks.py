"""Futures: a result that will exist later, set by one coroutine and awaited by others.

A Future starts pending; someone calls set_result() (or set_exception()) once, and from then on
everyone awaiting it gets the value, and its done-callbacks are scheduled on the loop.
"""

import asyncio
import functools


async def slow_operation(future, value, delay):
    await asyncio.sleep(delay)
    if value < 0:
        future.set_exception(ValueError(f"negative value: {value}"))
    else:
        future.set_result(value * 10)


def on_done(label, future):
    # Done-callbacks get the future; functools.partial adds our own arguments in front.
    if future.exception() is not None:
        print(f"  callback[{label}]: failed with {future.exception()!r}")
    else:
        print(f"  callback[{label}]: result {future.result()}")


async def waiter(name, future):
    print(f"{name}: waiting for the future")
    result = await future                  # several coroutines may await the same future
    print(f"{name}: got {result}")


async def main():
    loop = asyncio.get_running_loop()

    future = loop.create_future()          # the preferred way to make a future
    future.add_done_callback(functools.partial(on_done, "A"))
    print("future created:", "done" if future.done() else "pending")

    asyncio.create_task(slow_operation(future, 4, 0.05))
    await asyncio.gather(waiter("waiter-1", future), waiter("waiter-2", future))
    print("future is now:", "done" if future.done() else "pending", "->", future.result())

    # A failing operation: awaiting the future raises the exception that was set.
    failing = loop.create_future()
    failing.add_done_callback(functools.partial(on_done, "B"))
    asyncio.create_task(slow_operation(failing, -1, 0.05))
    try:
        await failing
    except ValueError as exc:
        print("awaiting the failed future raised:", exc)

    # A callback added to a future that is already done is still called (soon, by the loop).
    future.add_done_callback(functools.partial(on_done, "late"))
    await asyncio.sleep(0)


asyncio.run(main())
