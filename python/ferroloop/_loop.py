"""ferroloop.Loop: the Rust core (ready queue, timers, poller, run loop) plus asyncio's policy code.

The hot paths — call_soon/call_later/call_at/call_soon_threadsafe, handles, the iteration itself —
are Rust (`_ferroloop.LoopCore`). Methods that are pure policy and never on a hot path
(run_until_complete, the exception handler, executors, async generator hooks, task factory, debug
switches, DNS through the executor), and in this phase all of networking, are the stdlib's own
functions from asyncio's Unix selector loop, set on this class (``_borrow_selector_loop``): they then behave exactly as the
running interpreter's asyncio, version by version, because they *are* that code. They rely only
on the attributes that BaseEventLoop.__init__ sets, which Loop.__init__ sets too (the Rust core
provides ``_closed``, ``_stopping``, ``_debug`` and ``slow_callback_duration`` as properties).
"""

import asyncio
import errno
import os
import selectors
import signal
import sys
import threading
import time
import warnings
import weakref
from asyncio import base_events as _be
from asyncio import selector_events as _selector_events
from asyncio import coroutines as _coroutines
from asyncio import events as _events
from asyncio import unix_events as _unix_events
from asyncio.futures import isfuture as _isfuture

from . import _ferroloop
from . import _stats
from . import _datagram
from . import _pipes
from . import _subprocess
from . import _transports
from . import _tls

__all__ = ('Loop',)

_Base = _be.BaseEventLoop

# Rust methods with a direct METH_FASTCALL entry point: set on Loop as method descriptors (see
# the end of this module), so that `loop.call_soon(...)` is a method lookup the interpreter can
# specialise. A subclass that overrides one still wins (it comes first in the MRO).
_FAST = ('call_soon_threadsafe', 'call_later', 'call_at', 'create_future', 'create_task',
         'get_debug')
# Rust methods bound once per loop and kept in LoopCore's slots, read by data descriptors set on
# Loop (end of this module; see slots.rs). call_soon is here rather than in _FAST: 3.11's C Task
# and Future look it up with PyObject_GetAttr, and a method descriptor would bind a new method
# object for each of those calls; a slot is one pointer read.
_PREBOUND = ('call_soon', 'time')

