"""The README's "Use with" recipes, each run for real on loopback.

Every recipe starts the real server or tool in a subprocess, exactly as the README shows it, and
asks it which loop class it runs on: the ``[ferroloop]`` variant must answer ``ferroloop.Loop``;
the ``[asyncio]`` variant runs the same tool configured for asyncio's own loop and must answer
``asyncio.SelectorEventLoop`` (so the question itself is shown able to tell the two apart).

Servers get an already-listening loopback socket by file descriptor (uvicorn ``--fd``, gunicorn
``--bind fd://N``, aiohttp ``run_app(sock=...)``): no port is guessed, and a request sent before
the server accepts simply waits in the backlog. Each server is then stopped with SIGTERM and must
exit cleanly (status 0, or death by that SIGTERM, which uvicorn re-raises after its shutdown).
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(90)

EXPECTED = {'asyncio': 'asyncio.unix_events._UnixSelectorEventLoop',
            'ferroloop': 'ferroloop._loop.Loop'}

# A minimal ASGI app: GET anything -> the class of the loop serving it.
ASGI_APP = '''\
import asyncio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    loop = type(asyncio.get_running_loop())
    body = f"{loop.__module__}.{loop.__qualname__}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

# The gunicorn recipe: a uvicorn worker class whose uvicorn config names the loop.
GUNICORN_WORKERS = '''\
from uvicorn_worker import UvicornWorker

class FerroloopUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "ferroloop:new_event_loop", "http": "auto"}

class AsyncioUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "asyncio", "http": "auto"}
'''

AIOHTTP_SERVER = '''\
import asyncio, socket, sys
from aiohttp import web

async def which_loop(request):
    loop = type(asyncio.get_running_loop())
    return web.Response(text=f"{loop.__module__}.{loop.__qualname__}")

app = web.Application()
app.router.add_get("/", which_loop)
sock = socket.socket(fileno=int(sys.argv[2]))
if sys.argv[1] == "ferroloop":
    import ferroloop
    web.run_app(app, sock=sock, loop=ferroloop.new_event_loop(), print=None)
else:
    web.run_app(app, sock=sock, print=None)
'''


def _env():
    env = dict(os.environ)
    for var in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE', 'PYTHONWARNINGS', 'UVICORN_LOOP',
                'PYTEST_ADDOPTS', 'PYTHONPATH'):
        env.pop(var, None)
    return env


def _http_get(port, path='/'):
    with socket.create_connection(('127.0.0.1', port), timeout=30) as s:
        s.sendall(f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'.encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b''.join(chunks).partition(b'\r\n\r\n')
    status = head.split(b'\r\n', 1)[0]
    assert status.startswith(b'HTTP/1.1 200'), head
    return body.decode()


def serve_and_ask(cmd, cwd, extra_args_for_fd):
    """Start `cmd + extra_args_for_fd(fd)` with a listening socket passed as fd; return the body
    of GET / and the server's output after a clean SIGTERM shutdown."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(('127.0.0.1', 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    proc = subprocess.Popen([*cmd, *extra_args_for_fd(fd)], cwd=cwd, env=_env(), pass_fds=[fd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listener.close()       # the server holds its own copy
        body = _http_get(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f'{cmd} did not stop on SIGTERM\n{out}\n{err}')
    # uvicorn re-raises the signal after its clean shutdown; the others exit 0
    assert proc.returncode in (0, -signal.SIGTERM), f'exit status {proc.returncode}\n{out}\n{err}'
    assert 'Traceback' not in err, err
    return body, out + err


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_uvicorn_cli(flavor, tmp_path):
    # uvicorn app:app --loop ferroloop:new_event_loop
    write(tmp_path / 'app.py', ASGI_APP)
    loop = 'ferroloop:new_event_loop' if flavor.name == 'ferroloop' else 'asyncio'
    body, _ = serve_and_ask([sys.executable, '-m', 'uvicorn', 'app:app', '--loop', loop],
                            tmp_path, lambda fd: ['--fd', str(fd)])
    assert body == EXPECTED[flavor.name]


def test_uvicorn_loop_auto_is_not_ferroloop(tmp_path):
    # What the README says of uvicorn's default, --loop auto: uvloop if installed, else asyncio.
    write(tmp_path / 'app.py', ASGI_APP)
    body, _ = serve_and_ask([sys.executable, '-m', 'uvicorn', 'app:app'], tmp_path,
                            lambda fd: ['--fd', str(fd)])
    try:
        import uvloop
    except ImportError:
        assert body == EXPECTED['asyncio']
    else:
        assert body == f'{uvloop.Loop.__module__}.{uvloop.Loop.__qualname__}'


def test_uvicorn_under_ferroloop_run(flavor, tmp_path):
    # python -m ferroloop run -m uvicorn app:app  (reference: python -m uvicorn app:app --loop asyncio)
    write(tmp_path / 'app.py', ASGI_APP)
    if flavor.name == 'ferroloop':
        cmd = [sys.executable, '-m', 'ferroloop', 'run', '-m', 'uvicorn', 'app:app']
    else:
        cmd = [sys.executable, '-m', 'uvicorn', 'app:app', '--loop', 'asyncio']
    body, output = serve_and_ask(cmd, tmp_path, lambda fd: ['--fd', str(fd)])
    assert body == EXPECTED[flavor.name]
    assert 'RuntimeWarning' not in output


