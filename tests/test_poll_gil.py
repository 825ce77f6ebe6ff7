"""A loop that never blocks still lets other threads run: `call_soon_threadsafe` and executor
workers, which need the GIL, get through while the loop is busy (the loop keeps the GIL across
polls that cannot block; Python's switch interval hands it over while callbacks run)."""

import asyncio
import socket
import threading
import time

import pytest


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class PingPong(asyncio.Protocol):
    """Echoes every reply back to the peer until `stop` is set."""

    def __init__(self, stop):
        self.stop = stop
        self.rounds = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b'x' * 64)

    def data_received(self, data):
        self.rounds += 1
        if not self.stop.done():
            self.transport.write(data)


def _thread_calls_in(loop, fut, delay=0.05):
    """Start a thread that, after `delay`, spends a moment in Python code and then resolves
    `fut` through call_soon_threadsafe."""

    def worker():
        time.sleep(delay)
        total = sum(range(10_000))  # Python code: needs the GIL
        loop.call_soon_threadsafe(fut.set_result, (total, time.monotonic()))

    t = threading.Thread(target=worker)
    t.start()
    return t


@pytest.mark.timeout(30)
def test_busy_callback_loop_does_not_starve_threadsafe_caller(loop):
    # call_soon chains keep the ready queue non-empty: every poll has a zero timeout.
    async def main():
        fut = loop.create_future()
        spins = 0

        def spin():
            nonlocal spins
            spins += 1
            if not fut.done():
                loop.call_soon(spin)

        loop.call_soon(spin)
        t = _thread_calls_in(loop, fut)
        start = time.monotonic()
        total, _ = await asyncio.wait_for(fut, 10)
        t.join(10)
        return total, spins, time.monotonic() - start

    total, spins, took = loop.run_until_complete(main())
    assert total == sum(range(10_000))
    assert spins > 10
    assert took < 5, took


@pytest.mark.timeout(30)
def test_busy_io_loop_does_not_starve_threadsafe_caller(loop):
    # Many socket pairs echoing at once: every poll finds several fds ready.
    async def main():
        stop = loop.create_future()
        transports, clients = [], []
        for _ in range(8):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ta, _ = await loop.connect_accepted_socket(Echo, a)
            tb, pb = await loop.connect_accepted_socket(lambda: PingPong(stop), b)
            transports += [ta, tb]
            clients.append(pb)
        t = _thread_calls_in(loop, stop)
        start = time.monotonic()
        try:
            total, _ = await asyncio.wait_for(asyncio.shield(stop), 10)
        finally:
            t.join(10)
            for tr in transports:
                tr.close()
            await asyncio.sleep(0)
        return total, sum(c.rounds for c in clients), time.monotonic() - start

    total, rounds, took = loop.run_until_complete(main())
    assert total == sum(range(10_000))
    assert rounds > 10
    assert took < 5, took


@pytest.mark.timeout(30)
def test_busy_io_loop_does_not_starve_executor(loop):
    async def main():
        stop = loop.create_future()
        transports = []
        for _ in range(8):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ta, _ = await loop.connect_accepted_socket(Echo, a)
            tb, _ = await loop.connect_accepted_socket(lambda: PingPong(stop), b)
            transports += [ta, tb]
        try:
            got = await asyncio.wait_for(
                loop.run_in_executor(None, lambda: sum(range(100_000))), 10)
        finally:
            stop.set_result(None)
            for tr in transports:
                tr.close()
            await asyncio.sleep(0)
        return got

    assert loop.run_until_complete(main()) == sum(range(100_000))
