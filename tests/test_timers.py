"""call_later / call_at and TimerHandle."""

import gc
import random
import time
import weakref

import pytest

from conftest import args_shown, fmt_cb, lineno, src


def cb():
    pass


def cb_args(*args):
    pass


def test_call_later_returns_timer_handle(loop):
    t0 = loop.time()
    h = loop.call_later(10, cb)
    t1 = loop.time()
    assert type(h).__name__ == 'TimerHandle'
    assert t0 + 10 <= h.when() <= t1 + 10
    assert h._when == h.when()
    assert h.cancelled() is False
    assert h._callback is cb
    assert h._loop is loop


def test_call_at_when(loop):
    when = loop.time() + 123.25
    h = loop.call_at(when, cb)
    assert h.when() == when
    assert type(h).__name__ == 'TimerHandle'


def test_timers_never_early_when_woken_often(loop):
    # closely spaced deadlines: the loop wakes up for each one, the next is always a little ahead
    early = []
    count = [0]
    base = loop.time() + 0.005

    def fire(w):
        count[0] += 1
        if loop.time() < w:
            early.append(w - loop.time())

    for i in range(200):
        loop.call_at(base + i * 0.0002, fire, base + i * 0.0002)
    loop.call_at(base + 0.1, loop.stop)
    loop.run_forever()
    assert count[0] == 200
    assert early == [], f'{len(early)} timers fired early, by up to {max(early, default=0):.6f}s'


def test_timer_never_early(loop):
    seen = []
    handles = []

    def callback(i):
        seen.append((i, loop.time() >= handles[i].when(), time.monotonic()))

    t0 = time.monotonic()
    for i, delay in enumerate([0.001, 0.01, 0.02, 0.05]):
        handles.append(loop.call_later(delay, callback, i))
    loop.call_later(0.07, loop.stop)
    loop.run_forever()
    assert [(i, ok) for i, ok, _ in seen] == [(0, True), (1, True), (2, True), (3, True)]
    assert seen[3][2] - t0 >= 0.05


def test_call_at_never_early(loop):
    seen = []
    when = loop.time() + 0.03
    h = loop.call_at(when, lambda: (seen.append(loop.time()), loop.stop()))
    loop.run_forever()
    assert seen[0] >= h.when() == when


def test_timers_fire_in_deadline_order(loop):
    calls = []
    delays = [0.03, 0.01, 0.02, 0.0, 0.015, 0.025, 0.005]
    for d in delays:
        loop.call_later(d, calls.append, d)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == sorted(delays)


def test_many_timers_random_order(loop):
    rng = random.Random(42)
    base = loop.time() + 0.01
    whens = [base + rng.random() * 0.05 for _ in range(500)]
    calls = []
    early = []

    def fire(w):
        calls.append(w)
        if loop.time() < w:
            early.append((w, loop.time()))

    for w in whens:
        loop.call_at(w, fire, w)
    loop.call_at(base + 0.07, loop.stop)
    loop.run_forever()
    assert calls == sorted(whens)
    assert early == [], f'{len(early)} timers fired before their deadline'


def test_call_at_equal_deadlines_same_iteration(loop):
    calls = []
    when = loop.time() + 0.01

    def first_of_batch(i):
        calls.append(i)
        if len(calls) == 1:
            loop.call_soon(calls.append, 'scheduled by the first')

    for i in range(5):
        loop.call_at(when, first_of_batch, i)
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    # all five are due in the same iteration, so they all run before the call_soon'd one
    assert sorted(calls[:5]) == [0, 1, 2, 3, 4]
    assert calls[5:] == ['scheduled by the first']


def test_cancelled_timers_dont_run(loop):
    calls = []
    h1 = loop.call_later(0.001, calls.append, 1)
    h2 = loop.call_later(0.002, calls.append, 2)
    h3 = loop.call_at(loop.time() + 0.003, calls.append, 3)
    h2.cancel()
    assert h2.cancelled()
    h3.cancel()
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == [1]
    assert not h1.cancelled()


def test_cancel_timer_from_callback_same_iteration(loop):
    calls = []
    now = loop.time()
    handles = {}

    def block():
        # make both timers due by the next iteration
        time.sleep(0.05)

    def a():
        calls.append('a')
        handles['b'].cancel()

    loop.call_soon(block)
    handles['a'] = loop.call_at(now + 0.01, a)
    handles['b'] = loop.call_at(now + 0.02, calls.append, 'b')
    handles['c'] = loop.call_at(now + 0.03, calls.append, 'c')
    loop.call_at(now + 0.1, loop.stop)
    loop.run_forever()
    assert calls == ['a', 'c']
    assert handles['b'].cancelled()


def test_many_cancelled_timers_purge(loop):
    # asyncio purges its heap when more than half of >100 timers are cancelled; the rest still fire
    # in order
    calls = []
    base = loop.time() + 0.02
    handles = [loop.call_at(base + i * 0.0001, calls.append, i) for i in range(1000)]
    for i, h in enumerate(handles):
        if i % 10:
            h.cancel()
    loop.call_at(base + 0.2, loop.stop)
    loop.run_forever()
    assert calls == list(range(0, 1000, 10))


