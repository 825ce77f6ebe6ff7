"""Real libraries on the loop, unchanged: an aiohttp server and client (HTTP requests, a large
POST, a streamed response, concurrent requests, a websocket), a `websockets` server and client,
and uvicorn serving an ASGI app. Each test runs on asyncio and on ferroloop and checks the same
results."""

import asyncio
import contextlib
import hashlib
import os
import warnings

import pytest

aiohttp = pytest.importorskip('aiohttp')
from aiohttp import web  # noqa: E402

websockets = pytest.importorskip('websockets')
from websockets.asyncio.client import connect as ws_connect  # noqa: E402
from websockets.asyncio.server import serve as ws_serve  # noqa: E402

BLOB = os.urandom(3 * 1024 * 1024 + 17)


@contextlib.contextmanager
def raw_body_warning_ignored():
    # aiohttp warns (ResourceWarning) when a body above 1 MiB is given as bytes; the test means to
    # send it in one write.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Sending a large body directly', ResourceWarning)
        yield


def run(flavor, main):
    return flavor.run(asyncio.wait_for(main(), 30))


def _app():
    async def hello(request):
        loop = asyncio.get_running_loop()
        return web.Response(text=f'hello from {type(loop).__module__}')

    async def digest(request):
        body = await request.read()
        return web.json_response({'size': len(body), 'sha256': hashlib.sha256(body).hexdigest()})

    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(100):
            await resp.write(b'chunk %03d\n' % i)
            if i % 10 == 0:
                await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(hashlib.sha256(msg.data).digest())
        return sock

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.add_routes([web.get('/', hello), web.post('/digest', digest),
                    web.get('/stream', stream), web.get('/ws', ws)])
    return app


def test_aiohttp_server_and_client(flavor):
    async def main():
        runner = web.AppRunner(_app())
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f'http://127.0.0.1:{port}'
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + '/') as r:
                    hello = (r.status, await r.text())
                with raw_body_warning_ignored():
                    async with s.post(base + '/digest', data=BLOB) as r:
                        digest = await r.json()
                async with s.get(base + '/stream') as r:
                    lines = [line async for line in r.content]

                async def one(i):
                    async with s.get(base + '/') as r:
                        return r.status

                statuses = await asyncio.gather(*(one(i) for i in range(50)))
                async with s.ws_connect(base + '/ws') as sock:
                    replies = []
                    for word in ('ping', 'pong', 'ferroloop'):
                        await sock.send_str(word)
                        replies.append((await sock.receive()).data)
                    await sock.send_bytes(BLOB)
                    replies.append((await sock.receive()).data)
            return hello, digest, lines, statuses, replies
        finally:
            await runner.cleanup()

    hello, digest, lines, statuses, replies = run(flavor, main)
    expected_module = 'ferroloop._loop' if flavor.name == 'ferroloop' else 'asyncio.unix_events'
    assert hello == (200, f'hello from {expected_module}')
    assert digest == {'size': len(BLOB), 'sha256': hashlib.sha256(BLOB).hexdigest()}
    assert lines == [b'chunk %03d\n' % i for i in range(100)]
    assert statuses == [200] * 50
    assert replies == ['PING', 'PONG', 'FERROLOOP', hashlib.sha256(BLOB).digest()]


def test_websockets_server_and_client(flavor):
    async def echo(conn):
        async for message in conn:
            await conn.send(message)

    async def main():
        async with ws_serve(echo, '127.0.0.1', 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            got = []
            async with ws_connect(f'ws://127.0.0.1:{port}', max_size=None) as conn:
                for i in range(200):
                    await conn.send(f'message {i}')
                    got.append(await conn.recv())
                await conn.send(BLOB)
                big = await conn.recv()
                await conn.close(code=1000, reason='done')
                close = (conn.close_code, conn.close_reason)
            return got, big, close

    got, big, close = run(flavor, main)
    assert got == [f'message {i}' for i in range(200)]
    assert big == BLOB
    assert close == (1000, 'done')


def test_uvicorn_server(flavor):
    """uvicorn serving an ASGI app (plain and streamed responses, a websocket) on the running
    loop, queried with aiohttp's client."""
    uvicorn = pytest.importorskip('uvicorn')

    async def app(scope, receive, send):
        if scope['type'] == 'lifespan':
            while (await receive())['type'] != 'lifespan.shutdown':
                await send({'type': 'lifespan.startup.complete'})
            await send({'type': 'lifespan.shutdown.complete'})
        elif scope['type'] == 'websocket':
            await receive()  # websocket.connect
            await send({'type': 'websocket.accept'})
            while (msg := await receive())['type'] == 'websocket.receive':
                await send({'type': 'websocket.send', 'text': msg['text'][::-1]})
        elif scope['path'] == '/stream':
            await send({'type': 'http.response.start', 'status': 200, 'headers': []})
            for i in range(20):
                await send({'type': 'http.response.body', 'body': b'%d,' % i, 'more_body': True})
            await send({'type': 'http.response.body', 'body': b'end'})
        else:
            body = b''
            while True:
                msg = await receive()
                body += msg.get('body', b'')
                if not msg.get('more_body'):
                    break
            loop = asyncio.get_running_loop()
            text = f'{type(loop).__module__} {len(body)}'.encode()
            await send({'type': 'http.response.start', 'status': 200,
                        'headers': [(b'content-type', b'text/plain')]})
            await send({'type': 'http.response.body', 'body': text})

    async def main():
        import socket
        sock = socket.socket()
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level='warning', lifespan='on', ws='websockets-sansio')
        server = uvicorn.Server(config)
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        base = f'http://127.0.0.1:{port}'
        try:
            async with aiohttp.ClientSession() as s:
                with raw_body_warning_ignored():
                    async with s.post(base + '/', data=BLOB) as r:
                        posted = await r.text()
                async with s.get(base + '/stream') as r:
                    streamed = await r.read()
                async with s.ws_connect(base + '/ws') as ws:
                    await ws.send_str('ferroloop')
                    reply = (await ws.receive()).data
            return posted, streamed, reply
        finally:
            server.should_exit = True
            await serving
            sock.close()

    posted, streamed, reply = run(flavor, main)
    expected_module = 'ferroloop._loop' if flavor.name == 'ferroloop' else 'asyncio.unix_events'
    assert posted == f'{expected_module} {len(BLOB)}'
    assert streamed == b''.join(b'%d,' % i for i in range(20)) + b'end'
    assert reply == 'poolorref'
