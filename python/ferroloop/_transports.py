"""Socket stream transports (TCP and Unix): ferroloop's own, with the per-message paths in Rust.

``_SelectorSocketTransport`` is an ``asyncio.Transport`` (same class name as asyncio's, so reprs
read the same) holding a ``_ferroloop.StreamCore``. The core keeps the state the per-message
paths read — the flags, the protocol, the write buffer, the write flow control — and *is* the
reader callback; ``write`` is a class-level method (``_ferroloop._slot_method``) that calls the
core's ``write`` through the ``_core`` slot: no Python frame per message, and no bound method
stored per transport (``transport.write = f`` still works, kept in the ``write`` slot). Writes made during a batch of callbacks are held and sent together at
its end (one ``send``/``writev``; see ``StreamCore``); the methods below that asyncio runs after
those bytes went out (``close``, ``write_eof``, ``_force_close``, the sendfile waiter,
``get_extra_info('socket')``) first call ``core.flush()``. The methods below are the cold paths, written step for step as
asyncio's ``selector_events._SelectorSocketTransport`` of the running version; asyncio's private
attribute names (``_closing``, ``_eof``, ``_conn_lost``, ``_paused``, ``_protocol``, ``_loop``,
``_sock``, ``_sock_fd``, ``_empty_waiter``, ``_protocol_paused``, ``_high_water``, ...) read and
write the same state, for the stdlib code that uses them (sendfile, ``start_tls``, servers).

Memory: an instance has ``__slots__`` (no ``__dict__``); ``get_extra_info('socket' | 'sockname' |
'peername')`` is filled on first use (or when the connection is lost, while the socket is still
open, so later calls give what asyncio gives).

``make_socket_transport`` is asyncio's own ``_make_socket_transport`` re-bound to globals that name
this class, so it builds it with exactly the stdlib's steps for the running version (``_tls.py``
does the same for TLS).
"""

import errno as _errno
import math
import selectors
import socket
import sys
import types
import warnings
import weakref
from contextvars import copy_context as _copy_context
from asyncio import base_events as _base_events
from asyncio import constants as _constants
from asyncio import futures as _futures
from asyncio import protocols as _protocols
from asyncio import selector_events as _selector_events
from asyncio import transports as _transports
from asyncio import trsock as _trsock
from asyncio.log import logger

from . import _ferroloop

__all__ = ('make_socket_transport', 'Transports')

_PY312 = sys.version_info >= (3, 12)
# Server._attach(transport)/_detach(transport) (3.13; 3.11 and 3.12.1 take no argument), and the
# unclosed transport's __del__ detaching from its server came with it.
_SERVER_TRACKS = _base_events.Server._attach.__code__.co_argcount == 2
_test_selector_event = _selector_events._test_selector_event
_StreamCore = _ferroloop.StreamCore
_BufferedProtocol = _protocols.BufferedProtocol
_EXTRA_FROM_SOCKET = frozenset(('socket', 'sockname', 'peername'))
_Accepted = _ferroloop.Accepted
_accept = _ferroloop.accept
_WeakValueDictionary = weakref.WeakValueDictionary
_stream_transport = _ferroloop.stream_transport
_stream_fds = _ferroloop.stream_fds
_FILLED = object()  # _peer once _extra has the socket-derived entries
_LAZY = object()  # _sockobj of an accepted connection whose socket.socket is not made yet


def _core_property(name, doc=None):
    def get(self):
        return getattr(self._core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set, None, doc)


def _mark_floor(value):
    # Buffer sizes are integers: `size <= value` is `size <= floor(value)`; clamp to u64.
    if isinstance(value, int):
        v = value
    else:
        try:
            v = math.floor(value)
        except (OverflowError, ValueError):   # inf, nan: no buffer passes an infinite mark
            v = 2 ** 64 - 1 if value > 0 else 0
    return min(max(v, 0), 2 ** 64 - 1)


