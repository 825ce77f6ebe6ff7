"""asyncpg against a real PostgreSQL server (tests/dbservers.py), on both loops: queries, prepared
statements and cursors, a pool of 20 under concurrent load, COPY of 100 MiB in and out, LISTEN/
NOTIFY, cancelling a running query, a verified TLS connection, and the Unix socket.

Nothing reaching the loop's exception handler is part of every test's contract."""

import asyncio
import hashlib
import random
import ssl

import asyncpg
import pytest
import trustme

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


async def connect(pg, **kw):
    return await asyncpg.connect(**pg.connect_kwargs(**kw))


async def backend_state(monitor, pid):
    return await monitor.fetchrow('SELECT state, query FROM pg_stat_activity WHERE pid = $1', pid)


async def wait_active(monitor, pid, needle):
    """Poll pg_stat_activity until `pid` is running a query containing `needle`."""
    while True:
        row = await backend_state(monitor, pid)
        if row is not None and row['state'] == 'active' and needle in row['query']:
            return
        await asyncio.sleep(0.01)


@pytest.mark.timeout(TIMEOUT)
def test_queries(loop, pg_server):
    async def main():
        conn = await connect(pg_server)
        try:
            assert await conn.fetchval('SELECT inet_server_addr()::text') == '127.0.0.1/32'
            assert conn.get_server_version().major >= 11
            await conn.execute('CREATE TEMP TABLE items (id int PRIMARY KEY, name text, price numeric, '
                               'tags text[], blob bytea, extra jsonb)')
            rows = [(i, f'item {i}', i * 1.5, [f't{i % 3}', 'x'], bytes([i % 256]) * i, f'{{"n": {i}}}')
                    for i in range(1, 501)]
            await conn.executemany('INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6)', rows)
            assert await conn.fetchval('SELECT count(*) FROM items') == 500
            row = await conn.fetchrow('SELECT * FROM items WHERE id = $1', 300)
            assert (row['id'], row['name'], float(row['price']), row['tags']) == (300, 'item 300', 450.0, ['t0', 'x'])
            assert row['blob'] == bytes([300 % 256]) * 300 and row['extra'] == '{"n": 300}'
            got = await conn.fetch('SELECT id, length(blob) AS n FROM items WHERE id % 100 = 0 ORDER BY id')
            assert [(r['id'], r['n']) for r in got] == [(i, i) for i in range(100, 501, 100)]
            # a server error, then the connection still works; a rolled-back transaction leaves no trace
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch('SELECT * FROM no_such_table')
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO items (id, name) VALUES (1000, 'new')")
                    await conn.execute("INSERT INTO items (id, name) VALUES (1, 'dup')")
            assert await conn.fetchval('SELECT count(*) FROM items') == 500
            # a large result (4 MiB) crosses many reads
            big = await conn.fetchval("SELECT repeat('ab', 2 * 1024 * 1024)")
            assert big == 'ab' * (2 * 1024 * 1024)
            return await conn.fetchval('SELECT sum(id) FROM items')
        finally:
            await conn.close()

    assert run(loop, main) == sum(range(1, 501))


