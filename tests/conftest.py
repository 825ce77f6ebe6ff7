"""Shared fixtures: every loop test runs twice, on asyncio's own loop (the reference) and on ferroloop.

In the spirit of uvloop's test base: the same test body runs against ``asyncio`` (ids ``[asyncio]``)
and ``ferroloop`` (ids ``[ferroloop]``). A test whose ``[asyncio]`` variant fails is a wrong test;
a test whose ``[ferroloop]`` variant fails is a ferroloop bug.

``import ferroloop`` happens lazily inside the fixture, so an unbuildable extension makes the
``[ferroloop]`` variants *fail* (never skip) while the ``[asyncio]`` variants still run.
"""

import asyncio
import inspect
import os
import re
import socket
import subprocess
import sys
import textwrap
from asyncio import format_helpers

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
        self.loop_cls = ferroloop.Loop
        self.policy_cls = ferroloop.EventLoopPolicy

    def new_loop(self):
        return self.module.new_event_loop()

    def run(self, main, *, debug=None):
        return self.module.run(main, debug=debug)


def make_flavor(name):
    return AsyncioFlavor() if name == 'asyncio' else FerroloopFlavor()


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
