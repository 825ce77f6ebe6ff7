"""TLS: asyncio's ``sslproto.SSLProtocol`` with its per-record paths in Rust.

``SSLProtocol`` below is a subclass of ``_ferroloop.TlsProtocol`` (Rust: ``get_buffer``,
``buffer_updated``, decrypt and ``data_received``, encrypt, both flow controls,
``_get_extra_info``; see ``transports/tls.rs``) and of ``asyncio.BufferedProtocol``. The steps
that run once per connection are here, as asyncio's ``sslproto`` of the running version writes
them: construction, handshake, shutdown, abort, ``connection_lost``, ``eof_received``, timeouts
and the fatal-error path. OpenSSL is driven through the user's ``ssl.SSLContext`` unchanged
(``context.wrap_bio``), through the C objects of CPython's ``_ssl`` module.

The app-side transport is asyncio's own ``sslproto._SSLProtocolTransport`` (a subclass of it, so
``isinstance`` holds and every method is the stdlib's), with ``write`` bound per instance to the
protocol's Rust ``_app_write``.

``make_ssl_transport`` and ``start_tls`` are asyncio's own ``_make_ssl_transport`` and
``start_tls`` functions re-bound to globals in which ``sslproto.SSLProtocol`` is the class below
(and ``_SelectorSocketTransport`` ferroloop's socket transport).
"""

import sys
import types
import warnings
from asyncio import base_events as _base_events
from asyncio import constants
from asyncio import exceptions
from asyncio import protocols
from asyncio import selector_events as _selector_events
from asyncio import sslproto as _sslproto
from asyncio.log import logger

try:
    import ssl
except ImportError:  # pragma: no cover
    ssl = None

from . import _ferroloop
from . import _transports

__all__ = ('SSLProtocol', 'make_ssl_transport', 'start_tls')

_PY313 = sys.version_info >= (3, 13)

# SSLProtocolState as the Rust side numbers it (`_st`); `_state` gives asyncio's enum member.
UNWRAPPED, DO_HANDSHAKE, WRAPPED, FLUSHING, SHUTDOWN = range(5)
_STATE_NAMES = ('UNWRAPPED', 'DO_HANDSHAKE', 'WRAPPED', 'FLUSHING', 'SHUTDOWN')
_STATES = tuple(_sslproto.SSLProtocolState[n] for n in _STATE_NAMES)
# AppProtocolState
STATE_INIT, STATE_CON_MADE, STATE_EOF, STATE_CON_LOST = range(4)

if ssl is not None:
    SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)


class _SSLProtocolTransport(_sslproto._SSLProtocolTransport):
    # asyncio's class; only `write` is replaced, per instance, by the protocol's Rust method.

    def __init__(self, loop, ssl_protocol):
        super().__init__(loop, ssl_protocol)
        self.write = ssl_protocol._app_write

    def close(self):
        super().close()
        if self._ssl_protocol is None:
            # asyncio's second close() lets go of the protocol; so does the bound `write`
            # (asyncio's own write then fails as asyncio's does).
            self.__dict__.pop('write', None)

    close.__doc__ = _sslproto._SSLProtocolTransport.close.__doc__

    def _test__append_write_backlog(self, data):
        # for test only
        self._ssl_protocol._test__append_write_backlog(data)


_SSLProtocolTransport.__module__ = _sslproto.__name__
_SSLProtocolTransport.__doc__ = _sslproto._SSLProtocolTransport.__doc__


