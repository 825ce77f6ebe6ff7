"""In-process echo for instruction counts: N round trips of `size` bytes over a socketpair
between two Protocols on one loop (one `transport.write` per `data_received` on both sides).

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


async def main(n, size):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    done = loop.create_future()
    ta, _ = await loop.connect_accepted_socket(Echo, a)
    tb, _ = await loop.connect_accepted_socket(lambda: Client(n, size, done), b)
    await done
    ta.close()
    tb.close()


def run():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--loop', default='ferroloop')
    p.add_argument('-n', type=int, default=10000)
    p.add_argument('--size', type=int, default=1024)
    a = p.parse_args()
    loop = new_loop(a.loop)
    try:
        loop.run_until_complete(main(a.n, a.size))
    finally:
        loop.close()


if __name__ == '__main__':
    run()
