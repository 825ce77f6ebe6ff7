"""The command line: ``python -m ferroloop --version`` and ``python -m ferroloop run SCRIPT/-m MODULE``.

Most tests run the same small program twice, as ``python SCRIPT ARGS`` (asyncio's own loop: the
reference) and as ``python -m ferroloop run SCRIPT ARGS``, and require the same stdout, stderr and
exit status, except for the loop class name where the program prints it. Others check that under
the CLI the loop really is a ``ferroloop.Loop``, whichever way the program gets its loop.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

# What plain asyncio's loop class is called (on Unix), and ferroloop's.
_LOOP_NAMES = re.compile(r'\b(_UnixSelectorEventLoop|Loop)\b')


def mask(text):
    return _LOOP_NAMES.sub('LOOP', text)


def _env():
    env = dict(os.environ)
    for var in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE', 'PYTHONWARNINGS', 'PYTHONSTARTUP',
                'PYTHONINSPECT', 'PYTHONSAFEPATH', 'UVICORN_LOOP'):
        env.pop(var, None)
    env['PYTHONIOENCODING'] = 'utf-8'
    return env


def run_cmd(args, *, cwd=None, timeout=30, env=None, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=_env() if env is None else env, cwd=cwd, timeout=timeout, **kw)


def cli(*args, **kw):
    return run_cmd(['-m', 'ferroloop', *args], **kw)


def write(tmp_path, code, name='prog.py'):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def run_both(script, *args, cwd=None, timeout=30):
    """(plain python, ferroloop CLI) results of running SCRIPT ARGS."""
    plain = run_cmd([str(script), *args], cwd=cwd, timeout=timeout)
    ferro = cli('run', str(script), *args, cwd=cwd, timeout=timeout)
    return plain, ferro


def assert_same(plain, ferro, *, ferro_stdout_fix=None):
    """Same stderr, stdout and status, with the loop class name masked."""
    ferro_stdout = ferro.stdout if ferro_stdout_fix is None else ferro_stdout_fix(ferro.stdout)
    assert mask(ferro.stderr) == mask(plain.stderr)
    assert mask(ferro_stdout) == mask(plain.stdout)
    assert ferro.returncode == plain.returncode


def _as_if_asyncio(stdout):
    return stdout.replace('ferroloop=True', 'ferroloop=False')


# -- --version / --help -------------------------------------------------------------------------

def test_version():
    import ferroloop
    r = cli('--version')
    assert r.returncode == 0, r.stderr
    py = sys.version.split()[0]
    assert r.stdout == f'ferroloop {ferroloop.__version__} ({ferroloop.BUILD_PROFILE} build, Python {py})\n'
    assert ferroloop.BUILD_PROFILE in ('release', 'debug')


def test_help():
    r = cli('--help')
    assert r.returncode == 0
    assert 'usage: ferroloop' in r.stdout and 'run' in r.stdout and '--version' in r.stdout
    r = cli('run', '--help')
    assert r.returncode == 0
    assert 'SCRIPT' in r.stdout and '-m MODULE' in r.stdout


def test_usage_errors():
    r = cli()
    assert r.returncode == 2 and 'usage: ferroloop' in r.stderr and r.stdout == ''
    r = cli('frobnicate')
    assert r.returncode == 2 and 'invalid choice' in r.stderr
    r = cli('run')                        # neither SCRIPT nor -m: argparse's usage error
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.startswith('usage: ferroloop run ') and 'SCRIPT or -m MODULE' in r.stderr


def test_console_script():
    exe = os.path.join(os.path.dirname(sys.executable), 'ferroloop')
    if not os.path.exists(exe):
        pytest.skip('the ferroloop console script is not installed next to sys.executable')
    r = subprocess.run([exe, '--version'], capture_output=True, text=True, env=_env(), timeout=30)
    assert r.returncode == 0 and r.stdout.startswith('ferroloop '), r.stderr


def test_console_script_run(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), 'ferroloop')
    if not os.path.exists(exe):
        pytest.skip('the ferroloop console script is not installed next to sys.executable')
    script = write(tmp_path, """\
        import asyncio, sys
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(sys.argv, sys.path[0] == __import__('os').path.dirname(__file__), asyncio.run(main()))
        raise KeyboardInterrupt
        """)
    plain = run_cmd([str(script), 'x'])
    ferro = subprocess.run([exe, 'run', str(script), 'x'], capture_output=True, text=True,
                           env=_env(), timeout=30)
    assert_same(plain, ferro)
    assert 'Loop' in ferro.stdout and plain.returncode == -signal.SIGINT


# -- the loop is ferroloop's, whichever way the program gets it ----------------------------------

_REPORT = """\
    import asyncio, sys, threading

    def report(where):
        loop = asyncio.get_running_loop()
        fl = sys.modules.get('ferroloop')
        print(f'{where}: {type(loop).__name__} ferroloop={fl is not None and isinstance(loop, fl.Loop)}')

    async def main(where):
        report(where)
        await asyncio.sleep(0.01)
        return where
    """

STYLES = {
    'asyncio.run': """\
        print(asyncio.run(main('asyncio.run')))
        """,
    'Runner': """\
        with asyncio.Runner() as runner:
            print(runner.run(main('Runner 1')))
            print(runner.run(main('Runner 2')))
        """,
    'get_event_loop': """\
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop = asyncio.get_event_loop()
        print(loop.run_until_complete(main('get_event_loop')))
        loop.close()
        """,
    'thread': """\
        results = []
        def in_thread():
            loop = asyncio.new_event_loop()
            try:
                results.append(loop.run_until_complete(main('thread')))
            finally:
                loop.close()
        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
        print(results)
        """,
}


@pytest.mark.parametrize('style', list(STYLES))
def test_script_style_runs_on_ferroloop(tmp_path, style):
    script = write(tmp_path, textwrap.dedent(_REPORT) + textwrap.dedent(STYLES[style]))
    plain, ferro = run_both(script)
    assert plain.returncode == 0, plain.stderr
    assert ferro.returncode == 0, ferro.stderr
    assert 'ferroloop=False' in plain.stdout and '_UnixSelectorEventLoop' in plain.stdout
    assert 'ferroloop=False' not in ferro.stdout
    assert ferro.stdout.count('ferroloop=True') == plain.stdout.count('ferroloop=False') >= 1
    assert_same(plain, ferro, ferro_stdout_fix=_as_if_asyncio)


def test_bare_get_event_loop_matches_python(tmp_path):
    # No current loop: get_event_loop() creates one via the policy (with the running Python's
    # DeprecationWarning, if any, pointing at the same line).
    script = write(tmp_path, textwrap.dedent(_REPORT) + textwrap.dedent("""\
        loop = asyncio.get_event_loop()
        print(loop.run_until_complete(main('bare get_event_loop')))
        """))
    plain, ferro = run_both(script)
    assert_same(plain, ferro, ferro_stdout_fix=_as_if_asyncio)
    assert 'ferroloop=True' in ferro.stdout


def test_policy_is_ferroloops(tmp_path):
    script = write(tmp_path, """\
        import asyncio
        policy = asyncio.get_event_loop_policy()
        print(type(policy).__module__, type(policy).__name__)
        """)
    r = cli('run', str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == 'EventLoopPolicy'
    assert r.stdout.startswith('ferroloop')


# -- programs that choose their loop class themselves ----------------------------------------------

def test_selector_event_loop_built_by_the_program_warns(tmp_path):
    # Under `run` the program still gets the asyncio loop it builds itself, but never silently.
    script = write(tmp_path, """\
        import asyncio
        class MyLoop(asyncio.SelectorEventLoop):
            pass
        for cls in (asyncio.SelectorEventLoop, MyLoop):
            loop = cls()
            print(type(loop).__name__, isinstance(loop, asyncio.SelectorEventLoop))
            loop.close()
        print(type(asyncio.new_event_loop()).__name__)
        """)
    plain, ferro = run_both(script)
    assert plain.returncode == ferro.returncode == 0, ferro.stderr
    assert plain.stderr == ''
    assert ferro.stdout == plain.stdout.replace('_UnixSelectorEventLoop\n', 'Loop\n')
    assert ferro.stdout.endswith('\nLoop\n')
    warnings = [line for line in ferro.stderr.splitlines() if 'RuntimeWarning' in line]
    assert len(warnings) == 2, ferro.stderr
    assert warnings[0].startswith(f'{script}:5: RuntimeWarning: ferroloop run: '
                                  'asyncio.SelectorEventLoop() creates asyncio')
    assert 'not on ferroloop' in warnings[0]
    assert 'SelectorEventLoop subclass MyLoop' in ferro.stderr


UVICORN_PROBE = """\
    # stands in for uvicorn: prints the arguments `ferroloop run` gave it
    import sys
    print(sys.argv[1:])
    """


@pytest.mark.parametrize('given, expected', [
    ([], ['--loop', 'ferroloop:new_event_loop', 'app:app']),
    (['--loop', 'none'], ['app:app', '--loop', 'none']),
    (['--loop=ferroloop:new_event_loop'], ['app:app', '--loop=ferroloop:new_event_loop']),
    (['--loop', 'ferroloop:new_event_loop', '--port', '1'],
     ['app:app', '--loop', 'ferroloop:new_event_loop', '--port', '1']),
])
def test_run_uvicorn_gets_ferroloop(tmp_path, given, expected):
    # The arguments `ferroloop run -m uvicorn` passes on (the real server: test_use_with.py).
    write(tmp_path, UVICORN_PROBE, name='probe/uvicorn/__main__.py')
    write(tmp_path, '', name='probe/uvicorn/__init__.py')
    r = cli('run', '-m', 'uvicorn', 'app:app', *given, cwd=tmp_path / 'probe')
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'{expected}\n'
    script = write(tmp_path, UVICORN_PROBE, name='bin/uvicorn')     # the console script
    r = cli('run', str(script), 'app:app', *given)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'{expected}\n'


@pytest.mark.parametrize('given, env, named', [
    (['--loop', 'auto'], {}, '--loop auto would serve on uvloop or asyncio'),
    (['--loop=asyncio'], {}, '--loop asyncio would serve on asyncio'),
    (['--loop', 'uvloop'], {'UVICORN_LOOP': 'none'}, '--loop uvloop would serve on uvloop'),
    ([], {'UVICORN_LOOP': 'asyncio'}, 'UVICORN_LOOP asyncio would serve on asyncio'),
])
def test_run_uvicorn_with_another_loop_stops(tmp_path, given, env, named):
    write(tmp_path, UVICORN_PROBE, name='uvicorn/__main__.py')
    write(tmp_path, '', name='uvicorn/__init__.py')
    r = run_cmd(['-m', 'ferroloop', 'run', '-m', 'uvicorn', 'app:app', *given], cwd=tmp_path,
                env=dict(_env(), **env))
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.startswith(f'ferroloop run: uvicorn {named}, not on ferroloop'), r.stderr
    assert 'give --loop ferroloop:new_event_loop' in r.stderr


def test_run_uvicorn_env_none_is_kept(tmp_path):
    write(tmp_path, UVICORN_PROBE, name='uvicorn/__main__.py')
    write(tmp_path, '', name='uvicorn/__init__.py')
    r = run_cmd(['-m', 'ferroloop', 'run', '-m', 'uvicorn', 'app:app'], cwd=tmp_path,
                env=dict(_env(), UVICORN_LOOP='none'))
    assert r.returncode == 0 and r.stdout == "['app:app']\n", r.stderr


# -- what the program sees: argv, path, __main__ --------------------------------------------------

ENVIRONMENT = """\
    import os, sys, __main__
    print('argv', sys.argv)
    print('path0', sys.path[0])
    print('file', __file__, __name__, __spec__, __package__)
    print('main module', __main__.__dict__ is globals(), sys.modules['__main__'] is __main__)
    print('builtins', __builtins__ is __import__('builtins'))
    print('loader', type(__loader__).__name__, __cached__ if '__cached__' in globals() else '-')
    print('doc', __doc__)
    def f(): pass
    print('f', f.__module__, f.__qualname__)
    """


def test_script_environment(tmp_path):
    script = write(tmp_path, ENVIRONMENT, name='sub/env_prog.py')
    # relative path, from another directory, with arguments that look like options
    plain, ferro = run_both('sub/env_prog.py', '-h', '--version', 'run', '-m', 'x', cwd=tmp_path)
    assert_same(plain, ferro)
    assert "argv ['sub/env_prog.py', '-h', '--version', 'run', '-m', 'x']" in ferro.stdout
    assert f'path0 {tmp_path / "sub"}\n' in ferro.stdout


def test_script_through_symlink(tmp_path):
    # python puts the directory of the *resolved* script first on sys.path
    script = write(tmp_path, ENVIRONMENT, name='real/env_prog.py')
    (tmp_path / 'link').mkdir()
    (tmp_path / 'link' / 'prog.py').symlink_to(script)
    plain, ferro = run_both(tmp_path / 'link' / 'prog.py')
    assert_same(plain, ferro)


def test_script_imports_neighbour_module(tmp_path):
    write(tmp_path, 'VALUE = "from the neighbour"\n', name='app/helper.py')
    script = write(tmp_path, 'import helper\nprint(helper.VALUE)\n', name='app/main.py')
    plain, ferro = run_both(script, cwd='/')
    assert_same(plain, ferro)
    assert ferro.stdout == 'from the neighbour\n'


def test_double_dash(tmp_path):
    script = write(tmp_path, 'import sys; print(sys.argv[1:])\n')
    r = cli('run', '--', str(script), '--', '-x')
    assert r.returncode == 0 and r.stdout == "['--', '-x']\n", r.stderr


def test_run_module(tmp_path):
    write(tmp_path, '', name='pkg/__init__.py')
    write(tmp_path, """\
        import asyncio, sys
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print('argv', sys.argv)
        print('path0', sys.path[0])
        print(__name__, __spec__.name, __package__, asyncio.run(main()))
        """, name='pkg/mod.py')
    plain = run_cmd(['-m', 'pkg.mod', 'a', '-b'], cwd=tmp_path)
    ferro = cli('run', '-m', 'pkg.mod', 'a', '-b', cwd=tmp_path)
    assert_same(plain, ferro)
    assert ferro.returncode == 0 and ferro.stdout.endswith('Loop\n') and '_Unix' not in ferro.stdout
    ferro2 = cli('run', '-mpkg.mod', 'a', '-b', cwd=tmp_path)
    assert_same(plain, ferro2)


def test_run_module_package_main_and_errors(tmp_path):
    write(tmp_path, '', name='pkg/__init__.py')
    write(tmp_path, 'import sys\nprint("pkg main", sys.argv[1:])\nraise ValueError("in -m")\n',
          name='pkg/__main__.py')
    plain = run_cmd(['-m', 'pkg', '1'], cwd=tmp_path)
    ferro = cli('run', '-m', 'pkg', '1', cwd=tmp_path)
    assert_same(plain, ferro)
    assert ferro.returncode == 1 and 'ValueError: in -m' in ferro.stderr
    plain = run_cmd(['-m', 'no_such_module_xyz'], cwd=tmp_path)
    ferro = cli('run', '-m', 'no_such_module_xyz', cwd=tmp_path)
    assert_same(plain, ferro)
    assert ferro.returncode == 1


def test_run_directory_with_main(tmp_path):
    write(tmp_path, 'import sys, os\nprint(sys.argv, sys.path[0] == os.path.dirname(__file__))\n',
          name='app/__main__.py')
    plain, ferro = run_both(tmp_path / 'app', 'arg')
    assert_same(plain, ferro)
    assert ferro.returncode == 0 and 'True' in ferro.stdout


def test_missing_script(tmp_path):
    plain, ferro = run_both(tmp_path / 'nope.py')
    assert_same(plain, ferro)
    assert ferro.returncode == 2


# -- exit status, tracebacks, signals ------------------------------------------------------------

@pytest.mark.parametrize('code', [
    'raise SystemExit(3)',
    'import sys; sys.exit("fatal: bye")',
    'import sys; sys.exit(0)',
    'import sys; sys.exit(None)',
    'import asyncio\nasync def main():\n    raise SystemExit(7)\nasyncio.run(main())',
    'import os; print("out", flush=True); os._exit(5)',
])
def test_exit_status(tmp_path, code):
    plain, ferro = run_both(write(tmp_path, code + '\n'))
    assert_same(plain, ferro)


def test_uncaught_exception_traceback(tmp_path):
    script = write(tmp_path, """\
        import asyncio

        async def inner():
            await asyncio.sleep(0)
            return ValueError('raised later')

        def fail(exc):
            raise exc

        print('before')
        exc = asyncio.run(inner())
        try:
            {}['missing']
        except KeyError:
            fail(exc)
        """)
    plain, ferro = run_both(script)
    assert_same(plain, ferro)
    assert ferro.returncode == 1
    assert ferro.stderr.startswith('Traceback (most recent call last):\n  File "' + str(script))
    assert '__main__.py' not in ferro.stderr and 'runpy' not in ferro.stderr
    assert 'During handling of the above exception' in ferro.stderr


def test_uncaught_exception_inside_the_loop(tmp_path):
    # The traceback goes through the loop's run_until_complete: the frames of the program and its
    # exception must be the same; the loop's own frames may differ.
    script = write(tmp_path, """\
        import asyncio
        async def main():
            await asyncio.sleep(0)
            raise RuntimeError('from a coroutine')
        asyncio.run(main())
        """)
    plain, ferro = run_both(script)
    assert ferro.returncode == plain.returncode == 1
    first = 'Traceback (most recent call last):\n  File "%s", line 5, in <module>\n' % script
    assert ferro.stderr.startswith(first) and plain.stderr.startswith(first)
    assert ferro.stderr.endswith('RuntimeError: from a coroutine\n')
    tail = '  File "%s", line 4, in main\n    raise RuntimeError(\'from a coroutine\')\n' % script
    assert tail in ferro.stderr and tail in plain.stderr


def test_syntax_error(tmp_path):
    plain, ferro = run_both(write(tmp_path, 'print("ok")\ndef f(:\n    pass\n'))
    assert_same(plain, ferro)
    assert ferro.returncode == 1 and 'SyntaxError' in ferro.stderr and 'Traceback' not in ferro.stderr


def test_custom_excepthook(tmp_path):
    script = write(tmp_path, """\
        import sys
        def hook(tp, exc, tb):
            frames = 0
            while tb is not None:
                frames, tb = frames + 1, tb.tb_next
            print(f'custom hook: {tp.__name__}: {exc} ({frames} frames)', file=sys.stderr)
        sys.excepthook = hook
        def f():
            raise LookupError('x')
        f()
        """)
    plain, ferro = run_both(script)
    assert_same(plain, ferro)
    assert ferro.stderr == 'custom hook: LookupError: x (2 frames)\n'


def test_shutdown_after_exception(tmp_path):
    # After the traceback, the interpreter shuts down as usual: non-daemon threads are joined,
    # then atexit handlers run.
    script = write(tmp_path, """\
        import atexit, threading, time, sys
        atexit.register(print, 'atexit handler')
        def work():
            time.sleep(0.2)
            print('thread finished')
        threading.Thread(target=work).start()
        raise OSError('top level')
        """)
    plain, ferro = run_both(script)
    assert_same(plain, ferro)
    assert ferro.stdout == 'thread finished\natexit handler\n'


def test_keyboard_interrupt_at_top_level(tmp_path):
    # python prints the traceback, shuts down, then kills itself with SIGINT.
    script = write(tmp_path, """\
        import atexit
        atexit.register(print, 'atexit handler')
        print('before')
        raise KeyboardInterrupt
        """)
    plain, ferro = run_both(script)
    assert_same(plain, ferro)
    assert ferro.returncode == -signal.SIGINT
    assert ferro.stdout == 'before\natexit handler\n'
    assert ferro.stderr.endswith('KeyboardInterrupt\n')


def test_keyboard_interrupt_subclass(tmp_path):
    # ... but only for KeyboardInterrupt itself; a subclass ends with status 1.
    script = write(tmp_path, 'class Stop(KeyboardInterrupt): pass\nraise Stop("now")\n')
    plain, ferro = run_both(script)
    assert_same(plain, ferro)
    assert ferro.returncode == 1


def test_sigint_during_asyncio_run(tmp_path):
    # A real SIGINT while the loop waits: asyncio.run() cancels the main task, then raises
    # KeyboardInterrupt, which is uncaught here.
    script = write(tmp_path, """\
        import asyncio, os, signal
        async def main():
            asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                print('main cancelled')
                raise
        asyncio.run(main())
        """)
    plain, ferro = run_both(script)
    assert_same(plain, ferro)
    assert ferro.returncode == -signal.SIGINT
    assert ferro.stdout == 'main cancelled\n'


def test_sigint_during_run_forever(tmp_path):
    # No asyncio.run(): SIGINT raises KeyboardInterrupt out of run_forever(), caught here.
    script = write(tmp_path, """\
        import asyncio, os, signal
        loop = asyncio.new_event_loop()
        loop.call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            print('KeyboardInterrupt out of run_forever')
        finally:
            loop.close()
        """)
    plain, ferro = run_both(script, timeout=20)
    assert_same(plain, ferro)
    assert ferro.returncode == 0


def test_stdin_and_unicode(tmp_path):
    script = write(tmp_path, 'import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), "→ ok")\n')
    plain = run_cmd([str(script)], input='héllo\nwörld\n')
    ferro = cli('run', str(script), input='héllo\nwörld\n')
    assert_same(plain, ferro)
    assert ferro.stdout == 'HÉLLO → ok\nWÖRLD → ok\n'


def test_program_from_stdin(tmp_path):
    code = 'import sys\nprint(sys.argv, repr(sys.path[0]), __name__)\n1 / 0\n'
    plain = run_cmd(['-', 'a', '-b'], input=code, cwd=tmp_path)
    ferro = cli('run', '-', 'a', '-b', input=code, cwd=tmp_path)
    assert_same(plain, ferro)
    assert ferro.returncode == 1 and 'ZeroDivisionError' in ferro.stderr


def test_zipapp(tmp_path):
    import zipfile
    app = tmp_path / 'app.pyz'
    with zipfile.ZipFile(app, 'w') as zf:
        zf.writestr('__main__.py', 'import sys, helper\nprint(sys.argv[1:], helper.X)\n')
        zf.writestr('helper.py', 'X = "zipped"\n')
    plain, ferro = run_both(app, 'arg')
    assert_same(plain, ferro)
    assert ferro.stdout == "['arg'] zipped\n"
