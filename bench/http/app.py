"""Minimal ASGI app for the uvicorn benchmark: GET / -> 200 "Hello, World!";
GET /loop -> the running loop's class (bench/http/README.md).

    uvicorn app:app --app-dir bench/http --loop ferroloop:new_event_loop --http httptools
"""

import asyncio

BODY = b'Hello, World!'
HEADERS = [(b'content-type', b'text/plain'), (b'content-length', str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope['type'] == 'lifespan':
        while True:
            message = await receive()
            if message['type'] == 'lifespan.startup':
                await send({'type': 'lifespan.startup.complete'})
            elif message['type'] == 'lifespan.shutdown':
                await send({'type': 'lifespan.shutdown.complete'})
                return
    assert scope['type'] == 'http'
    if scope['path'] == '/loop':  # which loop is running: the runner checks it before measuring
        loop = type(asyncio.get_running_loop())
        body = f'{loop.__module__}.{loop.__qualname__}'.encode()
        await send({'type': 'http.response.start', 'status': 200,
                    'headers': [(b'content-length', str(len(body)).encode())]})
        await send({'type': 'http.response.body', 'body': body})
        return
    ok = scope['path'] == '/'
    await send({'type': 'http.response.start', 'status': 200 if ok else 404,
                'headers': HEADERS if ok else [(b'content-length', b'0')]})
    await send({'type': 'http.response.body', 'body': BODY if ok else b''})
