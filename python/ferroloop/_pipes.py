"""Pipe transports (``connect_read_pipe``, ``connect_write_pipe``, subprocess pipes): ferroloop's
own, with the per-message paths in Rust.

``_UnixReadPipeTransport`` is an ``asyncio.ReadTransport`` holding a ``_ferroloop.PipeReadCore``,
which keeps the protocol and *is* the reader callback (one read per wake-up, as asyncio).
``_UnixWritePipeTransport`` is an ``asyncio.WriteTransport`` (and asyncio's flow-control mixin, as
asyncio's class) holding a ``_ferroloop.PipeWriteCore``, which keeps ``_conn_lost``, ``_closing``
and the write buffer; its ``write`` is bound once per transport and stored on it (no Python frame
per message), and it is the writer callback. Both have ``__slots__`` and asyncio's class names (so
reprs read the same; an instance ``__dict__`` is made only if code sets an attribute of its
own, as on asyncio's classes); the methods below are the cold paths, step for step as asyncio's
``unix_events`` classes (the same on 3.11, 3.12 and 3.13), including the write end's reader
registration that reports the peer closing the pipe.
"""

import errno
import os
import selectors
import stat
import warnings
from asyncio import constants as _constants
from asyncio import futures as _futures
from asyncio import selector_events as _selector_events
from asyncio import transports as _transports
from asyncio.log import logger

from . import _ferroloop

__all__ = ('make_read_pipe_transport', 'make_write_pipe_transport')

_test_selector_event = _selector_events._test_selector_event


class _UnixReadPipeTransport(_transports.ReadTransport):

    # __dict__: made only when an attribute outside the slots is set (code that replaces a
    # method on the instance, as asyncio's own tests do with pause_reading); pipes are few.
    __slots__ = ('_core', '_loop', '_pipe', '_fileno', '_closing', '_paused', '__weakref__',
                 '__dict__')

    max_size = 256 * 1024  # max bytes we read in one event loop iteration

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._core = None
        self._extra['pipe'] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._core = _ferroloop.PipeReadCore(self, protocol, self._fileno)
        self._closing = False
        self._paused = False

        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or
                stat.S_ISSOCK(mode) or
                stat.S_ISCHR(mode)):
            self._pipe = None
            self._fileno = None
            self._protocol = None
            raise ValueError("Pipe transport is for pipes/sockets only.")

        os.set_blocking(self._fileno, False)

        self._loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        self._loop.call_soon(self._add_reader,
                             self._fileno, self._read_ready)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            self._loop.call_soon(_futures._set_result_unless_cancelled,
                                 waiter, None)

    @property
    def _protocol(self):
        return self._core.protocol

    @_protocol.setter
    def _protocol(self, protocol):
        self._core.protocol = protocol

    @property
    def _read_ready(self):
        return self._core

    def _add_reader(self, fd, callback):
        if not self.is_reading():
            return
        self._loop._add_reader(fd, callback)

    def is_reading(self):
        return not self._paused and not self._closing

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._fileno}')
        selector = getattr(self._loop, '_selector', None)
        if self._pipe is not None and selector is not None:
            polling = _test_selector_event(selector, self._fileno, selectors.EVENT_READ)
            if polling:
                info.append('polling')
            else:
                info.append('idle')
        elif self._pipe is not None:
            info.append('open')
        else:
            info.append('closed')
        return '<{}>'.format(' '.join(info))

    def _read_ready_eof(self):
        # The end of asyncio's _read_ready when os.read returned b''.
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._protocol.eof_received)
        self._loop.call_soon(self._call_connection_lost, None)

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        self._loop._remove_reader(self._fileno)
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop._add_reader(self._fileno, self._read_ready)
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    def close(self):
        if not self._closing:
            self._close(None)

    def __del__(self, _warn=warnings.warn):
        pipe = getattr(self, '_pipe', None)
        if pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            pipe.close()

    def _fatal_error(self, exc, message='Fatal error on pipe transport'):
        # should be called by exception handler only
        if (isinstance(exc, OSError) and exc.errno == errno.EIO):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._close(exc)

    def _close(self, exc):
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._pipe.close()
            self._pipe = None
            self._protocol = None
            self._loop = None


