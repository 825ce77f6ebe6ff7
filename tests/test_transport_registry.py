"""``loop._transports``, the reader registration and ``write`` of socket stream transports, on
both loops.

asyncio keeps every transport in ``loop._transports`` (a ``WeakValueDictionary`` fd -> transport)
and refuses ``add_reader``/``add_writer``/``remove_*``/``sock_*`` on the fd of a transport that is
not closing (``_ensure_fd_no_transport``); ``sendfile`` takes the transport out of it and puts it
back. ferroloop keeps its open stream transports in a map of the loop instead; these tests hold
it to asyncio's behaviour. They also pin down the context the protocol's ``data_received`` runs
in (ferroloop registers the reader at connection start in the context of the callback that
registers it, where asyncio copies that context once more), and ``transport.write``, a method of
the class in ferroloop, as the instance attribute it is in asyncio (assigned, mocked, deleted)."""

import asyncio
import contextvars
import os
import socket
import weakref

import pytest

FAMILIES = ['tcp', 'unix']


class Proto(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.data = bytearray()
        self.lost = loop.create_future()
        self.on_data = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data
        if self.on_data is not None:
            self.on_data(data)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def pair(loop, family, tmp_path, server_factory=None):
    """(client transport, client protocol, server transport, server protocol, server)."""
    made = []

    def factory():
        p = (server_factory or Proto)(loop)
        made.append(p)
        return p

    if family == 'tcp':
        srv = await loop.create_server(factory, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        ctr, cp = await loop.create_connection(lambda: Proto(loop), '127.0.0.1', port)
    else:
        path = str(tmp_path / 's.sock')
        srv = await loop.create_unix_server(factory, path)
        ctr, cp = await loop.create_unix_connection(lambda: Proto(loop), path)
    while not made or made[0].transport is None:
        await asyncio.sleep(0.001)
    return ctr, cp, made[0].transport, made[0], srv


async def shut(srv, *protocols):
    for p in protocols:
        p.transport.close()
    for p in protocols:
        await p.lost
    srv.close()
    await srv.wait_closed()


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 30))


def fd_of(transport):
    return transport.get_extra_info('socket').fileno()


# -- _ensure_fd_no_transport ----------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_fd_of_a_live_transport_is_refused_even_when_paused(loop, family, tmp_path):
    async def main():
        ctr, cp, str_, sp, srv = await pair(loop, family, tmp_path)
        fd = fd_of(ctr)
        for paused in (False, True):
            if paused:
                ctr.pause_reading()
                assert not ctr.is_reading()
            for call in (lambda: loop.add_reader(fd, print), lambda: loop.add_writer(fd, print),
                         lambda: loop.remove_reader(fd), lambda: loop.remove_writer(fd)):
                with pytest.raises(RuntimeError, match=r'File descriptor \d+ is used by transport'):
                    call()
            with pytest.raises(RuntimeError, match='is used by transport'):
                loop._ensure_fd_no_transport(fd)
        ctr.resume_reading()
        str_.write(b'still reading')
        while cp.data != b'still reading':
            await asyncio.sleep(0.001)
        await shut(srv, cp, sp)

    run(loop, main())


def test_sock_recv_on_the_socket_of_a_live_transport_is_refused(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        tr, p = await loop.connect_accepted_socket(lambda: Proto(loop), a)
        with pytest.raises(RuntimeError, match='is used by transport'):
            await loop.sock_recv(a, 10)
        tr.pause_reading()
        with pytest.raises(RuntimeError, match='is used by transport'):
            await loop.sock_recv(a, 10)
        tr.close()
        await p.lost
        b.close()

    run(loop, main())


def test_fd_of_a_closing_transport_is_not_refused(loop, tmp_path):
    async def main():
        ctr, cp, str_, sp, srv = await pair(loop, 'tcp', tmp_path)
        fd = fd_of(ctr)
        ctr.close()   # connection_lost comes later: the fd is still open
        assert ctr.is_closing()
        assert loop._transports.get(fd) is ctr
        loop._ensure_fd_no_transport(fd)
        loop.add_reader(fd, print)
        assert loop.remove_reader(fd) is True
        loop.add_writer(fd, print)
        assert loop.remove_writer(fd) is True
        await cp.lost
        await shut(srv, sp)

    run(loop, main())


# -- loop._transports -----------------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_transports_lookups(loop, family, tmp_path):
    async def main():
        ctr, cp, str_, sp, srv = await pair(loop, family, tmp_path)
        transports = loop._transports
        assert isinstance(transports, weakref.WeakValueDictionary)
        fd, sfd = fd_of(ctr), fd_of(str_)
        assert transports[fd] is ctr and transports[sfd] is str_
        assert transports.get(fd) is ctr and fd in transports
        assert dict(transports.items())[fd] is ctr
        assert {fd, sfd} <= set(transports) and {fd, sfd} <= set(transports.keys())
        assert ctr in list(transports.values())
        assert len(transports) == len(list(transports))
        ctr.pause_reading()
        assert transports[fd] is ctr   # not a reader now, still a transport
        ctr.resume_reading()
        # what _sendfile_native does
        n = len(transports)
        del transports[fd]
        assert fd not in transports and transports.get(fd) is None
        assert len(transports) == n - 1
        with pytest.raises(KeyError):
            transports[fd]
        loop._ensure_fd_no_transport(fd)
        transports[fd] = ctr
        assert transports[fd] is ctr and len(transports) == n
        with pytest.raises(RuntimeError, match='is used by transport'):
            loop._ensure_fd_no_transport(fd)
        assert transports.pop(fd) is ctr and fd not in transports
        transports[fd] = ctr
        # an fd that no transport has
        r, w = os.pipe()
        try:
            assert r not in transports and transports.get(r, 'no') == 'no'
            with pytest.raises(KeyError):
                transports[r]
            loop._ensure_fd_no_transport(r)
        finally:
            os.close(r)
            os.close(w)
        await shut(srv, cp, sp)
        # closed but alive: asyncio keeps it until it is collected
        assert transports.get(fd) is ctr and ctr.is_closing()
        loop._ensure_fd_no_transport(fd)

    run(loop, main())


def test_datagram_transport_in_transports(loop):
    async def main():
        tr, p = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    local_addr=('127.0.0.1', 0))
        fd = tr.get_extra_info('socket').fileno()
        assert loop._transports[fd] is tr and fd in loop._transports
        with pytest.raises(RuntimeError, match='is used by transport'):
            loop.add_reader(fd, print)
        tr.close()
        await asyncio.sleep(0.01)

    run(loop, main())


