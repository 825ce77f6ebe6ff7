"""Echo server on a chosen event loop, in uvloop's three benchmark styles (bench/echo/README.md).

    python bench/echo/server.py --loop ferroloop --style protocol --tcp 127.0.0.1:0
    python bench/echo/server.py --loop uvloop --style sock --unix /tmp/echo.sock [--cpu 0]
    python bench/echo/server.py --loop rsloop --style protocol --udp 127.0.0.1:0
    python bench/echo/server.py --loop asyncio --style streams --tls 127.0.0.1:0 --cert C.pem --key K.pem

Styles (as in uvloop's examples/bench/echoserver.py):
  sock      loop.sock_accept + one task per connection doing loop.sock_recv / loop.sock_sendall
  streams   asyncio.start_server (start_unix_server): reader.read + writer.write
  protocol  loop.create_server (create_unix_server) with a Protocol that writes back in data_received;
            with --udp, loop.create_datagram_endpoint with a DatagramProtocol that sends each
            datagram back to its sender in datagram_received (one server socket)
  sink      (for echo-client --transfer) a Protocol that reads an 8-byte little-endian length,
            swallows that many bytes and writes b"DONE"
--tls serves TCP with ssl= (an ssl.SSLContext with --cert/--key) for the protocol, streams and sink
styles.

Prints "LISTENING tcp HOST:PORT", "LISTENING unix PATH" or "LISTENING udp HOST:PORT" on stdout when
it accepts connections, then serves until killed. A loop that lacks the feature (NotImplementedError)
prints "UNSUPPORTED reason" instead and exits with status 3.
"""

import argparse
import asyncio
import os
import socket
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: the loop factories
from scenarios import LOOPS, server_loop  # noqa: E402

RECV_SIZE = 256 * 1024  # bytes asked per read; larger than the largest message (100 KiB)
STYLES = ('sock', 'streams', 'protocol', 'sink')


def nodelay(sock):
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --- sock_recv / sock_sendall ------------------------------------------------------------------
async def sock_client(loop, client):
    nodelay(client)
    with client:
        while True:
            data = await loop.sock_recv(client, RECV_SIZE)
            if not data:
                break
            await loop.sock_sendall(client, data)


async def sock_server(loop, sock, ready):
    sock.setblocking(False)
    ready()
    tasks = set()  # keep strong references to the connection tasks
    with sock:
        while True:
            client, _ = await loop.sock_accept(sock)
            task = loop.create_task(sock_client(loop, client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def forever(loop, server):
    """Serve until killed. Not Server.serve_forever(): rloop 0.5 starts serving a second time
    there and panics (the server is already serving, start_serving=True by default)."""
    try:
        await loop.create_future()
    finally:
        server.close()


# --- streams -----------------------------------------------------------------------------------
async def streams_client(reader, writer):
    nodelay(writer.get_extra_info('socket'))
    while True:
        data = await reader.read(RECV_SIZE)
        if not data:
            break
        writer.write(data)  # as uvloop's benchmark: no drain (a reply is at most one message)
    writer.close()


async def streams_server(loop, sock, ready):
    if sock.family == socket.AF_UNIX:
        server = await asyncio.start_unix_server(streams_client, sock=sock, limit=RECV_SIZE)
    else:
        server = await asyncio.start_server(streams_client, sock=sock, limit=RECV_SIZE, ssl=SSL)
    ready()
    await forever(loop, server)


# --- Protocol ----------------------------------------------------------------------------------
class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        nodelay(transport.get_extra_info('socket'))  # asyncio's transports do this already

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        self.transport.write(data)


async def protocol_server(loop, sock, ready):
    if sock.family == socket.AF_UNIX:
        server = await loop.create_unix_server(EchoProtocol, sock=sock)
    else:
        server = await loop.create_server(EchoProtocol, sock=sock, ssl=SSL)
    ready()
    await forever(loop, server)


# --- datagram Protocol (UDP) ---------------------------------------------------------------------
class DatagramEchoProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def datagram_server(loop, sock, ready):
    transport, _ = await loop.create_datagram_endpoint(DatagramEchoProtocol, sock=sock)
    ready()
    try:
        await loop.create_future()
    finally:
        transport.close()


# --- sink (one-way transfer) ---------------------------------------------------------------------
class SinkProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.head = b''
        self.want = None
        self.got = 0

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        if self.want is None:
            self.head += data
            if len(self.head) < 8:
                return
            self.want = int.from_bytes(self.head[:8], 'little')
            self.got = len(self.head) - 8
            self.head = b''
        else:
            self.got += len(data)
        if self.got >= self.want:
            self.want = None
            self.transport.write(b'DONE')


async def sink_server(loop, sock, ready):
    server = await loop.create_server(SinkProtocol, sock=sock, ssl=SSL)
    ready()
    await forever(loop, server)


SSL = None  # the server's ssl.SSLContext with --tls


SERVERS = {'sock': sock_server, 'streams': streams_server, 'protocol': protocol_server, 'sink': sink_server}


def listening_socket(a):
    """Bound and listening, so the address (and port 0's real port) is known before the loop runs."""
    if a.udp:
        host, _, port = a.udp.rpartition(':')
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, int(port)))
        return sock, 'udp {}:{}'.format(*sock.getsockname())
    if a.unix:
        try:
            os.unlink(a.unix)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(a.unix)
        shown = f'unix {a.unix}'
    else:
        host, _, port = (a.tcp or a.tls).rpartition(':')
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        shown = '{} {}:{}'.format('tls' if a.tls else 'tcp', *sock.getsockname())
    sock.listen(1024)
    return sock, shown


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--loop', choices=LOOPS, required=True)
    p.add_argument('--style', choices=STYLES, required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--tcp', metavar='HOST:PORT')
    g.add_argument('--unix', metavar='PATH')
    g.add_argument('--udp', metavar='HOST:PORT', help='UDP echo (--style protocol only)')
    g.add_argument('--tls', metavar='HOST:PORT', help='TCP + TLS (ssl=; needs --cert and --key)')
    p.add_argument('--cert', help='--tls: certificate chain (PEM)')
    p.add_argument('--key', help='--tls: private key (PEM)')
    p.add_argument('--cpu', type=int, help='pin this process to one CPU')
    a = p.parse_args(argv)
    if a.udp and a.style != 'protocol':
        p.error('--udp serves with --style protocol only')
    if a.tls and (a.style == 'sock' or not (a.cert and a.key)):
        p.error('--tls needs --cert and --key, and --style protocol, streams or sink')
    loop = server_loop(a.loop, a.cpu)
    if a.tls:  # after the loop's import: rsloop records the certificate in load_cert_chain
        global SSL
        SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        SSL.load_cert_chain(a.cert, a.key)
    sock, shown = listening_socket(a)

    def ready():
        print(f'LISTENING {shown}', flush=True)
        print(f'loop: {type(loop).__module__}.{type(loop).__qualname__}', file=sys.stderr, flush=True)

    serve = datagram_server if a.udp else SERVERS[a.style]
    try:
        loop.run_until_complete(serve(loop, sock, ready))
    except KeyboardInterrupt:
        pass
    except NotImplementedError as e:  # the runner shows "–" for this loop and case
        print(f'UNSUPPORTED {type(loop).__name__}: NotImplementedError {e}'.rstrip(), flush=True)
        sys.exit(3)


if __name__ == '__main__':
    main()
