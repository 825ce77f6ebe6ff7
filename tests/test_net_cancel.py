"""Cancelling every kind of pending low-level socket operation (loop.sock_*): once cancelled, the
fd has no reader/writer left in the loop, and no data is lost (the next operation gets it)."""

import asyncio
import gc
import socket
import threading

import pytest

from netutil import open_fds


def fd_registered(loop, fd):
    # iterate: asyncio's selector mapping raises ValueError on `-1 in mapping`
    return fd in set(loop._selector.get_map())

async def start_pending(loop, coro, fd):
    """Start coro as a task, let it block; check it registered fd; return the task."""
    task = loop.create_task(coro)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), task
    assert fd_registered(loop, fd), f'fd {fd} not registered while {coro!r} is pending'
    return task


async def cancel_and_check(loop, task, fd):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert not fd_registered(loop, fd), f'fd {fd} still registered after cancel: ' \
        f'{loop._selector.get_map()[fd]!r}'
    # still nothing registered a few iterations later
    for _ in range(3):
        await asyncio.sleep(0)
    assert not fd_registered(loop, fd)


def test_cancel_sock_recv(loop, pair):
    a, b = pair

    async def main():
        task = await start_pending(loop, loop.sock_recv(a, 100), a.fileno())
        await cancel_and_check(loop, task, a.fileno())
        b.send(b'after cancel')
        assert await asyncio.wait_for(loop.sock_recv(a, 100), 5) == b'after cancel'
        assert not fd_registered(loop, a.fileno())

    loop.run_until_complete(main())


def test_cancel_sock_recv_repeatedly(loop, pair):
    """Many cancelled receives in a row leave nothing behind and lose nothing."""
    a, b = pair

    async def main():
        for i in range(50):
            task = await start_pending(loop, loop.sock_recv(a, 100), a.fileno())
            await cancel_and_check(loop, task, a.fileno())
            b.send(b'%d;' % i)
            assert await loop.sock_recv(a, 100) == b'%d;' % i

    loop.run_until_complete(main())


def test_cancel_sock_recv_into(loop, pair):
    a, b = pair

    async def main():
        buf = bytearray(100)
        task = await start_pending(loop, loop.sock_recv_into(a, buf), a.fileno())
        await cancel_and_check(loop, task, a.fileno())
        assert buf == bytearray(100)
        b.send(b'into')
        n = await asyncio.wait_for(loop.sock_recv_into(a, buf), 5)
        assert n == 4 and buf[:4] == b'into'

    loop.run_until_complete(main())


