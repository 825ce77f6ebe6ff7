"""Running coroutines concurrently: gather, wait and as_completed.

Three waiting jobs that take 0.4 s, 0.1 s and 0.2 s take ~0.4 s together, not 0.7 s, because
the loop runs them at the same time.
"""

import asyncio
import time


async def job(name, seconds):
    await asyncio.sleep(seconds)
    return f"{name} ({seconds}s)"


JOBS = [("slow", 0.4), ("fast", 0.1), ("medium", 0.2)]


async def main():
    # gather(): run awaitables concurrently; results come back in the order they were passed.
    start = time.perf_counter()
    results = await asyncio.gather(*(job(name, s) for name, s in JOBS))
    print("gather       ->", results)
    print(f"  took {time.perf_counter() - start:.3f}s")

    # gather(return_exceptions=True): failures are returned as values instead of raised.
    async def fail():
        raise RuntimeError("oops")
    print("gather       ->", await asyncio.gather(job("ok", 0.01), fail(), return_exceptions=True))

    # as_completed(): iterate over the results in the order they *finish*.
    start = time.perf_counter()
    for next_done in asyncio.as_completed([job(name, s) for name, s in JOBS]):
        print("as_completed ->", await next_done)
    print(f"  took {time.perf_counter() - start:.3f}s")

    # wait(): works on tasks and returns two sets, (done, pending); here with a timeout.
    tasks = [asyncio.create_task(job(name, s), name=name) for name, s in JOBS]
    done, pending = await asyncio.wait(tasks, timeout=0.3)
    print("wait         -> done:", sorted(t.result() for t in done),
          "pending:", sorted(t.get_name() for t in pending))
    # ... or until the first one completes; then cancel the rest.
    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    print("wait         -> first completed:", [t.result() for t in done])
    for t in pending:
        t.cancel()


asyncio.run(main())