class _SelectorSocketTransport(_transports._FlowControlMixin, _transports.Transport):

    # _peer: the peer address an accepting server passes as extra={'peername': addr}, kept
    # without that dict until get_extra_info needs one; _FILLED once the socket-derived entries
    # are in _extra.
    # _sockobj: the socket, or _LAZY for a connection accepted as an fd (accept_connection) until
    # `_sock` is asked for; None once closed.
    __slots__ = ('_core', '_sockobj', '_server', '_waiter', '_peer', 'write',
                 '__weakref__')

    # _FlowControlMixin (as asyncio's transport: base_events' sendfile fallback checks for it) has
    # slots for _loop, _protocol_paused, _high_water and _low_water; the properties below replace
    # them (the core keeps that state) and its __init__ is not called.

    max_size = 256 * 1024  # Buffer size passed to recv().

    _start_tls_compatible = True
    _sendfile_compatible = _constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        if type(extra) is dict and len(extra) == 1 and 'peername' in extra:
            self._peer = extra['peername']
            extra = None
        else:
            self._peer = None
        self._extra = extra
        if sock.__class__ is _Accepted:
            # The fd, the socket's kind and the peer address move into the core; TCP_NODELAY is
            # set (accept.rs).
            self._sockobj = _LAZY
            core = self._core = _StreamCore(self, loop, -1, self.max_size, sock)
        else:
            self._sockobj = sock
            core = self._core = _StreamCore(self, loop, sock.fileno(), self.max_size)
        self._waiter = None
        self.set_protocol(protocol)
        self._server = server
        if server is not None:
            if _SERVER_TRACKS:
                server._attach(self)
            else:
                server._attach()
        # ferroloop's loop keeps this in its own map, not as a weak reference (_Transports)
        loop._transports[core.fd] = self
        if self._sockobj is not _LAZY:
            # Disable the Nagle algorithm -- small writes will be sent without waiting for the
            # TCP ACK.
            _base_events._set_nodelay(sock)
        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called. asyncio's
        # call_soon(self._add_reader, fd, self._read_ready) runs in a copy of the context and
        # registers the reader with a second copy; here the reader gets that first copy itself
        # (StreamCore._start_reading): nothing but this registration runs in it.
        ctx = _copy_context()
        loop.call_soon(core._start_reading, ctx, context=ctx)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            loop.call_soon(_futures._set_result_unless_cancelled, waiter, None)

    # -- asyncio's attributes, backed by the core ------------------------------------------------

    _closing = _core_property('closing')
    _eof = _core_property('eof')
    _paused = _core_property('paused')
    _conn_lost = _core_property('conn_lost')
    _protocol_paused = _core_property('protocol_paused')
    _protocol_connected = _core_property('protocol_connected')
    _loop = _core_property('loop')

    @property
    def _protocol(self):
        return self._core.protocol

    @_protocol.setter
    def _protocol(self, protocol):
        self._core.set_protocol(protocol, isinstance(protocol, _BufferedProtocol))

    @property
    def _sock_fd(self):
        return self._core.fd

    @property
    def _sock(self):
        sock = self._sockobj
        if sock is _LAZY:
            # An accepted connection: the socket.socket asyncio's accept would have made.
            family, type_, proto = self._core.sock_kind()
            sock = self._sockobj = socket.socket(family, type_, proto, self._core.fd)
            sock.setblocking(False)
        return sock

    @_sock.setter
    def _sock(self, sock):
        self._sockobj = sock

    @property
    def _read_ready(self):
        return self._core

    @property
    def _read_ready_cb(self):
        # asyncio drops it in close()
        return self._core if self._core.read_cb else None

    @property
    def _write_ready(self):
        return self._core._write_ready

    @property
    def _empty_waiter(self):
        return self._waiter

    @_empty_waiter.setter
    def _empty_waiter(self, waiter):
        self._waiter = waiter
        self._core.sendfile = waiter is not None

    @property
    def _high_water(self):
        return self._core.get_limits()[1]

    @property
    def _low_water(self):
        return self._core.get_limits()[0]

    # -- BaseTransport ---------------------------------------------------------------------------

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sockobj is None:
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

    def _fill_extra(self):
        # asyncio's _SelectorTransport.__init__ fills these at once; here on first use.
        extra = self._extra
        if extra is None:
            extra = self._extra = {}
        peer = self._peer
        if peer is None:
            peer = self._core.peername()  # an accepted connection's, else None
        if peer is not None:
            extra['peername'] = peer
        self._peer = _FILLED
        sock = self._sock
        extra['socket'] = _trsock.TransportSocket(sock)
        try:
            extra['sockname'] = sock.getsockname()
        except OSError:
            extra['sockname'] = None
        if 'peername' not in extra:
            try:
                extra['peername'] = sock.getpeername()
            except OSError:
                extra['peername'] = None
        return extra

    def get_extra_info(self, name, default=None):
        if name == 'socket':
            self._core.flush()   # direct use of the socket comes after the transport's writes
        extra = self._extra
        # Only the three socket-derived names make the dict: any other name (streams ask every
        # connection for 'sslcontext') is in the extra given to the constructor, or absent.
        if self._peer is not _FILLED and name in _EXTRA_FROM_SOCKET and self._sockobj is not None:
            extra = self._fill_extra()
        elif extra is None:
            return default
        return extra.get(name, default)

    def is_closing(self):
        return self._closing

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol, isinstance(protocol, _BufferedProtocol))
        self._core.protocol_connected = True

    def get_protocol(self):
        return self._core.protocol

    def close(self):
        core = self._core
        core.flush()   # writes held for the end of the batch: asyncio has sent them already
        core.read_cb = False
        if core.closing:
            return
        core.closing = True
        loop = core.loop
        loop._remove_reader(core.fd)
        if not core.get_write_buffer_size():
            core.conn_lost += 1
            loop._remove_writer(core.fd)
            loop.call_soon(self._call_connection_lost, None)

    def __del__(self, _warn=warnings.warn):
        if getattr(self, '_sockobj', None) is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            if _SERVER_TRACKS and self._server is not None:
                self._server._detach(self)

    # -- ReadTransport ---------------------------------------------------------------------------

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if not self.is_reading():
            return
        core = self._core
        core.paused = True
        loop = core.loop
        loop._remove_reader(core.fd)
        if loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        core = self._core
        if core.closing or not core.paused:
            return
        core.paused = False
        self._add_reader(core.fd, core)
        if core.loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _add_reader(self, fd, callback, *args):
        if not self.is_reading():
            return
        self._loop._add_reader(fd, callback, *args)

    def _read_ready__on_eof(self):
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)

        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, 'Fatal error: protocol.eof_received() call failed.')
            return

        if keep_open:
            # We're keeping the connection open so the protocol can write more, but we still
            # can't receive more, so remove the reader callback.
            self._loop._remove_reader(self._sock_fd)
        else:
            self.close()

    # -- WriteTransport --------------------------------------------------------------------------

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self):
        return self._core.get_limits()

    def _set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            if low is None:
                high = 64 * 1024
            else:
                high = 4 * low
        if low is None:
            low = high // 4

        if not high >= low >= 0:
            raise ValueError(f'high ({high!r}) must be >= low ({low!r}) must be >= 0')

        self._core.set_limits(high, low, _mark_floor(high), _mark_floor(low))

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self):
        if self.get_write_buffer_size() <= self._high_water:
            return
        if not self._protocol_paused:
            self._protocol_paused = True
            self._call_flow('pause_writing')

    def _maybe_resume_protocol(self):
        if self._protocol_paused and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            self._call_flow('resume_writing')

    def _call_flow(self, name):
        # The protocol call of _FlowControlMixin._maybe_pause_protocol/_maybe_resume_protocol
        # (the core has set the flag).
        protocol = self._protocol
        try:
            getattr(protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                'message': f'protocol.{name}() failed',
                'exception': exc,
                'transport': self,
                'protocol': protocol,
            })

    def _write_after_lost(self):
        # write() after the connection was lost
        if self._conn_lost >= _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            logger.warning('socket.send() raised exception.')
        self._conn_lost += 1

    def _write_failed(self, exc):
        # the error branch of asyncio's _write_sendmsg/_write_ready
        self._loop._remove_writer(self._sock_fd)
        self._core.clear_buffer()
        self._fatal_error(exc, 'Fatal write error on socket transport')
        if self._waiter is not None:
            self._waiter.set_exception(exc)

    def _write_drained(self):
        # the end of asyncio's _write_sendmsg/_write_ready once the buffer is empty
        self._loop._remove_writer(self._sock_fd)
        if self._waiter is not None:
            self._waiter.set_result(None)
        if self._closing:
            self._call_connection_lost(None)
        elif self._eof:
            self._sock.shutdown(socket.SHUT_WR)

    if _PY312:
        def writelines(self, list_of_data):
            self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.flush()
        if self._closing or self._eof:
            return
        self._eof = True
        if not self.get_write_buffer_size():
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self):
        return True

    def abort(self):
        self._force_close(None)

    # -- errors and the end of the connection ----------------------------------------------------

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
        core.flush()   # asyncio has sent what write() was given; the rest is dropped below
        if core.conn_lost:
            return
        loop = core.loop
        if core.get_write_buffer_size():
            core.clear_buffer()
            loop._remove_writer(core.fd)
        if not core.closing:
            core.closing = True
            loop._remove_reader(core.fd)
        core.conn_lost += 1
        loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        core = self._core
        try:
            if core.protocol_connected:
                core.protocol.connection_lost(exc)
        finally:
            if self._peer is not _FILLED:
                self._fill_extra()
            self._sock.close()
            self._sock = None
            core.set_protocol(None, False)
            loop = core.loop
            if core._detach():
                # The loop's map holds open transports only: asyncio keeps a closed one in
                # loop._transports until it is collected.
                _WeakValueDictionary.__setitem__(loop._transports, core.fd, self)
            core.loop = None
            server = self._server
            if server is not None:
                if _SERVER_TRACKS:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
        if self._waiter is not None:
            self._waiter.set_exception(ConnectionError("Connection is closed by peer"))

    # -- sendfile --------------------------------------------------------------------------------

    def _make_empty_waiter(self):
        self._core.flush()
        if self._waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self.get_write_buffer_size():
            self._waiter.set_result(None)
        return self._waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None


