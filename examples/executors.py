"""Blocking and CPU-bound work: loop.run_in_executor() with thread and process pools.

A coroutine must never block the loop. Blocking calls (file I/O, blocking libraries) go to a
ThreadPoolExecutor; CPU-heavy pure-Python work goes to a ProcessPoolExecutor, as threads would
still share the GIL. run_in_executor() returns an asyncio future to await.
"""

import asyncio
import concurrent.futures
import time


def count_primes(limit):
    # Deliberately naive CPU-bound work (must be a top-level function for a process pool).
    count = 0
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n ** 0.5) + 1)):
            count += 1
    return count


def blocking_io(seconds):
    time.sleep(seconds)                     # stands for a blocking call
    return f"slept {seconds}s"


async def heartbeat(stop):
    # Proves the loop stays responsive while the pools work.
    beats = 0
    while not stop.is_set():
        await asyncio.sleep(0.01)
        beats += 1
    return beats


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(stop))

    # None = the loop's default executor, a ThreadPoolExecutor.
    start = time.perf_counter()
    results = await asyncio.gather(*(loop.run_in_executor(None, blocking_io, 0.2) for _ in range(4)))
    print("thread pool:", results)
    print(f"  4 x 0.2s blocking calls took {time.perf_counter() - start:.3f}s")

    limits = [20_000, 30_000, 40_000, 50_000]
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        start = time.perf_counter()
        counts = await asyncio.gather(*(loop.run_in_executor(pool, count_primes, n) for n in limits))
        print("process pool:", dict(zip(limits, counts)))
        print(f"  took {time.perf_counter() - start:.3f}s")

    # asyncio.to_thread() is the shortcut for the default executor.
    print("to_thread:", await asyncio.to_thread(blocking_io, 0.05))

    stop.set()
    print("the loop kept running meanwhile:", await beat > 10)


if __name__ == "__main__":                  # required for process pools with spawn/forkserver
    asyncio.run(main())