class Loop(_ferroloop.LoopCore, asyncio.AbstractEventLoop):
    """An asyncio event loop implemented in Rust."""

    def __init__(self):
        # The Rust core (LoopCore.__new__) already owns the ready queue, the timers, the poller,
        # the cross-thread waker and the _closed/_stopping/_debug flags.
        self._timer_cancelled_count = 0  # informational; the Rust timer queue keeps its own
        self._default_executor = None
        self._internal_fds = 0
        self._thread_id = None
        self._clock_resolution = time.get_clock_info('monotonic').resolution
        self._exception_handler = None
        self.set_debug(_coroutines._is_debug_mode())
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self._old_agen_hooks = None
        # BaseSelectorEventLoop.__init__ / _UnixSelectorEventLoop.__init__
        self._selector = _SelectorView(self)
        # a WeakValueDictionary whose open stream transports live in the Rust core (_transports.py)
        self._transports = _transports.Transports(self)
        self._signal_handlers = {}
        self._unix_server_sockets = {}  # 3.13's create_unix_server(cleanup_socket=True)
        # Methods asyncio's C Task/Future and sleep()/timeouts look up on every use: bound once
        # into this loop's slots, read by the data descriptors set on Loop (see slots.rs). A
        # subclass override still wins, and its super() call finds the slot. call_soon is bound
        # to its direct METH_FASTCALL entry point (same behaviour, less argument parsing).
        self._bind_slots()
        if _stats._tracked is not None:   # `ferroloop run --stats`
            _stats._on_new_loop(self)

    # -- running ---------------------------------------------------------------------------------

    def _run_forever_setup(self):
        # asyncio 3.12's BaseEventLoop._run_forever_setup (3.11 inlines the same steps).
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        _events._set_running_loop(self)

    def _run_forever_cleanup(self):
        self._stopping = False
        self._thread_id = None
        _events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self):
        """Run until stop() is called."""
        self._run_forever_setup()
        try:
            self._run()  # Rust: iterate until stop()
        finally:
            self._run_forever_cleanup()

    # -- closing ---------------------------------------------------------------------------------

    def close(self):
        """Close the event loop: drop pending callbacks and shut the default executor down.

        The loop must not be running. Closing twice is a no-op.
        """
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            _be.logger.debug("Close %r", self)
        self._closed = True
        if _stats._tracked is not None:
            _stats._on_close(self)
        self._close_core()  # Rust: clear ready queue, timers, readers and writers
        self._selector = None  # as BaseSelectorEventLoop.close: transports' reprs then say 'open'
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        self._close_signal_handlers()

    def _close_signal_handlers(self):
        # asyncio._UnixSelectorEventLoop.close
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(f"Closing the loop {self!r} "
                          f"on interpreter shutdown "
                          f"stage, skipping signal handlers removal",
                          ResourceWarning,
                          source=self)
            self._signal_handlers.clear()

    # -- signals ---------------------------------------------------------------------------------

    def add_signal_handler(self, sig, callback, *args):
        """Run callback(*args) on the loop whenever signal `sig` arrives (main thread only).

        asyncio's semantics and errors. CPython's C-level handler writes to the loop's wake-up
        pipe (signal.set_wakeup_fd), which wakes a loop blocked waiting; the Python-level handler
        then queues the callback, in the context current when the handler was added.
        """
        if (_coroutines.iscoroutine(callback) or
                _coroutines.iscoroutinefunction(callback)):
            raise TypeError("coroutines cannot be used "
                            "with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # set_wakeup_fd() raises ValueError if this is not the main thread: calling it first
            # keeps a loop running in another thread from adding a signal handler.
            signal.set_wakeup_fd(self._signal_wakeup_fd())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        handle = _events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle

        try:
            signal.signal(sig, self._on_signal)
            # Set SA_RESTART to limit EINTR occurrences.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    _be.logger.info('set_wakeup_fd(-1) failed: %s', nexc)

            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig:d} cannot be caught')
            else:
                raise

    def _on_signal(self, sig, frame):
        # The Python-level handler (main thread): asyncio's _handle_signal.
        handle = self._signal_handlers.get(sig)
        if handle is None or self.is_closed():
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self.call_soon_threadsafe(handle._callback, *handle._args, context=handle._context)

    if sys.version_info >= (3, 13):
        def _stop_serving(self, sock):
            # _UnixSelectorEventLoop._stop_serving of 3.13, with its zero-argument super() call
            # spelled out (super() needs the stdlib class in type(self).__mro__).
            # Is this a unix socket that needs cleanup?
            if sock in self._unix_server_sockets:
                path = sock.getsockname()
            else:
                path = None

            _selector_events.BaseSelectorEventLoop._stop_serving(self, sock)

            if path is not None:
                prev_ino = self._unix_server_sockets[sock]
                del self._unix_server_sockets[sock]
                try:
                    if os.stat(path).st_ino == prev_ino:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    _be.logger.error('Unable to clean up listening UNIX socket '
                                     '%r: %r', path, err)

    # sock_recv / sock_sendall: the attempt, the wait and the clean-up are Rust (sockops.rs);
    # only the coroutine is Python.
    async def sock_recv(self, sock, n):
        data = _ferroloop.sock_recv(self, sock, n)
        if data.__class__ is bytes or not _isfuture(data):
            return data
        return await data

    async def sock_sendall(self, sock, data):
        fut = _ferroloop.sock_sendall(self, sock, data)
        if fut is not None:
            return await fut

    sock_recv.__doc__ = _selector_events.BaseSelectorEventLoop.sock_recv.__doc__
    sock_sendall.__doc__ = _selector_events.BaseSelectorEventLoop.sock_sendall.__doc__

    # Socket transports whose per-message path is Rust (ferroloop/_transports.py).
    _make_socket_transport = _transports.make_socket_transport
    # TCP servers accept into an fd and a raw peer address, no socket object (_transports.py).
    _accept_connection = _transports.accept_connection
    # TLS: asyncio's SSLProtocol with its per-record paths in Rust (ferroloop/_tls.py).
    _make_ssl_transport = _tls.make_ssl_transport
    start_tls = _tls.start_tls
    # Datagram transports whose per-datagram path is Rust (ferroloop/_datagram.py).
    _make_datagram_transport = _datagram.make_datagram_transport
    # Pipes whose read and write are Rust (ferroloop/_pipes.py).
    _make_read_pipe_transport = _pipes.make_read_pipe_transport
    _make_write_pipe_transport = _pipes.make_write_pipe_transport
    # Subprocesses whose exit is watched through a pidfd in the poller (ferroloop/_subprocess.py).
    _make_subprocess_transport = _subprocess.make_subprocess_transport

    def __del__(self, _warn=warnings.warn):
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()


