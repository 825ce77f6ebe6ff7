"""Run one module of CPython's test.test_asyncio in this process and stream per-test results.

Started by conformance/run.py, one process per module (and again, to resume, after a crash or a
per-test timeout). Not meant to be run by hand, but it can be:

    .venv/3.11/bin/python conformance/worker.py --module test_tasks --events /tmp/ev.jsonl

Output: one JSON object per line in --events:
    {"event": "hello", ...}                               the loop was patched and checked
    {"event": "start", "id": ...}                          a test began
    {"event": "result", "id": ..., "status": ..., ...}     a test ended
    {"event": "end", "duration": ...}                      the module finished normally
A test that was started but has no result when the process dies is the one that crashed or hung.
"""

import argparse
import faulthandler
import json
import os
import re
import sys
import time
import traceback
import unittest
from unittest import mock

PKG = 'test.test_asyncio'

# Test classes whose hook builds a stdlib loop class explicitly (the test mixins' parametrisation
# "run these tests on SelectorEventLoop(EpollSelector())" etc.): on --loop ferroloop the hook
# returns a ferroloop loop instead. Only the epoll variant is rebound; the same tests bound to
# the poll()/select() selectors are listed in not_applicable.txt (they would be duplicates).
#   module -> [(class, method, kind)]
#   kind 'factory': the method is `def hook(self): return <loop>`; replaced by one returning ferroloop.
#   kind 'selector-in-setup': setUp calls asyncio.SelectorEventLoop() directly; during setUp
#       that name resolves to the ferroloop factory.
HOOKS = {
    'test_events': [('EPollEventLoopTests', 'create_event_loop', 'factory')],
    'test_sock_lowlevel': [('EPollEventLoopTests', 'create_event_loop', 'factory')],
    'test_sendfile': [('EPollEventLoopTests', 'create_event_loop', 'factory')],
    'test_server': [('SelectorStartServerTests', 'new_loop', 'factory')],
    'test_buffered_proto': [('BufferedProtocolSelectorTests', 'new_loop', 'factory')],
    'test_sslproto': [('SelectorStartTLSTests', 'new_loop', 'factory')],
    'test_unix_events': [('SelectorEventLoopUnixSocketTests', 'setUp', 'selector-in-setup')],
}

# ferroloop loops created so far (recorded per test as `loops`: 0 means the test never ran on
# ferroloop, e.g. it uses test_utils.TestLoop or a mock loop only).
LOOPS_CREATED = 0

FERRO_PATH_RE = re.compile(r'[/\\]ferroloop[/\\]')


def patch_ferroloop():
    """Make every loop created through asyncio's public API a ferroloop.Loop.

    Patched on the classes, so that it survives asyncio.set_event_loop_policy(None) (which the
    test modules' tearDownModule call, creating a fresh default policy) and policy subclasses.
    asyncio.new_event_loop(), asyncio.events.new_event_loop(), asyncio.run(), asyncio.Runner and
    unittest.IsolatedAsyncioTestCase all create their loop through
    get_event_loop_policy().new_event_loop(), i.e. BaseDefaultEventLoopPolicy.new_event_loop(),
    which calls self._loop_factory() on 3.11, 3.12 and 3.13 alike.
    """
    import asyncio
    import asyncio.events
    import ferroloop

    def factory():
        global LOOPS_CREATED
        LOOPS_CREATED += 1
        return ferroloop.new_event_loop()
    policy_classes = [asyncio.events.BaseDefaultEventLoopPolicy, asyncio.DefaultEventLoopPolicy]
    if sys.platform != 'win32':
        import asyncio.unix_events
        policy_classes.append(asyncio.unix_events._UnixDefaultEventLoopPolicy)
    for cls in policy_classes:
        if '_loop_factory' not in vars(cls) and cls is not asyncio.events.BaseDefaultEventLoopPolicy:
            continue
        cls._loop_factory = staticmethod(factory)

    # Belt and braces: both public module-level new_event_loop names must produce ferroloop.
    for fn in (asyncio.new_event_loop, asyncio.events.new_event_loop,
               lambda: asyncio.DefaultEventLoopPolicy().new_event_loop()):
        loop = fn()
        try:
            if not isinstance(loop, ferroloop.Loop):
                raise SystemExit(f'conformance: patching failed, {fn!r} returned {type(loop)!r}')
        finally:
            loop.close()
    return ferroloop, factory


