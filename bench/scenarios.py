"""One benchmark measurement in this (fresh) process; run.py starts one of these per sample.

    python bench/scenarios.py SCENARIO LOOP [--scale S] [--cpu N]   -> one JSON line on stdout
    python bench/scenarios.py --probe LOOP                          -> {"loop", "version"} or exit 2

Each scenario is `fn(loop, n) -> ops`: it does `n` operations on `loop`, checks that exactly that
work was done (so every loop is measured on the same work) and returns the number of operations.
Only the call of that function is timed; creating the loop and the warm-up are not.
"""

import asyncio
import gc
import importlib
import importlib.metadata
import json
import os
import sys
import threading
import time

LOOPS = ('asyncio', 'uvloop', 'rloop', 'rsloop', 'ferroloop')
# Not run by default: ferroloop with its opt-in telemetry timing on (`--loops ferroloop,ferroloop-timed`
# measures what `ferroloop.enable_timing` costs).
EXTRA_LOOPS = ('ferroloop-timed',)


def new_loop(name):
    """A new loop of the named kind; ImportError if its package is missing."""
    if name == 'asyncio':
        return asyncio.new_event_loop()  # the default policy's loop: the selector loop on Linux
    if name == 'ferroloop-timed':
        ferroloop = importlib.import_module('ferroloop')
        loop = ferroloop.new_event_loop()
        ferroloop.enable_timing(loop)
        return loop
    return importlib.import_module(name).new_event_loop()