class Transports(_WeakValueDictionary):
    """``loop._transports``: asyncio's ``WeakValueDictionary`` fd -> transport.

    ferroloop's open socket stream transports are not stored in it (a ``KeyedRef`` and a dict
    slot per connection) but in the loop's own map fd -> ``StreamCore`` (``StreamCore._attach``,
    no reference of its own). Lookups, assignments and deletions consult that map first, then
    the dictionary, which holds the other transports (datagram, pipes) and stream transports
    once their socket is closed (until they are collected, as in asyncio)."""

    def __init__(self, loop):
        super().__init__()
        self._loop_ref = weakref.ref(loop)

    def _stream(self, key):
        loop = self._loop_ref()
        return None if loop is None else _stream_transport(loop, key)

    def _stream_keys(self):
        loop = self._loop_ref()
        return [] if loop is None else _stream_fds(loop)

    def __getitem__(self, key):
        transport = self._stream(key)
        if transport is not None:
            return transport
        return super().__getitem__(key)

    def get(self, key, default=None):
        transport = self._stream(key)
        if transport is not None:
            return transport
        return super().get(key, default)

    def __contains__(self, key):
        return self._stream(key) is not None or super().__contains__(key)

    def __setitem__(self, key, value):
        loop = self._loop_ref()
        if loop is not None:
            if (isinstance(value, _SelectorSocketTransport) and type(key) is int
                    and key == value._core.fd and value._core._attach(loop)):
                super().pop(key, None)
                return
            old = _stream_transport(loop, key)
            if old is not None:
                old._core._detach()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        transport = self._stream(key)
        if transport is not None:
            transport._core._detach()
            return
        super().__delitem__(key)

    def pop(self, key, *args):
        transport = self._stream(key)
        if transport is not None:
            transport._core._detach()
            return transport
        return super().pop(key, *args)

    def __len__(self):
        return len(self._stream_keys()) + super().__len__()

    def keys(self):
        for key, _ in self.items():
            yield key

    __iter__ = keys

    def items(self):
        keys = self._stream_keys()
        for key in keys:
            transport = self._stream(key)
            if transport is not None:
                yield key, transport
        keys = set(keys)
        for key, transport in list(super().items()):
            if key not in keys:
                yield key, transport

    def values(self):
        for _, transport in self.items():
            yield transport


