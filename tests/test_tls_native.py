"""TLS on both loops: ferroloop's SSL layer (per-record paths in Rust) against asyncio's sslproto.

Certificates are made once per session with the ``openssl`` command-line tool: a CA, a server
certificate for ``localhost``/127.0.0.1, a client certificate, and a second CA that signed
nothing the client trusts (the "wrong certificate" case).
"""

import asyncio
import gc
import hashlib
import os
import resource
import socket
import ssl
import subprocess
import sys

import warnings

import pytest

from netutil import Harness, open_fds

MiB = 1 << 20


def _openssl(*args, cwd):
    subprocess.run(['openssl', *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope='session')
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp('tls')
    for ca in ('ca', 'otherca'):
        _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
                 '-subj', f'/CN=ferroloop test {ca}', '-keyout', f'{ca}.key', '-out', f'{ca}.pem',
                 '-addext', 'basicConstraints=critical,CA:TRUE',
                 '-addext', 'keyUsage=critical,keyCertSign,cRLSign', cwd=d)
    for name, san in (('server', 'DNS:localhost,IP:127.0.0.1'), ('client', 'DNS:client')):
        _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', f'/CN={name}',
                 '-keyout', f'{name}.key', '-out', f'{name}.csr', cwd=d)
        (d / f'{name}.ext').write_text(f'subjectAltName={san}\n')
        _openssl('x509', '-req', '-in', f'{name}.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
                 '-CAcreateserial', '-days', '2', '-extfile', f'{name}.ext',
                 '-out', f'{name}.pem', cwd=d)
    return d


def server_ctx(certs, *, client_auth=False):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / 'server.pem', certs / 'server.key')
    if client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs / 'ca.pem')
    return ctx


def client_ctx(certs, *, ca='ca', client_cert=False):
    ctx = ssl.create_default_context(cafile=str(certs / f'{ca}.pem'))
    if client_cert:
        ctx.load_cert_chain(certs / 'client.pem', certs / 'client.key')
    return ctx


def run(loop, coro, timeout):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def is_native(flavor, transport):
    """The SSL protocol under the transport: ferroloop's Rust one on ferroloop, asyncio's else."""
    proto = transport._ssl_protocol
    if flavor.name == 'ferroloop':
        from ferroloop import _ferroloop
        return isinstance(proto, _ferroloop.TlsProtocol)
    return type(proto) is asyncio.sslproto.SSLProtocol


# -- basics: the transport as asyncio's, extra info -----------------------------------------------