def make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
    # _UnixSelectorEventLoop._make_read_pipe_transport, with the class above.
    return _UnixReadPipeTransport(self, pipe, protocol, waiter, extra)


def _write_core_property(name):
    def get(self):
        return getattr(self._core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set)


class _UnixWritePipeTransport(_transports._FlowControlMixin,
                              _transports.WriteTransport):

    # _FlowControlMixin's slots hold _loop, _protocol_paused and the water marks.
    __slots__ = ('_core', '_pipe', '_fileno', '_protocol', 'write', '__weakref__', '__dict__')

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._core = None
        self._extra['pipe'] = pipe
        self._pipe = pipe
        self._fileno = pipe.fileno()
        core = self._core = _ferroloop.PipeWriteCore(self, self._fileno)
        self.write = core.write
        self._protocol = protocol

        mode = os.fstat(self._fileno).st_mode
        is_char = stat.S_ISCHR(mode)
        is_fifo = stat.S_ISFIFO(mode)
        is_socket = stat.S_ISSOCK(mode)
        if not (is_char or is_fifo or is_socket):
            self._pipe = None
            self._fileno = None
            self._protocol = None
            raise ValueError("Pipe transport is only for "
                             "pipes, sockets and character devices")

        os.set_blocking(self._fileno, False)
        self._loop.call_soon(self._protocol.connection_made, self)

        # On AIX, the reader trick (to be notified when the read end of the
        # socket is closed) only works for sockets. On other platforms it
        # works for pipes and sockets. (Exception: OS X 10.4?  Issue #19294.)
        if is_socket or is_fifo:
            # only start reading when connection_made() has been called
            self._loop.call_soon(self._loop._add_reader,
                                 self._fileno, self._read_ready)

        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            self._loop.call_soon(_futures._set_result_unless_cancelled,
                                 waiter, None)

    _conn_lost = _write_core_property('conn_lost')
    _closing = _write_core_property('closing')

    @property
    def _buffer(self):
        # a copy: the core owns the buffer
        return bytearray(self._core.buffered())

    @property
    def _write_ready(self):
        return self._core._write_ready

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._fileno}')
        selector = getattr(self._loop, '_selector', None)
        if self._pipe is not None and selector is not None:
            polling = _test_selector_event(selector, self._fileno, selectors.EVENT_WRITE)
            if polling:
                info.append('polling')
            else:
                info.append('idle')

            bufsize = self.get_write_buffer_size()
            info.append(f'bufsize={bufsize}')
        elif self._pipe is not None:
            info.append('open')
        else:
            info.append('closed')
        return '<{}>'.format(' '.join(info))

    def get_write_buffer_size(self):
        return self._core.buffer_len()

    def _read_ready(self):
        # Pipe was closed by peer.
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        if self._core.buffer_len():
            self._close(BrokenPipeError())
        else:
            self._close()

    def _write_after_lost(self):
        # write() after the pipe was closed or lost
        if self._conn_lost >= _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            logger.warning('pipe closed by peer or '
                           'os.write(pipe, data) raised exception.')
        self._conn_lost += 1

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing:
            return
        assert self._pipe
        self._closing = True
        if not self._core.buffer_len():
            self._loop._remove_reader(self._fileno)
            self._loop.call_soon(self._call_connection_lost, None)

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    def close(self):
        if self._pipe is not None and not self._closing:
            # write_eof is all what we needed to close the write pipe
            self.write_eof()

    def __del__(self, _warn=warnings.warn):
        pipe = getattr(self, '_pipe', None)
        if pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            pipe.close()

    def abort(self):
        self._close(None)

    def _fatal_error(self, exc, message='Fatal error on pipe transport'):
        # should be called by exception handler only
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._close(exc)

    def _close(self, exc=None):
        core = self._core
        core.closing = True
        if core.buffer_len():
            self._loop._remove_writer(self._fileno)
        core.clear_buffer()
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._pipe.close()
            self._pipe = None
            self._protocol = None
            self._loop = None


def make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
    # _UnixSelectorEventLoop._make_write_pipe_transport, with the class above.
    return _UnixWritePipeTransport(self, pipe, protocol, waiter, extra)