def test_cancel_purge_while_running(loop):
    calls = []
    now = loop.time()
    keep = [loop.call_at(now + 0.08 + i * 0.0001, calls.append, i) for i in range(50)]
    junk = [loop.call_at(now + 0.02 + i * 0.0001, calls.append, -1) for i in range(500)]

    def cancel_junk():
        for h in junk:
            h.cancel()
        # scheduled after a purge
        loop.call_later(0.015, calls.append, 'late')

    loop.call_later(0.005, cancel_junk)
    loop.call_at(now + 0.2, loop.stop)
    loop.run_forever()
    # deadline order: 'late' is due at about now+0.02, the kept ones from now+0.08
    assert calls == ['late'] + list(range(50))
    assert all(not h.cancelled() for h in keep)


def test_cancel_after_fired(loop):
    calls = []
    h = loop.call_later(0, calls.append, 1)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == [1]
    h.cancel()
    assert h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1]


def test_timer_handle_repr(loop):
    h = loop.call_at(1234.5, cb)
    assert repr(h) == f'<TimerHandle when=1234.5 cb() at {src(cb)}>'
    h.cancel()
    assert repr(h) == '<TimerHandle cancelled when=1234.5>'


def test_timer_handle_repr_call_later(loop):
    h = loop.call_later(10, cb_args, 'x')
    shown = "'x'" if args_shown(False) else ''
    assert repr(h) == f'<TimerHandle when={h.when()} cb_args({shown}) at {src(cb_args)}>'
    assert repr(h) == f'<TimerHandle when={h.when()} {fmt_cb(cb_args, ("x",))}>'


def test_timer_handle_repr_debug(loop):
    loop.set_debug(True)
    h = loop.call_later(10, cb); line = lineno()  # noqa: E702
    assert repr(h) == f'<TimerHandle when={h.when()} cb() at {src(cb)} created at {__file__}:{line}>'
    h2 = loop.call_at(99.0, cb); line2 = lineno()  # noqa: E702
    assert repr(h2) == f'<TimerHandle when=99.0 cb() at {src(cb)} created at {__file__}:{line2}>'
    h2.cancel()
    assert repr(h2) == f'<TimerHandle cancelled when=99.0 cb() at {src(cb)} created at {__file__}:{line2}>'


def test_timer_handle_comparisons(loop):
    h1 = loop.call_at(10.0, cb)
    h2 = loop.call_at(20.0, cb)
    h3 = loop.call_at(10.0, cb)
    assert h1 < h2 and h2 > h1
    assert h1 <= h2 and h2 >= h1
    assert h1 <= h3 and h1 >= h3
    assert not h1 < h3
    assert hash(h1) == hash(10.0)
    assert sorted([h2, h1]) == [h1, h2]
    assert sorted([h2, h1])[0] is h1


def test_call_later_delay_none(loop):
    with pytest.raises(TypeError, match='^delay must not be None$'):
        loop.call_later(None, cb)


def test_call_at_when_none(loop):
    with pytest.raises(TypeError, match='^when cannot be None$'):
        loop.call_at(None, cb)


def test_delay_none_checked_before_closed(loop):
    loop.close()
    with pytest.raises(TypeError, match='^delay must not be None$'):
        loop.call_later(None, cb)
    with pytest.raises(TypeError, match='^when cannot be None$'):
        loop.call_at(None, cb)


def test_call_later_bad_delay_type(loop):
    with pytest.raises(TypeError):
        loop.call_later('1', cb)


def test_negative_and_zero_delay_run_in_first_iteration(loop):
    calls = []
    loop.call_later(-5, calls.append, 'neg')
    loop.call_later(0, calls.append, 'zero')
    loop.call_at(0, calls.append, 'at0')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['at0', 'neg', 'zero']


def test_int_delay_and_when(loop):
    calls = []
    h = loop.call_at(5, calls.append, 'int when')
    assert h.when() == 5
    h2 = loop.call_later(0, calls.append, 'int delay')
    assert isinstance(h2.when(), float)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['int when', 'int delay']


