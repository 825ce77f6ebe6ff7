"""Shared helpers of the network tests: fd accounting and exception-handler capture."""

import asyncio
import gc
import os


def open_fds():
    return sorted(int(x) for x in os.listdir('/proc/self/fd'))


def fd_details(before):
    """What differs from `before`: (fd, target) pairs, for assertion messages."""
    out = []
    for fd in sorted(set(open_fds()) ^ set(before)):
        try:
            out.append((fd, os.readlink(f'/proc/self/fd/{fd}')))
        except OSError:
            out.append((fd, 'closed'))
    return out


class Harness:
    """Exception-handler capture and fd accounting for one loop.

    finish() runs a few iterations, then checks that every fd opened since the start was closed
    explicitly (not by the garbage collector) and, unless `check_errors` is false, that nothing
    reached the exception handler.
    """

    def __init__(self, loop):
        self.loop = loop
        self.errors = []
        loop.set_exception_handler(lambda lp, ctx: self.errors.append(ctx))
        loop.run_until_complete(asyncio.sleep(0))
        gc.collect()
        self.fds_before = open_fds()

    def finish(self, check_errors=True):
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))
        if check_errors:
            assert self.errors == []
        assert open_fds() == self.fds_before, fd_details(self.fds_before)
