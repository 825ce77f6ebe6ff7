"""Shared fixtures: every loop test runs twice, on asyncio's own loop (the reference) and on ferroloop.

In the spirit of uvloop's test base: the same test body runs against ``asyncio`` (ids ``[asyncio]``)
and ``ferroloop`` (ids ``[ferroloop]``). A test whose ``[asyncio]`` variant fails is a wrong test;
a test whose ``[ferroloop]`` variant fails is a ferroloop bug.

``import ferroloop`` happens lazily inside the fixture, so an unbuildable extension makes the
``[ferroloop]`` variants *fail* (never skip) while the ``[asyncio]`` variants still run.

Every test is strict, on both loops (in the spirit of uvloop's ``_testbase.BaseTestCase.tearDown``):
after the test, its ``loop`` closed and a garbage collection, it fails when

- a loop's exception handler was called (``call_exception_handler``, on any loop) and the test is
  not marked ``@pytest.mark.expect_exception_handler``;
- a file descriptor opened during the test is still open (a leaked socket, transport, server,
  pipe or unclosed loop);
- a ResourceWarning was emitted and not caught by the test itself ("unclosed transport",
  "unclosed event loop", "unclosed <socket ...>", ...).
"""

import asyncio
import functools
import gc
import inspect
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from asyncio import base_events, format_helpers

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAVORS = ('asyncio', 'ferroloop')


class Flavor:
    """What a test needs to know about one loop implementation."""

    name: str

    def __repr__(self):
        return f'<Flavor {self.name}>'


class AsyncioFlavor(Flavor):
    name = 'asyncio'

    def __init__(self):
        # On Unix asyncio.SelectorEventLoop is _UnixSelectorEventLoop, the loop asyncio.new_event_loop()
        # makes with the default policy; named explicitly so a test that changed the policy can't
        # turn the reference into something else.
        self.loop_cls = asyncio.SelectorEventLoop
        self.policy_cls = asyncio.DefaultEventLoopPolicy

    def new_loop(self):
        return asyncio.SelectorEventLoop()

    def run(self, main, *, debug=None):
        # the reference for ferroloop.run() is asyncio.run() (on 3.11 without loop_factory, it
        # uses the default policy's loop, which is SelectorEventLoop here too)
        if sys.version_info >= (3, 12):
            return asyncio.run(main, debug=debug, loop_factory=self.new_loop)
        return asyncio.run(main, debug=debug)


class FerroloopFlavor(Flavor):
    name = 'ferroloop'

    def __init__(self):
        import ferroloop  # noqa: PLC0415 - lazy on purpose, see the module docstring

        self.module = ferroloop
        _record_handler_calls(ferroloop.Loop)
        self.loop_cls = ferroloop.Loop
        self.policy_cls = ferroloop.EventLoopPolicy

    def new_loop(self):
        return self.module.new_event_loop()

    def run(self, main, *, debug=None):
        return self.module.run(main, debug=debug)


def make_flavor(name):
    return AsyncioFlavor() if name == 'asyncio' else FerroloopFlavor()


# -- strictness ---------------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'expect_exception_handler: the test makes a loop call its exception handler on '
        'purpose (without it, any call_exception_handler() during the test fails the test)')


# Contexts given to call_exception_handler() on any loop while a test runs, summarised as text (a
# reference to the exception would keep its traceback, and the loop, alive past the test).
_handler_calls = []


def _summarise_context(context):
    exc = context.get('exception')
    text = repr(context.get('message'))
    if exc is not None:
        text += f' exception={type(exc).__name__}: {exc}'
    return text


def _record_handler_calls(cls):
    """Wrap cls.call_exception_handler (once) so every call is recorded in _handler_calls."""
    original = cls.__dict__.get('call_exception_handler')
    if original is None or getattr(original, '_strict_recorder', False):
        return

    @functools.wraps(original)
    def call_exception_handler(self, context):
        _handler_calls.append(_summarise_context(context))
        return original(self, context)

    call_exception_handler._strict_recorder = True
    cls.call_exception_handler = call_exception_handler


def _open_fds():
    return set(os.listdir('/proc/self/fd'))


def _describe_fds(fds):
    out = []
    for fd in sorted(fds, key=int):
        try:
            out.append(f'{fd} -> {os.readlink(f"/proc/self/fd/{fd}")}')
        except OSError:
            out.append(f'{fd} -> (closed meanwhile)')
    return ', '.join(out)


