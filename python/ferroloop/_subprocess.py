"""Subprocess transports: ferroloop's own, with the state and per-event methods in Rust, and the
child's exit watched through a pidfd in the loop's poller.

``_UnixSubprocessTransport`` is an ``asyncio.SubprocessTransport`` (asyncio's class name, so reprs
read the same) holding a ``_ferroloop.SubprocessCore``. The core keeps asyncio's
``BaseSubprocessTransport`` state — ``_proc``, ``_pid``, ``_returncode``, ``_pipes``,
``_protocol``, ``_loop``, ``_closed``, ``_finished``, ``_exit_waiters``, ``_pending_calls``, read
and written here through those names — and does its methods (``close``, ``send_signal``/
``terminate``/``kill``, ``get_pipe_transport``, ``_call``, ``_pipe_data_received``,
``_pipe_connection_lost``, ``_process_exited``, ``_try_finish``, ``_call_connection_lost``, the
waiter of ``_wait``, ``__repr__``, ``__del__``'s ResourceWarning) with the running version's
steps. The core holds no reference to the transport: methods that need it are passed it. What
stays Python: the constructor and ``_start`` (``subprocess.Popen``, looked up when called, as
asyncio's ``_UnixSubprocessTransport._start``), and the two coroutines — ``_connect_pipes``,
which awaits ``connect_write_pipe``/``connect_read_pipe`` for each pipe with asyncio's pipe
protocols (``base_subprocess.WriteSubprocessPipeProto``/``ReadSubprocessPipeProto``) and hands
the end (``connection_made``, then the calls queued meanwhile) to the core, and ``_wait``. The
class subclasses ``asyncio.SubprocessTransport`` and holds the core rather than subclassing it:
``BaseTransport``'s ``_extra`` slot and a native base cannot share an instance layout.

``make_subprocess_transport`` is asyncio's ``_UnixSelectorEventLoop._make_subprocess_transport``
step for step — the same waiter and the same clean-up on failure — with the class above and,
instead of the policy's child watcher (on 3.11 a ``ThreadedChildWatcher``, one thread per child;
on 3.12+ a ``PidfdChildWatcher`` in Python), the child's pidfd registered as a reader whose
callback is Rust (``_ferroloop.PidfdWatch``). It reports through the loop's
``_child_watcher_callback``, as every asyncio watcher does.

asyncio's own path (its ``_UnixSubprocessTransport`` and watcher, unchanged) runs instead whenever
the program chose a watcher of another kind than the policy's default ones (``set_child_watcher``
with a Safe/Fast/MultiLoop watcher or a class of its own, or a policy that overrides
``get_child_watcher``), or pidfds are unavailable (Linux before 5.3, or a seccomp policy that
forbids ``pidfd_open``).
"""

import socket
import subprocess
import sys
import warnings
from asyncio import base_subprocess as _base_subprocess
from asyncio import events as _events
from asyncio import transports as _transports
from asyncio import unix_events as _unix_events
from asyncio.log import logger

from . import _ferroloop

__all__ = ('make_subprocess_transport',)

PIDFD_SUPPORTED = _ferroloop.pidfd_supported()

_asyncio_make_subprocess_transport = _unix_events._UnixSelectorEventLoop._make_subprocess_transport
_DefaultPolicy = _unix_events._UnixDefaultEventLoopPolicy
_DEFAULT_WATCHERS = (type(None), _unix_events.ThreadedChildWatcher,
                     getattr(_unix_events, 'PidfdChildWatcher', type(None)))
_SubprocessCore = _ferroloop.SubprocessCore
_WriteSubprocessPipeProto = _base_subprocess.WriteSubprocessPipeProto
_ReadSubprocessPipeProto = _base_subprocess.ReadSubprocessPipeProto


def _core_property(name):
    def get(self):
        return getattr(self._core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set)


