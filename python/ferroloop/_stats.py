"""Loop telemetry: ``ferroloop.stats(loop)`` and ``ferroloop.enable_timing(loop)``.

The counters are kept by the Rust loop on every iteration and are always on. Timing (where the
time went, timer lag, callback durations, the slowest callbacks) reads the clock around every
callback, so it is switched on per loop with ``enable_timing``.
"""

import asyncio
import sys
import weakref

__all__ = ('stats', 'enable_timing', 'format_stats', 'prometheus_text')

# Keys of the dict ``stats()`` returns, with what each means (also the Prometheus HELP text).
FIELDS = {
    'iterations': 'loop iterations',
    'callbacks': 'callbacks run',
    'cancelled_skipped': 'cancelled handles skipped when their turn came',
    'timers_fired': 'timers that became due',
    'io_events': 'I/O events dispatched to readers and writers',
    'polls_blocking': 'polls that could block',
    'polls_nonblocking': 'polls with a zero timeout',
    'ready_now': 'callbacks in the ready queue now',
    'ready_max': 'largest batch of ready callbacks run in one iteration',
    'timers_pending': 'timers scheduled and not cancelled',
    'timers_cancelled': 'cancelled timers not yet removed from the heap',
    'readers': 'file descriptors with a reader callback',
    'writers': 'file descriptors with a writer callback',
    'timing': 'whether iterations are timed (enable_timing)',
    'time_callbacks': 'seconds spent running callbacks (timed)',
    'time_idle': 'seconds blocked waiting for I/O or a timer (timed)',
    'time_overhead': "seconds of the loop's own work (timed)",
    'lag_count': 'timers measured for lag (timed)',
    'lag_p50': 'median timer lag, deadline to callback start, seconds (timed)',
    'lag_p90': '90th percentile timer lag, seconds (timed)',
    'lag_p99': '99th percentile timer lag, seconds (timed)',
    'lag_max': 'largest timer lag, seconds (timed)',
    'callback_count': 'callbacks measured (timed)',
    'callback_p50': 'median callback duration, seconds (timed)',
    'callback_p90': '90th percentile callback duration, seconds (timed)',
    'callback_p99': '99th percentile callback duration, seconds (timed)',
    'callback_max': 'longest callback, seconds (timed)',
    'slowest': 'the slowest callbacks, (repr, seconds), longest first (timed)',
}


def _loop_of(loop):
    if loop is None:
        loop = asyncio.get_running_loop()
    from ._loop import Loop
    if not isinstance(loop, Loop):
        raise TypeError(f'ferroloop telemetry needs a ferroloop.Loop, got {type(loop).__name__}')
    return loop


def stats(loop=None, *, reset=False):
    """The telemetry of `loop` (the running loop by default) as a dict; see ``FIELDS``.

    Percentiles are upper bounds of logarithmic buckets (at most 19 % above the true value).
    With ``reset=True`` the counters and timing start again from zero after this read.
    Works on a closed loop too (its last figures).
    """
    return _loop_of(loop)._stats(reset)


def enable_timing(loop=None, enabled=True):
    """Switch timing on (or off) for `loop` (the running loop by default).

    Timed iterations read the clock around every callback: the time split (callbacks, idle,
    loop overhead), timer lag, callback durations and the slowest callbacks. It costs about a
    clock read per callback; the counters are kept either way.
    """
    _loop_of(loop)._stats_timing = bool(enabled)


def format_stats(s):
    """A plain-text table of a ``stats()`` dict."""
    def ms(x):
        return f'{x * 1e3:.3f} ms'

    rows = [
        ('iterations', f"{s['iterations']:,}"),
        ('callbacks run', f"{s['callbacks']:,}"),
        ('cancelled skipped', f"{s['cancelled_skipped']:,}"),
        ('timers fired', f"{s['timers_fired']:,}"),
        ('I/O events', f"{s['io_events']:,}"),
        ('polls (blocking / zero timeout)',
         f"{s['polls_blocking']:,} / {s['polls_nonblocking']:,}"),
        ('ready queue (now / largest batch)', f"{s['ready_now']:,} / {s['ready_max']:,}"),
        ('timers pending', f"{s['timers_pending']:,}"),
        ('readers / writers', f"{s['readers']:,} / {s['writers']:,}"),
    ]
    if s['timing']:
        total = s['time_callbacks'] + s['time_idle'] + s['time_overhead']

        def share(x):
            return f'{x:.3f} s ({100 * x / total:.0f} %)' if total else f'{x:.3f} s'

        rows += [
            ('time in callbacks', share(s['time_callbacks'])),
            ('time idle (waiting)', share(s['time_idle'])),
            ('time in the loop itself', share(s['time_overhead'])),
            ('timer lag p50 / p99 / max',
             f"{ms(s['lag_p50'])} / {ms(s['lag_p99'])} / {ms(s['lag_max'])}"),
            ('callback p50 / p99 / max',
             f"{ms(s['callback_p50'])} / {ms(s['callback_p99'])} / {ms(s['callback_max'])}"),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f'{k:<{width}}  {v}' for k, v in rows]
    if s['timing'] and s['slowest']:
        lines.append('slowest callbacks:')
        for text, secs in s['slowest']:
            lines.append(f'  {ms(secs):>12}  {text}')
    return '\n'.join(lines)


def prometheus_text(s, *, prefix='ferroloop_', labels=None):
    """A ``stats()`` dict in Prometheus' text exposition format (version 0.0.4)."""
    label = ''
    if labels:
        inner = ','.join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
        label = '{' + inner + '}'
    out = []
    for key, help_text in FIELDS.items():
        if key == 'slowest':
            continue
        value = s[key]
        name = prefix + key
        counter = key in ('iterations', 'callbacks', 'cancelled_skipped', 'timers_fired',
                          'io_events', 'polls_blocking', 'polls_nonblocking', 'time_callbacks',
                          'time_idle', 'time_overhead', 'lag_count', 'callback_count')
        if counter:
            name += '_total'
        out.append(f'# HELP {name} {help_text}')
        out.append(f"# TYPE {name} {'counter' if counter else 'gauge'}")
        out.append(f'{name}{label} {float(value) if isinstance(value, float) else int(value)}')
    return '\n'.join(out) + '\n'


def _escape(text):
    return text.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


# -- `ferroloop run --stats` ------------------------------------------------------------------------
# While tracking, every new Loop has timing on; its figures are kept when it closes (a loop may be
# collected before the program ends) and printed with those of the loops still open at exit.
_tracked = None   # {id: (weakref, number)} while tracking
_finished = []    # (number, stats dict) of the tracked loops that closed


def track_all_loops():
    """Time every loop created from now on and print their telemetry to stderr at exit."""
    global _tracked
    if _tracked is not None:
        return
    import atexit
    _tracked = {}
    atexit.register(_print_summary)


def _on_new_loop(loop):
    loop._stats_timing = True
    _tracked[id(loop)] = (weakref.ref(loop), len(_tracked) + len(_finished) + 1)


def _on_close(loop):
    entry = _tracked.pop(id(loop), None)
    if entry is not None:
        _finished.append((entry[1], loop._stats()))


def _print_summary(file=None):
    file = file or sys.stderr
    rows = list(_finished)
    for ref, number in _tracked.values():
        loop = ref()
        if loop is not None:
            rows.append((number, loop._stats()))
    rows.sort(key=lambda r: r[0])
    for number, s in rows:
        print(f'\nferroloop run --stats: loop {number} of {len(rows)}', file=file)
        print(format_stats(s), file=file)