@pytest.mark.timeout(30)
def test_transport_and_extra_info(loop, flavor, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)

    async def main():
        async def handle(r, w):
            w.write(await r.readexactly(5))
            await w.drain()
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        tr = w.transport
        assert is_native(flavor, tr)
        if flavor.name == 'ferroloop':   # records go to OpenSSL directly, not through _ssl
            assert tr._ssl_protocol._direct_openssl
        assert isinstance(tr, asyncio.sslproto._SSLProtocolTransport)
        assert isinstance(tr, asyncio.Transport)
        assert repr(tr).startswith('<asyncio.sslproto._SSLProtocolTransport object at ')
        sslobj = tr.get_extra_info('ssl_object')
        assert isinstance(sslobj, ssl.SSLObject)
        assert sslobj.version() in ('TLSv1.2', 'TLSv1.3')
        assert tr.get_extra_info('sslcontext') is cctx
        assert tr.get_extra_info('cipher') == sslobj.cipher()
        assert tr.get_extra_info('compression') is None
        assert tr.get_extra_info('peercert')['subject'] == ((('commonName', 'server'),),)
        assert tr.get_extra_info('peername')[1] == port
        assert isinstance(tr.get_extra_info('socket'), asyncio.trsock.TransportSocket)
        assert tr.get_extra_info('nonexistent', 'dflt') == 'dflt'
        hi = asyncio.constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE * 1024
        assert tr.get_write_buffer_limits() == (hi // 4, hi)
        hi = asyncio.constants.FLOW_CONTROL_HIGH_WATER_SSL_READ * 1024
        assert tr.get_read_buffer_limits() == (hi // 4, hi)
        w.write(b'hello')
        assert await r.readexactly(5) == b'hello'
        assert await r.read() == b''
        with pytest.raises(TypeError, match='data: expecting a bytes-like instance, got str'):
            tr.write('text')
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish()


# -- volume ----------------------------------------------------------------------------------------

def _block(i):
    return i.to_bytes(8, 'big') + hashlib.shake_256(b'tls %d' % (i % 7)).digest(MiB - 8)


@pytest.mark.timeout(240)
def test_100mib_each_way(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    n = 100
    want = hashlib.sha256()
    for i in range(n):
        want.update(_block(i))
    want = want.hexdigest()

    async def pump_out(w):
        for i in range(n):
            w.write(_block(i))
            await w.drain()

    async def digest_in(r):
        got, total = hashlib.sha256(), 0
        while total < n * MiB:
            d = await r.read(1 << 18)
            assert d
            got.update(d)
            total += len(d)
        return got.hexdigest()

    async def main():
        async def handle(r, w):
            res = await asyncio.gather(digest_in(r), pump_out(w))
            server_got.append(res[0])
            w.close()
            await w.wait_closed()
        server_got = []
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        client_got, _ = await asyncio.gather(digest_in(r), pump_out(w))
        assert await r.read() == b''
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        assert client_got == want
        assert server_got == [want]

    run(loop, main(), 220)
    h.finish()


@pytest.mark.timeout(240)
def test_1000_concurrent_connections(loop, certs):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    N = 1000

    async def main():
        async def handle(r, w):
            w.write(await r.readline())
            await w.drain()
            w.close()
            await w.wait_closed()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx, backlog=N)
        port = srv.sockets[0].getsockname()[1]
        conns = await asyncio.gather(*(
            asyncio.open_connection('127.0.0.1', port, ssl=cctx, server_hostname='localhost',
                                    ssl_handshake_timeout=180)
            for _ in range(N)))
        for i, (r, w) in enumerate(conns):
            w.write(b'%d\n' % i)

        async def check(i, r, w):
            assert await r.readline() == b'%d\n' % i
            assert await r.read() == b''
            w.close()
            await w.wait_closed()
        await asyncio.gather(*(check(i, r, w) for i, (r, w) in enumerate(conns)))
        srv.close()
        await srv.wait_closed()

    try:
        run(loop, main(), 220)
        h.finish()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- peers that misbehave: asyncio's exceptions, no hang, no fd left ------------------------------

async def _raw_server(behaviour, writers):
    """A plain TCP server running `behaviour(reader, writer)` per connection; returns (srv, port).
    The server-side writers go to `writers`, to be closed by the caller."""
    async def handle(r, w):
        writers.append(w)
        await behaviour(r, w)
    srv = await asyncio.start_server(handle, '127.0.0.1', 0)
    return srv, srv.sockets[0].getsockname()[1]


def _client_outcome(loop, certs, behaviour, **kw):
    """create_connection with TLS to a raw server; the exception type and the handler contexts."""
    h = Harness(loop)
    cctx = client_ctx(certs)
    lost = []

    class Proto(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.append(exc)

        def data_received(self, data):
            pass

    async def main():
        writers = []
        srv, port = await _raw_server(behaviour, writers)
        try:
            tr, _ = await loop.create_connection(Proto, '127.0.0.1', port, ssl=cctx,
                                                 server_hostname='localhost', **kw)
        except BaseException as e:  # noqa: B036 - the outcome is the point
            exc = e
        else:
            await asyncio.sleep(0.2)
            exc = None
            tr.close()
        for w in writers:
            w.transport.abort()
        srv.close()
        await srv.wait_closed()
        await asyncio.sleep(0.05)
        return exc

    exc = run(loop, main(), 20)
    h.finish(check_errors=False)
    return exc, [c['message'] for c in h.errors], lost


@pytest.mark.timeout(30)
def test_peer_closes_mid_handshake(loop, certs):
    async def behaviour(r, w):
        await r.read(10)           # part of the ClientHello, then gone
        w.close()
    exc, errors, _ = _client_outcome(loop, certs, behaviour)
    assert isinstance(exc, ConnectionResetError), repr(exc)
    assert errors == []


@pytest.mark.timeout(30)
@pytest.mark.expect_exception_handler
def test_non_tls_peer(loop, certs):
    async def behaviour(r, w):
        await r.read(10)
        w.write(b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n')
        await w.drain()
        await asyncio.sleep(0.5)
        w.close()
    exc, errors, _ = _client_outcome(loop, certs, behaviour)
    assert isinstance(exc, ssl.SSLError), repr(exc)
    assert 'WRONG_VERSION_NUMBER' in str(exc) or 'wrong version number' in str(exc)
    assert errors == []


@pytest.mark.timeout(30)
@pytest.mark.expect_exception_handler
def test_handshake_timeout(loop, certs):
    async def behaviour(r, w):
        await asyncio.sleep(2)      # never answers the ClientHello
        w.close()
    exc, errors, _ = _client_outcome(loop, certs, behaviour, ssl_handshake_timeout=0.3)
    assert isinstance(exc, ConnectionAbortedError), repr(exc)
    assert str(exc) == ('SSL handshake is taking longer than 0.3 seconds: '
                        'aborting the connection')
    assert errors == []


@pytest.mark.timeout(30)
def test_wrong_certificate(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs, ca='otherca')

    async def main():
        srv = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                          server_hostname='localhost')
        assert 'certificate verify failed' in str(info.value)
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx(certs),
                                          server_hostname='example.com')
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish(check_errors=False)


@pytest.mark.timeout(30)
def test_garbage_to_tls_server_and_truncated_record(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    seen = []

    async def main():
        async def handle(r, w):
            seen.append(await r.read())
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        # garbage instead of a ClientHello: the server drops the connection
        r, w = await asyncio.open_connection('127.0.0.1', port)
        w.write(os.urandom(64) + b'\x16\x03\x01\xff\xff' + b'garbage' * 100)
        assert await asyncio.wait_for(r.read(), 10) == b''
        w.close()
        await w.wait_closed()
        # a truncated record after the handshake, then EOF without close_notify
        sr, sw = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                               server_hostname='localhost')
        raw = sw.transport._ssl_protocol._transport
        raw.write(b'\x17\x03\x03\x40\x00' + b'x' * 100)   # header says 16 KiB, 100 bytes follow
        raw.write_eof()
        await asyncio.sleep(0.3)
        sw.close()
        await sw.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish(check_errors=False)
    # the server's reader of the TLS connection: EOF (the garbage connection never got a reader)
    assert seen == [b'']


# -- start_tls --------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_start_tls_with_data_buffered(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    plain = os.urandom(4 * MiB)

    async def main():
        done = loop.create_future()

        async def handle(r, w):
            # 4 MiB of plaintext, still in the write buffer when the upgrade starts
            w.write(plain)
            await w.start_tls(sctx)
            w.write(b'secret:' + await r.readexactly(6))
            await w.drain()
            w.close()
            done.set_result(None)

        srv = await asyncio.start_server(handle, '127.0.0.1', 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port)
        await asyncio.sleep(0.1)   # let the server's buffer fill and its upgrade wait
        got = await r.readexactly(len(plain))
        assert got == plain
        await w.start_tls(cctx, server_hostname='localhost')
        assert w.get_extra_info('ssl_object') is not None
        w.write(b'abcdef')
        assert await r.readexactly(13) == b'secret:abcdef'
        assert await r.read() == b''
        await done
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    if sys.version_info < (3, 11):
        pytest.skip('StreamWriter.start_tls is 3.11+')
    run(loop, main(), 50)
    h.finish()


# -- protocols over TLS: BufferedProtocol, flow control -----------------------------------------------

@pytest.mark.timeout(60)
def test_buffered_protocol_and_read_flow_control(loop, flavor, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    payload = os.urandom(3 * MiB)

    class Sink(asyncio.BufferedProtocol):
        def __init__(self):
            # a memoryview: with a bytearray, asyncio's sslproto reads records after the first
            # into a copy (`buf[offset:]`), and the data is lost
            self.buf = memoryview(bytearray(7000))
            self.got = bytearray()
            self.eof = loop.create_future()
            self.lost = loop.create_future()

        def connection_made(self, tr):
            self.tr = tr

        def get_buffer(self, hint):
            return self.buf

        def buffer_updated(self, n):
            self.got += self.buf[:n]

        def eof_received(self):
            self.eof.set_result(None)

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        async def handle(r, w):
            w.write(payload)
            await w.drain()
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        tr, p = await loop.create_connection(Sink, '127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        assert is_native(flavor, tr)
        tr.pause_reading()
        assert not tr.is_reading()
        await asyncio.sleep(0.3)
        # the app paused: the TLS side stops reading the socket once its buffer is full
        raw = tr._ssl_protocol._transport
        assert len(p.got) == 0
        assert tr.get_read_buffer_size() > 0
        assert not raw.is_reading()
        tr.resume_reading()
        await p.eof
        assert bytes(p.got) == payload
        assert await p.lost is None
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 50)
    h.finish()


@pytest.mark.timeout(60)
def test_write_flow_control(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    calls = []

    class Writer(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def pause_writing(self):
            calls.append(('pause', self.tr.get_write_buffer_size()))

        def resume_writing(self):
            calls.append(('resume', self.tr.get_write_buffer_size()))

    async def main():
        gate = asyncio.Event()
        total = []

        async def handle(r, w):
            await gate.wait()
            n = 0
            while d := await r.read(1 << 16):
                n += len(d)
            total.append(n)
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        tr, p = await loop.create_connection(Writer, '127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        tr.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
        assert tr.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
        sent = 0
        while not calls and sent < 1024:     # the kernel's buffers take a few MiB first
            tr.write(b'z' * 65536)
            sent += 1
        assert calls and calls[0][0] == 'pause' and calls[0][1] >= 256 * 1024
        gate.set()
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        assert calls[1][0] == 'resume' and calls[1][1] <= 64 * 1024
        tr.close()
        while not total:
            await asyncio.sleep(0.01)
        assert total == [sent * 65536]
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 50)
    h.finish()


# -- context features: ALPN, SNI callback, client certificates -----------------------------------------

@pytest.mark.timeout(30)
def test_alpn_and_sni_callback(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    sctx.set_alpn_protocols(['h2', 'http/1.1'])
    cctx.set_alpn_protocols(['http/1.1'])
    names = []

    def sni(sslobj, name, ctx):
        names.append((name, isinstance(sslobj, ssl.SSLObject)))

    sctx.set_servername_callback(sni)
    server_alpn = []

    async def main():
        async def handle(r, w):
            server_alpn.append(w.get_extra_info('ssl_object').selected_alpn_protocol())
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        assert w.get_extra_info('ssl_object').selected_alpn_protocol() == 'http/1.1'
        assert await r.read() == b''
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish()
    assert names == [('localhost', True)]
    assert server_alpn == ['http/1.1']


@pytest.mark.timeout(30)
def test_client_certificates(loop, certs):
    h = Harness(loop)
    sctx = server_ctx(certs, client_auth=True)
    peer = []

    async def main():
        async def handle(r, w):
            peer.append(w.get_extra_info('peercert'))
            w.write(await r.readexactly(2))
            await w.drain()
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port,
                                             ssl=client_ctx(certs, client_cert=True),
                                             server_hostname='localhost')
        w.write(b'hi')
        assert await r.readexactly(2) == b'hi'
        w.close()
        await w.wait_closed()
        # without a certificate the server refuses (TLS 1.3: the alert comes after the handshake)
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=client_ctx(certs),
                                             server_hostname='localhost')
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
            w.write(b'hi')
            await r.readexactly(2)
        w.close()
        try:
            await w.wait_closed()
        except (ssl.SSLError, ConnectionResetError):
            pass
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish(check_errors=False)
    assert peer[0]['subject'] == ((('commonName', 'client'),),)


# -- aiohttp over HTTPS ---------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_aiohttp_https(loop, certs):
    # aiohttp warns (ResourceWarning) when a body above 1 MiB is given as bytes; the test means to
    # send it in one write.
    import aiohttp
    from aiohttp import web
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    body = os.urandom(2 * MiB)

    async def main():
        async def hello(request):
            return web.Response(text='hello tls')

        async def echo(request):
            data = await request.read()
            return web.Response(body=hashlib.sha256(data).hexdigest().encode())

        app = web.Application(client_max_size=8 * MiB)
        app.router.add_get('/', hello)
        app.router.add_post('/echo', echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0, ssl_context=sctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f'https://localhost:{port}/', ssl=cctx) as resp:
                assert resp.status == 200
                assert await resp.text() == 'hello tls'
            results = await asyncio.gather(*(
                session.post(f'https://localhost:{port}/echo', data=body, ssl=cctx)
                for _ in range(5)))
            for resp in results:
                assert await resp.text() == hashlib.sha256(body).hexdigest()
                resp.release()
        await runner.cleanup()

    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Sending a large body directly', ResourceWarning)
        run(loop, main(), 50)
    gc.collect()
    h.finish(check_errors=False)


@pytest.mark.timeout(30)
def test_many_records_in_one_segment(loop, certs):
    # 200 small writes become 200 TLS records sent in one socket write; every one must reach
    # data_received without more bytes arriving after them (nothing left unread in OpenSSL).
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)

    async def main():
        async def handle(r, w):
            await r.readexactly(1)
            for i in range(200):
                w.transport.write(b'%05d' % i)
            await r.readexactly(1)     # nothing more is sent until the client has read all
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        w.write(b'g')
        data = await asyncio.wait_for(r.readexactly(1000), 10)
        assert data == b''.join(b'%05d' % i for i in range(200))
        w.write(b'e')
        assert await r.read() == b''
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish()


@pytest.mark.timeout(30)
def test_small_then_large_then_small_messages_in_order(loop, certs):
    # a Protocol server sees a few bytes at a time, then bursts of records larger than any
    # buffer it read into so far, then a few bytes again; everything echoed back in order
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    sizes = [1, 5, 100, 3000, 4096, 4097, 20000, 70000, 300000, 1, 2, 65536, 17, 1000000, 3]
    msgs = [bytes((i * 31 + j) % 256 for j in range(n)) for i, n in enumerate(sizes)]
    chunks = []

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            chunks.append(len(data))
            self.tr.write(data)

    async def main():
        srv = await loop.create_server(Echo, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        for m in msgs:             # one at a time: small reads stay small
            w.write(m)
            assert await r.readexactly(len(m)) == m
        w.write(b''.join(msgs))    # all at once
        assert await r.readexactly(sum(sizes)) == b''.join(msgs)
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    assert sum(chunks) == 2 * sum(sizes)
    h.finish()


@pytest.mark.timeout(30)
def test_tls_in_tls_with_start_tls(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)

    async def main():
        async def handle(r, w):
            await w.start_tls(sctx)
            w.write(await r.readexactly(5))
            await w.drain()
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        outer = w.transport
        await w.start_tls(cctx, server_hostname='localhost')
        assert w.transport is not outer
        assert w.transport._ssl_protocol._transport is outer
        w.write(b'inner')
        assert await r.readexactly(5) == b'inner'
        w.close()
        await w.wait_closed()
        outer.close()
        srv.close()
        await srv.wait_closed()
        await asyncio.sleep(0.05)

    run(loop, main(), 20)
    h.finish()


@pytest.mark.timeout(30)
def test_debug_mode_logs(loop, certs, caplog):
    h = Harness(loop)
    loop.set_debug(True)
    sctx, cctx = server_ctx(certs), client_ctx(certs)

    async def main():
        async def handle(r, w):
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        assert await r.read() == b''
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    with caplog.at_level('DEBUG', logger='asyncio'):
        run(loop, main(), 20)
    h.finish()
    msgs = [r.getMessage() for r in caplog.records]
    starts = [m for m in msgs if m.endswith(' starts SSL handshake')]
    took = [m for m in msgs if ': SSL handshake took ' in m]
    assert len(starts) == 2 and len(took) == 2, msgs
    assert all(m.startswith('<asyncio.sslproto.SSLProtocol object at 0x') for m in starts)


@pytest.mark.timeout(30)
@pytest.mark.expect_exception_handler
def test_exception_handler_contexts(loop, certs):
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)

    class Bad(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
            self.lost = loop.create_future()

        def data_received(self, data):
            raise ValueError('boom')

        def pause_writing(self):
            raise RuntimeError('no pause')

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        async def handle(r, w):
            w.write(b'data')
            await r.read()
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        tr, p = await loop.create_connection(Bad, '127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        tr.set_write_buffer_limits(high=0)   # 0 >= 0: pause_writing is called, and raises
        exc = await p.lost
        srv.close()
        await srv.wait_closed()
        return exc

    exc = run(loop, main(), 20)
    h.finish(check_errors=False)
    assert isinstance(exc, ValueError)
    msgs = [c['message'] for c in h.errors]
    assert msgs == ['protocol.pause_writing() failed', 'Fatal error on SSL protocol'], msgs
    pw, fatal = h.errors
    assert isinstance(pw['exception'], RuntimeError)
    assert isinstance(pw['transport'], asyncio.sslproto._SSLProtocolTransport)
    assert isinstance(fatal['exception'], ValueError)
    # the socket transport under TLS: asyncio's class, or ferroloop's of the same name
    assert isinstance(fatal['transport'], asyncio.Transport)
    assert type(fatal['transport']).__name__ == '_SelectorSocketTransport'
    for c in (pw, fatal):
        assert repr(c['protocol']).startswith('<asyncio.sslproto.SSLProtocol object at 0x')
        assert isinstance(c['protocol'], asyncio.BufferedProtocol)


@pytest.mark.timeout(30)
def test_shutdown_timeout(loop, certs):
    # The server's app has paused reading, so its TLS layer never answers the close_notify:
    # the client's close() ends after ssl_shutdown_timeout with asyncio's TimeoutError.
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    server_writers = []

    class Client(asyncio.Protocol):
        def connection_made(self, tr):
            self.lost = loop.create_future()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        async def handle(r, w):
            w.transport.pause_reading()
            server_writers.append(w)
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        tr, p = await loop.create_connection(Client, '127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost',
                                             ssl_shutdown_timeout=0.3)
        while not server_writers:
            await asyncio.sleep(0.01)
        tr.close()
        assert tr.is_closing()
        exc = await p.lost
        for w in server_writers:
            w.transport.abort()
        srv.close()
        await srv.wait_closed()
        await asyncio.sleep(0.05)
        return exc

    exc = run(loop, main(), 20)
    h.finish(check_errors=False)
    assert isinstance(exc, TimeoutError) and str(exc) == 'SSL shutdown timed out', repr(exc)


# -- errors after the handshake: what OpenSSL reports reaches the protocol as on asyncio -----------

def _corrupt_record_outcome(loop, certs, corrupt):
    """A TLS connection; after the handshake the client sends `corrupt()` as raw bytes on its
    socket. Returns what the server's reader got and what reached the exception handler."""
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    got = []

    async def main():
        async def handle(r, w):
            got.append(await r.readexactly(5))
            w.write(b'ok')
            try:
                got.append(await r.read())
            except Exception as exc:
                got.append(exc)
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection('127.0.0.1', port, ssl=cctx,
                                             server_hostname='localhost')
        w.write(b'hello')
        assert await r.readexactly(2) == b'ok'
        w.transport._ssl_protocol._transport.write(corrupt())
        await asyncio.wait_for(r.read(), 10)
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish(check_errors=False)
    return got, h.errors


@pytest.mark.timeout(30)
def test_bad_record_mac_after_handshake(loop, certs):
    # a well-formed application-data record whose content is random: OpenSSL fails to decrypt
    # it, and the server's reader gets the SSLError asyncio gives (reason and library from the
    # error OpenSSL queued), nothing else
    got, errors = _corrupt_record_outcome(
        loop, certs, lambda: b'\x17\x03\x03\x00\x40' + os.urandom(64))
    assert got[0] == b'hello'
    exc = got[1]
    assert type(exc) is ssl.SSLError, repr(exc)
    assert exc.library == 'SSL'
    assert exc.reason in ('DECRYPTION_FAILED_OR_BAD_RECORD_MAC', 'BAD_RECORD_MAC'), repr(exc)
    assert 'bad record mac' in str(exc)
    assert errors == []     # an OSError: asyncio logs it in debug mode only


@pytest.mark.timeout(30)
def test_wrong_record_type_after_handshake(loop, certs):
    # a record of an unknown content type: OpenSSL's "unexpected record" error, as on asyncio
    got, errors = _corrupt_record_outcome(
        loop, certs, lambda: b'\x42\x03\x03\x00\x10' + bytes(16))
    assert got[0] == b'hello'
    exc = got[1]
    assert type(exc) is ssl.SSLError, repr(exc)
    assert exc.library == 'SSL'
    assert exc.reason is not None and exc.reason in str(exc)
    assert errors == []


@pytest.mark.timeout(30)
@pytest.mark.expect_exception_handler
def test_callback_exception_during_read(loop, certs):
    # an exception raised by the context's message callback while a record is decrypted after
    # the handshake is raised by that read, as `_ssl` raises it: asyncio's fatal-error path,
    # the exception handler with the callback's exception, connection_lost with it
    h = Harness(loop)
    sctx, cctx = server_ctx(certs), client_ctx(certs)
    armed = []
    lost = []

    def msg_callback(conn, direction, version, content_type, msg_type, data):
        if armed and direction == 'read' and armed.pop():
            raise RuntimeError('boom from the message callback')

    cctx._msg_callback = msg_callback

    class Client(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            pass

        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        async def handle(r, w):
            await r.readexactly(1)
            w.write(b'pong')
            await w.drain()
            await r.read()
            w.close()
        srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(Client, '127.0.0.1', port, ssl=cctx,
                                                 server_hostname='localhost')
        await asyncio.sleep(0.1)   # TLS 1.3 session tickets read (a read ending in WANT_READ
        armed.append(True)         # drops what a callback raised, on both loops)
        tr.write(b'p')
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.01)
        tr.close()
        srv.close()
        await srv.wait_closed()

    run(loop, main(), 20)
    h.finish(check_errors=False)
    assert len(lost) == 1 and type(lost[0]) is RuntimeError, lost
    assert str(lost[0]) == 'boom from the message callback'
    assert [e.get('message') for e in h.errors] == ['Fatal error on SSL protocol']
    assert h.errors[0]['exception'] is lost[0]
