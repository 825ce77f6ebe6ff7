"""Random programs of event-loop operations for differential fuzzing (ferroloop against asyncio).

A *program* is plain data (lists and tuples, so that a failing example prints as a repro) built by
the hypothesis strategy :func:`programs`; :func:`run_program` runs one on a loop and returns its
*trace*: what a user of the loop can observe, in an order asyncio defines. Two loops conform on a
program when their traces are equal.

Determinism. Traces contain no timestamps, addresses or task numbers. A program is a sequence of
steps, each run to completion before the next, so only the events of one step can interleave:

- ``sync`` steps schedule only work whose order asyncio defines: ``call_soon`` (FIFO),
  ``call_at``/``call_later`` with deadlines already due (run at the next iteration after the
  callbacks already queued, by deadline), futures, tasks, gather/wait/shield/timeout/wait_for,
  cancellation, exceptions in callbacks and in the exception handler, ``stop()``, BaseExceptions
  escaping ``run_until_complete`` and attempts to re-enter the running loop. Timers with *equal*
  deadlines may run in any order in asyncio (a plain heap); ferroloop runs them FIFO, one of the
  orders asyncio allows (README). As what they do next depends on that order, the reference is
  :class:`FifoSelectorEventLoop`: asyncio's loop with FIFO ties, otherwise unchanged.
- ``timers`` steps use deadlines in the future, ``UNIT`` seconds apart; their order is defined as
  long as the work between two deadlines takes less than ``UNIT`` (a stalled machine can break
  that; :func:`compare` re-runs a differing program to tell such noise from a difference).
- ``threads`` steps call ``call_soon_threadsafe`` from threads: each thread's callbacks are traced
  on a channel of their own (their interleaving with each other is not defined).
- ``io`` steps use readers and writers on a socket pair; what arrives (not in how many reads) is
  traced on the ``io`` channel.

"Exception was never retrieved" reports depend on when objects are freed, which asyncio does not
define: they are compared as a multiset at the end.
"""

import asyncio
import contextvars
import gc
import inspect
import itertools
import logging
import re
import socket
import sys
import threading

from asyncio import events as _events

from hypothesis import strategies as st

UNIT = 0.02  # seconds between two future deadlines of a `timers` step
WATCHDOG = 20  # seconds a program may take

# -- the generator ------------------------------------------------------------------------------

EXC_KINDS = ('ValueError', 'KeyError', 'Custom', 'Handler')  # Handler: the handler raises too
BASE_EXC_KINDS = ('KeyboardInterrupt', 'SystemExit')


def _leaf_body():
    return st.lists(st.tuples(st.just('raise'), st.sampled_from(EXC_KINDS)), max_size=1)


def _bodies(depth):
    """A callback body: a list of effects run by the callback, in order."""
    simple = st.one_of(
        st.tuples(st.just('cancel_handle'), st.integers(0, 7)),
        st.tuples(st.just('resolve'), st.integers(0, 3),
                  st.sampled_from(('result', 'exception', 'cancel'))),
        st.tuples(st.just('cancel_task'), st.integers(0, 3), st.booleans()),
        st.tuples(st.just('raise'), st.sampled_from(EXC_KINDS)),
        st.tuples(st.just('stop')),
        st.tuples(st.just('ctx_set'), st.integers(0, 9)),
        st.tuples(st.just('call_handler'), st.booleans()),
        st.tuples(st.just('done_cb'), st.integers(0, 3)),
        st.tuples(st.just('remove_done_cb'), st.integers(0, 3)),
        st.tuples(st.just('threadsafe'), _leaf_body()),
        st.tuples(st.just('reenter'), st.sampled_from(('run_until_complete', 'run_forever'))),
    )
    rare = st.tuples(st.just('base_raise'), st.sampled_from(BASE_EXC_KINDS))
    if depth <= 0:
        effect = st.one_of(simple, rare)
    else:
        effect = st.one_of(simple, rare, _schedule(depth - 1))
    return st.lists(effect, max_size=3)


def _schedule(depth):
    """An action that schedules a callback."""
    body = _bodies(depth)
    return st.one_of(
        st.tuples(st.just('soon'), body),
        st.tuples(st.just('soon_ctx'), body),
        st.tuples(st.just('at'), st.integers(-3, -1), body),
        st.tuples(st.just('later0'), body),
    )