@pytest.mark.parametrize('family', FAMILIES)
def test_sendfile_takes_the_transport_out_and_puts_it_back(loop, family, tmp_path):
    payload = os.urandom(300_000)
    path = tmp_path / 'f.bin'
    path.write_bytes(payload)

    async def main():
        ctr, cp, str_, sp, srv = await pair(loop, family, tmp_path)
        fd = fd_of(ctr)
        with open(path, 'rb') as f:
            sent = await loop.sendfile(ctr, f)
        assert sent == len(payload)
        while len(sp.data) < len(payload):
            await asyncio.sleep(0.001)
        assert bytes(sp.data) == payload
        assert loop._transports[fd] is ctr and ctr.is_reading()
        with pytest.raises(RuntimeError, match='is used by transport'):
            loop.add_reader(fd, print)
        ctr.write(b'after')   # the transport works after sendfile
        while not sp.data.endswith(b'after'):
            await asyncio.sleep(0.001)
        await shut(srv, cp, sp)

    run(loop, main())


# -- the context of data_received -----------------------------------------------------------------

VAR = contextvars.ContextVar('VAR', default='unset')
SEEN = contextvars.ContextVar('SEEN', default=None)


class CtxProto(Proto):
    def __init__(self, loop):
        super().__init__(loop)
        self.seen = []

    def data_received(self, data):
        self.seen.append((VAR.get(), SEEN.get()))
        SEEN.set(data)
        super().data_received(data)


@pytest.mark.parametrize('family', FAMILIES)
def test_data_received_context(loop, family, tmp_path):
    async def recv(p, n):
        while len(p.seen) < n:
            await asyncio.sleep(0.001)

    async def main():
        VAR.set('before create_server')
        made = []

        def factory():
            p = CtxProto(loop)
            made.append(p)
            return p

        if family == 'tcp':
            srv = await loop.create_server(factory, '127.0.0.1', 0)
            addr = srv.sockets[0].getsockname()
            connect = lambda: loop.create_connection(lambda: Proto(loop), *addr)  # noqa: E731
        else:
            path = str(tmp_path / 's.sock')
            srv = await loop.create_unix_server(factory, path)
            connect = lambda: loop.create_unix_connection(lambda: Proto(loop), path)  # noqa: E731
        VAR.set('after create_server')
        (c1, cp1), (c2, cp2) = await connect(), await connect()
        while len(made) < 2 or any(p.transport is None for p in made):
            await asyncio.sleep(0.001)
        c1.write(b'one')
        await recv(made[0], 1)
        c1.write(b'two')
        await recv(made[0], 2)
        c2.write(b'three')
        await recv(made[1], 1)
        assert made[0].seen == [('before create_server', None), ('before create_server', b'one')]
        assert made[1].seen == [('before create_server', None)]
        assert SEEN.get() is None
        # resume_reading registers the reader anew, in a copy of the caller's context
        t = made[0].transport
        t.pause_reading()
        VAR.set('resumer')
        t.resume_reading()
        c1.write(b'four')
        await recv(made[0], 3)
        assert made[0].seen[2] == ('resumer', None)
        await shut(srv, cp1, cp2, *made)

    run(loop, main())


# -- write as an attribute ------------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_write_is_an_attribute_that_can_be_replaced(loop, family, tmp_path):
    from unittest import mock

    async def got(p, data):
        while bytes(p.data) != data:
            await asyncio.sleep(0.001)

    async def main():
        ctr, cp, str_, sp, srv = await pair(loop, family, tmp_path)
        ctr.write(b'a')
        ctr.write(data=b'b')
        w = ctr.write
        w(b'c')
        type(ctr).write(ctr, b'd')
        await got(sp, b'abcd')
        with pytest.raises(TypeError):
            ctr.write()
        with pytest.raises(TypeError):
            ctr.write(b'x', b'y')
        with pytest.raises(AttributeError):
            del ctr.write   # nothing assigned
        calls = []
        ctr.write = calls.append
        assert ctr.write == calls.append
        ctr.write(b'not sent')
        w(b'e')   # a method got before the assignment still writes
        del ctr.write
        ctr.write(b'f')
        with mock.patch.object(ctr, 'write') as m:
            ctr.write(b'mocked')
        m.assert_called_once_with(b'mocked')
        ctr.write(b'g')
        await got(sp, b'abcdefg')
        assert calls == [b'not sent']
        await shut(srv, cp, sp)

    run(loop, main())
