"""Exception handler API, what reaches it and what is logged; debug mode."""

import asyncio
import contextvars
import logging
import re
import sys
import threading
import time

import pytest

from conftest import fmt_cb, lineno, mask_loop_name, run_script, src

var = contextvars.ContextVar('var', default='default')


def failing(*args):
    raise ValueError('boom')


def asyncio_records(caplog, level=logging.DEBUG):
    return [r for r in caplog.records if r.name == 'asyncio' and r.levelno >= level]


# -- exception handler API ----------------------------------------------------------------------

def test_get_set_exception_handler(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_not_callable(loop):
    with pytest.raises(TypeError, match=r'^A callable object or None is expected, got 1$'):
        loop.set_exception_handler(1)
    with pytest.raises(TypeError, match=r"^A callable object or None is expected, got 'x'$"):
        loop.set_exception_handler('x')


@pytest.mark.expect_exception_handler
def test_exception_in_callback_goes_to_handler_and_loop_continues(loop):
    contexts = []
    calls = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    h = loop.call_soon(failing)
    loop.call_soon(calls.append, 'after')
    loop.call_later(0.001, failing, 'timer')
    loop.call_later(0.01, calls.append, 'timer after')
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == ['after', 'timer after']
    assert len(contexts) == 2
    lp, ctx = contexts[0]
    assert lp is loop
    assert set(ctx) == {'message', 'exception', 'handle'}
    assert ctx['message'] == f'Exception in callback failing() at {src(failing)}'
    assert ctx['message'] == f'Exception in callback {fmt_cb(failing, ())}'
    assert type(ctx['exception']) is ValueError
    assert str(ctx['exception']) == 'boom'
    assert ctx['handle'] is h
    lp, ctx = contexts[1]
    assert type(ctx['handle']).__name__ == 'TimerHandle'
    assert ctx['message'] == f'Exception in callback {fmt_cb(failing, ("timer",))}'


@pytest.mark.expect_exception_handler
def test_exception_traceback_contains_callback_frame(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_soon(failing)
    loop.call_soon(loop.stop)
    loop.run_forever()
    tb = contexts[0]['exception'].__traceback__
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert names[-1] == 'failing'


@pytest.mark.expect_exception_handler
def test_default_exception_handler_logs_callback_exception(loop, caplog):
    h = loop.call_soon(failing)
    h_repr = repr(h)
    loop.call_soon(loop.stop)
    loop.run_forever()
    records = asyncio_records(caplog)
    assert len(records) == 1
    rec = records[0]
    assert rec.levelname == 'ERROR'
    assert rec.getMessage() == f'Exception in callback {fmt_cb(failing, ())}\nhandle: {h_repr}'
    assert rec.getMessage() == (f'Exception in callback failing() at {src(failing)}\n'
                                f'handle: <Handle failing() at {src(failing)}>')
    assert rec.exc_info[0] is ValueError
    assert str(rec.exc_info[1]) == 'boom'


@pytest.mark.expect_exception_handler
def test_call_exception_handler_default_logging(loop, caplog):
    exc = KeyError('key')
    loop.call_exception_handler({'message': 'Custom message', 'exception': exc, 'zeta': 1, 'alpha': 'a'})
    loop.call_exception_handler({'other': [1, 2]})
    loop.call_exception_handler({'message': 'no exception'})
    records = asyncio_records(caplog)
    assert [r.getMessage() for r in records] == [
        "Custom message\nalpha: 'a'\nzeta: 1",
        'Unhandled exception in event loop\nother: [1, 2]',
        'no exception',
    ]
    assert records[0].exc_info[1] is exc
    assert not records[1].exc_info
    assert not records[2].exc_info


def test_default_exception_handler_direct_call(loop, caplog):
    loop.set_exception_handler(lambda lp, ctx: pytest.fail('custom handler must not be called'))
    loop.default_exception_handler({'message': 'direct'})
    assert [r.getMessage() for r in asyncio_records(caplog)] == ['direct']


@pytest.mark.expect_exception_handler
def test_custom_handler_calls_default(loop, caplog):
    def handler(lp, ctx):
        lp.default_exception_handler({**ctx, 'message': 'wrapped: ' + ctx['message']})

    loop.set_exception_handler(handler)
    h = loop.call_soon(failing)
    h_repr = repr(h)
    loop.call_soon(loop.stop)
    loop.run_forever()
    records = asyncio_records(caplog)
    assert [r.getMessage() for r in records] == [
        f'wrapped: Exception in callback {fmt_cb(failing, ())}\nhandle: {h_repr}']


@pytest.mark.expect_exception_handler
def test_error_in_custom_exception_handler(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError('handler broke')

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    loop.call_soon(loop.stop)
    loop.run_forever()
    records = asyncio_records(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    assert msg.startswith('Unhandled error in exception handler\ncontext: {')
    assert "'message': 'Exception in callback " in msg
    assert records[0].exc_info[0] is RuntimeError


@pytest.mark.expect_exception_handler
def test_exception_handler_context_of_callback(loop):
    # 3.12+: a custom handler runs in the context of the failing handle; 3.11: in the caller's
    seen = []

    def handler(lp, ctx):
        seen.append(var.get())

    def callback():
        var.set('callback value')
        raise ValueError

    loop.set_exception_handler(handler)
    loop.call_soon(callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == (['callback value'] if sys.version_info >= (3, 12) else ['default'])


@pytest.mark.expect_exception_handler
def test_exception_in_task_reaches_handler_when_not_retrieved(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fail():
        raise ValueError('task boom')

    loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0.01))
    import gc
    gc.collect()
    assert len(contexts) == 1
    assert contexts[0]['message'] == 'Task exception was never retrieved'
    assert isinstance(contexts[0]['exception'], ValueError)


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
def test_base_exception_in_callback_propagates(loop, exc_type):
    calls = []
    handled = []
    loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))

    def raiser():
        raise exc_type('out')

    loop.call_soon(calls.append, 'a')
    loop.call_soon(raiser)
    loop.call_soon(calls.append, 'b')
    with pytest.raises(exc_type):
        loop.run_forever()
    assert calls == ['a']
    assert handled == []
    assert not loop.is_running()
    # the loop is usable again; the callbacks left in that iteration run next time
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['a', 'b']


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
def test_base_exception_in_timer_propagates(loop, exc_type):
    def raiser():
        raise exc_type

    loop.call_later(0.001, raiser)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
def test_base_exception_in_coroutine_propagates_from_run_until_complete(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type('from coro')

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, 1)) == 1


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
def test_base_exception_in_callback_during_run_until_complete(loop, exc_type):
    def raiser():
        raise exc_type

    async def main():
        loop.call_soon(raiser)
        await asyncio.sleep(60)

    with pytest.raises(exc_type):
        loop.run_until_complete(main())


# -- debug mode ---------------------------------------------------------------------------------

def test_debug_default_and_set(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_pythonasynciodebug_env(flavor):
    code = """
        loop = FACTORY()
        print(loop.get_debug())
        async def main():
            return asyncio.get_running_loop().get_debug()
        print(loop.run_until_complete(main()))
        loop.close()
        """
    r = run_script(flavor.name, code, env={'PYTHONASYNCIODEBUG': '1'})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['True', 'True']
    r = run_script(flavor.name, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['False', 'False']


def test_dev_mode_enables_debug(flavor):
    r = run_script(flavor.name, 'loop = FACTORY(); print(loop.get_debug()); loop.close()',
                   env={'PYTHONDEVMODE': '1'})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['True']


def test_debug_close_logged(loop, caplog):
    caplog.set_level(logging.DEBUG, logger='asyncio')
    loop.set_debug(True)
    loop.close()
    records = asyncio_records(caplog)
    assert [(r.levelname, r.msg) for r in records] == [('DEBUG', 'Close %r')]
    assert records[0].args == (loop,)
    # formatted when emitted, i.e. before the loop was marked closed
    assert mask_loop_name(caplog.text.strip()).endswith('Close <LOOP running=False closed=False debug=True>')


def slow():
    time.sleep(0.06)


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.05
    h = loop.call_soon(slow); line = lineno()  # noqa: E702
    h_repr = repr(h)
    loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    records = asyncio_records(caplog, logging.WARNING)
    assert len(records) == 1
    assert records[0].levelname == 'WARNING'
    msg = records[0].getMessage()
    expected = re.escape(f'Executing {h_repr} took ') + r'0\.\d\d\d seconds'
    assert re.fullmatch(expected, msg), msg
    assert f'<Handle slow() at {src(slow)} created at {__file__}:{line}>' in msg


def test_slow_timer_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    h = loop.call_later(0.001, slow)
    h_repr = repr(h)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    msgs = [r.getMessage() for r in asyncio_records(caplog, logging.WARNING)]
    assert len(msgs) == 1
    assert re.fullmatch(re.escape(f'Executing {h_repr} took ') + r'0\.\d\d\d seconds', msgs[0]), msgs[0]
    assert msgs[0].startswith('Executing <TimerHandle when=')


def test_slow_task_step_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    async def main():
        await asyncio.sleep(0)
        time.sleep(0.06)

    loop.run_until_complete(loop.create_task(main(), name='slowpoke'))
    msgs = [r.getMessage() for r in asyncio_records(caplog, logging.WARNING)]
    assert len(msgs) == 1
    # the task step is shown as the task's repr, not as a handle
    assert re.fullmatch(r"Executing <Task (pending|finished) name='slowpoke' coro=<.*> took 0\.\d\d\d seconds",
                        msgs[0], re.S), msgs[0]


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.slow_callback_duration = 0.01
    loop.call_soon(slow)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert asyncio_records(caplog, logging.WARNING) == []


def test_source_traceback(loop):
    assert loop.call_soon(failing)._source_traceback is None
    loop.set_debug(True)
    cases = [
        ('call_soon', lambda: loop.call_soon(failing)),
        ('call_soon_threadsafe', lambda: loop.call_soon_threadsafe(failing)),
        ('call_later', lambda: loop.call_later(10, failing)),
        ('call_at', lambda: loop.call_at(10.0, failing)),
    ]
    line = lineno() - 5
    for i, (method, make) in enumerate(cases):
        h = make()
        tb = h._source_traceback
        assert tb, method
        last = tb[-1]
        assert (last[0], last[1]) == (__file__, line + i), (method, last)
        assert last[2] == '<lambda>'
        # the frame of the caller of the lambda is just before
        assert (tb[-2][0], tb[-2][2]) == (__file__, 'test_source_traceback')
        assert repr(h).endswith(f' created at {__file__}:{line + i}>'), repr(h)


@pytest.mark.expect_exception_handler
def test_source_traceback_in_exception_context_and_log(loop, caplog):
    loop.set_debug(True)
    h = loop.call_soon(failing); line = lineno()  # noqa: E702
    h_repr = repr(h)
    loop.call_soon(loop.stop)
    loop.run_forever()
    records = asyncio_records(caplog, logging.ERROR)
    assert len(records) == 1
    msg = records[0].getMessage()
    head = f'Exception in callback {fmt_cb(failing, (), debug=True)}\nhandle: {h_repr}\n'
    assert msg.startswith(head + 'source_traceback: Object created at (most recent call last):\n'), msg
    assert f'File "{__file__}", line {line}, in test_source_traceback_in_exception_context_and_log' in msg
    assert msg.rstrip().endswith('h = loop.call_soon(failing); line = lineno()  # noqa: E702')


@pytest.mark.expect_exception_handler
def test_source_traceback_context_key(loop):
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    h = loop.call_soon(failing)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert set(contexts[0]) == {'message', 'exception', 'handle', 'source_traceback'}
    assert contexts[0]['source_traceback'] is h._source_traceback


@pytest.mark.expect_exception_handler
def test_handle_traceback_of_current_handle(loop, caplog):
    loop.set_debug(True)

    def report():
        loop.call_exception_handler({'message': 'reported from a callback'})

    loop.call_soon(report); line = lineno()  # noqa: E702
    loop.call_soon(loop.stop)
    loop.run_forever()
    msgs = [r.getMessage() for r in asyncio_records(caplog, logging.ERROR)]
    assert len(msgs) == 1
    assert msgs[0].startswith(
        'reported from a callback\nhandle_traceback: Handle created at (most recent call last):\n'), msgs[0]
    assert f'File "{__file__}", line {line}, in test_handle_traceback_of_current_handle' in msgs[0]


@pytest.mark.expect_exception_handler
def test_no_handle_traceback_outside_callbacks(loop, caplog):
    loop.set_debug(True)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_exception_handler({'message': 'outside'})
    assert [r.getMessage() for r in asyncio_records(caplog, logging.ERROR)] == ['outside']


@pytest.mark.parametrize('method', ['call_soon', 'call_later', 'call_at'])
def test_non_threadsafe_call_from_other_thread_in_debug(loop, method):
    loop.set_debug(True)
    errors = []
    args = {'call_soon': (), 'call_later': (0,), 'call_at': (1.0,)}[method]

    def other_thread():
        try:
            getattr(loop, method)(*args, lambda: None)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.call_soon_threadsafe(loop.stop)

    def start():
        threading.Thread(target=other_thread).start()

    loop.call_soon(start)
    loop.run_forever()
    assert errors == ['Non-thread-safe operation invoked on an event loop other than the current one']


def test_non_threadsafe_call_allowed_when_not_running_or_not_debug(loop):
    errors = []

    def other_thread():
        try:
            loop.call_soon(lambda: None)
        except RuntimeError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    loop.set_debug(True)
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()  # loop not running: no check

    loop.set_debug(False)
    loop.call_soon(lambda: (threading.Thread(target=other_thread).start(), loop.call_later(0.05, loop.stop)))
    loop.run_forever()
    assert errors == []


def test_call_soon_threadsafe_from_other_thread_in_debug(loop):
    loop.set_debug(True)
    done = []

    def other_thread():
        loop.call_soon_threadsafe(done.append, threading.get_ident())
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=other_thread).start())
    loop.run_forever()
    assert len(done) == 1


def test_debug_mode_coroutine_origin_tracking(loop):
    loop.set_debug(True)
    seen = []

    async def main():
        seen.append(sys.get_coroutine_origin_tracking_depth())

    before = sys.get_coroutine_origin_tracking_depth()
    loop.run_until_complete(main())
    assert seen[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_stop_flag_reset_after_base_exception(loop):
    def raiser():
        raise KeyboardInterrupt

    loop.call_soon(loop.stop)
    loop.call_soon(raiser)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    # the pending stop() request died with that run: the next run goes on until the next stop()
    calls = []
    loop.call_later(0.01, calls.append, 'timer')
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert calls == ['timer']


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
@pytest.mark.expect_exception_handler
def test_base_exception_in_exception_handler_propagates(loop, exc_type):
    def handler(lp, ctx):
        raise exc_type

    loop.set_exception_handler(handler)
    loop.call_soon(failing)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()


@pytest.mark.expect_exception_handler
def test_exception_handler_gets_timer_handle_with_args(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    h = loop.call_later(0, failing, 'a', 2)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert contexts[0]['handle'] is h
    assert contexts[0]['message'] == f'Exception in callback {fmt_cb(failing, ("a", 2))}'
