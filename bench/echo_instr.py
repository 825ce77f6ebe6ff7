"""In-process echo for instruction counts: N round trips of `size` bytes over a socketpair
between two Protocols on one loop (one `transport.write` per `data_received` on both sides).

The socketpairs are AF_UNIX stream sockets. `--pairs P` runs P of them at once, each making N
round trips, so that one poll reports several ready sockets, as in a server with many
connections; instructions per round trip are then the difference divided by P times the
difference of N.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/echo_instr.py --loop ferroloop -n 20000

Instructions per round trip: the difference between two run lengths (e.g. 10,000 and 30,000)
divided by the difference of N, so start-up cancels out.
"""

import argparse
import asyncio
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import new_loop  # noqa: E402


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.write = transport.write

    def data_received(self, data):
        self.write(data)


class Client(asyncio.Protocol):
    def __init__(self, n, size, done):
        self.left = n
        self.size = size
        self.got = 0
        self.done = done

    def connection_made(self, transport):
        self.write = transport.write
        self.msg = b'x' * self.size
        self.write(self.msg)

    def data_received(self, data):
        self.got += len(data)
        if self.got < self.size:
            return
        self.got = 0
        self.left -= 1
        if self.left:
            self.write(self.msg)
        else:
            self.done.set_result(None)


async def one_pair(n, size):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    done = loop.create_future()
    ta, _ = await loop.connect_accepted_socket(Echo, a)
    tb, _ = await loop.connect_accepted_socket(lambda: Client(n, size, done), b)
    await done
    ta.close()
    tb.close()


async def main(n, size, pairs):
    await asyncio.gather(*(one_pair(n, size) for _ in range(pairs)))


def run():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--loop', default='ferroloop')
    p.add_argument('-n', type=int, default=10000)
    p.add_argument('--size', type=int, default=1024)
    p.add_argument('--pairs', type=int, default=1, help='socketpairs echoing at once')
    a = p.parse_args()
    loop = new_loop(a.loop)
    try:
        loop.run_until_complete(main(a.n, a.size, a.pairs))
    finally:
        loop.close()


if __name__ == '__main__':
    run()