# write(data): the core's write, reached through the _core slot without a bound method per
# transport; an assigned transport.write is kept in the 'write' slot and wins (api/slot_method.rs).
_SelectorSocketTransport.write = _ferroloop._slot_method(_SelectorSocketTransport, 'write', '_core')


def rebind(func, **names):
    """``func`` with module globals in which ``names`` replace the module's own (asyncio's
    transport-making functions, pointed at ferroloop's classes)."""
    glob = dict(func.__globals__, **names)
    new = types.FunctionType(func.__code__, glob, func.__name__, func.__defaults__,
                             func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__doc__ = func.__doc__
    return new


make_socket_transport = rebind(_selector_events.BaseSelectorEventLoop._make_socket_transport,
                               _SelectorSocketTransport=_SelectorSocketTransport)


_asyncio_accept_connection = _selector_events.BaseSelectorEventLoop._accept_connection
_INET = frozenset((socket.AF_INET, socket.AF_INET6))


def accept_connection(
        self, protocol_factory, sock,
        sslcontext=None, server=None, backlog=100,
        ssl_handshake_timeout=_constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=_constants.SSL_SHUTDOWN_TIMEOUT):
    """asyncio's ``BaseSelectorEventLoop._accept_connection`` (the listening socket's reader),
    with ``sock.accept()`` + ``conn.setblocking(False)`` done by ``_ferroloop.accept`` for a plain
    TCP server: the connection reaches ``_accept_connection2`` and the transport as an fd and a
    raw peer address (``Accepted``), and its ``socket.socket`` is made only if asked for. TLS
    servers, debug mode (which logs the socket), other socket kinds: asyncio's own method."""
    if (sslcontext or self._debug or sock.__class__ is not socket.socket
            or sock.family not in _INET or sock.type != socket.SOCK_STREAM or sock.proto > 255):
        return _asyncio_accept_connection(
            self, protocol_factory, sock, sslcontext, server, backlog,
            ssl_handshake_timeout, ssl_shutdown_timeout)
    fd = sock.fileno()
    family, type_, proto = sock.family, sock.type, sock.proto
    # This method is only called once for each event loop tick where the listening socket has
    # triggered an EVENT_READ. There may be multiple connections waiting for an .accept() so it
    # is called in a loop. See https://bugs.python.org/issue27906 for more details.
    for _ in range(backlog):
        try:
            conn = _accept(fd, family, type_, proto)
            if conn is None:
                # Early exit because the socket accept buffer is empty (EAGAIN, EINTR,
                # ECONNABORTED: asyncio's BlockingIOError, InterruptedError,
                # ConnectionAbortedError).
                return None
        except OSError as exc:
            # There's nowhere to send the error, so just log it.
            if exc.errno in (_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS, _errno.ENOMEM):
                # Some platforms (e.g. Linux keep reporting the FD as ready, so we remove the
                # read handler temporarily. We'll try again in a while.
                self.call_exception_handler({
                    'message': 'socket.accept() out of system resource',
                    'exception': exc,
                    'socket': _trsock.TransportSocket(sock),
                })
                self._remove_reader(sock.fileno())
                self.call_later(_constants.ACCEPT_RETRY_DELAY,
                                self._start_serving,
                                protocol_factory, sock, sslcontext, server,
                                backlog, ssl_handshake_timeout,
                                ssl_shutdown_timeout)
            else:
                raise  # The event loop will catch, log and ignore it.
        else:
            accept = self._accept_connection2(
                protocol_factory, conn, None, sslcontext, server,
                ssl_handshake_timeout, ssl_shutdown_timeout)
            self.create_task(accept)
