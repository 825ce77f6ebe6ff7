"""Session-scoped database server fixtures (tests/dbservers.py), loaded by the database test
modules through ``pytest_plugins``. One PostgreSQL and one Redis server serve the whole session,
both loops; they are started on first use and stopped at the end of the session."""

import pytest

import dbservers


@pytest.fixture(scope='session')
def pg_server():
    """A throw-away PostgreSQL server (dbservers.PostgresServer): TCP 127.0.0.1, Unix socket, TLS."""
    server = dbservers.PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def redis_server():
    """A throw-away redis-server (dbservers.RedisServer): TCP 127.0.0.1 and a Unix socket."""
    server = dbservers.RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
