#!/usr/bin/env python3
"""Conformance gate: CPython's own test.test_asyncio, run against ferroloop.

    python conformance/run.py                      # run every applicable module, print totals
    python conformance/run.py --check              # ... and gate on known_failures/<X.Y>.txt
    python conformance/run.py --modules test_tasks,test_locks -j 2
    python conformance/run.py --loop asyncio       # the same harness on the stdlib loop (baseline)
    python conformance/run.py --update             # rewrite the known-failures list from the
                                                   # latest results (drops tests that now pass)
    python conformance/run.py --update --add-new --reason "network I/O not implemented yet (issue 3)"

Run it with the interpreter of the venv under test (its own test.test_asyncio is used). See
conformance/README.md.
"""

import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'worker.py')
NOT_APPLICABLE = os.path.join(HERE, 'not_applicable.txt')
PKG = 'test.test_asyncio'
PYVER = f'{sys.version_info.major}.{sys.version_info.minor}'

FAILING = ('fail', 'error', 'upass')
PASSING = ('pass', 'xfail')

# Known to be the slowest; started first so that -j keeps both cores busy until the end.
# (Durations from a previous run in results/ take precedence.)
SLOW_FIRST = ['test_tasks', 'test_events', 'test_subprocess', 'test_streams', 'test_ssl',
              'test_sslproto', 'test_unix_events', 'test_sendfile', 'test_sock_lowlevel',
              'test_locks', 'test_queues', 'test_taskgroups', 'test_base_events']


def module_pseudo_id(module):
    return f'module:{module}'


def test_dir():
    spec = importlib.util.find_spec('test')
    if spec is None or not spec.submodule_search_locations:
        sys.exit('conformance: this interpreter has no `test` package (install python3-test?)')
    d = os.path.join(list(spec.submodule_search_locations)[0], 'test_asyncio')
    if not os.path.isdir(d):
        sys.exit(f'conformance: {d} not found')
    return d


def read_not_applicable():
    """Return (whole modules, all entries) of not_applicable.txt."""
    entries = {}
    with open(NOT_APPLICABLE, encoding='utf-8') as f:
        for line in f:
            name, _, reason = line.partition('#')
            name = name.strip()
            if name:
                entries[name] = reason.strip()
    return {n for n in entries if '.' not in n}, entries


def all_modules():
    d = test_dir()
    return sorted(f[:-3] for f in os.listdir(d) if f.startswith('test_') and f.endswith('.py'))


def results_dir(loop):
    return os.path.join(HERE, 'results', PYVER if loop == 'ferroloop' else f'{PYVER}-{loop}')


def known_failures_path(loop):
    name = f'{PYVER}.txt' if loop == 'ferroloop' else f'{PYVER}-{loop}.txt'
    return os.path.join(HERE, 'known_failures', name)


# --- running a module ---------------------------------------------------------------------------

def _read_events(path, offset):
    """Complete JSON lines from byte offset on; returns (events, new offset)."""
    with open(path, 'rb') as f:
        f.seek(offset)
        data = f.read()
    cut = data.rfind(b'\n') + 1  # a partial last line (killed mid-write) is left for later
    events = []
    for line in data[:cut].decode('utf-8', 'replace').splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events, offset + cut


def _log_tail(path, offset, max_chars=6000):
    try:
        with open(path, 'rb') as f:
            f.seek(offset)
            data = f.read().decode('utf-8', 'replace')
    except OSError:
        return ''
    return data[-max_chars:]


_FH_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _hang_details(log_text):
    """From a faulthandler dump: the current thread's innermost frames of interest."""
    idx = log_text.rfind('Timeout (')
    dump = log_text[idx:] if idx >= 0 else log_text
    # faulthandler prints the current thread as "Current thread ... (most recent call first):"
    # or, on timeout, "Thread 0x... (most recent call first):" for each; the main thread is the
    # last block. Take the block with the test frames.
    blocks = re.split(r'\n(?=(?:Current thread|Thread) 0x)', dump)
    main = blocks[-1] if blocks else dump
    frames = _FH_FRAME.findall(main)
    ferro = next((f for f in frames if '/ferroloop/' in f[0]), None)
    test = next((f for f in frames if '/test_asyncio/' in f[0]), None)
    fmt = (lambda f: f'{f[0]}:{f[1]} in {f[2]}' if f else None)
    return {'ferroloop_frame': fmt(ferro), 'test_frame': fmt(test),
            'last_frame': fmt(frames[0]) if frames else None}