@pytest.mark.timeout(TIMEOUT)
def test_prepared_statements_and_cursor(loop, pg_server):
    async def main():
        conn = await connect(pg_server)
        try:
            stmt = await conn.prepare('SELECT $1::int * 2 AS double, upper($2::text) AS up')
            assert [t.name for t in stmt.get_parameters()] == ['int4', 'text']
            assert [a.name for a in stmt.get_attributes()] == ['double', 'up']
            out = [tuple(await stmt.fetchrow(i, f'v{i}')) for i in range(300)]
            assert out == [(i * 2, f'V{i}') for i in range(300)]
            assert await stmt.fetchval(21, 'x') == 42
            # the statement is cached and reused by plain queries with the same text
            assert await conn.fetchval('SELECT $1::int * 2 AS double, upper($2::text) AS up', 5, 'y') == 10
            series = await conn.prepare('SELECT g, md5(g::text) FROM generate_series(1, $1::int) g')
            async with conn.transaction():
                total = 0
                digests = hashlib.sha256()
                async for rec in series.cursor(20000, prefetch=500):
                    total += rec[0]
                    digests.update(rec[1].encode())
                cur = await series.cursor(100)
                first = await cur.fetch(3)
                await cur.forward(90)
                nxt = await cur.fetchrow()
            expect = hashlib.sha256()
            for g in range(1, 20001):
                expect.update(hashlib.md5(str(g).encode()).hexdigest().encode())
            assert total == sum(range(1, 20001))
            assert digests.hexdigest() == expect.hexdigest()
            assert [r[0] for r in first] == [1, 2, 3] and nxt[0] == 94
            with pytest.raises(asyncpg.DataError):
                await stmt.fetchval('not an int', 'x')
            assert await stmt.fetchval(1, 'x') == 2
        finally:
            await conn.close()

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_pool_of_20_under_concurrent_load(loop, pg_server):
    async def main():
        pool = await asyncpg.create_pool(min_size=20, max_size=20, **pg_server.connect_kwargs())
        try:
            active = 0
            peak = 0
            pids = set()

            async def job(i):
                nonlocal active, peak
                async with pool.acquire() as conn:
                    active += 1
                    peak = max(peak, active)
                    try:
                        pid, n, _ = await conn.fetchrow('SELECT pg_backend_pid(), $1::int, pg_sleep(0.002)', i)
                        async with conn.transaction():
                            await conn.execute('SELECT $1::int', i)
                            got = await conn.fetchval('SELECT $1::text', str(i))
                    finally:
                        active -= 1
                pids.add(pid)
                return n, got

            results = await asyncio.gather(*(job(i) for i in range(600)))
            assert results == [(i, str(i)) for i in range(600)]
            assert peak == 20
            assert len(pids) == 20
            # the pool's own query helpers, concurrently
            vals = await asyncio.gather(*(pool.fetchval('SELECT $1::int + 1', i) for i in range(400)))
            assert vals == [i + 1 for i in range(400)]
            assert pool.get_size() == 20
        finally:
            await pool.close()

    run(loop, main)


COPY_LINES = 100 * 1024  # lines of 1024 bytes: 100 MiB
COPY_BATCH = 256  # lines per chunk sent: 256 KiB


def copy_chunks(seed):
    """The COPY input: 102,400 lines of '<9-digit number><1014 hex digits>\\n', in 256 KiB chunks."""
    rng = random.Random(seed)
    for start in range(0, COPY_LINES, COPY_BATCH):
        raw = rng.randbytes(507 * COPY_BATCH).hex()
        yield ''.join(f'{start + i:09d}{raw[i * 1014:(i + 1) * 1014]}\n'
                      for i in range(COPY_BATCH)).encode()


@pytest.mark.timeout(120)
def test_copy_in_and_out_100_mib(loop, pg_server, flavor):
    table = f'copy_{flavor.name}'

    async def main():
        conn = await connect(pg_server)
        try:
            await conn.execute(f'DROP TABLE IF EXISTS {table}')
            # unlogged: no WAL; 1 KiB lines stay below the TOAST threshold (no compression)
            await conn.execute(f'CREATE UNLOGGED TABLE {table} (line text)')
            sent = hashlib.sha256()
            sent_bytes = 0

            async def source():
                nonlocal sent_bytes
                for n, chunk in enumerate(copy_chunks(1234)):
                    sent.update(chunk)
                    sent_bytes += len(chunk)
                    if n % 8 == 0:
                        await asyncio.sleep(0)
                    yield chunk

            status = await conn.copy_to_table(table, source=source(), format='text')
            assert status == f'COPY {COPY_LINES}'
            assert sent_bytes == 100 * 1024 * 1024
            count, total = await conn.fetchrow(f'SELECT count(*), sum(length(line)) FROM {table}')
            assert (count, total) == (COPY_LINES, COPY_LINES * 1023)

            received = hashlib.sha256()
            received_bytes = 0
            chunks = 0
            reading_in_sink = set()

            async def sink(data):
                # a sink that yields to the loop: asyncpg pauses reading until it returns (the
                # transport is asyncpg's private attribute; is_reading() is the asyncio API)
                nonlocal received_bytes, chunks
                reading_in_sink.add(conn._transport.is_reading())
                received.update(data)
                received_bytes += len(data)
                chunks += 1
                await asyncio.sleep(0.001 if chunks % 64 == 0 else 0)

            status = await conn.copy_from_table(table, output=sink, format='text')
            assert status == f'COPY {COPY_LINES}'
            assert received_bytes == sent_bytes
            assert received.hexdigest() == sent.hexdigest()
            assert chunks > 1
            # asyncpg paused the transport before handing each chunk to the sink
            assert reading_in_sink == {False}
            assert conn._transport.is_reading()
            # the connection is in a clean state afterwards
            assert await conn.fetchval(f"SELECT line FROM {table} WHERE line LIKE '000054321%'") is not None
            await conn.execute(f'DROP TABLE {table}')
        finally:
            await conn.close()

    run(loop, main, timeout=110)