@pytest.fixture(autouse=True)
def _strict(request):
    """Fail the test on unexpected exception-handler calls, leaked fds and ResourceWarnings.

    Autouse, so it is set up before (and torn down after) the test's other fixtures: the `loop`
    fixture has closed its loop and `pair` its sockets when the checks run.
    """
    _record_handler_calls(base_events.BaseEventLoop)
    if 'ferroloop' in sys.modules:
        _record_handler_calls(sys.modules['ferroloop'].Loop)
    gc.collect()
    # Everything alive now moves to the collector's permanent generation: the collections below
    # then walk only what this test made (a full collection of the whole session's heap cost
    # ~50 ms, four per test). What the test creates and drops is still found.
    gc.freeze()
    fds_before = _open_fds()
    del _handler_calls[:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        yield
        # The objects a test dropped: collected here, so that their ResourceWarnings and
        # "Task was destroyed but it is pending!" reports are attributed to this test.
        for _ in range(3):
            gc.collect()
        leaked = _open_fds() - fds_before
        deadline = time.monotonic() + 1.0
        while leaked and time.monotonic() < deadline:
            # an executor or test thread may still be closing its socket
            time.sleep(0.02)
            gc.collect()
            leaked = _open_fds() - fds_before
    calls, _handler_calls[:] = _handler_calls[:], []
    resource_warnings = [w for w in caught if issubclass(w.category, ResourceWarning)]
    for w in caught:  # everything else goes on to pytest's own warning capture
        if not issubclass(w.category, ResourceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    problems = []
    if calls and request.node.get_closest_marker('expect_exception_handler') is None:
        problems.append('the exception handler was called (mark the test '
                        '@pytest.mark.expect_exception_handler if it should be):\n    '
                        + '\n    '.join(calls))
    if leaked:
        problems.append(f'file descriptors leaked: {_describe_fds(leaked)}')
    if resource_warnings:
        problems.append('ResourceWarning:\n    ' + '\n    '.join(
            f'{w.filename}:{w.lineno}: {w.message}' for w in resource_warnings))
    if problems:
        pytest.fail('strict checks failed:\n  ' + '\n  '.join(problems), pytrace=False)


@pytest.fixture(params=FLAVORS)
def flavor(request):
    """The loop implementation under test (ids: asyncio, ferroloop)."""
    return make_flavor(request.param)


@pytest.fixture
def loop_factory(flavor):
    return flavor.new_loop


@pytest.fixture
def loop(flavor):
    """A fresh loop of the flavor under test, closed afterwards. Not set as the current loop."""
    lp = flavor.new_loop()
    hooks_before = sys.get_asyncgen_hooks()
    try:
        yield lp
    finally:
        running = asyncio._get_running_loop()
        asyncio._set_running_loop(None)
        if not lp.is_closed() and not lp.is_running():
            lp.close()
        asyncio.set_event_loop(None)
        sys.set_asyncgen_hooks(*hooks_before)
        assert running is None, f'a running loop was left registered: {running!r}'


@pytest.fixture
def errors(loop):
    """The contexts that reach `loop`'s exception handler, in order."""
    got = []
    loop.set_exception_handler(lambda lp, ctx: got.append(ctx))
    return got


@pytest.fixture
def other_flavor(flavor):
    """The other implementation (for cross-implementation interplay tests)."""
    return make_flavor('ferroloop' if flavor.name == 'asyncio' else 'asyncio')


@pytest.fixture
def pair():
    """A connected pair of non-blocking Unix stream sockets, closed afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


# -- helpers ------------------------------------------------------------------------------------

_FMT_TAKES_DEBUG = 'debug' in inspect.signature(format_helpers._format_callback_source).parameters


def fmt_cb(func, args=(), *, debug=False):
    """How the running interpreter's asyncio formats a callback in reprs and log messages."""
    if _FMT_TAKES_DEBUG:
        return format_helpers._format_callback_source(func, args, debug=debug)
    return format_helpers._format_callback_source(func, args)


def args_shown(debug):
    """Whether this interpreter's asyncio shows callback arguments in reprs (3.13: debug only)."""
    return debug or not _FMT_TAKES_DEBUG


def src(func):
    """'file:line' of a function, as asyncio prints it."""
    code = func.__code__
    return f'{code.co_filename}:{code.co_firstlineno}'


def mask_loop_name(text):
    """Replace the loop class name in asyncio's loop repr ``<Name running=...>`` by LOOP."""
    return re.sub(r'<\w+ running=', '<LOOP running=', text)


def lineno():
    """Line number of the caller."""
    return sys._getframe(1).f_lineno


def run_script(flavor_name, code, *, env=None, timeout=30):
    """Run a Python snippet in a subprocess; FACTORY is the flavor's loop factory there."""
    prelude = textwrap.dedent(f"""\
        import asyncio, sys
        FLAVOR = {flavor_name!r}
        if FLAVOR == 'ferroloop':
            import ferroloop
            FACTORY = ferroloop.new_event_loop
        else:
            FACTORY = asyncio.SelectorEventLoop
        """)
    full_env = dict(os.environ)
    full_env.pop('PYTHONASYNCIODEBUG', None)
    full_env.pop('PYTHONDEVMODE', None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, '-c', prelude + textwrap.dedent(code)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
