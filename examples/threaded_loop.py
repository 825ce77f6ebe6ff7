"""An event loop running in a background thread, fed from the main thread.

A loop is not thread-safe: other threads must hand it work through the two thread-safe entry
points, loop.call_soon_threadsafe(callback, *args) and
asyncio.run_coroutine_threadsafe(coro, loop), which returns a concurrent.futures.Future that the
calling thread can wait on.
"""

import asyncio
import threading


def start_background_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop-thread", daemon=True)
    thread.start()
    return loop, thread


def note(message, done):
    # Runs in the loop thread.
    print(f"[{threading.current_thread().name}] callback: {message}")
    done.set()


async def square_slowly(x):
    # Runs in the loop thread, as a task of the background loop.
    await asyncio.sleep(0.05)
    return threading.current_thread().name, x * x


async def count_up_to(n):
    # Several coroutines submitted at once run concurrently on the background loop.
    for i in range(n):
        await asyncio.sleep(0.01)
    return n


def main():
    loop, thread = start_background_loop()
    print(f"[{threading.current_thread().name}] started a loop in {thread.name}")

    # 1. A plain callback; threading.Event tells the main thread when it has run.
    done = threading.Event()
    loop.call_soon_threadsafe(note, "hello from the main thread", done)
    done.wait()

    # 2. A coroutine; .result() blocks the main thread until the coroutine has finished.
    future = asyncio.run_coroutine_threadsafe(square_slowly(7), loop)
    where, value = future.result(timeout=5)
    print(f"[{threading.current_thread().name}] square_slowly(7) = {value}, computed in {where}")

    # 3. Many coroutines at once.
    futures = [asyncio.run_coroutine_threadsafe(count_up_to(n), loop) for n in (3, 5, 10)]
    print(f"[{threading.current_thread().name}] results:", [f.result(timeout=5) for f in futures])

    # 4. Exceptions come back through the future too.
    async def fail():
        raise LookupError("not here")
    try:
        asyncio.run_coroutine_threadsafe(fail(), loop).result(timeout=5)
    except LookupError as exc:
        print(f"[{threading.current_thread().name}] the coroutine raised {exc!r}")

    # Stop the loop from the main thread (thread-safely, of course), then close it.
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    print(f"[{threading.current_thread().name}] loop stopped and closed:", loop.is_closed())


if __name__ == "__main__":
    main()
