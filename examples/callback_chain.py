"""Low-level callbacks: call_soon / call_later chains, run_forever() and stop().

Below coroutines, an event loop is a scheduler of plain callbacks: call_soon() runs one at the
next iteration, call_later() after a delay. Here no coroutine is involved: a chain of callbacks,
each scheduling the next, ends by calling loop.stop(), which makes run_forever() return.
"""

import asyncio
import time


def tick(loop, n):
    print(f"tick {n}")
    if n < 3:
        loop.call_later(0.1, tick, loop, n + 1)     # the next tick in 0.1 s
    else:
        loop.call_soon(finish, loop)


def finish(loop):
    print("finish: calling loop.stop()")
    loop.stop()                            # run_forever() returns after this iteration


def say(word):
    print("call_soon ->", word)


loop = asyncio.new_event_loop()            # get a loop without asyncio.run()
asyncio.set_event_loop(loop)
try:
    # call_soon callbacks run in the order they were scheduled (FIFO) ...
    for word in ("first", "second", "third"):
        loop.call_soon(say, word)
    # ... call_later/call_at ones when their time comes, earliest first.
    loop.call_later(0.05, print, "call_later(0.05) -> runs before the first tick")
    loop.call_at(loop.time() + 0.01, print, "call_at(now + 0.01) -> runs first of the timers")
    handle = loop.call_later(0.2, print, "this never runs: cancelled")
    handle.cancel()                        # a scheduled callback can be cancelled

    loop.call_later(0.07, tick, loop, 1)
    started = time.perf_counter()
    loop.run_forever()
    print(f"run_forever() returned; took {time.perf_counter() - started:.3f}s")
finally:
    asyncio.set_event_loop(None)
    loop.close()
