"""ferroloop: a drop-in replacement for the asyncio event loop, written in Rust.

    import ferroloop
    ferroloop.run(main())                       # like asyncio.run(), on a ferroloop loop
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # 3.12+
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as r: r.run(main())
"""

import asyncio as _asyncio
import sys as _sys

from . import _ferroloop
from ._loop import Loop
from ._stats import enable_timing, stats

__version__: str = _ferroloop.__version__
#: "release" or "debug": how the Rust extension was compiled.
BUILD_PROFILE: str = _ferroloop.BUILD_PROFILE

__all__ = ('Loop', 'new_event_loop', 'run', 'install', 'EventLoopPolicy', 'stats', 'enable_timing',
           '__version__', 'BUILD_PROFILE')


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


def run(main, *, debug=None, loop_factory=new_event_loop):
    """Run a coroutine on a new ferroloop loop and return its result (see asyncio.run)."""
    if _sys.version_info >= (3, 12):
        return _asyncio.run(main, debug=debug, loop_factory=loop_factory)
    # asyncio.run() of 3.11, with the loop factory its Runner already accepts.
    if _asyncio.events._get_running_loop() is not None:
        # fail fast with short traceback
        raise RuntimeError(
            "asyncio.run() cannot be called from a running event loop")
    with _asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
        return runner.run(main)


def install() -> None:
    """Make ferroloop the loop of asyncio's default policy (legacy API, like uvloop.install())."""
    if _sys.version_info >= (3, 12):
        import warnings
        warnings.warn(
            "ferroloop.install() is deprecated in favor of ferroloop.run() "
            "starting with Python 3.12.",
            DeprecationWarning,
            stacklevel=1,
        )
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def __getattr__(name):
    # EventLoopPolicy subclasses asyncio's default policy; it is built on first use so that
    # importing ferroloop touches no (future-)deprecated asyncio name.
    if name == 'EventLoopPolicy':
        from ._policy import EventLoopPolicy
        globals()['EventLoopPolicy'] = EventLoopPolicy
        return EventLoopPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
