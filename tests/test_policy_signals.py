"""ferroloop.run / install / EventLoopPolicy / module attributes, unclosed-loop warning, Ctrl-C."""

import asyncio
import contextlib
import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from conftest import ROOT, mask_loop_name


@contextlib.contextmanager
def saved_policy():
    old = asyncio.events._event_loop_policy
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(old)


# -- run ----------------------------------------------------------------------------------------

def test_run_returns_result_on_flavor_loop(flavor):
    async def main(x):
        lp = asyncio.get_running_loop()
        await asyncio.sleep(0.001)
        return x, type(lp), lp.get_debug()

    x, cls, debug = flavor.run(main(7))
    assert (x, cls, debug) == (7, flavor.loop_cls, False)
    assert asyncio._get_running_loop() is None


def test_run_debug(flavor):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert flavor.run(main(), debug=True) is True


def test_run_propagates_exception_and_closes_loop(flavor):
    loops = []

    async def main():
        loops.append(asyncio.get_running_loop())
        raise LookupError('from main')

    with pytest.raises(LookupError, match='^from main$'):
        flavor.run(main())
    assert loops[0].is_closed()


def test_run_cancels_leftover_tasks(flavor):
    events = []

    async def background():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append('background cancelled')
            raise

    async def main():
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)
        return 'main done'

    assert flavor.run(main()) == 'main done'
    assert events == ['background cancelled']


def test_run_inside_running_loop_raises(flavor, loop):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError,
                               match=r'^asyncio\.run\(\) cannot be called from a running event loop$'):
                flavor.run(coro)
        finally:
            coro.close()

    loop.run_until_complete(main())


def test_ferroloop_run_signature():
    import inspect

    import ferroloop

    sig = inspect.signature(ferroloop.run)
    assert list(sig.parameters) == ['main', 'debug', 'loop_factory']
    assert sig.parameters['debug'].default is None
    assert sig.parameters['debug'].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters['loop_factory'].default is ferroloop.new_event_loop


def test_ferroloop_run_loop_factory():
    import ferroloop

    made = []

    def factory():
        lp = ferroloop.new_event_loop()
        made.append(lp)
        return lp

    async def main():
        return asyncio.get_running_loop()

    assert ferroloop.run(main(), loop_factory=factory) is made[0]
    assert made[0].is_closed()


# -- module surface -----------------------------------------------------------------------------

def test_module_attributes():
    import ferroloop

    assert isinstance(ferroloop.__version__, str)
    assert re.fullmatch(r'\d+\.\d+\.\d+\S*', ferroloop.__version__)
    assert ferroloop.BUILD_PROFILE in ('release', 'debug')
    assert issubclass(ferroloop.Loop, asyncio.AbstractEventLoop)
    lp = ferroloop.new_event_loop()
    try:
        assert type(lp) is ferroloop.Loop
    finally:
        lp.close()
    assert issubclass(ferroloop.EventLoopPolicy, asyncio.DefaultEventLoopPolicy)
    for name in ferroloop.__all__:
        assert hasattr(ferroloop, name), name


def test_version_matches_package_metadata():
    from importlib.metadata import version

    import ferroloop

    assert ferroloop.__version__ == version('ferroloop')


