"""Chained coroutines: one coroutine awaiting another, which awaits a third.

`await` passes control down the chain; each result comes back up. The whole chain runs inside one
task, and two chains run concurrently when each gets its own task (see the gather at the end).
"""

import asyncio
import time


async def compute(x, y):
    print(f"    compute({x}, {y}): working ...")
    await asyncio.sleep(0.1)              # the chain is suspended here, at the bottom
    return x + y


async def compute_and_double(x, y):
    print(f"  compute_and_double({x}, {y}) awaits compute()")
    total = await compute(x, y)
    print(f"  compute({x}, {y}) gave {total}")
    return total * 2


async def print_result(x, y):
    print(f"print_result({x}, {y}) awaits compute_and_double()")
    result = await compute_and_double(x, y)
    print(f"print_result: 2 * ({x} + {y}) = {result}")
    return result


async def main():
    start = time.perf_counter()
    await print_result(1, 2)
    print(f"one chain took {time.perf_counter() - start:.3f}s\n")

    # Two chains, each in its own task: their prints interleave, and they take 0.1 s, not 0.2 s.
    start = time.perf_counter()
    results = await asyncio.gather(print_result(3, 4), print_result(5, 6))
    print("results:", results)
    print(f"two concurrent chains took {time.perf_counter() - start:.3f}s")


asyncio.run(main())
