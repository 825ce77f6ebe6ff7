"""Producer / consumer with asyncio.Queue.

Producers put() items, consumers get() them. A bounded queue (maxsize) makes fast producers wait
for slow consumers (back-pressure). queue.join() waits until every item put has been marked done
with task_done(); then the consumers, which loop forever, are cancelled.
"""

import asyncio
import time


async def producer(name, queue, items):
    for item in items:
        await queue.put(f"{name}:{item}")  # waits while the queue is full
        await asyncio.sleep(0.01)


async def consumer(name, queue, processed):
    while True:
        item = await queue.get()           # waits while the queue is empty
        await asyncio.sleep(0.02)          # "process" the item
        processed.append((name, item))
        queue.task_done()


async def main():
    queue = asyncio.Queue(maxsize=3)
    processed = []
    start = time.perf_counter()

    consumers = [asyncio.create_task(consumer(f"consumer-{i}", queue, processed))
                 for i in range(3)]
    producers = [asyncio.create_task(producer("apples", queue, range(6))),
                 asyncio.create_task(producer("pears", queue, range(4)))]

    await asyncio.gather(*producers)       # all items have been put ...
    print("producers done; waiting for the queue to be fully processed")
    await queue.join()                     # ... and processed
    for c in consumers:
        c.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)

    # Which consumer got which item depends on timing; the set of items processed does not.
    print("processed", len(processed), "items:", sorted(item for _, item in processed))
    print("every consumer did some work:", len({name for name, _ in processed}) == 3)
    print(f"took {time.perf_counter() - start:.3f}s")


asyncio.run(main())