def install_hooks(module_name, factory):
    import asyncio
    mod = sys.modules[f'{PKG}.{module_name}']
    for cls_name, meth, kind in HOOKS.get(module_name, ()):
        cls = getattr(mod, cls_name, None)
        if cls is None:
            continue
        if kind == 'factory':
            setattr(cls, meth, lambda self: factory())
        elif kind == 'selector-in-setup':
            orig = getattr(cls, meth)

            def setUp(self, _orig=orig):
                with mock.patch.object(asyncio, 'SelectorEventLoop', factory):
                    return _orig(self)
            setattr(cls, meth, setUp)
        else:
            raise ValueError(kind)


def load_not_applicable(path, module_name):
    """Names (relative to test.test_asyncio) that do not apply; see not_applicable.txt."""
    names = set()
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                names.add(line)
    return {n for n in names if n == module_name or n.startswith(module_name + '.')}


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def normalize_id(test):
    """unittest's _ErrorHolder ids are 'setUpClass (pkg.mod.Class)'; make them 'pkg.mod.Class::setUpClass'."""
    tid = test.id()
    m = re.fullmatch(r'(\w+) \((.+)\)', tid)
    if m:
        return f'{m.group(2)}::{m.group(1)}'
    return tid


def describe(exc_info, test_file):
    """First line of the error, the ferroloop frame, the deepest test-file frame, the traceback."""
    etype, value, tb = exc_info
    lines = traceback.format_exception_only(etype, value)
    first = lines[-1].strip() if lines else repr(etype)
    # For AssertionError the message may span lines; keep the first meaningful line.
    first = first.splitlines()[0] if first else first
    frames = traceback.extract_tb(tb)
    ferro = [f for f in frames if FERRO_PATH_RE.search(f.filename)]
    test_real = os.path.realpath(test_file) if test_file else None
    in_test = [f for f in frames if test_real and os.path.realpath(f.filename) == test_real]

    def fmt(f):
        return f'{f.filename}:{f.lineno} in {f.name}: {(f.line or "").strip()}'
    # Frames inside asyncio/ferroloop seen from the exception's context chain too.
    chain_ferro = []
    v = value
    seen = set()
    while v is not None and id(v) not in seen:
        seen.add(id(v))
        for f in traceback.extract_tb(v.__traceback__):
            if FERRO_PATH_RE.search(f.filename):
                chain_ferro.append(f)
        v = v.__cause__ or v.__context__
    full = ''.join(traceback.format_exception(etype, value, tb))
    if len(full) > 8000:
        full = full[:3000] + '\n[...]\n' + full[-5000:]
    return {
        'message': first,
        'ferroloop_frame': fmt(ferro[-1]) if ferro else (fmt(chain_ferro[-1]) if chain_ferro else None),
        'test_frame': fmt(in_test[-1]) if in_test else None,
        'last_frame': fmt(frames[-1]) if frames else None,
        'traceback': full,
    }