class _UnixSubprocessTransport(_transports.SubprocessTransport):

    # __dict__: made only when code sets an attribute of its own on the transport.
    __slots__ = ('_core', '__weakref__', '__dict__')

    def __init__(self, loop, protocol, args, shell,
                 stdin, stdout, stderr, bufsize,
                 waiter=None, extra=None, **kwargs):
        super().__init__(extra)
        core = self._core = _SubprocessCore(loop, protocol)
        pipes = core._pipes
        if stdin == subprocess.PIPE:
            pipes[0] = None
        if stdout == subprocess.PIPE:
            pipes[1] = None
        if stderr == subprocess.PIPE:
            pipes[2] = None

        # Create the child process: set the _proc attribute
        try:
            self._start(args=args, shell=shell, stdin=stdin, stdout=stdout,
                        stderr=stderr, bufsize=bufsize, **kwargs)
        except:
            self.close()
            raise

        proc = core._proc
        core._pid = pid = proc.pid
        self._extra['subprocess'] = proc

        if loop.get_debug():
            if isinstance(args, (bytes, str)):
                program = args
            else:
                program = args[0]
            logger.debug('process %r created: pid %s',
                         program, pid)

        loop.create_task(self._connect_pipes(waiter))

    # -- asyncio's attributes, backed by the core ------------------------------------------------

    _loop = _core_property('_loop')
    _protocol = _core_property('_protocol')
    _proc = _core_property('_proc')
    _pid = _core_property('_pid')
    _returncode = _core_property('_returncode')
    _pipes = _core_property('_pipes')
    _closed = _core_property('_closed')
    _finished = _core_property('_finished')
    _exit_waiters = _core_property('_exit_waiters')
    _pending_calls = _core_property('_pending_calls')

    # -- asyncio's BaseSubprocessTransport methods: the work is the core's -----------------------

    def __repr__(self):
        return self._core.repr(self)

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        # asyncio's _UnixSubprocessTransport._start.
        stdin_w = None
        if stdin == subprocess.PIPE and sys.platform.startswith('aix'):
            # Use a socket pair for stdin on AIX, since it does not
            # support selecting read events on the write end of a
            # socket (which we use in order to detect closing of the
            # other end).
            stdin, stdin_w = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                universal_newlines=False, bufsize=bufsize, **kwargs)
            if stdin_w is not None:
                stdin.close()
                self._proc.stdin = open(stdin_w.detach(), 'wb', buffering=bufsize)
                stdin_w = None
        finally:
            if stdin_w is not None:
                stdin.close()
                stdin_w.close()

    def set_protocol(self, protocol):
        self._core._protocol = protocol

    def get_protocol(self):
        return self._core._protocol

    def is_closing(self):
        return self._core._closed

    def close(self):
        self._core.close(self)

    def __del__(self, _warn=warnings.warn):
        core = getattr(self, '_core', None)
        if core is not None:
            core.finalize(self, _warn)

    def get_pid(self):
        return self._core._pid

    def get_returncode(self):
        return self._core._returncode

    def get_pipe_transport(self, fd):
        return self._core.get_pipe_transport(fd)

    def _check_proc(self):
        self._core._check_proc()

    def send_signal(self, signal):
        self._core.send_signal(signal)

    def terminate(self):
        self._core.terminate(self)

    def kill(self):
        self._core.kill(self)

    async def _connect_pipes(self, waiter):
        # asyncio's, with the end (connection_made, then the calls queued meanwhile) in the core.
        try:
            proc = self._proc
            loop = self._loop

            if proc.stdin is not None:
                _, pipe = await loop.connect_write_pipe(
                    lambda: _WriteSubprocessPipeProto(self, 0),
                    proc.stdin)
                self._pipes[0] = pipe

            if proc.stdout is not None:
                _, pipe = await loop.connect_read_pipe(
                    lambda: _ReadSubprocessPipeProto(self, 1),
                    proc.stdout)
                self._pipes[1] = pipe

            if proc.stderr is not None:
                _, pipe = await loop.connect_read_pipe(
                    lambda: _ReadSubprocessPipeProto(self, 2),
                    proc.stderr)
                self._pipes[2] = pipe

            self._core._pipes_connected(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if waiter is not None and not waiter.cancelled():
                waiter.set_exception(exc)
        else:
            if waiter is not None and not waiter.cancelled():
                waiter.set_result(None)

    def _call(self, cb, *data):
        self._core._call(cb, *data)

    def _pipe_connection_lost(self, fd, exc):
        self._core._pipe_connection_lost(self, fd, exc)

    def _pipe_data_received(self, fd, data):
        self._core._pipe_data_received(fd, data)

    def _process_exited(self, returncode):
        self._core._process_exited(self, returncode)

    async def _wait(self):
        """Wait until the process exit and return the process return code.

        This method is a coroutine."""
        waiter = self._core._exit_waiter()
        if waiter is None:
            return self._core._returncode
        return await waiter

    def _try_finish(self):
        self._core._try_finish(self)

    def _call_connection_lost(self, exc):
        self._core._call_connection_lost(exc)


# Handle reprs name the methods as asyncio's (``<Handle BaseSubprocessTransport._process_exited(0)>``).
for _name in ('_process_exited', '_call_connection_lost', '_call', '_try_finish',
              '_pipe_connection_lost', '_pipe_data_received', '_connect_pipes', '_wait'):
    getattr(_UnixSubprocessTransport, _name).__qualname__ = f'BaseSubprocessTransport.{_name}'
del _name


def _native_watch():
    """Whether the child can be watched natively: pidfds work, and the program did not pick a
    watcher of its own (the policy's would be asyncio's default one)."""
    if not PIDFD_SUPPORTED:
        return False
    policy = _events.get_event_loop_policy()
    if not isinstance(policy, _DefaultPolicy):
        return False
    if type(policy).get_child_watcher is not _DefaultPolicy.get_child_watcher:
        return False
    if 'get_child_watcher' in vars(policy):   # mock.patch.object(policy, ...)
        return False
    # None, or the kind the policy creates by itself (what asyncio calls the same way).
    return type(getattr(policy, '_watcher', None)) in _DEFAULT_WATCHERS


async def make_subprocess_transport(self, protocol, args, shell,
                                    stdin, stdout, stderr, bufsize,
                                    extra=None, **kwargs):
    if not _native_watch():
        return await _asyncio_make_subprocess_transport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            extra=extra, **kwargs)
    waiter = self.create_future()
    transp = _UnixSubprocessTransport(self, protocol, args, shell,
                                      stdin, stdout, stderr, bufsize,
                                      waiter=waiter, extra=extra,
                                      **kwargs)
    watch = _ferroloop.PidfdWatch(self, transp.get_pid(), self._child_watcher_callback,
                                  (transp,))
    self._add_reader(watch.fd, watch)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise

    return transp

make_subprocess_transport.__doc__ = _asyncio_make_subprocess_transport.__doc__