def server_loop(name, cpu=None):
    """For the echo and HTTP servers: pin this process to `cpu` (if given), then a new loop of
    the named kind, set as the current loop."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    loop = new_loop(name)
    asyncio.set_event_loop(loop)
    return loop


def loop_version(name):
    if name == 'asyncio':
        return sys.version.split()[0]
    if name == 'ferroloop-timed':
        return loop_version('ferroloop') + ' (timing on)'
    version = importlib.metadata.version(name)
    if name == 'ferroloop':  # a debug build would make every number meaningless: show it
        version += ' ' + importlib.import_module(name).BUILD_PROFILE
    return version


# --- scenarios ---------------------------------------------------------------------------------
# WIDTH self-rescheduling chains run side by side, so each loop iteration has a batch of ready
# callbacks: this measures call_soon + dispatch, not the cost of one poll per callback.
WIDTH = 100


def call_soon(loop, n):
    """n call_soon callbacks without arguments (each reschedules itself)."""
    done = scheduled = 0

    def cb():
        nonlocal done, scheduled
        done += 1
        if scheduled < n:
            scheduled += 1
            loop.call_soon(cb)
        elif done == n:
            loop.stop()

    for _ in range(WIDTH):
        scheduled += 1
        loop.call_soon(cb)
    loop.run_forever()
    assert done == n, done
    return n


BATCH = 10_000


def call_soon_bulk(loop, n):
    """n call_soon callbacks scheduled BATCH at a time by one callback (a fan-out): unlike the
    chains above, many handles are pending at once, so the cost of keeping them alive counts."""
    done = 0

    def cb():
        nonlocal done
        done += 1

    def fan_out(remaining):
        k = min(BATCH, remaining)
        for _ in range(k):
            loop.call_soon(cb)
        if remaining > k:
            loop.call_soon(fan_out, remaining - k)
        else:
            loop.call_soon(loop.stop)

    loop.call_soon(fan_out, n)
    loop.run_forever()
    assert done == n, done
    return n


def call_soon_args(loop, n):
    """n call_soon callbacks with three positional arguments (each reschedules itself)."""
    state = {'done': 0, 'scheduled': WIDTH}

    def cb(state, i, tag):
        assert tag == 'x'
        state['done'] += 1
        if state['scheduled'] < n:
            state['scheduled'] += 1
            loop.call_soon(cb, state, i + 1, tag)
        elif state['done'] == n:
            loop.stop()

    for _ in range(WIDTH):
        loop.call_soon(cb, state, 0, 'x')
    loop.run_forever()
    assert state['done'] == n, state
    return n


def call_later(loop, n):
    """n call_later timers (delays spread over 0-100 ms), 90 % cancelled; run until the rest fired."""
    fired = 0
    keep = n // 10

    def cb(i):
        nonlocal fired
        assert i % 10 == 0, 'a cancelled timer fired'
        fired += 1
        if fired == keep:
            loop.stop()

    def schedule():
        # Spread over 100 ms, longer than scheduling takes, so the timers are still pending and
        # fire over many iterations, as real timeouts do.
        handles = [loop.call_later((i % 1000) * 1e-4, cb, i) for i in range(n)]
        for i, h in enumerate(handles):
            if i % 10:
                h.cancel()

    loop.call_soon(schedule)  # from inside the running loop, as real code does
    loop.run_forever()
    assert fired == keep, fired
    return n


def sleep0(loop, n):
    """n `await asyncio.sleep(0)` switches, split between two tasks."""
    count = 0

    async def worker(k):
        nonlocal count
        for _ in range(k):
            await asyncio.sleep(0)
            count += 1

    async def main():
        await asyncio.gather(worker(n // 2), worker(n - n // 2))

    loop.run_until_complete(main())
    assert count == n, count
    return n


async def _trivial(i):
    return i


def tasks(loop, n):
    """Create and await n trivial tasks, one after the other."""
    async def main():
        total = 0
        for i in range(n):
            total += await loop.create_task(_trivial(i))
        return total

    assert loop.run_until_complete(main()) == n * (n - 1) // 2
    return n


def futures(loop, n):
    """n future round trips: create a future, resolve it from a callback, await it."""
    async def main():
        total = 0
        for i in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, i)
            total += await fut
        return total

    assert loop.run_until_complete(main()) == n * (n - 1) // 2
    return n


GATHER_ROUNDS = 10


def gather(loop, n):
    """asyncio.gather over n // GATHER_ROUNDS trivial tasks, GATHER_ROUNDS times (n tasks in all)."""
    width = max(1, n // GATHER_ROUNDS)

    async def main():
        for _ in range(GATHER_ROUNDS):
            results = await asyncio.gather(*[_trivial(i) for i in range(width)])
            assert results == list(range(width))

    loop.run_until_complete(main())
    return width * GATHER_ROUNDS


def threadsafe(loop, n):
    """n call_soon_threadsafe calls from a producer thread; the loop counts them."""
    count = 0
    done = loop.create_future()

    def cb():
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    def produce():
        for _ in range(n):
            loop.call_soon_threadsafe(cb)

    async def main():
        t = threading.Thread(target=produce)
        t.start()
        await done
        t.join()

    loop.run_until_complete(main())
    assert count == n, count
    return n


SUBPROCESS_PROGRAM = '/bin/true'


def subprocess_exec(loop, n):
    """n times: asyncio.create_subprocess_exec('/bin/true'), then await proc.wait() (exit status 0)."""
    async def main():
        ok = 0
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(SUBPROCESS_PROGRAM)
            ok += await proc.wait() == 0
        return ok

    ok = loop.run_until_complete(main())
    assert ok == n, ok
    return n


# name -> (function, operations at --scale 1.0)
SCENARIOS = {
    'call_soon': (call_soon, 1_000_000),
    'call_soon_bulk': (call_soon_bulk, 1_000_000),
    'call_soon_args': (call_soon_args, 1_000_000),
    'call_later': (call_later, 100_000),
    'sleep0': (sleep0, 1_000_000),
    'tasks': (tasks, 100_000),
    'futures': (futures, 200_000),
    'gather': (gather, 100_000),
    'threadsafe': (threadsafe, 200_000),
    'subprocess': (subprocess_exec, 2_000),
}
# scenarios whose operations are too slow for the WIDTH floor of the others
MIN_OPS = {'subprocess': 20}


# --- worker ------------------------------------------------------------------------------------
def measure(scenario, loop_name, scale):
    fn, base = SCENARIOS[scenario]
    floor = MIN_OPS.get(scenario, WIDTH)
    n = max(floor, int(base * scale))
    loop = new_loop(loop_name)
    asyncio.set_event_loop(loop)  # for code that still asks get_event_loop()
    try:
        try:
            fn(loop, max(floor, n // 20))  # warm-up: first-call costs, caches, allocator pools
        except NotImplementedError as e:  # a loop without the feature: "–" in the report
            return {'scenario': scenario, 'loop': loop_name, 'unsupported': f'NotImplementedError: {e}'}
        gc.collect()  # start from a clean heap; the collector stays on, as in real programs
        wall0, cpu0 = time.perf_counter(), time.process_time()
        ops = fn(loop, n)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        loop.close()
    # process_time() counts all threads (the producer thread too), user + system.
    return {'scenario': scenario, 'loop': loop_name, 'ops': ops, 'cpu_s': cpu, 'wall_s': wall,
            'ops_per_cpu_s': ops / cpu if cpu > 0 else None,
            'ops_per_wall_s': ops / wall if wall > 0 else None}


def main(argv):
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--probe', metavar='LOOP', choices=LOOPS + EXTRA_LOOPS)
    p.add_argument('scenario', nargs='?', choices=SCENARIOS)
    p.add_argument('loop', nargs='?', choices=LOOPS + EXTRA_LOOPS)
    p.add_argument('--scale', type=float, default=1.0)
    p.add_argument('--cpu', type=int, help='pin this process to that CPU')
    a = p.parse_args(argv)
    if a.probe:
        try:
            new_loop(a.probe).close()
            print(json.dumps({'loop': a.probe, 'version': loop_version(a.probe)}))
        except Exception as e:  # missing package, or one that imports but cannot make a loop
            print(json.dumps({'loop': a.probe, 'skipped': f'{type(e).__name__}: {e}'}))
            return 2
        return 0
    if not (a.scenario and a.loop):
        p.error('SCENARIO and LOOP are required')
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})  # before any work, so the whole measurement is on it
    print(json.dumps(measure(a.scenario, a.loop, a.scale)))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