def test_gunicorn_uvicorn_worker(flavor, tmp_path):
    # gunicorn -k workers.FerroloopUvicornWorker app:app
    write(tmp_path / 'app.py', ASGI_APP)
    write(tmp_path / 'workers.py', GUNICORN_WORKERS)
    worker = ('workers.FerroloopUvicornWorker' if flavor.name == 'ferroloop'
              else 'workers.AsyncioUvicornWorker')
    body, output = serve_and_ask(
        [sys.executable, '-m', 'gunicorn', '-k', worker, '-w', '1', '--graceful-timeout', '5',
         'app:app'], tmp_path, lambda fd: ['--bind', f'fd://{fd}'])
    assert body == EXPECTED[flavor.name]
    assert 'Booting worker' in output


def test_aiohttp_run_app(flavor, tmp_path):
    # web.run_app(app, loop=ferroloop.new_event_loop())
    script = write(tmp_path / 'server.py', AIOHTTP_SERVER)
    body, _ = serve_and_ask([sys.executable, str(script), flavor.name], tmp_path,
                            lambda fd: [str(fd)])
    assert body == EXPECTED[flavor.name]


def test_aiohttp_run_app_under_ferroloop_run(tmp_path):
    # python -m ferroloop run server.py: run_app() without loop= asks asyncio for a new loop.
    script = write(tmp_path / 'server.py', AIOHTTP_SERVER)
    body, output = serve_and_ask([sys.executable, '-m', 'ferroloop', 'run', str(script), 'default'],
                                 tmp_path, lambda fd: [str(fd)])
    assert body == EXPECTED['ferroloop']
    assert 'RuntimeWarning' not in output


PYTEST_ASYNCIO_CONFTEST = '''\
import ferroloop

def pytest_asyncio_loop_factories(config, item):
    return {"ferroloop": ferroloop.new_event_loop}
'''

PYTEST_ASYNCIO_TEST = '''\
import asyncio
import pytest
import pytest_asyncio

@pytest.mark.asyncio
async def test_runs_on_the_loop():
    await asyncio.sleep(0.01)
    loop = type(asyncio.get_running_loop())
    print("LOOP", f"{loop.__module__}.{loop.__qualname__}")

@pytest_asyncio.fixture
async def server_port():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

@pytest.mark.asyncio
async def test_async_fixture(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    assert await reader.read() == b""
    writer.close()
    loop = type(asyncio.get_running_loop())
    print("LOOP", f"{loop.__module__}.{loop.__qualname__}")
'''


def test_pytest_asyncio(flavor, tmp_path):
    # conftest.py: def pytest_asyncio_loop_factories(config, item): return {"ferroloop": ...}
    write(tmp_path / 'pytest.ini', '[pytest]\nasyncio_mode = strict\n'
                                       'asyncio_default_fixture_loop_scope = function\n')
    if flavor.name == 'ferroloop':
        write(tmp_path / 'conftest.py', PYTEST_ASYNCIO_CONFTEST)
    write(tmp_path / 'test_tiny.py', PYTEST_ASYNCIO_TEST)
    r = subprocess.run([sys.executable, '-m', 'pytest', '-s', '-v', '-p', 'no:cacheprovider',
                        '-p', 'asyncio', '-c', str(tmp_path / 'pytest.ini'),
                        '--rootdir', str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '2 passed' in r.stdout, r.stdout
    loops = [line.split()[1] for line in r.stdout.splitlines() if 'LOOP ' in line
             for line in [line[line.index('LOOP '):]]]
    assert loops == [EXPECTED[flavor.name]] * 2, r.stdout


def test_pytest_asyncio_both_loops(tmp_path):
    # More factories from the hook: each test runs once per loop, with the factory's name as id.
    write(tmp_path / 'pytest.ini', '[pytest]\nasyncio_mode = strict\n'
                                   'asyncio_default_fixture_loop_scope = function\n')
    write(tmp_path / 'conftest.py', PYTEST_ASYNCIO_CONFTEST.replace(
        'return {"ferroloop"',
        'import asyncio\n    return {"asyncio": asyncio.SelectorEventLoop, "ferroloop"'))
    write(tmp_path / 'test_tiny.py', PYTEST_ASYNCIO_TEST)
    r = subprocess.run([sys.executable, '-m', 'pytest', '-s', '-v', '-p', 'no:cacheprovider',
                        '-p', 'asyncio', '-c', str(tmp_path / 'pytest.ini'),
                        '--rootdir', str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '4 passed' in r.stdout, r.stdout
    for name in ('asyncio', 'ferroloop'):
        for test in ('test_runs_on_the_loop', 'test_async_fixture'):
            assert f'test_tiny.py::{test}[{name}] LOOP {EXPECTED[name]}' in r.stdout, r.stdout


IPYTHON_SESSION = '''\
import asyncio
async def which_loop():
    await asyncio.sleep(0.01)
    loop = type(asyncio.get_running_loop())
    return f"{loop.__module__}.{loop.__qualname__}"
print("LOOP", await which_loop())
'''


def test_ipython_top_level_await(flavor, tmp_path):
    # python -m ferroloop run -m IPython   (top-level await in IPython runs on ferroloop)
    script = write(tmp_path / 'session.ipy', IPYTHON_SESSION)
    ferro = ['-m', 'ferroloop', 'run'] if flavor.name == 'ferroloop' else []
    env = dict(_env(), IPYTHONDIR=str(tmp_path / 'ipython'))
    r = subprocess.run([sys.executable, *ferro, '-m', 'IPython', '--quick', '--no-banner',
                        str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == f'LOOP {EXPECTED[flavor.name]}', r.stdout + r.stderr