def test_long_timer_doesnt_block_stop(loop):
    loop.call_later(3600, cb)
    loop.call_later(0.01, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 3


def test_timer_handle_cycle_collected_after_firing(loop):
    class Obj:
        def __init__(self):
            self.handle = loop.call_later(0, self.method)
            self.fired = False

        def method(self):
            self.fired = True

    obj = Obj()
    ref = weakref.ref(obj)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert obj.fired
    del obj
    for _ in range(3):
        gc.collect()
    assert ref() is None, 'object referenced by its own (fired) timer handle was leaked'


def test_timer_handle_cycle_collected_after_cancel(loop):
    class Obj:
        def __init__(self):
            self.handle = loop.call_later(60, self.method)

        def method(self):
            pass

    obj = Obj()
    ref = weakref.ref(obj)
    obj.handle.cancel()
    del obj
    for _ in range(3):
        gc.collect()
    assert ref() is None


def test_timer_handle_cycle_collected_after_close(flavor):
    lp = flavor.new_loop()

    class Obj:
        def __init__(self):
            self.handle = lp.call_later(60, self.method)
            self.soon = lp.call_soon(self.method)

        def method(self):
            pass

    obj = Obj()
    ref = weakref.ref(obj)
    lp.close()
    del obj
    for _ in range(3):
        gc.collect()
    assert ref() is None


def test_handle_cycle_collected_after_run(loop):
    class Obj:
        def __init__(self):
            self.handle = loop.call_soon(self.method, self)

        def method(self, me):
            pass

    obj = Obj()
    ref = weakref.ref(obj)
    loop.call_soon(loop.stop)
    loop.run_forever()
    del obj
    for _ in range(3):
        gc.collect()
    assert ref() is None


def test_loop_collected_with_pending_timer(flavor):
    lp = flavor.new_loop()
    lp.call_later(60, lp.stop)  # loop -> timer -> bound method -> loop
    ref = weakref.ref(lp)
    lp.close()
    del lp
    for _ in range(3):
        gc.collect()
    assert ref() is None


def test_timer_handle_equality(loop):
    # asyncio.TimerHandle.__eq__ compares when, callback, args and cancelled state
    h1 = loop.call_at(10.0, cb_args, 1)
    h2 = loop.call_at(10.0, cb_args, 1)
    h3 = loop.call_at(10.0, cb_args, 2)
    h4 = loop.call_at(11.0, cb_args, 1)
    assert h1 == h2
    assert not (h1 != h2)
    assert h1 != h3
    assert h1 != h4
    assert h1 != 1
    h2.cancel()
    assert h1 != h2


def test_infinite_and_huge_deadlines(loop):
    calls = []
    h_inf = loop.call_at(float('inf'), calls.append, 'inf')
    h_huge = loop.call_later(1e300, calls.append, 'huge')
    h_big = loop.call_later(10 ** 9, calls.append, 'big')
    assert h_inf.when() == float('inf')
    loop.call_later(0.01, calls.append, 'soon')
    loop.call_later(0.02, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 3
    assert calls == ['soon']
    for h in (h_inf, h_huge, h_big):
        h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['soon']


def test_only_far_timers_stop_from_thread(loop):
    import threading
    loop.call_at(float('inf'), cb)
    t = threading.Timer(0.1, loop.call_soon_threadsafe, args=(loop.stop,))
    t.start()
    t0 = time.monotonic()
    try:
        loop.run_forever()
    finally:
        t.join()
    assert time.monotonic() - t0 < 3


def test_past_timer_scheduled_during_iteration_runs_next_iteration(loop):
    calls = []

    def a():
        calls.append('a')
        loop.call_later(-1, calls.append, 'timer from a')
        loop.call_soon(calls.append, 'soon from a')

    loop.call_soon(a)
    loop.call_soon(calls.append, 'b')
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == ['a', 'b', 'soon from a', 'timer from a']


def test_stop_from_timer_with_other_due_timers(loop):
    calls = []
    now = loop.time()
    loop.call_soon(time.sleep, 0.03)  # all three timers are due by the next iteration
    loop.call_at(now + 0.01, calls.append, 1)
    loop.call_at(now + 0.015, loop.stop)
    loop.call_at(now + 0.02, calls.append, 2)
    loop.call_at(now + 10, calls.append, 'far')
    loop.run_forever()
    assert calls == [1, 2]


def test_timer_scheduled_flag(loop):
    h = loop.call_later(0, cb)
    assert h._scheduled is True
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert h._scheduled is False


def test_close_releases_callback_arguments(flavor):
    lp = flavor.new_loop()

    class Arg:
        pass

    a1, a2 = Arg(), Arg()
    r1, r2 = weakref.ref(a1), weakref.ref(a2)
    lp.call_soon(cb_args, a1)
    lp.call_later(60, cb_args, a2)
    del a1, a2
    assert r1() is not None and r2() is not None
    lp.close()
    assert r1() is None and r2() is None


def test_run_releases_callback_arguments(loop):
    class Arg:
        pass

    a1, a2 = Arg(), Arg()
    r1, r2 = weakref.ref(a1), weakref.ref(a2)
    loop.call_soon(cb_args, a1)
    loop.call_later(0, cb_args, a2)
    del a1, a2
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    # handles not kept by anyone: freed by reference counting, no gc.collect() needed
    assert r1() is None and r2() is None


def test_cancel_releases_callback_arguments(loop):
    class Arg:
        pass

    a1, a2 = Arg(), Arg()
    r1, r2 = weakref.ref(a1), weakref.ref(a2)
    h1 = loop.call_soon(cb_args, a1)
    h2 = loop.call_later(60, cb_args, a2)
    del a1, a2
    h1.cancel()
    h2.cancel()
    assert r1() is None and r2() is None