def run_module(module, args, out_dir, stop_event):
    events_path = os.path.join(out_dir, f'{module}.events.jsonl')
    log_path = os.path.join(out_dir, f'{module}.log')
    exclude_path = os.path.join(out_dir, f'{module}.exclude')
    for p in (events_path, log_path):
        open(p, 'w').close()
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    tests = {}          # id -> result dict (without 'event'/'id')
    order = []
    status = 'ok'
    info = {}
    attempts = 0
    ev_offset = 0
    incidents = []
    while True:
        attempts += 1
        with open(exclude_path, 'w', encoding='utf-8') as f:
            f.write(''.join(t + '\n' for t in tests))
        log_offset = os.path.getsize(log_path)
        cmd = [sys.executable, '-X', 'faulthandler', WORKER, '--module', module, '--loop', args.loop,
               '--events', events_path, '--exclude-file', exclude_path,
               '--test-timeout', str(args.test_timeout)]
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        env.pop('PYTHONASYNCIODEBUG', None)
        with open(log_path, 'ab') as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=out_dir, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
                else:
                    # Leftover grandchildren (subprocess tests) of a dead worker.
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        events, ev_offset = _read_events(events_path, ev_offset)
        started = None
        ended = False
        fatal = None
        for ev in events:
            kind = ev.pop('event')
            if kind == 'hello':
                info = {k: v for k, v in ev.items() if k != 'pid'}
            elif kind == 'start':
                started = ev['id']
            elif kind == 'result':
                tid = ev.pop('id')
                if tid not in tests:
                    order.append(tid)
                tests[tid] = ev
                if started == tid:
                    started = None
            elif kind == 'end':
                ended = True
            elif kind == 'fatal':
                fatal = ev
        if fatal:
            status = 'fatal'
            info['fatal'] = fatal['message']
            info['traceback'] = fatal.get('traceback')
            break
        if ended:
            status = 'ok'
            break
        tail = _log_tail(log_path, log_offset)
        hung = 'Timeout (' in tail
        if timed_out:
            why = f'module timeout ({args.timeout:g} s) reached while this test ran'
        elif hung:
            why = f'hang: no result after the per-test timeout ({args.test_timeout:g} s); worker killed by faulthandler'
        else:
            why = f'crash: worker exited with status {proc.returncode} during this test'
        if started is not None:
            details = {'status': 'error', 'message': why, 'duration': None,
                       'traceback': tail[-4000:]}
            details.update({k: v for k, v in _hang_details(tail).items()})
            if started not in tests:
                order.append(started)
            tests[started] = details
        if timed_out:
            status = 'timeout'
            break
        if started is None:
            # Died outside any test (import, setUpModule, interpreter shutdown): give up.
            status = 'crash'
            info['crash'] = f'worker exited with status {proc.returncode} outside a test'
            info['traceback'] = tail[-4000:]
            break
        # Resume after the test that crashed/hung (it is recorded as an error of its own).
        incidents.append(f'{started}: {why}')
        status = 'too-many-crashes'
        if attempts > args.max_restarts or stop_event.is_set():
            break
    try:
        os.unlink(exclude_path)
    except OSError:
        pass
    duration = time.monotonic() - t0
    counts = {}
    for r in tests.values():
        counts[r['status']] = counts.get(r['status'], 0) + 1
    result = {
        'module': module, 'python': sys.version.split()[0], 'loop': args.loop,
        'status': status, 'attempts': attempts, 'incidents': incidents, 'duration': round(duration, 2), 'counts': counts,
        **{k: v for k, v in info.items()},
        'tests': {tid: tests[tid] for tid in order},
    }
    with open(os.path.join(out_dir, f'{module}.json'), 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
    os.unlink(events_path)
    return result


# --- known failures -----------------------------------------------------------------------------

def parse_known(path):
    """Return [(id or None, reason, raw line)] preserving comments and blank lines."""
    entries = []
    if not os.path.exists(path):
        return entries
    with open(path, encoding='utf-8') as f:
        for raw in f:
            raw = raw.rstrip('\n')
            body, _, reason = raw.partition('#')
            tid = body.strip() or None
            entries.append((tid, reason.strip(), raw))
    return entries


def module_of(tid):
    if tid.startswith('module:'):
        return tid[len('module:'):]
    rest = tid[len(PKG) + 1:] if tid.startswith(PKG + '.') else tid
    return rest.split('.', 1)[0].split('::', 1)[0]


def classify(results):
    """failing ids, passing ids, module-complete set, over the modules that ran."""
    failing, passing, seen, complete = {}, set(), set(), set()
    for mod, res in results.items():
        pid = module_pseudo_id(mod)
        if res['status'] == 'ok':
            passing.add(pid)
            complete.add(mod)
        else:
            failing[pid] = f"{res['status']}: " + (res.get('fatal') or res.get('crash') or
                                                   'see the tests marked as crash/hang')
        for tid, r in res['tests'].items():
            seen.add(tid)
            if r['status'] in FAILING:
                failing[tid] = r.get('message') or r['status']
            elif r['status'] in PASSING:
                passing.add(tid)
    return failing, passing, seen, complete


def check(results, known_path):
    known = {tid: reason for tid, reason, _ in parse_known(known_path) if tid}
    failing, passing, seen, complete = classify(results)
    ran_modules = set(results)
    new = sorted(t for t in failing if t not in known)
    fixed = sorted(t for t in known if t in passing and module_of(t) in ran_modules)
    stale = sorted(t for t in known if module_of(t) in complete and t not in seen
                   and not t.startswith('module:'))
    ok = True
    rel = os.path.relpath(known_path)
    if new:
        ok = False
        print(f'\nFAIL: {len(new)} failing test(s) not listed in {rel}:')
        for t in new:
            print(f'  {t}\n      {failing[t]}')
    if fixed:
        ok = False
        print(f'\nFAIL: now passing, remove from known failures ({rel}):')
        for t in fixed:
            print(f'  {t}')
        print('  (run `conformance/run.py --update` to drop them)')
    if stale:
        print(f'\nnote: {len(stale)} listed test(s) no longer exist (module ran completely); '
              f'`--update` drops them:')
        for t in stale:
            print(f'  {t}')
    listed_failing = sum(1 for t in failing if t in known)
    print(f'\ngate: {"PASS" if ok else "FAIL"} ({len(failing)} failing, {listed_failing} of them '
          f'listed as known; {len(known)} entries in {rel})')
    return ok


def update(results, known_path, add_new, reason):
    entries = parse_known(known_path)
    failing, passing, seen, complete = classify(results)
    ran_modules = set(results)
    known_ids = {tid for tid, _, _ in entries if tid}
    kept, dropped = [], []
    for tid, r, raw in entries:
        if tid and module_of(tid) in ran_modules and (
                tid in passing or (module_of(tid) in complete and tid not in seen
                                   and not tid.startswith('module:'))):
            dropped.append(tid)
            continue
        kept.append(raw)
    added = []
    if add_new:
        for tid in sorted(failing):
            if tid not in known_ids:
                why = reason or f'new failure: {failing[tid]}'
                added.append(f'{tid}  # {why}'.replace('\n', ' '))
    if not entries:
        kept = [f'# Known failures of CPython {PYVER} test.test_asyncio on ferroloop.',
                '# One test id per line, `# reason` after it. `module:test_x` = the module crashed/hung.',
                '# The list may only shrink: `conformance/run.py --check` fails when a listed test passes.',
                '']
    os.makedirs(os.path.dirname(known_path), exist_ok=True)
    with open(known_path, 'w', encoding='utf-8') as f:
        for line in kept + added:
            f.write(line + '\n')
    print(f'\nupdated {os.path.relpath(known_path)}: {len(dropped)} removed, {len(added)} added')
    for t in dropped:
        print(f'  - {t}')
    for t in added:
        print(f'  + {t}')
    not_added = sorted(t for t in failing if t not in known_ids) if not add_new else []
    if not_added:
        print(f'  {len(not_added)} unlisted failure(s) not added (use --add-new [--reason ...])')


# --- report -------------------------------------------------------------------------------------

def print_totals(results, wall):
    print(f'\n{"module":<24} {"status":<8} {"passed":>6} {"failed":>6} {"errors":>6} '
          f'{"skipped":>7} {"xfail":>5} {"time":>7} {"on-ferro":>8}')
    tot = {'pass': 0, 'fail': 0, 'error': 0, 'skip': 0, 'xfail': 0, 'upass': 0, 'ferro': 0}
    for mod in sorted(results):
        r = results[mod]
        c = dict(r['counts'])
        c['ferro'] = sum(1 for t in r['tests'].values() if t.get('loops'))
        for k in tot:
            tot[k] += c.get(k, 0)
        print(f'{mod:<24} {r["status"]:<8} {c.get("pass", 0):>6} {c.get("fail", 0) + c.get("upass", 0):>6} '
              f'{c.get("error", 0):>6} {c.get("skip", 0):>7} {c.get("xfail", 0):>5} {r["duration"]:>6.1f}s '
              f'{c["ferro"]:>8}')
    print(f'{"TOTAL":<24} {"":<8} {tot["pass"]:>6} {tot["fail"] + tot["upass"]:>6} {tot["error"]:>6} '
          f'{tot["skip"]:>7} {tot["xfail"]:>5} {"":>7} {tot["ferro"]:>8}')
    print('(on-ferro: tests that created at least one ferroloop loop; the others ran on '
          'test_utils.TestLoop, a mock or no loop at all)')
    print(f'wall time: {wall:.1f}s')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--check', action='store_true', help='gate on the known-failures list (exit 1 on failure)')
    ap.add_argument('--update', action='store_true',
                    help='rewrite the known-failures list from the latest results (alone: without running)')
    ap.add_argument('--add-new', action='store_true', help='with --update: also add unlisted failures')
    ap.add_argument('--reason', help='with --add-new: the `# reason` written for added entries')
    ap.add_argument('--modules', help='comma-separated modules (default: every applicable one)')
    ap.add_argument('--loop', choices=('ferroloop', 'asyncio'), default='ferroloop')
    ap.add_argument('--timeout', type=float, default=600, help='per module, seconds (default 600)')
    ap.add_argument('--test-timeout', type=float, default=60,
                    help='per test, seconds: a hang is dumped by faulthandler and the module resumed after it')
    ap.add_argument('--max-restarts', type=int, default=10, help='resumptions of a module after crashes/hangs')
    ap.add_argument('-j', '--jobs', type=int, default=2)
    args = ap.parse_args()

    whole_na, _ = read_not_applicable()
    available = all_modules()
    if args.modules:
        wanted = [m.strip() for m in args.modules.split(',') if m.strip()]
        unknown = [m for m in wanted if m not in available]
        if unknown:
            sys.exit(f'conformance: no such module(s) in {test_dir()}: {", ".join(unknown)}')
        na = [m for m in wanted if m in whole_na]
        if na:
            print(f'note: not applicable (not_applicable.txt), not run: {", ".join(na)}')
        modules = [m for m in wanted if m not in whole_na]
    else:
        modules = [m for m in available if m not in whole_na]

    out_dir = results_dir(args.loop)
    known_path = known_failures_path(args.loop)
    run_tests = args.check or not args.update

    if not run_tests:
        results = {}
        for m in modules:
            p = os.path.join(out_dir, f'{m}.json')
            if os.path.exists(p):
                with open(p, encoding='utf-8') as f:
                    results[m] = json.load(f)
        if not results:
            sys.exit(f'conformance: no results in {os.path.relpath(out_dir)}; run first')
        update(results, known_path, args.add_new, args.reason)
        return 0

    os.makedirs(out_dir, exist_ok=True)

    def prev_duration(m):
        try:
            with open(os.path.join(out_dir, f'{m}.json'), encoding='utf-8') as f:
                return json.load(f)['duration']
        except (OSError, ValueError, KeyError):
            return (len(SLOW_FIRST) - SLOW_FIRST.index(m)) * 10 if m in SLOW_FIRST else 0
    modules.sort(key=prev_duration, reverse=True)

    print(f'conformance: CPython {sys.version.split()[0]} test.test_asyncio on {args.loop}, '
          f'{len(modules)} module(s), -j{args.jobs}, timeout {args.timeout:g}s/module, '
          f'{args.test_timeout:g}s/test; results in {os.path.relpath(out_dir)}', flush=True)
    t0 = time.monotonic()
    results = {}
    stop = threading.Event()
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        futs = {ex.submit(run_module, m, args, out_dir, stop): m for m in modules}
        try:
            for fut in concurrent.futures.as_completed(futs):
                r = fut.result()
                with lock:
                    results[r['module']] = r
                    c = r['counts']
                    print(f'[{len(results)}/{len(modules)}] {r["module"]:<22} {r["status"]:<7} '
                          f'{r["duration"]:6.1f}s  pass={c.get("pass", 0)} fail={c.get("fail", 0) + c.get("upass", 0)} '
                          f'error={c.get("error", 0)} skip={c.get("skip", 0)}'
                          + (f'  ({r["fatal"]})' if r.get('fatal') else ''), flush=True)
        except KeyboardInterrupt:
            stop.set()
            raise
    wall = time.monotonic() - t0
    print_totals(results, wall)

    fatal = [r for r in results.values() if r['status'] == 'fatal']
    if fatal:
        print(f'\nFATAL: {fatal[0]["fatal"]}')
    ok = True
    if args.check:
        ok = check(results, known_path) and not fatal
    if args.update:
        update(results, known_path, args.add_new, args.reason)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
