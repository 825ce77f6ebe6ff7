"""UDP (create_datagram_endpoint echo, sendto/datagram_received, error_received) and subprocess
pipes (streams and SubprocessProtocol call order)."""

import asyncio
import gc
import os
import socket
import sys

import pytest

from netutil import Harness, open_fds

MiB = 1 << 20

def fd_names(fds):
    out = {}
    for fd in sorted(fds):
        try:
            out[fd] = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            pass    # the fd of the listdir() that found it
    return out

# -- UDP -----------------------------------------------------------------------------------------

class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.calls = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append('made')
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data[::-1], addr)

    def error_received(self, exc):
        self.calls.append(('error', exc))

    def connection_lost(self, exc):
        self.calls.append(('lost', exc))
        self.lost.set_result(exc)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.loop = loop
        self.calls = []
        self.queue = asyncio.Queue()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append('made')
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        self.calls.append(('error', type(exc)))

    def connection_lost(self, exc):
        self.calls.append(('lost', exc))
        self.lost.set_result(exc)


EMPTY_DATAGRAMS_SENT = sys.version_info >= (3, 13)


def test_udp_echo(loop):
    h = Harness(loop)

    async def main():
        srv_tr, srv = await loop.create_datagram_endpoint(lambda: UdpEcho(loop),
                                                          local_addr=('127.0.0.1', 0))
        saddr = srv_tr.get_extra_info('sockname')
        cli_tr, cli = await loop.create_datagram_endpoint(lambda: UdpClient(loop),
                                                          remote_addr=saddr)
        caddr = cli_tr.get_extra_info('sockname')
        assert cli_tr.get_extra_info('peername') == saddr
        sizes = [1, 2, 100, 1400, 9000, 32768, 65507]
        sent = []
        for i in range(300):
            n = sizes[i % len(sizes)]
            msg = (b'%05d-' % i * (n // 6 + 1))[:n]
            sent.append(msg)
            if i % 2:
                cli_tr.sendto(msg)
            else:
                cli_tr.sendto(msg, saddr)
            data, addr = await asyncio.wait_for(cli.queue.get(), 5)
            assert addr == saddr
            assert data == msg[::-1], (i, len(data), len(msg))
        # empty datagrams: 3.13's asyncio sends them, 3.11/3.12 silently drop them
        cli_tr.sendto(b'')
        cli_tr.sendto(b'next')
        if EMPTY_DATAGRAMS_SENT:
            assert (await asyncio.wait_for(cli.queue.get(), 5)) == (b'', saddr)
        assert (await asyncio.wait_for(cli.queue.get(), 5)) == (b'txen', saddr)
        # a burst that fits in the socket buffers: all arrive, in order
        burst = [b'burst %d' % i for i in range(50)]
        for m in burst:
            cli_tr.sendto(m)
        got = [(await asyncio.wait_for(cli.queue.get(), 5))[0] for _ in burst]
        assert got == [m[::-1] for m in burst]
        assert cli_tr.get_write_buffer_size() == 0
        # a connected endpoint refuses another destination
        with pytest.raises(ValueError):
            cli_tr.sendto(b'x', ('127.0.0.1', saddr[1] + 1 if saddr[1] < 65535 else 1))
        cli_tr.close()
        srv_tr.close()
        await asyncio.wait_for(asyncio.gather(cli.lost, srv.lost), 5)
        return caddr

    loop.run_until_complete(main())
    h.finish()


def test_udp_error_received_connection_refused(loop):
    """A connected UDP endpoint sending to a port nobody listens on: the ICMP port unreachable
    comes back as error_received(ConnectionRefusedError); the endpoint stays usable."""
    h = Harness(loop)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('127.0.0.1', 0))
    dead = s.getsockname()
    s.close()

    async def main():
        tr, proto = await loop.create_datagram_endpoint(lambda: UdpClient(loop),
                                                        remote_addr=dead)
        tr.sendto(b'anyone?')
        for _ in range(50):
            await asyncio.sleep(0.01)
            if proto.calls != ['made']:
                break
        await asyncio.sleep(0.05)
        assert proto.calls == ['made', ('error', ConnectionRefusedError)]
        assert not tr.is_closing()
        tr.close()
        await asyncio.wait_for(proto.lost, 5)
        assert proto.calls == ['made', ('error', ConnectionRefusedError), ('lost', None)]

    loop.run_until_complete(main())
    h.finish()


# -- subprocess pipes ----------------------------------------------------------------------------

CHILD = ('import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); '
         'sys.stdout.flush(); sys.stderr.write("err %d" % len(d)); sys.exit(7)')


def test_subprocess_streams(loop):
    h = Harness(loop)
    payload = os.urandom(MiB) * 8

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c', CHILD,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(payload), 20)
        return proc.returncode, out, err

    rc, out, err = loop.run_until_complete(main())
    assert rc == 7
    assert len(out) == len(payload)
    assert out == payload[::-1]
    assert err == b'err %d' % len(payload)
    h.finish()


class SubProto(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.calls = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.calls.append('made')
        self.transport = transport

    def pipe_data_received(self, fd, data):
        self.out[fd] += data
        if self.calls[-1] != ('data', fd):
            self.calls.append(('data', fd))

    def pipe_connection_lost(self, fd, exc):
        self.calls.append(('pipe_lost', fd, exc))

    def process_exited(self):
        self.calls.append('exited')

    def connection_lost(self, exc):
        self.calls.append(('lost', exc))
        self.done.set_result(None)


def test_subprocess_protocol_order(loop):
    h = Harness(loop)
    payload = os.urandom(3 * MiB)

    async def main():
        tr, proto = await loop.subprocess_exec(lambda: SubProto(loop), sys.executable, '-c', CHILD)
        assert proto.calls == ['made']
        stdin = tr.get_pipe_transport(0)
        stdin.write(payload)
        stdin.write_eof()
        await asyncio.wait_for(proto.done, 20)
        assert tr.get_returncode() == 7
        tr.close()
        return proto

    proto = loop.run_until_complete(main())
    assert proto.out[1] == payload[::-1]
    assert proto.out[2] == b'err %d' % len(payload)
    calls = proto.calls
    assert calls[0] == 'made' and calls[-1] == ('lost', None)
    middle = calls[1:-1]
    # each pipe is lost exactly once, its data strictly before; the exit exactly once
    for fd in (0, 1, 2):
        assert middle.count(('pipe_lost', fd, None)) == 1, calls
    assert middle.count('exited') == 1, calls
    for fd in (1, 2):
        lost_at = middle.index(('pipe_lost', fd, None))
        assert ('data', fd) in middle[:lost_at], calls
        assert ('data', fd) not in middle[lost_at:], calls
    assert set(middle) == {('data', 1), ('data', 2), 'exited',
                           ('pipe_lost', 0, None), ('pipe_lost', 1, None), ('pipe_lost', 2, None)}
    h.finish()


# -- the loop's own fds --------------------------------------------------------------------------

def test_close_releases_loop_fds(flavor):
    """close() releases the loop's own fds (poller, wake-up fd) at once, not at garbage
    collection: the fd table is back to what it was while the closed loop is still referenced."""
    gc.collect()
    before = open_fds()
    loops = []
    for _ in range(3):
        lp = flavor.new_loop()
        loops.append(lp)
        lp.run_until_complete(asyncio.sleep(0))
        assert len(open_fds()) > len(before)
        lp.close()
        assert open_fds() == before, fd_names(set(open_fds()) - set(before))
    del loops
