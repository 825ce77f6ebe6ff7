"""`make fuzz SECONDS=N`: differential fuzzing of ferroloop against asyncio for N seconds.

Runs rounds of random programs (programs.py) with fresh seeds until the time is up. On a
difference, hypothesis shrinks the program to a minimal one, which is printed with the first
point where the traces differ; the exit status is then 1.
"""

import argparse
import asyncio
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

import programs  # noqa: E402
import ferroloop  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=60)
    parser.add_argument('--seed', type=int, default=None, help='first round seed (random)')
    parser.add_argument('--round', type=int, default=50, help='programs per round')
    args = parser.parse_args()
    first_seed = args.seed if args.seed is not None else random.randrange(2**32)
    count = [0]
    end = time.monotonic() + args.seconds
    rounds = 0
    print(f'fuzz: {args.seconds:g} s, first seed {first_seed}, {sys.version.split()[0]}', flush=True)
    while time.monotonic() < end:
        @seed(first_seed + rounds)
        @settings(max_examples=args.round, deadline=None, database=None, print_blob=True,
                  suppress_health_check=list(HealthCheck))
        @given(prog=programs.programs())
        def one(prog):
            count[0] += 1
            difference = programs.compare(prog, programs.FifoSelectorEventLoop,
                                          ferroloop.new_event_loop)
            assert difference is None, difference

        try:
            one()
        except AssertionError as e:
            notes = '\n'.join(getattr(e, '__notes__', ()))
            print(f'fuzz: DIFFERENCE after {count[0]} programs (round seed {first_seed + rounds}):'
                  f'\n{e}\n{notes}', flush=True)
            return 1
        rounds += 1
        print(f'fuzz: {count[0]} programs, no difference', flush=True)
    print(f'fuzz: done, {count[0]} programs in {rounds} rounds, no difference', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
