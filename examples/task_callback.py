"""Tasks and done-callbacks.

`asyncio.create_task()` wraps a coroutine in a Task and schedules it: it starts running as soon
as the current coroutine yields to the loop, concurrently with it. A Task is a Future, so you can
attach callbacks that the loop calls (with the task as argument) once it is done.
"""

import asyncio


async def fetch(what, delay):
    await asyncio.sleep(delay)
    if what == "broken":
        raise ValueError(f"could not fetch {what}")
    return f"<{what} data>"


def report(task):
    # A done-callback is a plain function, called by the loop with the finished task.
    if task.cancelled():
        print(f"  callback: {task.get_name()} was cancelled")
    elif task.exception() is not None:
        print(f"  callback: {task.get_name()} failed: {task.exception()!r}")
    else:
        print(f"  callback: {task.get_name()} returned {task.result()!r}")


async def main():
    task = asyncio.create_task(fetch("users", 0.05), name="fetch-users")
    task.add_done_callback(report)
    print("task created; it has not run yet: done =", task.done())

    await asyncio.sleep(0)                # yield to the loop once: the task starts running
    print("after one yield: done =", task.done())

    result = await task                   # wait for it (the callback runs first)
    print("awaited the task:", result)

    failing = asyncio.create_task(fetch("broken", 0.02), name="fetch-broken")
    failing.add_done_callback(report)
    try:
        await failing
    except ValueError as exc:
        print("awaiting a failed task re-raises its exception:", exc)

    slow = asyncio.create_task(fetch("slow", 10), name="fetch-slow")
    slow.add_done_callback(report)
    await asyncio.sleep(0.01)
    slow.cancel()                          # ask the task to stop: CancelledError inside it
    try:
        await slow
    except asyncio.CancelledError:
        print("awaiting a cancelled task raises CancelledError")


asyncio.run(main())
