"""HTTP/1.1 keep-alive server on a chosen event loop: an asyncio Protocol with the httptools parser
(as uvloop's http benchmark server). GET / -> 200 "Hello, World!"; GET /loop -> the running
loop's class; anything else -> 404.

    python bench/http/server.py --loop ferroloop --port 8000 [--cpu 0] [--cert C.pem --key K.pem]

With --cert and --key it serves HTTPS (create_server(..., ssl=context)).

Prints "LISTENING tcp HOST:PORT" when it accepts connections, then serves until killed.
"""

import argparse
import asyncio
import socket
import ssl
import sys
from pathlib import Path

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: the loop factories
from scenarios import LOOPS, server_loop  # noqa: E402

BODY = b'Hello, World!'
OK = (b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n' % len(BODY)) + BODY
OK_CLOSE = OK.replace(b'\r\n\r\n', b'\r\nConnection: close\r\n\r\n', 1)
NOT_FOUND = b'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'


class HttpProtocol(asyncio.Protocol):
    __slots__ = ('transport', 'parser', 'url')

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = None

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
            self.transport.close()

    # httptools callbacks
    def on_url(self, url):
        self.url = url

    def on_message_complete(self):
        keep_alive = self.parser.should_keep_alive()
        if self.url == b'/loop':  # which loop is running: the runner checks it before measuring
            loop = type(asyncio.get_running_loop())
            body = f'{loop.__module__}.{loop.__qualname__}'.encode()
            self.transport.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
        elif self.url != b'/' or self.parser.get_method() != b'GET':
            self.transport.write(NOT_FOUND)
        else:
            self.transport.write(OK if keep_alive else OK_CLOSE)
        self.url = None
        if not keep_alive:
            self.transport.close()


async def serve(loop, sock, ready, context=None):
    server = await loop.create_server(HttpProtocol, sock=sock, ssl=context)
    ready()
    try:
        await loop.create_future()  # not serve_forever(): it breaks rloop 0.5 (see bench/echo/server.py)
    finally:
        server.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--loop', choices=LOOPS, required=True)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=0)
    p.add_argument('--cpu', type=int, help='pin this process to one CPU')
    p.add_argument('--cert', help='serve HTTPS with this certificate chain (PEM; needs --key)')
    p.add_argument('--key', help='the private key of --cert (PEM)')
    a = p.parse_args(argv)
    if bool(a.cert) != bool(a.key):
        p.error('--cert and --key go together')
    loop = server_loop(a.loop, a.cpu)
    context = None
    if a.cert:  # after the loop's import: rsloop records the certificate in load_cert_chain
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(a.cert, a.key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    sock.listen(1024)
    shown = 'LISTENING tcp {}:{}'.format(*sock.getsockname())  # now: rloop detaches the socket

    def ready():
        print(shown, flush=True)

    try:
        loop.run_until_complete(serve(loop, sock, ready, context))
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    main()
