"""Loop telemetry (ferroloop.stats / enable_timing): a known workload gives known counts.

ferroloop only: asyncio's loop has no telemetry.
"""

import asyncio
import math
import socket
import time

import pytest

import ferroloop
from ferroloop import _stats


@pytest.fixture
def floop():
    lp = ferroloop.new_event_loop()
    yield lp
    lp.close()


def run_once(lp):
    lp.call_soon(lp.stop)
    lp.run_forever()


def test_fresh_loop_is_all_zero(floop):
    s = ferroloop.stats(floop)
    assert set(s) == set(_stats.FIELDS)
    for key, value in s.items():
        if key == 'slowest':
            assert value == []
        elif key == 'timing':
            assert value is False
        else:
            assert value == 0, key


def test_iterations_and_callbacks(floop):
    calls = []
    for i in range(100):
        floop.call_soon(calls.append, i)
    run_once(floop)                     # one iteration runs the 100 callbacks and stop()
    s = ferroloop.stats(floop)
    assert s['iterations'] == 1
    assert s['callbacks'] == 101
    assert s['ready_max'] == 101
    assert s['ready_now'] == 0
    run_once(floop)
    s = ferroloop.stats(floop)
    assert (s['iterations'], s['callbacks'], s['ready_max']) == (2, 102, 101)


def test_callbacks_scheduled_by_callbacks_run_next_iteration(floop):
    def chain(n):
        if n:
            floop.call_soon(chain, n - 1)
        else:
            floop.stop()
    floop.call_soon(chain, 9)
    floop.run_forever()
    s = ferroloop.stats(floop)
    assert s['iterations'] == 10
    assert s['callbacks'] == 10
    assert s['ready_max'] == 1


def test_cancelled_handles_are_counted_apart(floop):
    handles = [floop.call_soon(print) for _ in range(5)]
    handles[1].cancel()
    handles[3].cancel()
    for h in handles[:1] + handles[2:3] + handles[4:]:
        h.cancel()  # all five cancelled: nothing printed
    floop.call_soon(floop.stop)
    floop.run_forever()
    s = ferroloop.stats(floop)
    assert s['cancelled_skipped'] == 5
    assert s['callbacks'] == 1


def test_timers(floop):
    fired = []
    for i in range(3):
        floop.call_later(0, fired.append, i)
    far = [floop.call_later(3600, print) for _ in range(4)]
    far[0].cancel()
    s = ferroloop.stats(floop)
    assert s['timers_pending'] == 6
    assert s['timers_cancelled'] == 1
    gone = floop.call_later(0, print)
    gone.cancel()
    floop.run_until_complete(asyncio.sleep(0.01))
    s = ferroloop.stats(floop)
    assert fired == [0, 1, 2]
    # the three, plus sleep()'s own timer; the cancelled one is not counted
    assert s['timers_fired'] == 4
    assert s['timers_pending'] == 3


def test_io_events_readers_writers_and_polls(floop):
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        got = []

        def on_readable():
            got.append(a.recv(100))
            floop.stop()
        floop.add_reader(a, on_readable)
        floop.add_writer(b, floop.remove_writer, b)
        s = ferroloop.stats(floop)
        assert (s['readers'], s['writers']) == (1, 1)
        floop.call_later(0.01, b.send, b'ping')
        floop.run_forever()
        s = ferroloop.stats(floop)
        assert got == [b'ping']
        assert s['io_events'] == 2      # the writer once, the reader once
        assert s['writers'] == 0
        assert s['polls_blocking'] >= 1  # it waited for the timer
        floop.remove_reader(a)
        assert ferroloop.stats(floop)['readers'] == 0
    finally:
        a.close()
        b.close()


def test_no_polls_counted_when_nothing_is_registered(floop):
    # With no fd registered and work ready, the zero-timeout poll is skipped altogether.
    for _ in range(3):
        run_once(floop)
    s = ferroloop.stats(floop)
    assert s['polls_blocking'] == s['polls_nonblocking'] == 0


def test_reset(floop):
    run_once(floop)
    assert ferroloop.stats(floop, reset=True)['iterations'] == 1
    assert ferroloop.stats(floop)['iterations'] == 0