def _coro(depth):
    """A coroutine: a list of operations awaited in order."""
    leaf = st.one_of(
        st.tuples(st.just('sleep0')),
        st.tuples(st.just('await_fut'), st.integers(0, 3)),
        st.tuples(st.just('await_task'), st.integers(0, 3)),
        st.tuples(st.just('cancel_task'), st.integers(0, 3), st.booleans()),
        st.tuples(st.just('resolve'), st.integers(0, 3),
                  st.sampled_from(('result', 'exception', 'cancel'))),
        st.tuples(st.just('raise'), st.sampled_from(EXC_KINDS[:3])),
        st.tuples(st.just('return'), st.integers(0, 9)),
        st.tuples(st.just('sched'), _schedule(0)),
        st.tuples(st.just('sleep_timer'), st.integers(1, 3)),  # only in `timers` steps
    )
    if depth <= 0:
        op = leaf
    else:
        sub = _coro(depth - 1)
        op = st.one_of(
            leaf, leaf,
            st.tuples(st.just('gather'), st.lists(sub, min_size=1, max_size=3), st.booleans()),
            st.tuples(st.just('wait'), st.lists(sub, min_size=1, max_size=3),
                      st.sampled_from(('ALL_COMPLETED', 'FIRST_COMPLETED', 'FIRST_EXCEPTION'))),
            st.tuples(st.just('shield'), sub),
            st.tuples(st.just('timeout'), st.sampled_from(('none', 'past', 'far', 'unit')), sub),
            st.tuples(st.just('wait_for'), st.sampled_from(('none', 'past', 'far', 'unit')), sub),
        )
    return st.lists(op, max_size=4)


def _sync_actions(timers):
    action = st.one_of(
        _schedule(2), _schedule(1),
        st.tuples(st.just('future')),
        st.tuples(st.just('task'), _coro(2)),
        st.tuples(st.just('cancel_handle'), st.integers(0, 7)),
        st.tuples(st.just('misuse'), st.sampled_from(MISUSES)),
        *([st.tuples(st.just('timer'), st.integers(1, 4), st.integers(0, 1), _bodies(1))]
          if timers else []),
    )
    return st.lists(action, min_size=1, max_size=8)


def _thread_step():
    return st.lists(  # per thread: the callbacks it schedules (True: the callback raises)
        st.lists(st.booleans(), min_size=1, max_size=5), min_size=1, max_size=3)


def _io_step():
    return st.fixed_dictionaries({
        'messages': st.lists(st.binary(min_size=1, max_size=64), max_size=4),
        'writer': st.booleans(),
        'replace_reader': st.booleans(),
        'reader_raises': st.booleans(),
        'misuse': st.sampled_from(('none', 'remove_closed', 'add_closed', 'add_negative')),
    })


MISUSES = ('call_soon_coroutine', 'call_later_not_callable', 'call_soon_kwarg',
           'create_task_not_coro', 'future_result_pending', 'run_until_complete_running')


def programs():
    step = st.one_of(
        st.tuples(st.just('sync'), _sync_actions(False)),
        st.tuples(st.just('sync'), _sync_actions(False)),
        st.tuples(st.just('sync'), _sync_actions(False)),
        st.tuples(st.just('timers'), _sync_actions(True)),
        st.tuples(st.just('threads'), _thread_step()),
        st.tuples(st.just('io'), _io_step()),
        st.tuples(st.just('executor'), st.lists(st.integers(-2, 5), min_size=1, max_size=4)),
        st.tuples(st.just('debug'), st.booleans()),
        st.tuples(st.just('default_handler'), st.booleans()),
    )
    return st.lists(step, min_size=1, max_size=4)


# -- the interpreter ----------------------------------------------------------------------------

class Custom(Exception):
    pass


# asyncio 3.13.0's run_forever() runs its clean-up even when its set-up failed: a second
# run_forever() call on a running loop raises RuntimeError *and* resets the running loop's
# _stopping flag, thread id and running-loop registration, so that it never stops (ferroloop keeps
# the running loop intact). Not asked of such a Python.
_REENTRY_RESETS_LOOP = 'try:\n            self._run_forever_setup()' in inspect.getsource(
    asyncio.base_events.BaseEventLoop.run_forever)


