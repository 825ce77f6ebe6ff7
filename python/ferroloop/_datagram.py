"""Datagram transports (UDP, Unix datagram): ferroloop's own, with the per-datagram paths in Rust.

``_SelectorDatagramTransport`` is an ``asyncio.DatagramTransport`` (and, as asyncio's class, a
``transports._FlowControlMixin``; same class name, so reprs read the same) holding a
``_ferroloop.DatagramCore``. The core keeps the state the per-datagram paths read — the flags,
the protocol, the send buffer and its size — and *is* the reader callback; ``sendto`` is the
core's method, bound once per transport and stored on it (no Python frame per datagram). The
methods below are the cold paths, written step for step as asyncio's
``selector_events._SelectorTransport`` / ``_SelectorDatagramTransport`` of the running version;
asyncio's private attribute names (``_closing``, ``_conn_lost``, ``_paused``, ``_protocol``,
``_address``, ``_buffer``, ``_buffer_size``, ``_sock``, ``_sock_fd``, ...) read and write the same
state.

Version differences followed: 3.11 and 3.12 ignore ``sendto(b'')``, 3.13 sends the empty datagram
and counts 8 bytes of header per buffered datagram in ``get_write_buffer_size()`` (and takes them
off again when the datagram is sent only where the running asyncio does, gh-135444).

One difference from asyncio, as uvloop: ``sendto(data)`` without an address on an endpoint made
from a socket already connected to an unnamed peer (one end of
``socket.socketpair(AF_UNIX, SOCK_DGRAM)``) sends to that peer; asyncio's transport fails with a
fatal TypeError there (``sendto(data, None)``).

A socket that is not a plain ``socket.socket`` of family AF_INET, AF_INET6 or AF_UNIX gets
asyncio's own transport class (a subclass of the same name that is an ``asyncio.DatagramTransport``
on 3.11 too).
"""

import collections
import socket
import sys
import warnings
from asyncio import constants as _constants
from asyncio import futures as _futures
from asyncio import selector_events as _selector_events
from asyncio import transports as _transports
from asyncio import trsock as _trsock
from asyncio.log import logger
import selectors

from . import _ferroloop

__all__ = ('make_datagram_transport',)

_Stdlib = _selector_events._SelectorDatagramTransport
_NATIVE_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_PY313 = sys.version_info >= (3, 13)
# 3.13 counts 8 bytes of header per buffered datagram; the releases that also take them off when
# the datagram is sent (gh-135444) name the figure in `_header_size`.
_HEADER = getattr(_Stdlib, '_header_size', 8 if _PY313 else 0)
_DRAIN_HEADER = hasattr(_Stdlib, '_header_size')
_PEER_NONE, _PEER_NAMED, _PEER_UNNAMED = 0, 1, 2
_test_selector_event = _selector_events._test_selector_event
_DatagramCore = _ferroloop.DatagramCore


def _core_property(name, doc=None):
    def get(self):
        return getattr(self._core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set, None, doc)