def test_import_does_not_warn():
    code = 'import warnings; warnings.simplefilter("error"); import ferroloop; print(ferroloop.__version__)'
    r = subprocess.run([sys.executable, '-W', 'error', '-c', code], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''


# -- policy -------------------------------------------------------------------------------------

def test_policy_creates_flavor_loops(flavor):
    with saved_policy():
        asyncio.set_event_loop_policy(flavor.policy_cls())
        lp = asyncio.new_event_loop()
        try:
            assert type(lp) is flavor.loop_cls
        finally:
            lp.close()


def _policy_get_event_loop(policy_cls):
    """get_event_loop() in the main thread with no current loop under policy_cls."""
    with saved_policy():
        asyncio.set_event_loop_policy(policy_cls())
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter('always')
            lp = asyncio.get_event_loop()
            again = asyncio.get_event_loop()
        try:
            return type(lp), lp is again, [(w.category, str(w.message)) for w in rec]
        finally:
            asyncio.set_event_loop(None)
            lp.close()


def test_policy_get_event_loop_main_thread(flavor):
    reference = _policy_get_event_loop(asyncio.DefaultEventLoopPolicy)
    cls, same, warns = _policy_get_event_loop(flavor.policy_cls)
    assert cls is flavor.loop_cls
    assert same is True
    # the same deprecation warnings as asyncio's own policy on this Python version
    assert warns == reference[2]


def test_policy_set_event_loop(flavor):
    with saved_policy():
        asyncio.set_event_loop_policy(flavor.policy_cls())
        lp = flavor.new_loop()
        try:
            asyncio.set_event_loop(lp)
            with warnings.catch_warnings():
                warnings.simplefilter('error')
                assert asyncio.get_event_loop() is lp
        finally:
            asyncio.set_event_loop(None)
            lp.close()


def test_policy_get_event_loop_other_thread(flavor):
    import threading

    errors = []

    def worker():
        try:
            asyncio.get_event_loop()
        except RuntimeError as exc:
            errors.append(str(exc))

    with saved_policy():
        asyncio.set_event_loop_policy(flavor.policy_cls())
        t = threading.Thread(target=worker, name='worker-x')
        t.start()
        t.join()
    assert len(errors) == 1
    assert errors[0].startswith("There is no current event loop in thread 'worker-x'")


def test_install(flavor):
    with saved_policy():
        if flavor.name == 'ferroloop':
            if sys.version_info >= (3, 12):
                with pytest.warns(DeprecationWarning, match=r'ferroloop\.install\(\) is deprecated'):
                    flavor.module.install()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter('error')
                    flavor.module.install()
        else:
            asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        assert type(asyncio.get_event_loop_policy()) is flavor.policy_cls

        async def main():
            return type(asyncio.get_running_loop())

        # asyncio.run() without loop_factory goes through the policy
        assert asyncio.run(main()) is flavor.loop_cls


# -- unclosed loop ------------------------------------------------------------------------------

def test_unclosed_loop_resource_warning(flavor):
    lp = flavor.new_loop()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        del lp
        gc.collect()
    msgs = [mask_loop_name(str(w.message)) for w in rec if w.category is ResourceWarning]
    assert msgs == ['unclosed event loop <LOOP running=False closed=False debug=False>']


def test_closed_loop_no_resource_warning(flavor):
    lp = flavor.new_loop()
    lp.close()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        del lp
        gc.collect()
    assert [w for w in rec if w.category is ResourceWarning] == []


def test_unclosed_loop_after_run_resource_warning(flavor):
    lp = flavor.new_loop()
    lp.run_until_complete(asyncio.sleep(0))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        del lp
        gc.collect()
    assert len([w for w in rec if w.category is ResourceWarning
                and str(w.message).startswith('unclosed event loop <')]) == 1


# -- Ctrl-C -------------------------------------------------------------------------------------

SIGINT_SCRIPT = """
import asyncio, sys
flavor, mode = sys.argv[1], sys.argv[2]
if flavor == 'ferroloop':
    import ferroloop
    factory = ferroloop.new_event_loop
else:
    factory = asyncio.SelectorEventLoop

async def main():
    print('ready', flush=True)
    try:
        await asyncio.sleep(100)
    except asyncio.CancelledError:
        print('main cancelled', flush=True)
        raise

try:
    if mode == 'runner':
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    elif mode == 'run_until_complete':
        loop = factory()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    elif mode == 'run_forever_idle':
        loop = factory()
        loop.call_soon(lambda: print('ready', flush=True))
        try:
            loop.run_forever()
        finally:
            loop.close()
    elif mode == 'run_forever_timer':
        loop = factory()
        loop.call_soon(lambda: print('ready', flush=True))
        loop.call_later(100, print, 'timer fired')
        try:
            loop.run_forever()
        finally:
            loop.close()
except KeyboardInterrupt:
    print('KeyboardInterrupt', flush=True)
print('exit', flush=True)
"""

SIGINT_EXPECTED = {
    # asyncio.Runner cancels the main task first, then raises KeyboardInterrupt
    'runner': ['ready', 'main cancelled', 'KeyboardInterrupt', 'exit'],
    'run_until_complete': ['ready', 'KeyboardInterrupt', 'exit'],
    'run_forever_idle': ['ready', 'KeyboardInterrupt', 'exit'],
    'run_forever_timer': ['ready', 'KeyboardInterrupt', 'exit'],
}


@pytest.mark.parametrize('mode', sorted(SIGINT_EXPECTED))
def test_sigint_interrupts_blocked_loop(flavor, mode):
    env = dict(os.environ)
    env.pop('PYTHONASYNCIODEBUG', None)
    env.pop('PYTHONDEVMODE', None)
    proc = subprocess.Popen([sys.executable, '-c', SIGINT_SCRIPT, flavor.name, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        first = proc.stdout.readline()
        assert first == 'ready\n', (first, proc.stderr.read() if proc.poll() is not None else '')
        time.sleep(0.3)  # let the loop block in its wait
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert elapsed < 3, f'SIGINT took {elapsed:.2f}s to interrupt the loop'
    assert ['ready'] + out.splitlines() == SIGINT_EXPECTED[mode], err
    assert err == ''
    assert proc.returncode == 0


def test_sigint_twice_with_runner(flavor):
    # a main task that ignores the first cancellation: the second Ctrl-C raises KeyboardInterrupt
    script = textwrap.dedent("""
        import asyncio, sys
        if sys.argv[1] == 'ferroloop':
            import ferroloop
            factory = ferroloop.new_event_loop
        else:
            factory = asyncio.SelectorEventLoop

        async def main():
            print('ready', flush=True)
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                print('first cancel ignored', flush=True)
            await asyncio.sleep(100)

        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main())
        except KeyboardInterrupt:
            print('KeyboardInterrupt', flush=True)
        """)
    proc = subprocess.Popen([sys.executable, '-c', script, flavor.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline() == 'ready\n'
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == 'first cancel ignored\n'
        time.sleep(0.3)
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert elapsed < 3
    assert out.splitlines() == ['KeyboardInterrupt'], err
    assert proc.returncode == 0