def test_timing_off_by_default_then_on(floop):
    floop.call_soon(time.sleep, 0.01)
    run_once(floop)
    s = ferroloop.stats(floop)
    assert s['timing'] is False
    assert s['time_callbacks'] == 0 and s['slowest'] == [] and s['callback_count'] == 0

    ferroloop.enable_timing(floop)
    assert ferroloop.stats(floop)['timing'] is True

    def blocker():
        time.sleep(0.1)

    floop.call_soon(blocker)
    late = []
    floop.call_later(0.02, lambda: late.append(floop.time()))
    floop.run_until_complete(asyncio.sleep(0.15))
    s = ferroloop.stats(floop)
    # the 20 ms timer could only run after the 100 ms blocker: lag of at least 80 ms
    assert s['lag_count'] >= 2
    assert 0.08 <= s['lag_max'] < 5
    assert s['lag_p99'] <= s['lag_max'] + 1e-12
    assert s['callback_max'] >= 0.1
    assert s['time_callbacks'] >= 0.1
    assert s['time_idle'] > 0
    assert s['time_overhead'] >= 0
    text, secs = s['slowest'][0]
    assert 'blocker' in text and text.startswith('<Handle')
    assert secs >= 0.1
    assert len(s['slowest']) <= 10
    assert [x[1] for x in s['slowest']] == sorted((x[1] for x in s['slowest']), reverse=True)

    ferroloop.enable_timing(floop, False)
    before = ferroloop.stats(floop)['callback_count']
    run_once(floop)
    assert ferroloop.stats(floop)['callback_count'] == before


def test_slowest_keeps_ten(floop):
    ferroloop.enable_timing(floop)
    for i in range(30):
        floop.call_soon(time.sleep, 0.001 * (i % 3))
    run_once(floop)
    s = ferroloop.stats(floop)
    assert len(s['slowest']) == 10
    assert s['callback_count'] == 31


def test_running_loop_default_and_closed_loop():
    async def main():
        ferroloop.enable_timing()
        await asyncio.sleep(0)
        return ferroloop.stats()

    lp = ferroloop.new_event_loop()
    s = lp.run_until_complete(main())
    assert s['iterations'] >= 1 and s['timing'] is True
    lp.close()
    assert ferroloop.stats(lp)['iterations'] >= s['iterations']


def test_not_a_ferroloop_loop():
    lp = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(TypeError, match='ferroloop.Loop'):
            ferroloop.stats(lp)
        with pytest.raises(TypeError):
            ferroloop.enable_timing(lp)
    finally:
        lp.close()
    with pytest.raises(RuntimeError):
        ferroloop.stats()   # no running loop


def test_format_and_prometheus(floop):
    ferroloop.enable_timing(floop)
    floop.call_soon(time.sleep, 0.002)
    run_once(floop)
    s = ferroloop.stats(floop)
    table = _stats.format_stats(s)
    assert 'callbacks run' in table and 'slowest callbacks:' in table
    text = _stats.prometheus_text(s, labels={'app': 'x"y'})
    samples = [line for line in text.splitlines() if not line.startswith('#')]
    assert len(samples) == len(_stats.FIELDS) - 1
    values = {}
    for line in samples:
        name, value = line.rsplit(' ', 1)
        assert name.endswith('{app="x\\"y"}')
        values[name.split('{')[0]] = float(value)
    assert values['ferroloop_callbacks_total'] == s['callbacks']
    assert values['ferroloop_iterations_total'] == s['iterations']
    assert math.isclose(values['ferroloop_time_callbacks_total'], s['time_callbacks'])


@pytest.mark.timeout(60)
def test_prometheus_example_serves_metrics():
    import os
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'examples', 'telemetry', 'prometheus_aiohttp.py'),
         '--port', str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f'http://127.0.0.1:{port}/work?ms=30', timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, 'the example did not start'
                time.sleep(0.1)
        body = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5).read()
        text = body.decode()
        values = {}
        for line in text.splitlines():
            if not line.startswith('#'):
                name, value = line.rsplit(' ', 1)
                values[name] = float(value)
        assert values['ferroloop_timing{app="example"}'] == 1
        assert values['ferroloop_callbacks_total{app="example"}'] > 0
        assert values['ferroloop_callback_max{app="example"}'] >= 0.03  # the blocking handler
        assert values['ferroloop_readers{app="example"}'] >= 1          # the listening socket
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


@pytest.mark.timeout(60)
def test_cli_run_stats_prints_a_table_per_loop(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    prog = tmp_path / 'prog.py'
    prog.write_text(
        'import asyncio, time\n'
        'async def main():\n'
        '    asyncio.get_running_loop().call_soon(time.sleep, 0.05)\n'
        '    await asyncio.sleep(0.1)\n'
        'asyncio.run(main())\n'
        'loop = asyncio.new_event_loop()\n'       # a second loop, never closed
        'loop.run_until_complete(asyncio.sleep(0))\n'
        'print("done")\n')
    r = subprocess.run([sys.executable, '-m', 'ferroloop', 'run', '--stats', str(prog)],
                       capture_output=True, text=True, cwd=ROOT, timeout=50,
                       env={k: v for k, v in os.environ.items() if k != 'PYTHONASYNCIODEBUG'})
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'done\n'
    assert 'ferroloop run --stats: loop 1 of 2' in r.stderr
    assert 'ferroloop run --stats: loop 2 of 2' in r.stderr
    first = r.stderr.split('loop 2 of 2')[0]
    # the slowest callback (3.13 shows arguments in handle reprs only in debug mode)
    assert 'time in callbacks' in first and '<Handle sleep(' in first