def _make_exc(kind, tag):
    if kind == 'KeyError':
        return KeyError(tag)
    if kind == 'Custom':
        return Custom(tag)
    if kind == 'Handler':
        return ValueError(f'H:{tag}')  # the exception handler raises when it sees this one
    return getattr(sys.modules['builtins'], kind)(tag)


_ADDR = re.compile(r' at 0x[0-9a-f]+| id=0x[0-9a-f]+|0x[0-9a-f]+')
_TASKNAME = re.compile(r"Task-\d+")


# Differences found and reported, not yet fixed in the Rust core: masked in both traces so that
# fuzzing goes on finding new ones. (pattern, replacement)
KNOWN_DIFFERENCES = (
    # Argument errors of the Rust methods name their class: "LoopCore.call_soon() got an
    # unexpected keyword argument 'foo'" (asyncio: "BaseEventLoop.call_soon() ...").
    (re.compile(r'\bLoopCore\.(\w+)\(\)'), r'BaseEventLoop.\1()'),
)


_WHEN = re.compile(r'when=[-+0-9.e]+')
_LOOPNAME = re.compile(r'<\w+ running=')
CV = contextvars.ContextVar('cv')


# Debug-mode tracebacks of where a handle was created: asyncio keeps the last 10 frames
# (DEBUG_STACK_DEPTH), two of which are its own _run_once/Handle._run; ferroloop calls callbacks
# from Rust, so the same 10 frames reach two further out (README: no `events.py ... in _run` frame).
_SOURCE_TB = re.compile(r"'source_traceback': \[.*?\]")
_LOGGED_TB = re.compile(r'\b(source|handle)_traceback: .*?(?=\n[a-z_]+: |\Z)', re.S)


def norm(text):
    text = str(text)
    text = _LOGGED_TB.sub(r'\1_traceback: ...', _SOURCE_TB.sub("'source_traceback': [...]", text))
    text = _TASKNAME.sub('Task-N', _ADDR.sub(' at 0x?', text))
    text = _LOOPNAME.sub('<LOOP running=', _WHEN.sub('when=?', text))
    for pattern, replacement in KNOWN_DIFFERENCES:
        text = pattern.sub(replacement, text)
    return text


def exc_info(exc):
    if exc is None:
        return None
    return (type(exc).__name__, norm(exc))


def outcome(fut):
    if not fut.done():
        return ('pending',)
    if fut.cancelled():
        return ('cancelled',)
    exc = fut.exception()
    if exc is not None:
        return ('exception',) + exc_info(exc)
    return ('result', norm(repr(fut.result())))


class _LogCapture(logging.Handler):
    def __init__(self, runner):
        super().__init__(logging.DEBUG)
        self.runner = runner

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg.startswith('Executing %s took'):
            return  # debug mode's slow-callback warning: timing
        text = norm(record.getMessage())
        if self.runner.self_cancelled:
            # the known difference of Runner.handler, as logged by the default handler
            text = re.sub(r'<(Timer)?Handle cancelled[^>]*>', '<Handle cancelled ...>', text)
            text = re.sub(r"""(['"])Exception in callback .*?\1(?=, ')""", "'Exception in callback ...'",
                          text)
            text = re.sub(r'^Exception in callback .*', 'Exception in callback ...', text, flags=re.M)
        self.runner.event('log', record.levelname, text, exc_info(exc))