class _SelectorView:
    """What asyncio's code reads of `loop._selector` (transport reprs, tests): the readers and
    writers registered in the Rust poller, as selectors.SelectorKey objects. Read-only."""

    __slots__ = ('_loop',)

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj):
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise KeyError(f"{fileobj!r} is not registered")
        try:
            fd = loop._io_lookup(fileobj)
        except OverflowError:  # not a C int: never registered
            raise KeyError(f"{fileobj!r} is not registered") from None
        entry = loop._io_key(fd)
        if entry is None:
            raise KeyError(f"{fileobj!r} is not registered")
        key, events, reader, writer = entry
        return selectors.SelectorKey(key, fd, events, (reader, writer))

    def get_map(self):
        loop = self._loop()
        if loop is None or loop.is_closed():
            return {}
        return {fd: self.get_key(fd) for fd in loop._io_fds()}


# Every method of asyncio's Unix selector loop (BaseEventLoop, BaseSelectorEventLoop,
# _UnixSelectorEventLoop) that Loop and LoopCore do not define themselves is set on Loop, except the
# selector-loop plumbing that the Rust core replaces: the policy methods (see the module docstring)
# and all networking — sockets, transports, servers, pipes, subprocesses, sendfile, TLS through
# asyncio.sslproto — running on ferroloop's Rust readiness core. See docs/architecture.md.
_NOT_BORROWED = frozenset({
    '__init__', '__del__', '__repr__', 'close', 'run_forever',
    '_make_self_pipe', '_close_self_pipe', '_read_from_self', '_process_self_data',
    '_write_to_self', '_process_events', '_run_once', '_add_callback', '_add_callback_signalsafe',
    '_handle_signal', '_call_soon', '_timer_handle_cancelled', 'add_signal_handler',
})


def _borrow_selector_loop(cls):
    own = set(cls.__dict__) | set(_ferroloop.LoopCore.__dict__)
    mro = _unix_events._UnixSelectorEventLoop.__mro__
    # Base classes first, so the most derived definition wins.
    for base in reversed(mro[:mro.index(asyncio.AbstractEventLoop)]):
        for name, value in base.__dict__.items():
            if name in own or name in _NOT_BORROWED or name.startswith('__'):
                continue
            if callable(value) or isinstance(value, (staticmethod, classmethod, property)):
                code = getattr(value, '__code__', None)
                if code is not None and '__class__' in code.co_freevars:
                    # Zero-argument super() only works with the stdlib class in the MRO: such a
                    # method must be written out in Loop (see _stop_serving). Fail at import,
                    # not in the middle of a program, when a new Python version adds one.
                    raise ImportError(f'ferroloop: cannot reuse {base.__name__}.{name} '
                                      f'(uses super()); Loop must define it')
                setattr(cls, name, value)


Loop.__repr__ = _Base.__repr__  # dunders are not copied wholesale
_borrow_selector_loop(Loop)
for _name in _FAST:
    setattr(Loop, _name, _ferroloop.LoopCore._fast_descriptor(Loop, _name))
for _name in _PREBOUND:
    setattr(Loop, _name, _ferroloop.LoopCore._slot_descriptor(Loop, _name))
del _name
