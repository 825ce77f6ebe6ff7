"""Socket transports: asyncio's own ``_SelectorSocketTransport`` with its per-message path in Rust.

The class below *is* asyncio's transport (a subclass, with the same name so reprs match): every
state change, buffer, flow-control call, close and error path is the running interpreter's code.
Only two attributes are replaced on each instance by a ``_ferroloop.SocketPump``:

- ``_read_ready`` (the reader callback): ``recv`` and ``protocol.data_received`` in Rust for a
  plain Protocol, ``get_buffer``/``recv_into``/``buffer_updated`` for a BufferedProtocol;
- ``write``: sent straight to the socket when asyncio would send at once (nothing buffered, no
  EOF, no sendfile, connection alive); the rest of a partial send is buffered by ``_write_rest``
  (asyncio's own steps); anything else goes to asyncio's ``write``.

``make_socket_transport`` and ``make_ssl_transport`` are asyncio's own
``_make_socket_transport``/``_make_ssl_transport`` functions re-bound to globals that name this
class, so they build this transport with exactly the stdlib's steps for the running version.
"""

import types
from asyncio import protocols as _protocols
from asyncio import selector_events as _selector_events

from . import _ferroloop

__all__ = ('make_socket_transport', 'make_ssl_transport')

_Base = _selector_events._SelectorSocketTransport


class _SelectorSocketTransport(_Base):
    __slots__ = ()  # the base classes' instances have a __dict__ already

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # Before the base __init__: it calls set_protocol and schedules _add_reader(_read_ready).
        pump = _ferroloop.SocketPump(self, sock.fileno(), self.max_size, _Base.write)
        self._read_ready = pump
        self.write = pump.write
        super().__init__(loop, sock, protocol, waiter, extra, server)

    def set_protocol(self, protocol):
        super().set_protocol(protocol)
        # how the pump reads: 2 = get_buffer/buffer_updated, 1 = data_received
        self._read_ready.mode = 2 if isinstance(protocol, _protocols.BufferedProtocol) else 1

    def _write_rest(self, data, n):
        # The end of asyncio's write() after `n = self._sock.send(data)` took n < len(data) bytes
        # (n = 0: EAGAIN), for the send the Rust fast path made.
        if n:
            data = memoryview(data)[n:]
        self._loop._add_writer(self._sock_fd, self._write_ready)
        if isinstance(self._buffer, bytearray):   # 3.11: one bytearray
            self._buffer.extend(data)
        else:                                     # 3.12+: a deque of buffers for sendmsg
            self._buffer.append(data)
        self._maybe_pause_protocol()

    def close(self):
        # asyncio drops _read_ready_cb here; the pump must stop reading natively with it.
        self._read_ready.mode = 0
        super().close()


def _rebind(func):
    """``func`` with module globals in which ``_SelectorSocketTransport`` is the class above."""
    glob = dict(func.__globals__, _SelectorSocketTransport=_SelectorSocketTransport)
    new = types.FunctionType(func.__code__, glob, func.__name__, func.__defaults__,
                             func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__doc__ = func.__doc__
    return new


_Loop = _selector_events.BaseSelectorEventLoop
make_socket_transport = _rebind(_Loop._make_socket_transport)
make_ssl_transport = _rebind(_Loop._make_ssl_transport)
