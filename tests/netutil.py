"""Shared helpers of the network tests: fd accounting, exception-handler capture, and a socket
on a reused fd number."""

import asyncio
import contextlib
import gc
import os
import socket

import pytest


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


@contextlib.contextmanager
def reused_fd_number(old_a, old_b, dup):
    """Close `old_a` — keeping a dup of it open if `dup`, so the kernel keeps its epoll
    registrations — and make a new socket pair whose first socket has `old_a`'s fd number
    (skips the test if the kernel picks another). Yields `(new_a, new_b)`, non-blocking; closes
    them, `old_b` and the dup afterwards."""
    fd = old_a.fileno()
    keep = os.dup(fd) if dup else None
    old_a.close()
    new_a, new_b = socket.socketpair()
    try:
        if new_a.fileno() != fd:
            pytest.skip('the kernel did not reuse the fd number')
        new_a.setblocking(False)
        yield new_a, new_b
    finally:
        for s in (old_b, new_a, new_b):
            s.close()
        if keep is not None:
            os.close(keep)
