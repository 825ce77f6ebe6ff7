"""Subprocess transports whose child exit is watched through a pidfd in the loop's poller.

``make_subprocess_transport`` is asyncio's ``_UnixSelectorEventLoop._make_subprocess_transport``
step for step — the same ``_UnixSubprocessTransport`` (pipes, ``returncode``, ``wait``,
``send_signal``/``terminate``/``kill``, ``get_pipe_transport``), the same waiter and the same
clean-up on failure — except for the child watcher: instead of the policy's watcher (on 3.11 a
``ThreadedChildWatcher``, one thread per child; on 3.12+ a ``PidfdChildWatcher`` in Python) the
child's pidfd is registered as a reader whose callback is Rust (``_ferroloop.PidfdWatch``).
It reports through the loop's ``_child_watcher_callback``, as every asyncio watcher does.

asyncio's own path runs instead whenever the program chose a watcher of another kind than the
policy's default ones (``set_child_watcher`` with a Safe/Fast/MultiLoop watcher or a class of its
own, or a policy that overrides ``get_child_watcher``), or pidfds are unavailable (Linux before 5.3, or a
seccomp policy that forbids ``pidfd_open``).
"""

from asyncio import events as _events
from asyncio import unix_events as _unix_events

from . import _ferroloop

__all__ = ('make_subprocess_transport',)

PIDFD_SUPPORTED = _ferroloop.pidfd_supported()

_asyncio_make_subprocess_transport = _unix_events._UnixSelectorEventLoop._make_subprocess_transport
_DefaultPolicy = _unix_events._UnixDefaultEventLoopPolicy
_DEFAULT_WATCHERS = (type(None), _unix_events.ThreadedChildWatcher,
                     getattr(_unix_events, 'PidfdChildWatcher', type(None)))


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
    transp = _unix_events._UnixSubprocessTransport(self, protocol, args, shell,
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