class StreamingResult(unittest.TestResult):
    """Writes a start event and a result event per test to the events file (flushed each time)."""

    def __init__(self, events, test_timeout, test_file):
        super().__init__()
        self.events = events
        self.test_timeout = test_timeout
        self.test_file = test_file
        self._t0 = None
        self._outcome = None  # (status, details) of the current test
        self._subtest_failures = []

    def emit(self, **kw):
        self.events.write(json.dumps(kw) + '\n')
        self.events.flush()

    def startTest(self, test):
        super().startTest(test)
        self._t0 = time.monotonic()
        self._loops0 = LOOPS_CREATED
        self._outcome = None
        self._subtest_failures = []
        self.emit(event='start', id=normalize_id(test))
        if self.test_timeout:
            faulthandler.dump_traceback_later(self.test_timeout, exit=True)

    def stopTest(self, test):
        if self.test_timeout:
            faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        status, details = self._outcome or ('pass', {})
        if self._subtest_failures and status in ('pass', 'skip'):
            status = 'fail'
            details = dict(self._subtest_failures[0][1])
            details['subtests'] = [f'{d}: {info["message"]}' for d, info in self._subtest_failures[:20]]
        self.emit(event='result', id=normalize_id(test), status=status,
                  duration=round(time.monotonic() - (self._t0 or time.monotonic()), 3),
                  loops=LOOPS_CREATED - self._loops0, **details)

    def _set(self, status, details=None):
        # An error in tearDown after a failure keeps the first (more informative) outcome.
        if self._outcome is None or self._outcome[0] in ('pass', 'skip'):
            self._outcome = (status, details or {})

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set('pass')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set('fail', describe(err, self.test_file))

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._set('error', describe(err, self.test_file))
        else:
            # setUpModule/setUpClass/tearDown* errors come with an _ErrorHolder that is never
            # "started": report them as a test of their own.
            self.emit(event='start', id=normalize_id(test))
            self.emit(event='result', id=normalize_id(test), status='error', duration=0,
                      **describe(err, self.test_file))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if isinstance(test, unittest.TestCase):
            self._set('skip', {'message': reason})
        else:
            self.emit(event='start', id=normalize_id(test))
            self.emit(event='result', id=normalize_id(test), status='skip', duration=0, message=reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set('xfail', {'message': describe(err, self.test_file)['message']})

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set('upass', {'message': 'unexpected success'})

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._subtest_failures.append((subtest._subDescription(), describe(err, self.test_file)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--module', required=True)
    ap.add_argument('--loop', choices=('ferroloop', 'asyncio'), default='ferroloop')
    ap.add_argument('--events', required=True)
    ap.add_argument('--exclude-file', help='test ids not to run (done already, or crashed)')
    ap.add_argument('--not-applicable', default=os.path.join(os.path.dirname(__file__), 'not_applicable.txt'))
    ap.add_argument('--test-timeout', type=float, default=0)
    args = ap.parse_args()

    faulthandler.enable(all_threads=True)
    events = open(args.events, 'a', encoding='utf-8')

    def emit(**kw):
        events.write(json.dumps(kw) + '\n')
        events.flush()

    factory = None
    if args.loop == 'ferroloop':
        try:
            ferroloop, factory = patch_ferroloop()
            loop_desc = f'ferroloop {ferroloop.__version__} ({ferroloop.BUILD_PROFILE})'
        except BaseException as e:  # noqa: BLE001 - report any import/patch failure
            emit(event='fatal', message=f'ferroloop unusable: {type(e).__name__}: {e}',
                 traceback=traceback.format_exc())
            return 3
    else:
        loop_desc = 'asyncio (stdlib)'

    t0 = time.monotonic()
    modname = f'{PKG}.{args.module}'
    try:
        __import__(modname)
    except unittest.SkipTest as e:
        emit(event='hello', impl=loop_desc, python=sys.version.split()[0], pid=os.getpid())
        emit(event='start', id=f'{modname}::import')
        emit(event='result', id=f'{modname}::import', status='skip', duration=0, message=str(e))
        emit(event='end', duration=time.monotonic() - t0)
        return 0
    except BaseException as e:  # noqa: BLE001
        emit(event='hello', impl=loop_desc, python=sys.version.split()[0], pid=os.getpid())
        emit(event='start', id=f'{modname}::import')
        emit(event='result', id=f'{modname}::import', status='error', duration=0,
             **describe(sys.exc_info(), None))
        emit(event='end', duration=time.monotonic() - t0)
        return 0
    mod = sys.modules[modname]
    if factory is not None:
        install_hooks(args.module, factory)

    na = load_not_applicable(args.not_applicable, args.module)
    excluded = set()
    if args.exclude_file:
        with open(args.exclude_file, encoding='utf-8') as f:
            excluded = {line.strip() for line in f if line.strip()}

    def applicable(tid):
        rel = tid[len(PKG) + 1:] if tid.startswith(PKG + '.') else tid
        parts = rel.split('.')
        return not any('.'.join(parts[:i]) in na for i in range(1, len(parts) + 1))

    suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    selected = [t for t in iter_tests(suite)
                if applicable(t.id()) and normalize_id(t) not in excluded]
    n_na = sum(1 for t in iter_tests(unittest.defaultTestLoader.loadTestsFromModule(mod))
               if not applicable(t.id()))
    emit(event='hello', impl=loop_desc, python=sys.version.split()[0], pid=os.getpid(),
         selected=len(selected), not_applicable=n_na)

    result = StreamingResult(events, args.test_timeout, getattr(mod, '__file__', None))
    unittest.TestSuite(selected).run(result)
    emit(event='end', duration=time.monotonic() - t0)
    events.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
