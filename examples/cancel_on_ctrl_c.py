"""Cancelling tasks on Ctrl-C.

On Ctrl-C (SIGINT), asyncio.run() cancels the main task; cancelling a task that awaits gather()
cancels every task gathered. Each task sees CancelledError at the `await` where it is suspended,
can clean up (even awaiting things), and should then let the CancelledError propagate. When all
that is done, asyncio.run() raises KeyboardInterrupt.

So that the example ends by itself, it presses "Ctrl-C" on itself after 0.3 s by sending its own
process SIGINT. Press Ctrl-C sooner to see the same thing.
"""

import asyncio
import os
import signal


async def worker(name, period):
    print(f"{name}: started")
    try:
        while True:
            await asyncio.sleep(period)   # suspended here when Ctrl-C comes (every period > 0.3 s)
    except asyncio.CancelledError:
        print(f"{name}: cancelled -> cleaning up")
        await asyncio.sleep(0.01)         # cleanup may await (close connections, flush, ...)
        print(f"{name}: cleaned up")
        raise                             # always let cancellation propagate


async def main():
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, os.kill, os.getpid(), signal.SIGINT)      # "press Ctrl-C" in 0.3 s
    print("main: this program sends itself SIGINT (what Ctrl-C sends) in 0.3 s")

    tasks = [asyncio.create_task(worker(name, period), name=name)
             for name, period in [("downloader", 0.7), ("parser", 1.1), ("writer", 1.3)]]
    try:
        await asyncio.gather(*tasks)      # never returns on its own: the workers loop forever
    except asyncio.CancelledError:
        print("main: cancelled; cancelled tasks:", [t.get_name() for t in tasks if t.cancelled()])
        raise


if __name__ == "__main__":
    # A program started with SIGINT ignored (a background job of a shell script, for example)
    # keeps it ignored, and Ctrl-C would do nothing: make it raise KeyboardInterrupt again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("asyncio.run() raised KeyboardInterrupt: everything was cancelled cleanly, bye")
