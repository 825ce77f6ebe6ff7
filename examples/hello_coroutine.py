"""Defining and running a coroutine.

`async def` defines a coroutine function. Calling it does not run anything: it returns a
coroutine object, which an event loop runs. `asyncio.run()` creates a loop, runs the coroutine to
completion, closes the loop and returns the coroutine's result.

    python examples/hello_coroutine.py                   # on asyncio's own loop
    python -m ferroloop run examples/hello_coroutine.py  # the same program on ferroloop
"""

import asyncio
import time


async def greet(name, delay):
    # `await` suspends this coroutine until the awaited thing is done; meanwhile the loop is
    # free to run other code. asyncio.sleep() is the simplest thing to await.
    await asyncio.sleep(delay)
    return f"Hello, {name}!"


async def main():
    coro = greet("world", 0.1)
    print("calling greet() made a", type(coro).__name__, "- nothing has run yet")

    start = time.perf_counter()
    greeting = await coro                 # now it runs, and we get its return value
    print(greeting)

    # Awaiting coroutines one after the other runs them one after the other: 0.1 s + 0.1 s.
    print(await greet("Alice", 0.1))
    print(await greet("Bob", 0.1))
    print(f"three greetings in sequence took {time.perf_counter() - start:.3f}s")
    return 42


if __name__ == "__main__":
    result = asyncio.run(main())          # the entry point of nearly every asyncio program
    print("main() returned", result)