class SSLProtocol(_ferroloop.TlsProtocol, protocols.BufferedProtocol):
    max_size = 256 * 1024   # Buffer size passed to read()

    _handshake_start_time = None
    _handshake_timeout_handle = None
    _shutdown_timeout_handle = None

    def __init__(self, loop, app_protocol, sslcontext, waiter,
                 server_side=False, server_hostname=None,
                 call_connection_made=True,
                 ssl_handshake_timeout=None,
                 ssl_shutdown_timeout=None):
        if ssl is None:
            raise RuntimeError("stdlib ssl module not available")

        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
        elif ssl_handshake_timeout <= 0:
            raise ValueError(
                f"ssl_handshake_timeout should be a positive number, "
                f"got {ssl_handshake_timeout}")
        if ssl_shutdown_timeout is None:
            ssl_shutdown_timeout = constants.SSL_SHUTDOWN_TIMEOUT
        elif ssl_shutdown_timeout <= 0:
            raise ValueError(
                f"ssl_shutdown_timeout should be a positive number, "
                f"got {ssl_shutdown_timeout}")

        if not sslcontext:
            sslcontext = _sslproto._create_transport_context(
                server_side, server_hostname)

        self._server_side = server_side
        if server_hostname and not server_side:
            self._server_hostname = server_hostname
        else:
            self._server_hostname = None
        self._sslcontext = sslcontext
        # SSL-specific extra info. More info are set when the handshake
        # completes.
        self._extra = dict(sslcontext=sslcontext)

        self._write_buffer_size = 0

        self._waiter = waiter
        self._loop = loop
        self._set_app_protocol(app_protocol)
        self._app_transport = None
        self._app_transport_created = False
        # transport, ex: SelectorSocketTransport
        self._transport = None
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        # SSL and state machine
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._st = UNWRAPPED
        self._conn_lost = 0  # Set when connection_lost called
        if call_connection_made:
            self._app_st = STATE_INIT
        else:
            self._app_st = STATE_CON_MADE
        self._sslobj = self._sslcontext.wrap_bio(
            self._incoming, self._outgoing,
            server_side=self._server_side,
            server_hostname=self._server_hostname)
        # The per-record calls go to the C object under ssl.SSLObject (same methods, no
        # Python frame); a custom sslobject_class keeps its own methods.
        if type(self._sslobj) is ssl.SSLObject:
            self._sslobj_raw = self._sslobj._sslobj
        else:
            self._sslobj_raw = self._sslobj

        # Flow Control

        self._ssl_writing_paused = False

        self._app_reading_paused = False

        self._ssl_reading_paused = False
        self._incoming_high_water = 0
        self._incoming_low_water = 0
        self._set_read_buffer_limits()
        self._eof_received = False

        self._app_writing_paused = False
        self._outgoing_high_water = 0
        self._outgoing_low_water = 0
        self._set_write_buffer_limits()
        self._get_app_transport()

    @property
    def _app_state(self):
        return _sslproto.AppProtocolState[
            ('STATE_INIT', 'STATE_CON_MADE', 'STATE_EOF', 'STATE_CON_LOST')[self._app_st]]

    def _wakeup_waiter(self, exc=None):
        if self._waiter is None:
            return
        if not self._waiter.cancelled():
            if exc is not None:
                self._waiter.set_exception(exc)
            else:
                self._waiter.set_result(None)
        self._waiter = None

    def _get_app_transport(self):
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError('Creating _SSLProtocolTransport twice')
            self._app_transport = _SSLProtocolTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    def connection_made(self, transport):
        """Called when the low-level connection is made.

        Start the SSL handshake.
        """
        self._transport = transport
        self._start_handshake()

    def connection_lost(self, exc):
        """Called when the low-level connection is lost or closed.

        The argument is an exception object or None (the latter
        meaning a regular EOF is received or the connection was
        aborted or closed).
        """
        self._clear_write_backlog()
        self._outgoing.read()
        self._conn_lost += 1

        # Just mark the app transport as closed so that its __dealloc__
        # doesn't complain.
        if self._app_transport is not None:
            self._app_transport._closed = True

        if self._st != DO_HANDSHAKE:
            if (
                self._app_st == STATE_CON_MADE or
                self._app_st == STATE_EOF
            ):
                self._app_st = STATE_CON_LOST
                self._loop.call_soon(self._app_protocol.connection_lost, exc)
        self._set_state(UNWRAPPED)
        self._transport = None
        self._app_transport = None
        self._drop_app_protocol()
        self._wakeup_waiter(exc)

        if self._shutdown_timeout_handle:
            self._shutdown_timeout_handle.cancel()
            self._shutdown_timeout_handle = None
        if self._handshake_timeout_handle:
            self._handshake_timeout_handle.cancel()
            self._handshake_timeout_handle = None

    def eof_received(self):
        """Called when the other end of the low-level stream
        is half-closed.

        If this returns a false value (including None), the transport
        will close itself.  If it returns a true value, closing the
        transport is up to the protocol.
        """
        self._eof_received = True
        try:
            if self._loop.get_debug():
                logger.debug("%r received EOF", self)

            if self._st == DO_HANDSHAKE:
                self._on_handshake_complete(ConnectionResetError)

            elif self._st == WRAPPED:
                self._set_state(FLUSHING)
                if self._app_reading_paused:
                    return True
                else:
                    self._do_flush()

            elif self._st == FLUSHING:
                self._do_write()
                self._set_state(SHUTDOWN)
                self._do_shutdown()

            elif self._st == SHUTDOWN:
                self._do_shutdown()

        except Exception:
            self._transport.close()
            raise

    def _set_state(self, new_state):
        allowed = False
        state = self._st

        if new_state == UNWRAPPED:
            allowed = True

        elif state == UNWRAPPED and new_state == DO_HANDSHAKE:
            allowed = True

        elif state == DO_HANDSHAKE and new_state == WRAPPED:
            allowed = True

        elif state == WRAPPED and new_state == FLUSHING:
            allowed = True

        elif state == FLUSHING and new_state == SHUTDOWN:
            allowed = True

        if allowed:
            self._st = new_state

        else:
            raise RuntimeError(
                'cannot switch state from {} to {}'.format(
                    _STATES[state], _STATES[new_state]))

    # Handshake flow

    def _start_handshake(self):
        if self._loop.get_debug():
            logger.debug("%r starts SSL handshake", self)
            self._handshake_start_time = self._loop.time()
        else:
            self._handshake_start_time = None

        self._set_state(DO_HANDSHAKE)

        # start handshake timeout count down
        self._handshake_timeout_handle = \
            self._loop.call_later(self._ssl_handshake_timeout,
                                  self._check_handshake_timeout)

        self._do_handshake()

    def _check_handshake_timeout(self):
        if self._st == DO_HANDSHAKE:
            msg = (
                f"SSL handshake is taking longer than "
                f"{self._ssl_handshake_timeout} seconds: "
                f"aborting the connection"
            )
            self._fatal_error(ConnectionAbortedError(msg))

    def _do_handshake(self):
        try:
            self._sslobj.do_handshake()
        except SSLAgainErrors:
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._on_handshake_complete(exc)
        else:
            self._on_handshake_complete(None)

    def _on_handshake_complete(self, handshake_exc):
        if self._handshake_timeout_handle is not None:
            self._handshake_timeout_handle.cancel()
            self._handshake_timeout_handle = None

        sslobj = self._sslobj
        try:
            if handshake_exc is None:
                self._set_state(WRAPPED)
            else:
                raise handshake_exc

            peercert = sslobj.getpeercert()
        except Exception as exc:
            handshake_exc = None
            self._set_state(UNWRAPPED)
            if isinstance(exc, ssl.CertificateError):
                msg = 'SSL handshake failed on verifying the certificate'
            else:
                msg = 'SSL handshake failed'
            self._fatal_error(exc, msg)
            self._wakeup_waiter(exc)
            return

        if self._loop.get_debug():
            dt = self._loop.time() - self._handshake_start_time
            logger.debug("%r: SSL handshake took %.1f ms", self, dt * 1e3)

        # Add extra info that becomes available after handshake.
        self._extra.update(peercert=peercert,
                           cipher=sslobj.cipher(),
                           compression=sslobj.compression(),
                           ssl_object=sslobj)
        if self._app_st == STATE_INIT:
            self._app_st = STATE_CON_MADE
            self._app_protocol.connection_made(self._get_app_transport())
        self._wakeup_waiter()
        self._do_read()

    # Shutdown flow

    def _start_shutdown(self):
        if self._st in (FLUSHING, SHUTDOWN, UNWRAPPED):
            return
        if self._app_transport is not None:
            self._app_transport._closed = True
        if self._st == DO_HANDSHAKE:
            if _PY313:
                self._abort(None)
            else:
                self._abort()
        else:
            self._set_state(FLUSHING)
            self._shutdown_timeout_handle = self._loop.call_later(
                self._ssl_shutdown_timeout,
                self._check_shutdown_timeout
            )
            self._do_flush()

    def _check_shutdown_timeout(self):
        if self._st in (FLUSHING, SHUTDOWN):
            self._transport._force_close(
                exceptions.TimeoutError('SSL shutdown timed out'))

    def _do_flush(self):
        self._do_read()
        self._set_state(SHUTDOWN)
        self._do_shutdown()

    def _do_shutdown(self):
        try:
            if not self._eof_received:
                self._sslobj.unwrap()
        except SSLAgainErrors:
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._on_shutdown_complete(exc)
        else:
            self._process_outgoing()
            self._call_eof_received()
            self._on_shutdown_complete(None)

    def _on_shutdown_complete(self, shutdown_exc):
        if self._shutdown_timeout_handle is not None:
            self._shutdown_timeout_handle.cancel()
            self._shutdown_timeout_handle = None

        if shutdown_exc:
            self._fatal_error(shutdown_exc)
        else:
            self._loop.call_soon(self._transport.close)

    if _PY313:
        def _abort(self, exc):
            self._set_state(UNWRAPPED)
            if self._transport is not None:
                self._transport._force_close(exc)
    else:
        def _abort(self):
            self._set_state(UNWRAPPED)
            if self._transport is not None:
                self._transport.abort()

    # Outgoing flow: _write_appdata, _do_write, _process_outgoing are Rust.

    def _log_closed_write(self):
        logger.warning('SSL connection is closed')

    # Incoming flow: _do_read is Rust.

    def _call_eof_received(self):
        try:
            if self._app_st == STATE_CON_MADE:
                self._app_st = STATE_EOF
                keep_open = self._app_protocol.eof_received()
                if keep_open:
                    logger.warning('returning true from eof_received() '
                                   'has no effect when using ssl')
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as ex:
            self._fatal_error(ex, 'Error calling eof_received()')

    # Flow control for writes from APP socket: _control_app_writing is Rust.

    def _app_writing_failed(self, name, exc):
        self._loop.call_exception_handler({
            'message': f'protocol.{name}() failed',
            'exception': exc,
            'transport': self._app_transport,
            'protocol': self,
        })

    def _set_write_buffer_limits(self, high=None, low=None):
        high, low = _sslproto.add_flowcontrol_defaults(
            high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE)
        self._outgoing_high_water = high
        self._outgoing_low_water = low

    # Flow control for reads to APP socket

    def _pause_reading(self):
        self._app_reading_paused = True

    def _resume_reading(self):
        if self._app_reading_paused:
            self._app_reading_paused = False

            def resume():
                if self._st == WRAPPED:
                    self._do_read()
                elif self._st == FLUSHING:
                    self._do_flush()
                elif self._st == SHUTDOWN:
                    self._do_shutdown()
            self._loop.call_soon(resume)

    # Flow control for reads from SSL socket: _control_ssl_reading is Rust.

    def _set_read_buffer_limits(self, high=None, low=None):
        high, low = _sslproto.add_flowcontrol_defaults(
            high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_READ)
        self._incoming_high_water = high
        self._incoming_low_water = low

    # Flow control for writes to SSL socket

    def pause_writing(self):
        """Called when the low-level transport's buffer goes over
        the high-water mark.
        """
        assert not self._ssl_writing_paused
        self._ssl_writing_paused = True

    def resume_writing(self):
        """Called when the low-level transport's buffer drains below
        the low-water mark.
        """
        assert self._ssl_writing_paused
        self._ssl_writing_paused = False
        self._process_outgoing()

    def _fatal_error(self, exc, message='Fatal error on transport'):
        if self._transport:
            self._transport._force_close(exc)

        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        elif not isinstance(exc, exceptions.CancelledError):
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self._transport,
                'protocol': self,
            })


SSLProtocol.__module__ = _sslproto.__name__


# `sslproto` as asyncio's functions see it: the module, with SSLProtocol replaced.
_sslproto_view = types.SimpleNamespace(**vars(_sslproto))
_sslproto_view.SSLProtocol = SSLProtocol

make_ssl_transport = _transports.rebind(
    _selector_events.BaseSelectorEventLoop._make_ssl_transport,
    sslproto=_sslproto_view,
    _SelectorSocketTransport=_transports._SelectorSocketTransport)
start_tls = _transports.rebind(_base_events.BaseEventLoop.start_tls, sslproto=_sslproto_view)