class _SelectorDatagramTransport(_transports._FlowControlMixin, _transports.DatagramTransport):

    # _FlowControlMixin's slots hold _loop, _protocol_paused and the water marks (its own
    # _maybe_pause_protocol/_maybe_resume_protocol are asyncio's); BaseTransport's, _extra.
    __slots__ = ('_core', '_sock', 'sendto', '__weakref__')

    max_size = 256 * 1024  # Buffer size passed to recvfrom().

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        # _SelectorTransport.__init__
        super().__init__(extra, loop)
        self._extra['socket'] = _trsock.TransportSocket(sock)
        try:
            self._extra['sockname'] = sock.getsockname()
        except OSError:
            self._extra['sockname'] = None
        if 'peername' not in self._extra:
            try:
                self._extra['peername'] = sock.getpeername()
            except socket.error:
                self._extra['peername'] = None
        self._sock = sock
        peername = self._extra['peername']
        if peername:
            peer = _PEER_NAMED
        elif peername is not None:
            peer = _PEER_UNNAMED
        else:
            peer = _PEER_NONE
        core = self._core = _DatagramCore(self, protocol, sock.fileno(), address, bool(address),
                                          peer, _HEADER, _DRAIN_HEADER, _PY313)
        self.sendto = core.sendto
        self.set_protocol(protocol)
        loop._transports[core.fd] = self
        # _SelectorDatagramTransport.__init__
        self._loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        self._loop.call_soon(self._add_reader, core.fd, core)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            self._loop.call_soon(_futures._set_result_unless_cancelled, waiter, None)

    # -- asyncio's attributes, backed by the core ------------------------------------------------

    _closing = _core_property('closing')
    _paused = _core_property('paused')
    _conn_lost = _core_property('conn_lost')
    _protocol_connected = _core_property('protocol_connected')
    _protocol = _core_property('protocol')
    _buffer_size = _core_property('buffer_size')

    @property
    def _address(self):
        return self._core.address

    @property
    def _sock_fd(self):
        return self._core.fd

    @property
    def _read_ready(self):
        return self._core

    @property
    def _sendto_ready(self):
        return self._core._sendto_ready

    @property
    def _buffer(self):
        # a copy: the core owns the buffer
        return collections.deque(self._core.buffered())

    # -- BaseTransport ---------------------------------------------------------------------------

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        loop = self._loop
        # test if the transport was closed
        if loop is not None and not loop.is_closed():
            polling = _test_selector_event(loop._selector, self._sock_fd, selectors.EVENT_READ)
            info.append('read=polling' if polling else 'read=idle')
            polling = _test_selector_event(loop._selector, self._sock_fd, selectors.EVENT_WRITE)
            state = 'polling' if polling else 'idle'
            bufsize = self.get_write_buffer_size()
            info.append(f'write=<{state}, bufsize={bufsize}>')
        return '<{}>'.format(' '.join(info))

    def abort(self):
        self._force_close(None)

    def set_protocol(self, protocol):
        self._core.protocol = protocol
        self._core.protocol_connected = True

    def get_protocol(self):
        return self._core.protocol

    def is_closing(self):
        return self._closing

    def is_reading(self):
        return not self.is_closing() and not self._paused

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        self._loop._remove_reader(self._sock_fd)
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._add_reader(self._sock_fd, self._read_ready)
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def close(self):
        core = self._core
        if core.closing:
            return
        core.closing = True
        loop = self._loop
        loop._remove_reader(core.fd)
        if not core.buffer_len():
            core.conn_lost += 1
            loop._remove_writer(core.fd)
            loop.call_soon(self._call_connection_lost, None)

    def __del__(self, _warn=warnings.warn):
        if getattr(self, '_sock', None) is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    def _fatal_error(self, exc, message='Fatal error on transport'):
        # Should be called from exception handler only.
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
        self._force_close(exc)

    def _force_close(self, exc):
        core = self._core
        if core.conn_lost:
            return
        if core.buffer_len():
            core.clear_buffer()
            self._loop._remove_writer(core.fd)
        if not core.closing:
            core.closing = True
            self._loop._remove_reader(core.fd)
        core.conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        core = self._core
        try:
            if core.protocol_connected:
                core.protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            core.connection_lost()   # the protocol too
            self._loop = None

    def get_write_buffer_size(self):
        return self._core.buffer_size

    def _add_reader(self, fd, callback, *args):
        if not self.is_reading():
            return
        self._loop._add_reader(fd, callback, *args)

    def _write_after_lost(self):
        # sendto() on a connected endpoint after the connection was lost
        if self._conn_lost >= _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            logger.warning('socket.send() raised exception.')
        self._conn_lost += 1


class _StdlibDatagramTransport(_Stdlib, *(() if issubclass(_Stdlib, _transports.DatagramTransport)
                                          else (_transports.DatagramTransport,))):
    # asyncio's own class, for sockets the core does not take; an asyncio.DatagramTransport on
    # 3.11 too.
    __slots__ = ()


_StdlibDatagramTransport.__name__ = _StdlibDatagramTransport.__qualname__ = (
    '_SelectorDatagramTransport')


def make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
    # BaseSelectorEventLoop._make_datagram_transport, with the classes above.
    if type(sock) is socket.socket and sock.family in _NATIVE_FAMILIES:
        cls = _SelectorDatagramTransport
    else:
        cls = _StdlibDatagramTransport
    return cls(self, sock, protocol, address, waiter, extra)
