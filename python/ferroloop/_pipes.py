"""Pipe transports: asyncio's ``_UnixReadPipeTransport`` and ``_UnixWritePipeTransport`` with
their per-message read and write in Rust.

The class below is asyncio's transport (a subclass, with the same name so reprs match):
``pause_reading``/``resume_reading``, closing, errors and reprs are the running interpreter's
code. Only ``_read_ready`` (the reader callback) is replaced on each instance by a
``_ferroloop.PipeReadPump``: ``read`` → ``protocol.data_received`` in Rust, one read per wake-up
as asyncio; end of file comes back to ``_read_ready_eof`` below (asyncio's steps).

The write-pipe class gets a ``_ferroloop.PipeWritePump`` as ``write``: ``os.write`` straight to
the pipe when asyncio would write at once; the rest of a partial write, EAGAIN and failures come
back to ``_write_rest``/``_write_failed`` below (asyncio's steps after its own ``os.write``), and
every other case is asyncio's ``write``.
"""

from asyncio import unix_events as _unix_events
from asyncio.log import logger as _logger

from . import _ferroloop

__all__ = ('make_read_pipe_transport', 'make_write_pipe_transport')

_Base = _unix_events._UnixReadPipeTransport
_WBase = _unix_events._UnixWritePipeTransport


class _UnixReadPipeTransport(_Base):
    __slots__ = ()  # the base classes' instances have a __dict__ already

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        # Before the base __init__: it schedules _add_reader(fd, self._read_ready).
        try:
            fd = pipe.fileno()
        except Exception:
            fd = None   # the base __init__ raises asyncio's error
        if isinstance(fd, int) and fd >= 0:
            self._read_ready = _ferroloop.PipeReadPump(self, fd)
        super().__init__(loop, pipe, protocol, waiter, extra)

    def _read_ready_eof(self):
        # The end of asyncio's _read_ready when os.read returned b''.
        if self._loop.get_debug():
            _logger.info("%r was closed by peer", self)
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._protocol.eof_received)
        self._loop.call_soon(self._call_connection_lost, None)


def make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
    # _UnixSelectorEventLoop._make_read_pipe_transport, with the class above.
    return _UnixReadPipeTransport(self, pipe, protocol, waiter, extra)


class _UnixWritePipeTransport(_WBase):
    __slots__ = ()

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        try:
            fd = pipe.fileno()
        except Exception:
            fd = None   # the base __init__ raises asyncio's error
        if isinstance(fd, int) and fd >= 0:
            self.write = _ferroloop.PipeWritePump(self, fd, _WBase.write).write
        super().__init__(loop, pipe, protocol, waiter, extra)

    def _write_rest(self, data, n):
        # The end of asyncio's write() after `n = os.write(fd, data)` took n < len(data) bytes
        # (n = 0: EAGAIN).
        if n > 0:
            data = memoryview(data)[n:]
        self._loop._add_writer(self._fileno, self._write_ready)
        self._buffer += data
        self._maybe_pause_protocol()

    def _write_failed(self, exc):
        # asyncio's write() when os.write raised anything but BlockingIOError/InterruptedError.
        self._conn_lost += 1
        self._fatal_error(exc, 'Fatal write error on pipe transport')


def make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
    # _UnixSelectorEventLoop._make_write_pipe_transport, with the class above.
    return _UnixWritePipeTransport(self, pipe, protocol, waiter, extra)