class Runner:
    """Runs one program on one loop and collects its trace."""

    MAX_RESTARTS = 40

    def __init__(self, loop):
        self.loop = loop
        self.main = []           # the ordered channel
        self.channels = {}       # name -> list of events
        self.unordered = []      # 'never retrieved' reports
        self.channel = None      # channel of the callback running now (None: main)
        self.handles = []
        self.handle_state = {}   # handle index -> 'pending' | 'done' | 'cancelled'
        self.futures = []
        self.tasks = []
        self.counter = 0
        self.ctx = contextvars.copy_context()
        self.running = None      # index of the handle whose callback runs now
        self.self_cancelled = []  # handles cancelled by their own callback
        self.base = 0.0
        self.timers_allowed = False

    # -- trace ------------------------------------------------------------------------------
    def event(self, *ev):
        if self.channel is None:
            self.main.append(ev)
        else:
            self.channels.setdefault(self.channel, []).append(ev)

    def next_id(self):
        self.counter += 1
        return self.counter

    def handler(self, loop, context):
        exc = context.get('exception')
        msg = context.get('message')
        if msg in ('Task exception was never retrieved', 'Future exception was never retrieved'):
            self.unordered.append((msg, exc_info(exc)))
            return
        if any(context.get('handle') is h for h in self.self_cancelled):
            # Known difference (reported): a handle cancelled by its own callback, which then
            # raises, is "Exception in callback None()" in asyncio (cancel() dropped the
            # callback); ferroloop names the callback.
            msg = 'Exception in callback (cancelled by itself)'
        ev = ('handler', norm(msg), exc_info(exc), tuple(sorted(context)))
        tag = str(exc) if isinstance(exc, ValueError) else ''
        if tag.startswith(('thread', 'reader')):
            # a thread's or the reader's callback: traced on its channel, whose callbacks raise
            # ValueError(channel name + ...)
            self.channels.setdefault(tag.split('.')[0].split(' ')[0], []).append(ev)
        else:
            self.event(*ev)
        if tag.startswith('H:'):
            raise RuntimeError(f'handler failed on {exc}')

    # -- callbacks --------------------------------------------------------------------------
    def schedule(self, action, where):
        kind = action[0]
        idx = len(self.handles)
        cid = f'{where}.{idx}'
        body = action[-1]
        cb = self.callback
        if kind == 'soon':
            h = self.loop.call_soon(cb, idx, cid, body, None)
        elif kind == 'soon_ctx':  # all in one shared context: ctx_set effects are seen by later ones
            h = self.loop.call_soon(cb, idx, cid, body, None, context=self.ctx)
        elif kind == 'threadsafe':  # from the loop's own thread
            h = self.loop.call_soon_threadsafe(cb, idx, cid, body, None)
        elif kind == 'at':
            key = ('at', action[1])
            h = self.loop.call_at(self.base + action[1] * 0.001, cb, idx, cid, body, key)
        elif kind == 'later0':
            h = self.loop.call_later(0, cb, idx, cid, body, None)
        elif kind == 'timer':
            # on a grid of absolute deadlines: equal slots are equal deadlines
            key = ('timer', action[1], action[2])
            when = self.base + (action[1] + 0.5 * action[2]) * UNIT
            h = self.loop.call_at(when, cb, idx, cid, body, key)
        else:
            raise AssertionError(kind)
        self.event('scheduled', cid, norm(repr(h)))
        self.handles.append(h)
        self.handle_state[idx] = 'pending'
        return h

    def callback(self, idx, cid, body, key):
        self.running = idx
        self.handle_state[idx] = 'done'
        self.event('cb', cid, key, CV.get(None))
        self.effects(body, cid)

    def effects(self, body, where):
        for n, eff in enumerate(body):
            kind = eff[0]
            if kind in ('soon', 'at', 'later0'):
                self.schedule(eff, f'{where}/{n}')
            elif kind == 'cancel_handle':
                self.cancel_handle(eff[1])
            elif kind == 'resolve':
                self.resolve(eff[1], eff[2], where)
            elif kind == 'cancel_task':
                self.cancel_task(eff[1], eff[2], where)
            elif kind == 'raise':
                raise _make_exc(eff[1], where)
            elif kind == 'base_raise':
                raise _make_exc(eff[1], where)
            elif kind in ('soon_ctx', 'threadsafe'):
                self.schedule(eff, f'{where}/{n}')
            elif kind == 'call_handler':
                context = {'message': f'custom {where}'}
                if eff[1]:
                    context['exception'] = KeyError(where)
                self.loop.call_exception_handler(context)
            elif kind == 'ctx_set':
                CV.set(eff[1])
            elif kind == 'done_cb':
                if self.futures:
                    k = eff[1] % len(self.futures)
                    self.futures[k].add_done_callback(self.done_callback)
            elif kind == 'remove_done_cb':
                if self.futures:
                    k = eff[1] % len(self.futures)
                    self.event('removed', k,
                               self.futures[k].remove_done_callback(self.done_callback))
            elif kind == 'stop':
                self.loop.stop()
            elif kind == 'reenter' and eff[1] == 'run_forever' and _REENTRY_RESETS_LOOP:
                self.event('reenter', 'skipped')
            elif kind == 'reenter':
                fut = self.loop.create_future()
                try:
                    getattr(self.loop, eff[1])(*([fut] if eff[1] == 'run_until_complete' else []))
                except BaseException as e:
                    self.event('reenter', exc_info(e))
                fut.cancel()
            else:
                raise AssertionError(kind)

    def done_callback(self, fut):
        k = next(i for i, f in enumerate(self.futures) if f is fut)
        self.event('done_callback', k, outcome(fut), CV.get(None))

    def cancel_handle(self, k):
        if not self.handles:
            return
        idx = k % len(self.handles)
        if self.handle_state[idx] == 'pending':
            # (README: once its callback has run — or started — a ferroloop handle's repr no
            # longer names the callback)
            self.event('before_cancel', idx, norm(repr(self.handles[idx])))
        if idx == self.running:
            self.self_cancelled.append(self.handles[idx])
        self.handles[idx].cancel()
        if self.handle_state[idx] == 'pending':
            self.handle_state[idx] = 'cancelled'
        self.event('cancel_handle', idx, self.handles[idx].cancelled())

    def resolve(self, k, how, where):
        if not self.futures:
            return
        fut = self.futures[k % len(self.futures)]
        try:
            if how == 'result':
                fut.set_result(where)
                res = True
            elif how == 'exception':
                fut.set_exception(ValueError(where))
                res = True
            else:
                res = fut.cancel(msg=f'c:{where}')
        except BaseException as e:
            res = exc_info(e)
        self.event('resolve', k % len(self.futures), how, res)

    def cancel_task(self, k, with_msg, where):
        if not self.tasks:
            return
        t = self.tasks[k % len(self.tasks)]
        res = t.cancel(msg=f'ct:{where}') if with_msg else t.cancel()
        self.event('cancel_task', k % len(self.tasks), res)

    # -- coroutines -------------------------------------------------------------------------
    def new_task(self, ops, where, root=None):
        # `root`: the index of the top-level task this one works for. A coroutine awaits only
        # tasks of a smaller index than its root, so that no two tasks await each other (a cycle
        # makes cancel() recurse without end, in asyncio as in ferroloop).
        tid = len(self.tasks)
        root = tid if root is None else root
        task = self.loop.create_task(self.coro(ops, f'{where}t{tid}', root), name=f'T{tid}')
        self.tasks.append(task)
        return task

    def timeout_value(self, kind):
        if kind == 'unit':
            if not self.timers_allowed:
                return 1000
            return max(0, self.base + 2.75 * UNIT - self.loop.time())
        return {'none': None, 'past': -1, 'far': 1000}[kind]

    async def coro(self, ops, where, root):
        self.event('start', where)
        for n, op in enumerate(ops):
            here = f'{where}:{n}'
            kind = op[0]
            if kind == 'sleep0':
                await asyncio.sleep(0)
            elif kind == 'sleep_timer':
                # until a deadline between those of the timers (see the module docstring)
                delay = self.base + (op[1] + 0.25) * UNIT - self.loop.time()
                await asyncio.sleep(max(0, delay) if self.timers_allowed else 0)
            elif kind in ('await_fut', 'await_task'):
                pool = self.futures if kind == 'await_fut' else self.tasks[:root]
                if not pool:
                    continue
                target = pool[op[1] % len(pool)]
                try:
                    r = await target
                    self.event('awaited', here, norm(repr(r)))
                except Exception as e:
                    self.event('awaited', here, exc_info(e))
            elif kind == 'cancel_task':
                self.cancel_task(op[1], op[2], here)
            elif kind == 'resolve':
                self.resolve(op[1], op[2], here)
            elif kind == 'raise':
                raise _make_exc(op[1], here)
            elif kind == 'return':
                return op[1]
            elif kind == 'sched':
                self.schedule(op[1], here)
            elif kind == 'gather':
                aws = [self.coro(sub, f'{here}g{i}', root) for i, sub in enumerate(op[1])]
                try:
                    r = await asyncio.gather(*aws, return_exceptions=op[2])
                    self.event('gathered', here, [norm(repr(x)) for x in r])
                except Exception as e:
                    self.event('gathered', here, exc_info(e))
            elif kind == 'wait':
                subs = [self.new_task(sub, f'{here}w{i}', root) for i, sub in enumerate(op[1])]
                done, pending = await asyncio.wait(subs, return_when=op[2])
                self.event('waited', here, sorted(subs.index(t) for t in done),
                           sorted(subs.index(t) for t in pending))
            elif kind == 'shield':
                inner = self.new_task(op[1], f'{here}s', root)
                try:
                    r = await asyncio.shield(inner)
                    self.event('shielded', here, norm(repr(r)))
                except Exception as e:
                    self.event('shielded', here, exc_info(e))
            elif kind == 'timeout':
                try:
                    async with asyncio.timeout(self.timeout_value(op[1])):
                        r = await self.coro(op[2], f'{here}to', root)
                    self.event('timeout', here, 'ok', norm(repr(r)))
                except Exception as e:
                    self.event('timeout', here, exc_info(e))
            elif kind == 'wait_for':
                try:
                    r = await asyncio.wait_for(self.coro(op[2], f'{here}wf', root),
                                               self.timeout_value(op[1]))
                    self.event('wait_for', here, 'ok', norm(repr(r)))
                except Exception as e:
                    self.event('wait_for', here, exc_info(e))
            else:
                raise AssertionError(kind)
        return where

    # -- misuse -----------------------------------------------------------------------------
    def misuse(self, which):
        loop = self.loop

        async def coro():
            pass

        try:
            if which == 'call_soon_coroutine':
                c = coro()
                try:
                    loop.call_soon(c)
                finally:
                    c.close()
            elif which == 'call_later_not_callable':
                loop.call_later(0, 42)
            elif which == 'call_soon_kwarg':
                loop.call_soon(print, foo=1)
            elif which == 'create_task_not_coro':
                loop.create_task(42)
            elif which == 'future_result_pending':
                loop.create_future().result()
            elif which == 'run_until_complete_running':
                fut = loop.create_future()
                fut.cancel()
                loop.run_until_complete(fut)
            self.event('misuse', which, None)
        except BaseException as e:
            self.event('misuse', which, exc_info(e))

    # -- steps ------------------------------------------------------------------------------
    def quiescent(self):
        return ('pending' not in self.handle_state.values()
                and all(t.done() for t in self.tasks))

    async def settle(self):
        for _ in range(400):
            if self.quiescent():
                return
            await asyncio.sleep(0)
        self.event('not quiescent')

    async def step_sync(self, si, actions, timers):
        self.base = self.loop.time()
        self.timers_allowed = timers
        for n, action in enumerate(actions):
            kind = action[0]
            where = f's{si}.{n}'
            if kind in ('soon', 'at', 'later0', 'timer'):
                self.schedule(action, where)
            elif kind == 'future':
                self.futures.append(self.loop.create_future())
            elif kind == 'task':
                self.new_task(action[1], where)
            elif kind == 'cancel_handle':
                self.cancel_handle(action[1])
            elif kind == 'misuse':
                self.misuse(action[1])
        if timers:
            # let every future timer come due
            await asyncio.sleep(self.base + 5.6 * UNIT - self.loop.time())
        await self.settle()
        # what nobody resolved: cancel the tasks still waiting, in order
        for n, t in enumerate(self.tasks):
            if not t.done():
                self.event('final_cancel', n, t.cancel())
        await self.settle()
        for n, t in enumerate(self.tasks):
            self.event('task', n, outcome(t))
        for n, f in enumerate(self.futures):
            self.event('future', n, outcome(f))
            if not f.done():
                f.cancel()
        self.timers_allowed = False

    async def step_threads(self, si, threads):
        total = sum(len(t) for t in threads)
        done = self.loop.create_future()
        count = [0]

        def cb(tn, i, raises):
            self.channel = f'thread{tn}'
            try:
                self.event('cb', i)
                count[0] += 1
                if count[0] == total and not done.done():
                    done.set_result(None)
            finally:
                self.channel = None
            if raises:
                raise ValueError(f'thread{tn}.{i}')

        def run(tn, plan):
            for i, raises in enumerate(plan):
                self.loop.call_soon_threadsafe(cb, tn, i, raises)

        workers = [threading.Thread(target=run, args=(tn, plan)) for tn, plan in enumerate(threads)]
        for w in workers:
            w.start()
        await done
        for w in workers:
            w.join()
        await asyncio.sleep(0)

    async def step_io(self, si, spec):
        loop = self.loop
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = bytearray()
        eof = loop.create_future()
        state = {'raised': False, 'sent': 0}

        def on_read(tag):
            self.channel = 'reader'
            try:
                if spec['reader_raises'] and not state['raised']:
                    state['raised'] = True
                    raise ValueError(f'reader {tag}')
                data = a.recv(4096)
                if data:
                    got.extend(data)
                    return
                self.event('eof', tag, bytes(got), loop.remove_reader(a), loop.remove_reader(a))
                if not eof.done():
                    eof.set_result(None)
            finally:
                self.channel = None

        def on_write():
            self.channel = 'writer'
            try:
                msgs = spec['messages']
                if state['sent'] < len(msgs):
                    b.send(msgs[state['sent']])
                    state['sent'] += 1
                if state['sent'] == len(msgs):
                    self.event('writer_done', loop.remove_writer(b), loop.remove_writer(b))
                    b.shutdown(socket.SHUT_WR)
            finally:
                self.channel = None

        try:
            loop.add_reader(a, on_read, 'r1')
            if spec['replace_reader']:
                loop.add_reader(a.fileno(), on_read, 'r2')
            if spec['writer']:
                loop.add_writer(b, on_write)
            else:
                for m in spec['messages']:
                    b.send(m)
                b.shutdown(socket.SHUT_WR)
            await eof
        finally:
            loop.remove_reader(a)
            loop.remove_writer(b)
            a.close()
            b.close()
        misuse = spec['misuse']
        try:
            if misuse == 'remove_closed':
                r = loop.remove_reader(a)
            elif misuse == 'add_closed':
                r = loop.add_writer(b, print)
            elif misuse == 'add_negative':
                r = loop.add_reader(-5, print)
            else:
                r = None
            self.event('io_misuse', misuse, r)
        except BaseException as e:
            self.event('io_misuse', misuse, exc_info(e))

    async def step_executor(self, values):
        def work(v):
            if v < 0:
                raise ValueError(f'work {v}')
            return v * 10

        futs = [self.loop.run_in_executor(None, work, v) for v in values]
        self.event('executor', [outcome(f) for f in futs])
        res = await asyncio.gather(*futs, return_exceptions=True)
        self.event('executor', [exc_info(r) if isinstance(r, BaseException) else r for r in res])

    async def program(self, prog):
        self.loop.set_exception_handler(self.handler)
        for si, (kind, payload) in enumerate(prog):
            self.event('step', si, kind)
            if kind == 'sync':
                await self.step_sync(si, payload, False)
            elif kind == 'timers':
                await self.step_sync(si, payload, True)
            elif kind == 'threads':
                await self.step_threads(si, payload)
            elif kind == 'executor':
                await self.step_executor(payload)
            elif kind == 'debug':
                self.loop.set_debug(payload)
            elif kind == 'default_handler':
                # asyncio's default handler logs the context (reprs of handles, tasks, futures)
                self.loop.set_exception_handler(None if payload else self.handler)
            elif kind == 'io':
                await self.step_io(si, payload)
        return 'end'

    def run(self, prog):
        loop = self.loop
        logger = logging.getLogger('asyncio')
        capture = _LogCapture(self)
        saved = logger.propagate, logger.level
        logger.addHandler(capture)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        try:
            main = loop.create_task(self.program(prog), name='main')
            # A program that never finishes (on either loop) is cancelled: the traces then say so.
            watchdog = loop.call_later(WATCHDOG, self.watchdog, main)
            for _ in range(self.MAX_RESTARTS):
                try:
                    r = loop.run_until_complete(main)
                    self.event('run_until_complete', norm(repr(r)))
                    break
                except BaseException as e:
                    self.event('run_until_complete', exc_info(e), main.done())
                    if main.done():
                        break
            else:
                self.event('gave up')
                main.cancel()
                try:
                    loop.run_until_complete(main)
                except BaseException:
                    pass
            watchdog.cancel()
            # what remains queued (a stale stop() of an earlier run_until_complete, too): run it
            # out, then close
            for t in self.tasks:
                t.cancel()
            for _ in range(3):
                try:
                    loop.run_until_complete(asyncio.sleep(0))
                    self.event('drain', None)
                except BaseException as e:
                    self.event('drain', exc_info(e))
            loop.close()
            self.after_close()
        finally:
            if not loop.is_closed():
                loop.close()
            self.handles = self.futures = self.tasks = None
            main = None
            gc.collect()
            logger.removeHandler(capture)
            logger.propagate, level = saved
            logger.setLevel(level)
        return self.trace()

    def watchdog(self, main):
        self.event('watchdog: the program did not finish')
        main.cancel()

    def after_close(self):
        loop = self.loop
        for name, call in (('call_soon', lambda: loop.call_soon(print)),
                           ('call_later', lambda: loop.call_later(1, print)),
                           ('call_soon_threadsafe', lambda: loop.call_soon_threadsafe(print)),
                           ('run_forever', loop.run_forever),
                           ('stop', loop.stop),
                           ('close', loop.close)):
            try:
                call()
                self.event('closed', name, None)
            except BaseException as e:
                self.event('closed', name, exc_info(e))

    def trace(self):
        return {
            'main': self.main,
            'channels': self.channels,
            'unordered': sorted(self.unordered, key=repr),
        }


