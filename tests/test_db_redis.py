"""redis-py's asyncio client against a real redis-server (tests/dbservers.py), on both loops:
pipelines and transactions, pub/sub, a blocking command (BLPOP) cancelled, and the Unix socket.

Nothing reaching the loop's exception handler is part of every test's contract."""

import asyncio
import hashlib
import random

import pytest
import redis
import redis.asyncio as aredis

pytest_plugins = ['conftest_db']

TIMEOUT = 60


def run(loop, main, timeout=TIMEOUT - 10):
    """Run main() on the loop (bounded), then check that nothing reached the exception handler."""
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    try:
        result = loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    assert errors == [], errors
    return result


def client(server, *, unix=False, **kw):
    if unix:
        return aredis.Redis(unix_socket_path=server.unix_path, **kw)
    return aredis.Redis(host=server.host, port=server.port, **kw)


async def blocked_clients(r):
    return (await r.info('clients'))['blocked_clients']


async def wait_blocked(r, n):
    while await blocked_clients(r) != n:
        await asyncio.sleep(0.01)


@pytest.mark.timeout(TIMEOUT)
def test_pipelines(loop, redis_server):
    async def main():
        r = client(redis_server, decode_responses=True)
        try:
            await r.flushall()
            # a plain pipeline: 5,000 commands in one round trip, results in order
            async with r.pipeline(transaction=False) as p:
                for i in range(2500):
                    p.set(f'k{i}', i)
                    p.incrby('counter', i)
                res = await p.execute()
            assert res == [x for i in range(2500) for x in (True, sum(range(i + 1)))]
            # a MULTI/EXEC transaction
            async with r.pipeline(transaction=True) as p:
                p.rpush('list', *range(100))
                p.lrange('list', 0, 4)
                p.mget([f'k{i}' for i in range(0, 2500, 500)])
                p.hset('h', mapping={'a': 1, 'b': 2})
                p.hgetall('h')
                res = await p.execute()
            assert res == [100, ['0', '1', '2', '3', '4'], ['0', '500', '1000', '1500', '2000'], 2,
                           {'a': '1', 'b': '2'}]
            # WATCH: a concurrent change aborts the transaction
            other = client(redis_server, decode_responses=True)
            try:
                async with r.pipeline() as p:
                    await p.watch('counter')
                    before = int(await p.get('counter'))
                    await other.incr('counter')
                    p.multi()
                    p.set('counter', before + 1)
                    with pytest.raises(redis.WatchError):
                        await p.execute()
            finally:
                await other.aclose()
            assert int(await r.get('counter')) == sum(range(2500)) + 1
            # an error inside a pipeline is returned in place; the other commands run
            async with r.pipeline(transaction=False) as p:
                p.set('s', 'text')
                p.incr('s')
                p.get('s')
                res = await p.execute(raise_on_error=False)
            assert res[0] is True and isinstance(res[1], redis.ResponseError) and res[2] == 'text'
            # large values through a pipeline (8 MiB out and back)
            blob = random.Random(5).randbytes(1024 * 1024)
            raw = client(redis_server)
            try:
                async with raw.pipeline(transaction=False) as p:
                    for i in range(8):
                        p.set(f'blob{i}', blob[i:] + blob[:i])
                    for i in range(8):
                        p.get(f'blob{i}')
                    res = await p.execute()
                assert res[8:] == [blob[i:] + blob[:i] for i in range(8)]
            finally:
                await raw.aclose()
        finally:
            await r.aclose()

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_pubsub(loop, redis_server):
    async def main():
        r = client(redis_server, decode_responses=True)
        pub = client(redis_server, decode_responses=True)
        ps = r.pubsub()
        try:
            await ps.subscribe('news')
            await ps.psubscribe('sport.*')
            first = [await ps.get_message(timeout=5) for _ in range(2)]
            assert [(m['type'], m['channel']) for m in first] == [('subscribe', 'news'), ('psubscribe', 'sport.*')]
            sent = []
            for i in range(300):
                ch = 'news' if i % 3 else f'sport.{i}'
                # each message reaches one subscriber (this connection) once
                assert await pub.publish(ch, f'msg {i}') == 1
                sent.append((ch, f'msg {i}'))
            assert await pub.publish('weather', 'nobody listens') == 0
            got = []
            while len(got) < len(sent):
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=5)
                assert m is not None, f'only {len(got)} of {len(sent)} messages arrived'
                got.append((m['channel'], m['data']))
                if m['type'] == 'pmessage':
                    assert m['pattern'] == 'sport.*'
            assert got == sent
            # listen() as an async iterator, with a publisher task running concurrently
            async def publisher():
                for i in range(50):
                    await pub.publish('news', f'live {i}')
                    if i % 10 == 0:
                        await asyncio.sleep(0.001)
                await pub.publish('news', 'stop')

            task = asyncio.ensure_future(publisher())
            live = []
            async for m in ps.listen():
                if m['type'] != 'message':
                    continue
                if m['data'] == 'stop':
                    break
                live.append(m['data'])
            await task
            assert live == [f'live {i}' for i in range(50)]
            await ps.unsubscribe('news')
            await ps.punsubscribe('sport.*')
            while (m := await ps.get_message(timeout=1)) is not None and m['type'] != 'punsubscribe':
                pass
            assert await pub.publish('news', 'after') == 0
        finally:
            await ps.aclose()
            await r.aclose()
            await pub.aclose()

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_blocking_command_cancelled(loop, redis_server):
    # BLPOP with timeout 0 blocks forever; if a cancelled BLPOP were left blocked on the server it
    # would swallow the next push, and the final assertions would fail
    async def main():
        r = client(redis_server, decode_responses=True)
        monitor = client(redis_server, decode_responses=True)
        try:
            await r.flushall()
            # 1. a task cancelled while BLPOP waits on the server
            task = asyncio.ensure_future(r.blpop(['queue'], timeout=0))
            await wait_blocked(monitor, 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_blocked(monitor, 0)
            assert await monitor.lpush('queue', 'a') == 1
            assert await monitor.llen('queue') == 1
            # the client works afterwards and gets the value
            assert await r.blpop(['queue'], timeout=1) == ('queue', 'a')

            # 2. asyncio.wait_for around BLPOP
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.blpop(['queue'], timeout=0), 0.2)
            await wait_blocked(monitor, 0)
            await monitor.rpush('queue', 'b', 'c')
            assert await monitor.llen('queue') == 2
            assert await r.blpop(['queue'], timeout=1) == ('queue', 'b')

            # 3. several blocked clients of one pool, all cancelled; then a server-side BLPOP timeout
            tasks = [asyncio.ensure_future(r.blpop([f'q{i}'], timeout=0)) for i in range(5)]
            await wait_blocked(monitor, 5)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(x, asyncio.CancelledError) for x in results)
            await wait_blocked(monitor, 0)
            assert await r.blpop(['empty'], timeout=0.1) is None
            assert await r.lpop('queue') == 'c'
        finally:
            await r.aclose()
            await monitor.aclose()

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_unix_socket(loop, redis_server):
    async def main():
        r = client(redis_server, unix=True)
        try:
            await r.flushall()
            info = await r.client_info()
            # on a Unix socket, redis reports the socket path as the local address
            assert info['laddr'].startswith(redis_server.unix_path)
            blob = random.Random(9).randbytes(4 * 1024 * 1024 + 3)
            await r.set('blob', blob)
            assert await r.get('blob') == blob
            assert hashlib.sha256(await r.getrange('blob', 0, -1)).digest() == hashlib.sha256(blob).digest()
            async with r.pipeline() as p:
                for i in range(1000):
                    p.incr('n')
                res = await p.execute()
            assert res == list(range(1, 1001))
            got = await asyncio.gather(*(r.incr('m') for _ in range(80)))
            assert sorted(got) == list(range(1, 81))
            task = asyncio.ensure_future(r.blpop(['uq'], timeout=0))
            await wait_blocked(r, 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_blocked(r, 0)
        finally:
            await r.aclose()

    run(loop, main)