STREAM_ROWS = 20000  # lines of 778 bytes: ~15 MiB


async def copy_out_stream(conn):
    """COPY a generated ~15 MiB result out through a sink that yields; check bytes and pausing."""
    received = hashlib.sha256()
    reading_in_sink = set()
    chunks = 0

    async def sink(data):
        nonlocal chunks
        reading_in_sink.add(conn._transport.is_reading())
        received.update(data)
        chunks += 1
        await asyncio.sleep(0.001 if chunks % 32 == 0 else 0)

    status = await conn.copy_from_query(
        "SELECT lpad(g::text, 9, '0') || repeat(md5(g::text), 24) FROM generate_series(1, $1::int) g",
        STREAM_ROWS, output=sink)
    expect = hashlib.sha256()
    for g in range(1, STREAM_ROWS + 1):
        expect.update(b'%09d%s\n' % (g, hashlib.md5(str(g).encode()).hexdigest().encode() * 24))
    assert status == f'COPY {STREAM_ROWS}'
    assert received.hexdigest() == expect.hexdigest()
    assert chunks > 1 and reading_in_sink == {False}


@pytest.mark.timeout(TIMEOUT)
def test_listen_notify(loop, pg_server):
    async def main():
        listener = await connect(pg_server)
        sender = await connect(pg_server)
        try:
            got = []
            done = asyncio.get_running_loop().create_future()

            def on_notify(conn, pid, channel, payload):
                got.append((pid, channel, payload))
                if payload == 'end' and not done.done():
                    done.set_result(None)

            await listener.add_listener('events', on_notify)
            await listener.add_listener('other', on_notify)
            for i in range(200):
                await sender.execute('SELECT pg_notify($1, $2)', 'events', f'payload {i}')
            # notifications sent inside a transaction arrive at commit, in order
            async with sender.transaction():
                await sender.execute("NOTIFY events, 'in tx 1'")
                await sender.execute("NOTIFY events, 'in tx 2'")
            await sender.execute("NOTIFY other, 'end'")
            await done
            spid = sender.get_server_pid()
            assert got == ([(spid, 'events', f'payload {i}') for i in range(200)]
                           + [(spid, 'events', 'in tx 1'), (spid, 'events', 'in tx 2'), (spid, 'other', 'end')])

            # after remove_listener, nothing more arrives on that channel (the marker on the other
            # channel, sent afterwards on the same connection, is delivered after it would have been)
            await listener.remove_listener('events', on_notify)
            got.clear()
            done2 = asyncio.get_running_loop().create_future()

            def on_other(conn, pid, channel, payload):
                done2.set_result(payload)

            await listener.remove_listener('other', on_notify)
            await listener.add_listener('other', on_other)
            await sender.execute("NOTIFY events, 'late'")
            await sender.execute("NOTIFY other, 'marker'")
            assert await done2 == 'marker'
            assert got == []
        finally:
            await listener.close()
            await sender.close()

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_cancel_running_query(loop, pg_server):
    # pg_sleep(600): if a cancellation did not reach the server, the next query on the connection
    # would wait for it and the test would hit its timeout
    async def main():
        conn = await connect(pg_server)
        monitor = await connect(pg_server)
        pid = conn.get_server_pid()
        try:
            # 1. a task cancelled while the query runs
            task = asyncio.ensure_future(conn.execute('SELECT pg_sleep(600)'))
            await wait_active(monitor, pid, 'pg_sleep')
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.fetchval('SELECT 41 + 1') == 42
            assert (await backend_state(monitor, pid))['state'] == 'idle'

            # 2. asyncio.wait_for around the query
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.fetchval('SELECT pg_sleep(600)'), 0.3)
            assert await conn.fetchval('SELECT 2') == 2

            # 3. asyncpg's own timeout
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval('SELECT pg_sleep(600)', timeout=0.3)
            assert await conn.fetchval('SELECT 3') == 3

            # 4. a cancel inside a transaction: the transaction is rolled back, the connection works
            with pytest.raises(asyncio.TimeoutError):
                async with conn.transaction():
                    await conn.execute('CREATE TEMP TABLE gone (x int)')
                    await asyncio.wait_for(conn.execute('SELECT pg_sleep(600)'), 0.3)
            assert await conn.fetchval("SELECT to_regclass('gone') IS NULL") is True
            assert not conn.is_in_transaction()
            assert (await backend_state(monitor, pid))['state'] == 'idle'
            # 5. the server-side cancellation request, from another connection
            task = asyncio.ensure_future(conn.fetchval('SELECT pg_sleep(600)'))
            await wait_active(monitor, pid, 'pg_sleep')
            assert await monitor.fetchval('SELECT pg_cancel_backend($1)', pid) is True
            with pytest.raises(asyncpg.QueryCanceledError):
                await task
            assert await conn.fetchval('SELECT 5') == 5
        finally:
            await conn.close()
            await monitor.close()

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_tls_connection(loop, pg_server):
    async def main():
        ctx = pg_server.ssl_context()
        conn = await connect(pg_server, ssl=ctx)
        try:
            row = await conn.fetchrow('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            assert row['ssl'] is True and row['version'].startswith('TLSv1.')
            # bulk data both ways through TLS
            payload = random.Random(7).randbytes(3 * 1024 * 1024 + 11)
            assert await conn.fetchval('SELECT sha256($1::bytea)', payload) == hashlib.sha256(payload).digest()
            assert await conn.fetchval('SELECT $1::bytea', payload) == payload
            # COPY out through the TLS transport (asyncio's SSL protocol) with reading paused
            await copy_out_stream(conn)
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval('SELECT pg_sleep(600)', timeout=0.3)
            assert await conn.fetchval('SELECT 1') == 1
        finally:
            await conn.close()
        # a pool over TLS
        pool = await asyncpg.create_pool(min_size=4, max_size=4, **pg_server.connect_kwargs(ssl=ctx))
        try:
            got = await asyncio.gather(*(pool.fetchval(
                'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()') for _ in range(40)))
            assert got == [True] * 40
        finally:
            await pool.close()
        # a client that does not trust the server's CA refuses it
        untrusted = ssl.create_default_context()
        trustme.CA().configure_trust(untrusted)
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(pg_server, ssl=untrusted)

    run(loop, main)


@pytest.mark.timeout(TIMEOUT)
def test_unix_socket(loop, pg_server):
    async def main():
        conn = await connect(pg_server, unix=True)
        try:
            # a Unix-socket session has no server address
            assert await conn.fetchval('SELECT inet_server_addr()') is None
            payload = random.Random(3).randbytes(2 * 1024 * 1024)
            assert await conn.fetchval('SELECT $1::bytea', payload) == payload
            await copy_out_stream(conn)
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval('SELECT pg_sleep(600)', timeout=0.3)
            assert await conn.fetchval('SELECT 7') == 7
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(min_size=5, max_size=5, **pg_server.connect_kwargs(unix=True))
        try:
            got = await asyncio.gather(*(pool.fetchval('SELECT $1::int * 3', i) for i in range(200)))
            assert got == [i * 3 for i in range(200)]
        finally:
            await pool.close()

    run(loop, main)
