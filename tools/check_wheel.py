"""Check a built wheel (or sdist) the way a user would meet it: installed into a clean virtualenv.

    python tools/check_wheel.py dist/ferroloop-0.1.0-cp311-...whl --python /path/to/python3.11
    python tools/check_wheel.py dist/ferroloop-0.1.0.tar.gz --python /path/to/python3.11

For a wheel:
  1. its file name carries the tags of that interpreter (cp3X-cp3X) and of manylinux2014 x86_64;
  2. `auditwheel show` finds it consistent with manylinux_2_17_x86_64: no shared library outside
     the manylinux set, no glibc symbol version above 2.17;
For both:
  3. it installs with pip into a new virtualenv of that interpreter (an sdist builds from source
     there: cargo and a C linker are needed), with pytest and pytest-timeout beside it;
  4. in that virtualenv, `import ferroloop` comes from the virtualenv's site-packages (not this
     source tree), is a release build of this version, and the `ferroloop` script runs a program;
  5. a smoke subset of tests/ runs against the installed package, from a copy of the test files
     in a temporary directory (so nothing of the source tree is importable).

Exit status 0 when every check passes; the first failure stops with a message and status 1.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_TESTS = ['test_callbacks.py', 'test_timers.py', 'test_tasks_futures.py',
               'test_net_sockops.py']
TEST_SUPPORT = ['conftest.py', 'netutil.py']
MAX_GLIBC = (2, 17)


def fail(msg):
    print(f'check_wheel: FAILED: {msg}', file=sys.stderr, flush=True)
    sys.exit(1)


def step(msg):
    print(f'check_wheel: {msg}', flush=True)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f'{" ".join(map(str, cmd))} exited {r.returncode}\n{r.stdout}{r.stderr}')
    return r.stdout


def python_tag(python):
    out = run([python, '-c', 'import sys; print("cp%d%d" % sys.version_info[:2])'])
    return out.strip()


def check_wheel_name(path, tag):
    name = os.path.basename(path)
    m = re.fullmatch(r'ferroloop-([^-]+)-(cp\d+)-(cp\d+)-([^-]+)\.whl', name)
    if not m:
        fail(f'{name}: not a ferroloop wheel file name')
    _, py, abi, platforms = m.groups()
    if (py, abi) != (tag, tag):
        fail(f'{name}: tags {py}-{abi}, expected {tag}-{tag}')
    plats = set(platforms.split('.'))
    if 'manylinux_2_17_x86_64' not in plats or 'manylinux2014_x86_64' not in plats:
        fail(f'{name}: platform tags {sorted(plats)}, expected manylinux2014 / manylinux_2_17 x86_64')
    step(f'{name}: tags {tag}-{tag}-{"+".join(sorted(plats))}')


def check_auditwheel(path):
    out = run([sys.executable, '-m', 'auditwheel', 'show', path])
    flat = ' '.join(out.split())
    if 'consistent with the following platform tag: "manylinux_2_17_x86_64"' not in flat:
        fail(f'auditwheel show does not find manylinux_2_17_x86_64:\n{out}')
    versions = {tuple(map(int, v.split('.'))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", out)}
    if not versions:
        fail(f'auditwheel show lists no glibc symbol versions:\n{out}')
    newest = max(versions)
    if newest > MAX_GLIBC:
        fail(f'the extension needs GLIBC_{".".join(map(str, newest))} (> 2.17):\n{out}')
    libs = sorted(set(re.findall(r'(lib[\w.+-]+\.so(?:\.\d+)*) with versions', flat)))
    step(f'auditwheel: manylinux_2_17_x86_64; newest glibc symbol version '
         f'GLIBC_{".".join(map(str, newest))}; system libraries {", ".join(libs)}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('artifact', help='a ferroloop wheel (.whl) or sdist (.tar.gz)')
    parser.add_argument('--python', required=True, help='the interpreter to install it for')
    parser.add_argument('--keep', action='store_true', help='keep the temporary virtualenv')
    args = parser.parse_args()
    artifact = os.path.abspath(args.artifact)
    if not os.path.isfile(artifact):
        fail(f'{artifact}: no such file')
    tag = python_tag(args.python)
    is_wheel = artifact.endswith('.whl')
    if is_wheel:
        check_wheel_name(artifact, tag)
        check_auditwheel(artifact)
    elif not artifact.endswith('.tar.gz'):
        fail(f'{artifact}: neither a wheel nor an sdist')

    tmp = tempfile.mkdtemp(prefix='ferroloop-wheel-check-')
    try:
        venv = os.path.join(tmp, 'venv')
        step(f'clean virtualenv for {tag} in {venv}')
        run([args.python, '-m', 'venv', venv])
        py = os.path.join(venv, 'bin', 'python')
        step(f'pip install {os.path.basename(artifact)} pytest pytest-timeout'
             + ('' if is_wheel else ' (building from source)'))
        run([py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', artifact,
             'pytest>=8', 'pytest-timeout>=2.3'], cwd=tmp)

        # Where the package comes from, and what it is.
        out = run([py, '-c', textwrap.dedent('''\
            import asyncio, sys, sysconfig, ferroloop
            print(ferroloop.__file__)
            print(sysconfig.get_paths()["purelib"])
            print(ferroloop.__version__, ferroloop.BUILD_PROFILE)
            print(type(ferroloop.new_event_loop()).__module__)
            ''')], cwd=tmp)
        location, purelib, build, loop_module = out.splitlines()
        if not location.startswith(purelib + os.sep):
            fail(f'ferroloop imported from {location}, not the virtualenv ({purelib})')
        if location.startswith(ROOT + os.sep):
            fail(f'ferroloop imported from the source tree ({location})')
        version, profile = build.split()
        if profile != 'release':
            fail(f'installed build profile is {profile!r}, expected release')
        step(f'import ferroloop: {version} {profile}, from {os.path.dirname(location)}')

        script = os.path.join(tmp, 'prog.py')
        with open(script, 'w') as f:
            f.write('import asyncio\n'
                    'async def main():\n'
                    '    await asyncio.sleep(0.01)\n'
                    '    return type(asyncio.get_running_loop()).__module__\n'
                    'print(asyncio.run(main()))\n')
        out = run([os.path.join(venv, 'bin', 'ferroloop'), 'run', script], cwd=tmp)
        if out.strip() != 'ferroloop._loop':
            fail(f'`ferroloop run` ran the program on {out.strip()!r}')
        step('`ferroloop run prog.py`: asyncio.run() ran on ferroloop.Loop')

        tests = os.path.join(tmp, 'tests')
        os.mkdir(tests)
        for name in TEST_SUPPORT + SMOKE_TESTS:
            shutil.copy(os.path.join(ROOT, 'tests', name), tests)
        step(f'pytest {" ".join(SMOKE_TESTS)} against the installed package')
        env = {k: v for k, v in os.environ.items()
               if k not in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONASYNCIODEBUG', 'PYTHONDEVMODE')}
        r = subprocess.run([py, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-o',
                            'timeout=60', 'tests'], cwd=tmp, env=env, capture_output=True,
                           text=True)
        summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''
        if r.returncode != 0:
            fail(f'pytest exited {r.returncode}\n{r.stdout[-6000:]}{r.stderr[-2000:]}')
        step(f'pytest: {summary}')
        step(f'OK: {os.path.basename(artifact)}')
    finally:
        if args.keep:
            step(f'kept {tmp}')
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
