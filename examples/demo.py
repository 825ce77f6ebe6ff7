"""The ferroloop demo (`make demo`): a few examples on ferroloop, then a short timing vs asyncio.

1. Runs some of the example programs with `python -m ferroloop run examples/X.py`, i.e. unmodified
   asyncio programs on the ferroloop loop, and shows their output.
2. Times two loop-bound micro benchmarks on asyncio's own loop, on uvloop when it is installed
   (`make demo` installs it from examples/requirements-demo.txt) and on ferroloop, interleaved,
   and prints the median CPU time of each (steadier than wall time on a busy machine) and
   ferroloop's speed-up:
     - call_soon: 200,000 call_soon() callbacks, then loop.stop()
     - sleep(0):  one task doing 100,000 `await asyncio.sleep(0)` (a task switch each)
   then what a real application gains, from the HTTP benchmark in bench/README.md.

    python examples/demo.py            # what `make demo` runs
    python examples/demo.py --quick    # a few seconds, smaller numbers (used by the tests)
"""

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHOWN = {
    'hello_coroutine.py': 'a coroutine run by asyncio.run()',
    'concurrent_tasks.py': 'gather, as_completed and wait',
    'cancel_on_ctrl_c.py': 'Ctrl-C cancels every task; the program presses "Ctrl-C" itself '
                           '(sends itself SIGINT) after 0.3 s',
    'threaded_loop.py': 'a loop in a thread, fed with call_soon_threadsafe',
}

# What a real application gains: the uvicorn row of the HTTP benchmark (bench/README.md).
HTTP_FIGURE = ("In a real server the loop is only part of the work: uvicorn serving a minimal app "
               "used 23.2 µs of server CPU per request on ferroloop, against 31.6 on asyncio "
               "(1.36x) and 27.0 on uvloop (1.16x) (bench/README.md, HTTP benchmark, 2026-11-26).")


def heading(text):
    print(f"\n=== {text} " + "=" * max(3, 76 - len(text)), flush=True)


def run_examples():
    for name, what in SHOWN.items():
        path = os.path.join(HERE, name)
        heading(f"python -m ferroloop run examples/{name}")
        print(f"({what})")
        r = subprocess.run([sys.executable, '-m', 'ferroloop', 'run', path],
                           capture_output=True, text=True, timeout=60)
        print(r.stdout, end='')
        if r.stderr:
            print(r.stderr, end='', file=sys.stderr)
        if r.returncode != 0:
            print(f"(exit status {r.returncode})")
        sys.stdout.flush()


# -- the timing ----------------------------------------------------------------------------------

def bench_call_soon(loop, n):
    def callback():
        pass

    start = time.process_time()
    for _ in range(n):
        loop.call_soon(callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    return time.process_time() - start


def bench_sleep0(loop, n):
    async def switcher():
        for _ in range(n):
            await asyncio.sleep(0)

    start = time.process_time()
    loop.run_until_complete(switcher())
    return time.process_time() - start


def timing(reps, n_call_soon, n_sleep0):
    import ferroloop

    factories = {'asyncio': asyncio.SelectorEventLoop}
    peers = "asyncio"
    try:
        import uvloop
    except ImportError:
        uvloop = None
    else:
        factories['uvloop'] = uvloop.new_event_loop
        peers = f"asyncio and uvloop {uvloop.__version__}"
    factories['ferroloop'] = ferroloop.new_event_loop
    benches = [(f"{n_call_soon:,} call_soon callbacks", bench_call_soon, n_call_soon),
               (f"{n_sleep0:,} sleep(0) task switches", bench_sleep0, n_sleep0)]
    heading(f"timing: ferroloop {ferroloop.__version__} ({ferroloop.BUILD_PROFILE} build) vs "
            f"{peers}, Python {sys.version.split()[0]}")
    print(f"CPU time, median of {reps} interleaved runs each; speed-up = the other loop's time / "
          "ferroloop's" + ("" if uvloop else " (uvloop is not installed: `make demo` installs it)"))
    print()
    header = f"{'benchmark':<32}" + ''.join(f"{name:>12}" for name in factories)
    header += ''.join(f"{'vs ' + name:>12}" for name in factories if name != 'ferroloop')
    print(header)
    for label, bench, n in benches:
        results = {name: [] for name in factories}
        for _ in range(reps):
            for name, factory in factories.items():   # interleaved: asyncio, uvloop, ferroloop, ...
                loop = factory()
                try:
                    gc.collect()
                    results[name].append(bench(loop, n))
                finally:
                    loop.close()
        medians = {name: statistics.median(times) for name, times in results.items()}
        f = medians['ferroloop']
        line = f"{label:<32}" + ''.join(f"{m * 1e3:>10.1f}ms" for m in medians.values())
        line += ''.join(f"{medians[name] / f:>11.2f}x" for name in factories if name != 'ferroloop')
        print(line, flush=True)
    print()
    print(textwrap.fill(HTTP_FIGURE, width=100))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smaller numbers, one run each')
    parser.add_argument('--no-examples', action='store_true', help='only the timing')
    args = parser.parse_args()
    started = time.perf_counter()
    version = subprocess.run([sys.executable, '-m', 'ferroloop', '--version'],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"{version}: a drop-in replacement for the asyncio event loop, written in Rust")
    if not args.no_examples:
        run_examples()
    if args.quick:
        timing(reps=1, n_call_soon=20_000, n_sleep0=10_000)
    else:
        timing(reps=5, n_call_soon=200_000, n_sleep0=100_000)
    print(f"\ndemo done in {time.perf_counter() - started:.1f}s; "
          "run `python -m ferroloop run YOUR_SCRIPT.py` to try your own asyncio program")


if __name__ == '__main__':
    main()
