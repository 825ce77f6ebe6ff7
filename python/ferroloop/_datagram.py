"""Datagram transports (UDP, Unix datagram): asyncio's ``_SelectorDatagramTransport`` with its
per-datagram path in Rust.

The class below is asyncio's transport (a subclass, with the same name so reprs match, and an
``asyncio.DatagramTransport`` on every version — 3.11's stdlib class is not one): state, the send
buffer, flow control (``get_write_buffer_size``, ``pause_writing``/``resume_writing``), ``close``,
``abort``, ``get_extra_info`` and every error path are the running interpreter's code. For a
plain ``socket.socket`` of family AF_INET, AF_INET6 or AF_UNIX, two attributes are replaced on
each instance by a ``_ferroloop.DatagramPump`` (see ``transports/datagram.rs``):

- ``_read_ready`` (the reader callback): ``recvfrom`` → ``protocol.datagram_received`` in Rust,
  up to 32 datagrams per wake-up instead of one per loop iteration;
- ``sendto``: straight to the socket when asyncio would send at once and the destination is the
  connected peer or an address object the pump built for a received datagram; everything else
  (and EAGAIN) goes to ``_sendto_slow``, which is asyncio's ``sendto``.

One difference from asyncio, as uvloop: ``sendto(data)`` without an address on an endpoint made
from a socket already connected to an unnamed peer (one end of
``socket.socketpair(AF_UNIX, SOCK_DGRAM)``) sends to that peer; asyncio's transport fails with a
fatal TypeError there (``sendto(data, None)``).
"""

import socket
import sys
from asyncio import selector_events as _selector_events
from asyncio import transports as _asyncio_transports

from . import _ferroloop

__all__ = ('make_datagram_transport',)

_Base = _selector_events._SelectorDatagramTransport
_NATIVE_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
# 3.13 counts 8 bytes of header per buffered datagram in get_write_buffer_size().
_HEADER = 8 if sys.version_info >= (3, 13) else 0
_SEND_UNCONNECTED, _SEND_CONNECTED, _SEND_UNNAMED_PEER = 0, 1, 2

if issubclass(_Base, _asyncio_transports.DatagramTransport):
    _Bases = (_Base,)
else:  # 3.11
    _Bases = (_Base, _asyncio_transports.DatagramTransport)


class _SelectorDatagramTransport(*_Bases):
    __slots__ = ()  # the base classes' instances have a __dict__ already

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        # Before the base __init__: it schedules _add_reader(fd, self._read_ready).
        self._unnamed_peer = False
        if type(sock) is socket.socket and sock.family in _NATIVE_FAMILIES:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
            if address or peer:
                mode = _SEND_CONNECTED
            elif peer is not None:
                mode = _SEND_UNNAMED_PEER
                self._unnamed_peer = True
            else:
                mode = _SEND_UNCONNECTED
            pump = _ferroloop.DatagramPump(self, sock.fileno(), address, mode)
            self._read_ready = pump
            self.sendto = pump.sendto
        super().__init__(loop, sock, protocol, address, waiter, extra)

    def _sendto_slow(self, data, addr=None):
        # Every sendto the pump does not send itself: asyncio's own, except the unnamed peer.
        if addr is None and self._unnamed_peer and not self._address:
            return self._sendto_peer(data)
        return _Base.sendto(self, data, addr)

    def _sendto_peer(self, data):
        # asyncio's sendto with `sock.send(data)` (the peer has no address to send to).
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if not data and not _HEADER:  # 3.11/3.12 send nothing for empty data
            return
        if not self._buffer:
            try:
                self._sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                self._loop._add_writer(self._sock_fd, self._sendto_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(
                    exc, 'Fatal write error on datagram transport')
                return
        self._buffer.append((bytes(data), None))
        self._buffer_size += len(data) + _HEADER
        self._maybe_pause_protocol()

    def _sendto_ready(self):
        if not self._unnamed_peer:
            return _Base._sendto_ready(self)
        # asyncio's _sendto_ready, sending to the unnamed peer with sock.send.
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data)
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self._buffer.appendleft((data, addr))  # Try again later.
                self._buffer_size += len(data)
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(
                    exc, 'Fatal write error on datagram transport')
                return

        self._maybe_resume_protocol()  # May append to buffer.
        if not self._buffer:
            self._loop._remove_writer(self._sock_fd)
            if self._closing:
                self._call_connection_lost(None)


def make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
    # BaseSelectorEventLoop._make_datagram_transport, with the class above.
    return _SelectorDatagramTransport(self, sock, protocol, address, waiter, extra)
