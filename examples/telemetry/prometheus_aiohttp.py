"""Export ferroloop's loop telemetry to Prometheus from an aiohttp app.

    python examples/telemetry/prometheus_aiohttp.py [--port 8080]
    curl localhost:8080/metrics

`/metrics` serves `ferroloop.stats()` of the loop the app runs on, in Prometheus' text format;
`/work?ms=N` is a handler that blocks the loop for N milliseconds, so the lag and the slowest
callbacks have something to show.
"""

import argparse
import asyncio
import time

from aiohttp import web

import ferroloop
from ferroloop._stats import prometheus_text


async def metrics(request):
    text = prometheus_text(ferroloop.stats(), labels={'app': 'example'})
    return web.Response(text=text, content_type='text/plain', charset='utf-8',
                        headers={'X-Content-Type-Options': 'nosniff'})


async def work(request):
    time.sleep(int(request.query.get('ms', '5')) / 1000)  # a blocking call, on purpose
    return web.Response(text='done\n')


async def on_startup(app):
    ferroloop.enable_timing()  # the running loop: lag, durations, slowest callbacks


def make_app():
    app = web.Application()
    app.router.add_get('/metrics', metrics)
    app.router.add_get('/work', work)
    app.on_startup.append(on_startup)
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port,
                loop=ferroloop.new_event_loop(), print=None)


if __name__ == '__main__':
    main()
