"""Every program in examples/ gives the same output on asyncio's loop and on ferroloop.

Each example runs as `python examples/X.py` (asyncio, the reference) and as
`python -m ferroloop run examples/X.py`; stdout and exit status must match once timings
(`took 0.123s`) are masked, and stderr must be empty in both. That the CLI really runs programs on
ferroloop is checked in test_cli.py.
"""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, 'examples')
NAMES = sorted(n for n in os.listdir(EXAMPLES) if n.endswith('.py') and n != 'demo.py')

_TIMING = re.compile(r'\b\d+\.\d+s\b')


def mask_timings(text):
    return _TIMING.sub('<T>s', text)


def _env():
    env = dict(os.environ)
    for var in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE', 'PYTHONWARNINGS'):
        env.pop(var, None)
    return env


def _run(args, timeout=30):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=timeout)


def test_examples_exist():
    assert len(NAMES) >= 10
    with open(os.path.join(EXAMPLES, 'README.md')) as f:
        readme = f.read()
    for name in NAMES + ['demo.py']:
        assert f'({name})' in readme, f'{name} is not listed in examples/README.md'


@pytest.mark.parametrize('name', NAMES)
def test_example_same_on_ferroloop(name):
    path = os.path.join('examples', name)
    # Both at once: the examples mostly wait, so this halves the wall time.
    with ThreadPoolExecutor(2) as pool:
        plain_f = pool.submit(_run, [path])
        ferro_f = pool.submit(_run, ['-m', 'ferroloop', 'run', path])
        plain, ferro = plain_f.result(), ferro_f.result()
    assert plain.returncode == 0 and plain.stderr == '', plain.stderr
    assert plain.stdout.strip(), 'an example should print something'
    assert ferro.stderr == '', ferro.stderr
    assert mask_timings(ferro.stdout) == mask_timings(plain.stdout)
    assert ferro.returncode == plain.returncode


@pytest.mark.timeout(120)
def test_demo_quick():
    r = _run([os.path.join('examples', 'demo.py'), '--quick'], timeout=110)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''
    out = r.stdout
    assert out.startswith('ferroloop ')
    assert '=== python -m ferroloop run examples/hello_coroutine.py' in out
    assert 'Hello, world!' in out
    assert re.search(r'call_soon callbacks .*ms .*ms .*x\n', out)
    assert re.search(r'sleep\(0\) task switches .*ms .*ms .*x\n', out)