def test_cancel_sock_recvfrom(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.setblocking(False)
        a.bind(('127.0.0.1', 0))
        b.bind(('127.0.0.1', 0))

        async def main():
            task = await start_pending(loop, loop.sock_recvfrom(a, 100), a.fileno())
            await cancel_and_check(loop, task, a.fileno())
            b.sendto(b'dgram', a.getsockname())
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(a, 100), 5)
            assert (data, addr) == (b'dgram', b.getsockname())
            # recvfrom_into too
            buf = bytearray(10)
            task = await start_pending(loop, loop.sock_recvfrom_into(a, buf), a.fileno())
            await cancel_and_check(loop, task, a.fileno())
            b.sendto(b'dgram2', a.getsockname())
            n, addr = await asyncio.wait_for(loop.sock_recvfrom_into(a, buf), 5)
            assert (bytes(buf[:n]), addr) == (b'dgram2', b.getsockname())

        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_cancel_sock_sendall_blocked(loop, pair):
    """sock_sendall blocked on a full buffer: cancelled, the writer is removed; what the peer
    then receives is a prefix of the cancelled payload followed by the next sendall's bytes."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    payload = bytes(range(256)) * (4 * 1024 * 16)   # 16 MiB, far more than the buffers hold

    async def main():
        task = await start_pending(loop, loop.sock_sendall(a, payload), a.fileno())
        await cancel_and_check(loop, task, a.fileno())
        received = bytearray()
        done = threading.Event()

        def drain():
            b.setblocking(True)
            while True:
                chunk = b.recv(1 << 20)
                if not chunk:
                    break
                received.extend(chunk)
            done.set()

        t = threading.Thread(target=drain)
        t.start()
        try:
            await asyncio.wait_for(loop.sock_sendall(a, b'MARKER'), 10)
            a.shutdown(socket.SHUT_WR)
            await loop.run_in_executor(None, t.join, 10)
        finally:
            a.close()
            t.join(10)
        assert done.is_set()
        assert received.endswith(b'MARKER')
        prefix = bytes(received[:-len(b'MARKER')])
        assert 0 < len(prefix) < len(payload)
        assert prefix == payload[:len(prefix)]

    loop.run_until_complete(main())


def _full_listener():
    """A listening TCP socket whose accept queue is full: a further connect() hangs (the SYNs are
    dropped). Returns (listener, connected clients)."""
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(0)
    clients = []
    for _ in range(16):
        c = socket.socket()
        c.settimeout(0.3)
        clients.append(c)
        try:
            c.connect(lsock.getsockname())
        except (TimeoutError, socket.timeout):
            return lsock, clients
    raise AssertionError('could not fill the accept queue')


def test_cancel_sock_connect(loop):
    lsock, clients = _full_listener()
    s = socket.socket()
    s.setblocking(False)
    try:
        async def main():
            task = await start_pending(loop, loop.sock_connect(s, lsock.getsockname()), s.fileno())
            await asyncio.sleep(0.2)
            assert not task.done()
            await cancel_and_check(loop, task, s.fileno())

        loop.run_until_complete(main())
    finally:
        s.close()
        lsock.close()
        for c in clients:
            c.close()


def test_cancel_sock_accept(loop):
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(10)
    lsock.setblocking(False)
    try:
        async def main():
            task = await start_pending(loop, loop.sock_accept(lsock), lsock.fileno())
            await cancel_and_check(loop, task, lsock.fileno())
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, lsock.getsockname())
            conn, addr = await asyncio.wait_for(loop.sock_accept(lsock), 5)
            assert addr == c.getsockname()
            await loop.sock_sendall(c, b'ping')
            assert await asyncio.wait_for(loop.sock_recv(conn, 10), 5) == b'ping'
            conn.close()
            c.close()
            assert not fd_registered(loop, lsock.fileno())

        loop.run_until_complete(main())
    finally:
        lsock.close()


def test_cancel_everything_no_fd_leak(loop):
    """All kinds at once, then everything closed: no registrations and no fds left over."""
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    before = open_fds()
    lsock, clients = _full_listener()
    a, b = socket.socketpair()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(('127.0.0.1', 0))
    acc = socket.socket()
    acc.bind(('127.0.0.1', 0))
    acc.listen(1)
    s = socket.socket()
    for x in (a, b, u, acc, s):
        x.setblocking(False)

    async def main():
        tasks = [
            loop.create_task(loop.sock_recv(a, 10)),
            loop.create_task(loop.sock_sendall(b, b'x' * (32 << 20))),
            loop.create_task(loop.sock_recvfrom(u, 10)),
            loop.create_task(loop.sock_accept(acc)),
            loop.create_task(loop.sock_connect(s, lsock.getsockname())),
        ]
        await asyncio.sleep(0.1)
        # a reads nothing (b's sendall is pending on b; a's buffer fills but nobody reads it)
        assert [t.done() for t in tasks] == [True, False, False, False, False]
        assert tasks[0].result() == b'x' * 10
        for t in tasks:
            t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r) for r in res[1:]] == [asyncio.CancelledError] * 4
        fds = {x.fileno() for x in (a, b, u, acc, s)}
        assert fds.isdisjoint(set(loop._selector.get_map()))

    loop.run_until_complete(main())
    for x in (a, b, u, acc, s, lsock, *clients):
        x.close()
    loop.run_until_complete(asyncio.sleep(0))
    assert open_fds() == before


# -- the same operations completing normally -----------------------------------------------------

def test_sock_connect_refused_leaves_nothing_registered(loop):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    dead = s.getsockname()
    s.close()
    c = socket.socket()
    c.setblocking(False)
    try:
        async def main():
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(loop.sock_connect(c, dead), 5)
            assert not fd_registered(loop, c.fileno())

        loop.run_until_complete(main())
    finally:
        c.close()


def test_sock_sendall_recv_into_32mib(loop, pair):
    """sock_sendall of 32 MiB against a concurrent sock_recv_into loop: every byte, in order."""
    import hashlib
    a, b = pair
    payload = hashlib.shake_256(b'sock').digest(1 << 20) * 32

    async def receiver():
        buf = bytearray(256 * 1024)
        h = hashlib.sha256()
        total = 0
        while total < len(payload):
            n = await loop.sock_recv_into(b, buf)
            assert n > 0
            h.update(buf[:n])
            total += n
        return total, h.hexdigest()

    async def main():
        rtask = loop.create_task(receiver())
        await loop.sock_sendall(a, payload)
        total, digest = await asyncio.wait_for(rtask, 20)
        assert total == len(payload)
        assert digest == hashlib.sha256(payload).hexdigest()
        assert not fd_registered(loop, a.fileno())
        assert not fd_registered(loop, b.fileno())

    loop.run_until_complete(main())
