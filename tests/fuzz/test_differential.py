"""Differential fuzzing: random programs of loop operations (programs.py) must leave the same trace
on ferroloop as on asyncio's own loop.

This file runs a fixed-seed slice (FERROLOOP_FUZZ_EXAMPLES programs, 30 by default) with every
pytest run; `make fuzz SECONDS=600` runs new random programs for as long as asked (run.py). The
regression tests below are programs that once differed.
"""

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings

import programs

EXAMPLES = int(os.environ.get('FERROLOOP_FUZZ_EXAMPLES', '30'))


def ferroloop_factory():
    import ferroloop  # noqa: PLC0415 - lazy, as in conftest: an unbuilt extension fails, never skips
    return ferroloop.new_event_loop()


def assert_same(prog):
    if os.environ.get('FERROLOOP_FUZZ_VERBOSE'):
        print(repr(prog), flush=True)
    difference = programs.compare(prog, programs.FifoSelectorEventLoop, ferroloop_factory)
    assert difference is None, f'{difference}\nprogram: {prog!r}'


@pytest.mark.timeout(300)
@pytest.mark.expect_exception_handler
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
@given(prog=programs.programs())
def test_random_programs_same_trace_as_asyncio(prog):
    assert_same(prog)


# -- programs that once differed, and the trace parts they pin down ------------------------------

@pytest.mark.expect_exception_handler
@pytest.mark.parametrize('prog', [
    # a callback that stops the loop: run_until_complete() fails, the next run goes on
    [('sync', [('soon', [('stop',)]), ('soon', [])])],
    # a stale stop() left queued by a finished run_until_complete() stops the next run at once
    [('sync', [('soon', [('stop',), ('soon', [('stop',)])])])],
    # KeyboardInterrupt and SystemExit escape run_until_complete; the loop goes on afterwards
    [('sync', [('soon', [('base_raise', 'KeyboardInterrupt')]), ('later0', []),
               ('at', -1, [('base_raise', 'SystemExit')])])],
    # re-entering a running loop
    [('sync', [('soon', [('reenter', 'run_until_complete'), ('reenter', 'run_forever')])])],
    # an exception handler that raises in turn: logged by the default handler
    [('sync', [('soon', [('raise', 'Handler')]), ('soon', [('raise', 'Custom')])])],
    # due timers after the callbacks already queued, by deadline, whatever the scheduling order
    [('sync', [('later0', []), ('at', -1, []), ('soon', []), ('at', -3, [('at', -3, [])]),
               ('at', -2, [('soon', [])])])],
    # debug mode: handle reprs name where they were created; contexts carry tracebacks
    [('debug', True), ('sync', [('at', -1, []), ('later0', [('raise', 'ValueError')]),
                                ('soon', [('threadsafe', [])])])],
    # callbacks in one shared context see each other's ContextVar.set(); others do not
    [('sync', [('soon_ctx', [('ctx_set', 3)]), ('soon_ctx', []),
               ('soon', [('ctx_set', 4), ('soon', []), ('soon_ctx', [])])])],
    # done callbacks: added twice, removed, added again, then the future resolved
    [('sync', [('future',), ('soon', [('done_cb', 0), ('done_cb', 0), ('remove_done_cb', 0),
                                      ('done_cb', 0), ('resolve', 0, 'result')])])],
    [('executor', [1, -1, 2])],
    # the default exception handler's log, in debug mode too, and a handler that fails
    [('sync', [('future',)]), ('debug', True), ('sync', [('soon', [('raise', 'Handler')])]),
     ('default_handler', True),
     ('sync', [('soon', [('raise', 'ValueError'), ('call_handler', True)]),
               ('task', [('raise', 'KeyError')])])],
    # threads, readers and writers
    [('threads', [[False, True, False], [True]]),
     ('io', {'messages': [b'ab', b'c'], 'writer': True, 'replace_reader': True,
             'reader_raises': True, 'misuse': 'remove_closed'})],
])
def test_program_same_trace_as_asyncio(prog):
    assert_same(prog)