class _FifoTimerHandle(_events.TimerHandle):
    """asyncio's TimerHandle, ordered by (deadline, creation): equal deadlines run FIFO."""

    __slots__ = ('_seq',)
    _counter = itertools.count()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._source_traceback:
            del self._source_traceback[-1]  # this frame (debug mode)
        self._seq = next(self._counter)

    def __lt__(self, other):
        if self._when == other._when and isinstance(other, _FifoTimerHandle):
            return self._seq < other._seq
        return self._when < other._when

    def __gt__(self, other):
        return other.__lt__(self)


_FifoTimerHandle.__name__ = _FifoTimerHandle.__qualname__ = 'TimerHandle'


class FifoSelectorEventLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, whose timers with equal deadlines run in the order they were scheduled."""

    def call_at(self, when, callback, *args, context=None):
        # BaseEventLoop.call_at makes its handle as `events.TimerHandle(...)`
        original = _events.TimerHandle
        _events.TimerHandle = _FifoTimerHandle
        try:
            timer = super().call_at(when, callback, *args, context=context)
        finally:
            _events.TimerHandle = original
        if timer._source_traceback:
            del timer._source_traceback[-1]  # this frame: debug reprs name the caller's
        return timer


def run_program(prog, loop_factory):
    return Runner(loop_factory()).run(prog)


def diff(a, b):
    """A short description of where two traces first differ."""
    for part in ('main', 'channels', 'unordered'):
        if a[part] != b[part]:
            x, y = a[part], b[part]
            if isinstance(x, list):
                for i, (p, q) in enumerate(zip(x, y)):
                    if p != q:
                        return f'{part}[{i}]: asyncio {p!r} != ferroloop {q!r}'
                return f'{part}: lengths {len(x)} != {len(y)}; tail {x[len(y):]!r} / {y[len(x):]!r}'
            return f'{part}: asyncio {x!r} != ferroloop {y!r}'
    return None


def compare(prog, reference_factory, subject_factory, reruns=2):
    """None if the traces agree, else a description. A difference that the reference itself does
    not reproduce (timing noise of a `timers` step on a stalled machine) does not count."""
    ref = run_program(prog, reference_factory)
    sub = run_program(prog, subject_factory)
    if ref == sub:
        return None
    first = diff(ref, sub)
    agree = 0
    for _ in range(reruns):
        ref2 = run_program(prog, reference_factory)
        if ref2 != ref:
            return None  # the program's trace is not deterministic here: no verdict
        if run_program(prog, subject_factory) == ref:
            agree += 1
    if agree == reruns:
        return None
    return first
