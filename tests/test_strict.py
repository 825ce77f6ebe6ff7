"""The strict checks of conftest.py fail a test, on both loops, for what they are meant to catch."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

INNER = '''
import asyncio, socket
import pytest

def test_handler_called(loop):
    loop.call_soon(lambda: 1 / 0)
    loop.run_until_complete(asyncio.sleep(0.01))

@pytest.mark.expect_exception_handler
def test_handler_called_expected(loop):
    loop.call_soon(lambda: 1 / 0)
    loop.run_until_complete(asyncio.sleep(0.01))

def test_custom_handler_called(loop):
    loop.set_exception_handler(lambda lp, ctx: None)
    loop.call_soon(lambda: 1 / 0)
    loop.run_until_complete(asyncio.sleep(0.01))

LEAK = []

def test_leaked_socket(loop):
    LEAK.append(socket.socket())

def test_unclosed_loop(flavor):
    lp = flavor.new_loop()
    lp.run_until_complete(asyncio.sleep(0))

def test_leaked_transport(loop):
    a, b = socket.socketpair()
    async def main():
        await loop.create_connection(asyncio.Protocol, sock=a)
    loop.run_until_complete(main())
    b.close()

def test_clean(loop, pair):
    a, b = pair
    async def main():
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        tr.close()
        await asyncio.sleep(0)
    loop.run_until_complete(main())
'''


@pytest.mark.timeout(120)
def test_strict_checks(tmp_path):
    shutil.copy(os.path.join(HERE, 'conftest.py'), tmp_path / 'conftest.py')
    (tmp_path / 'test_inner.py').write_text(textwrap.dedent(INNER))
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rA', '-p', 'no:cacheprovider',
                        '-p', 'no:randomly', 'test_inner.py'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=110)
    out = r.stdout
    results = {}
    for line in out.splitlines():
        for word in ('PASSED', 'ERROR', 'FAILED'):
            if line.startswith(word + ' ') and '::' in line:  # an ERROR at teardown comes last
                results[line.split()[1].split('::')[1]] = word
    for flavor in ('asyncio', 'ferroloop'):
        for name in ('test_handler_called', 'test_custom_handler_called', 'test_leaked_socket',
                     'test_unclosed_loop', 'test_leaked_transport'):
            assert results.get(f'{name}[{flavor}]') == 'ERROR', (name, flavor, out)
        for name in ('test_handler_called_expected', 'test_clean'):
            assert results.get(f'{name}[{flavor}]') == 'PASSED', (name, flavor, out)
    assert 'exception handler was called' in out
    assert 'file descriptors leaked' in out
    assert 'unclosed transport' in out
