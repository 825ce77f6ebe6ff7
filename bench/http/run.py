"""HTTP benchmark: an httptools Protocol server and a uvicorn app on asyncio, uvloop, rloop, rsloop
and ferroloop, loaded by wrk (see bench/http/README.md).

    python bench/http/run.py [--quick] [--reps N] [--duration S] [--loops a,b]
                             [--servers httptools,uvicorn] [--conns 1,32] [--markdown]

Every sample is a fresh server process pinned to one CPU, loaded by wrk (one thread) pinned to the
other; samples are interleaved (each repetition runs every case on every loop, order rotating).
"""

import argparse
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'echo'))
import netbench as nb  # noqa: E402

SERVERS = ('httptools', 'uvicorn', 'httptools-tls', 'uvicorn-tls')  # -tls: HTTPS, a self-signed cert made per run
# uvicorn --loop accepts its own names and any "module:factory" (uvicorn >= 0.36)
UVICORN_LOOP = {'asyncio': 'asyncio', 'uvloop': 'uvloop', 'rloop': 'rloop:new_event_loop',
                'rsloop': 'rsloop:new_event_loop', 'ferroloop': 'ferroloop:new_event_loop'}
BODY = b'Hello, World!'


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--loops', type=nb.csv_list(nb.LOOPS), default=list(nb.LOOPS))
    p.add_argument('--servers', type=nb.csv_list(SERVERS), default=list(SERVERS))
    p.add_argument('--conns', type=nb.csv_list(None, int), help='wrk connections (default 32,1; --quick 32)')
    p.add_argument('--reps', type=int, default=3, help='samples per case and loop (default 3)')
    p.add_argument('--duration', type=int, help='measured seconds per sample (default 5, --quick 2)')
    p.add_argument('--warmup', type=int, help='warm-up seconds (a separate wrk run; default 1)')
    p.add_argument('--quick', action='store_true', help='smoke run: 32 connections, 2 s per sample')
    p.add_argument('--server-cpu', type=int, help='CPU of the servers (default: the first allowed)')
    p.add_argument('--client-cpu', type=int, help='CPU of wrk (default: the second allowed)')
    p.add_argument('--python', default=sys.executable, help='interpreter of the servers')
    p.add_argument('--markdown', action='store_true', help='also print a Markdown report')
    p.add_argument('--out', type=Path, default=HERE / 'results', help='where the raw JSON goes')
    a = p.parse_args(argv)
    a.duration = a.duration or (2 if a.quick else 5)
    a.warmup = a.warmup if a.warmup is not None else 1
    a.conns = a.conns or ([32] if a.quick else [32, 1])
    srv, cli = nb.default_cpus()
    a.server_cpu = srv if a.server_cpu is None else a.server_cpu
    a.client_cpu = cli if a.client_cpu is None else a.client_cpu
    return a


def ensure_wrk():
    if shutil.which('wrk'):
        return shutil.which('wrk')
    if os.geteuid() == 0 and shutil.which('apt-get'):
        print('wrk not found: apt-get install -y wrk', file=sys.stderr)
        subprocess.run(['apt-get', 'install', '-y', '-q', 'wrk'], stdout=subprocess.DEVNULL)
        if not shutil.which('wrk'):  # maybe the package lists were never fetched
            subprocess.run(['apt-get', 'update', '-q'], stdout=subprocess.DEVNULL)
            subprocess.run(['apt-get', 'install', '-y', '-q', 'wrk'], stdout=subprocess.DEVNULL)
    if not shutil.which('wrk'):
        sys.exit('bench/http needs wrk (https://github.com/wg/wrk): install it, e.g. '
                 '`apt-get install -y wrk` as root, and run again')
    return shutil.which('wrk')


def probe_python_packages(python):
    r = subprocess.run([python, '-c', 'import httptools, uvicorn; print(uvicorn.__version__)'],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f'bench/http needs httptools and uvicorn in {python}: '
                 f'{python} -m pip install -r bench/requirements.txt')
    return r.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def get(port, path, timeout=2.0, tls=False):
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the self-signed certificate of the run
        conn = http.client.HTTPSConnection('127.0.0.1', port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_ready(srv, port, timeout=30.0, tls=False):
    """(True, loop class) once GET / answers correctly, else (False, reason)."""
    deadline = time.monotonic() + timeout
    last = 'no answer'
    while time.monotonic() < deadline:
        if not srv.alive():
            return False, f'server did not start: {srv.error_tail()}'
        try:
            status, body = get(port, '/', tls=tls)
            if status != 200 or body != BODY:
                return False, f'wrong answer to GET /: {status} {body[:60]!r}'
            return True, get(port, '/loop', tls=tls)[1].decode()
        except OSError as e:
            last = repr(e)
            time.sleep(0.1)
    return False, f'server not ready after {timeout:g} s: {last}'


UNIT = {'us': 1, 'ms': 1e3, 's': 1e6}


def run_wrk(a, wrk, port, conns, seconds, tls=False):
    """Runs wrk; (parsed dict, wrk CPU seconds). The dict has 'error' if wrk failed or saw errors."""
    url = f'{"https" if tls else "http"}://127.0.0.1:{port}/'
    cmd = [wrk, '-t1', f'-c{conns}', f'-d{seconds}s', '--latency', url]
    with tempfile.TemporaryFile('w+') as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=nb.pin(a.client_cpu))
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    cpu = ru.ru_utime + ru.ru_stime
    if p.returncode != 0:
        return {'error': f'wrk exit {p.returncode}: {text.strip()[-200:]}'}, cpu
    res = {}
    m = re.search(r'(\d+) requests in ([\d.]+)(\w+)', text)
    rps = re.search(r'Requests/sec:\s*([\d.]+)', text)
    if not (m and rps):
        return {'error': f'cannot parse wrk output: {text.strip()[-200:]}'}, cpu
    res['requests'] = int(m.group(1))
    res['seconds'] = float(m.group(2)) * {'ms': 1e-3, 's': 1, 'm': 60}.get(m.group(3), 1)
    res['req_per_s'] = float(rps.group(1))
    for pct, key in (('50', 'p50_us'), ('99', 'p99_us')):
        lm = re.search(rf'^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$', text, re.M)
        if lm:
            res[key] = float(lm.group(1)) * UNIT[lm.group(2)]
    bad = re.search(r'Non-2xx or 3xx responses:\s*(\d+)', text)
    sock = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', text)
    problems = []
    if bad:
        problems.append(f'{bad.group(1)} non-2xx responses')
    if sock and sum(map(int, sock.groups())):
        problems.append('socket errors: ' + sock.group(0).split(': ', 1)[1])
    if problems:
        res['error'] = '; '.join(problems)
    return res, cpu


def sample(a, wrk, case, loop):
    server, conns = case
    tls = server.endswith('-tls')
    port = free_port()
    if server.startswith('uvicorn'):
        cmd = [a.python, '-m', 'uvicorn', 'app:app', '--app-dir', str(HERE), '--host', '127.0.0.1',
               '--port', str(port), '--loop', UVICORN_LOOP[loop], '--http', 'httptools',
               '--no-access-log', '--log-level', 'warning']
        if tls:
            cmd += ['--ssl-certfile', a.cert, '--ssl-keyfile', a.key]
    else:
        cmd = [a.python, str(HERE / 'server.py'), '--loop', loop, '--port', str(port)]
        if tls:
            cmd += ['--cert', a.cert, '--key', a.key]
    srv = nb.Server(cmd, a.server_cpu)
    try:
        ok, info = wait_ready(srv, port, tls=tls)
        if not ok and not srv.alive() and 'NotImplementedError' in srv.error_tail(n=3):
            return {'unsupported': srv.error_tail()}  # the loop lacks the feature (e.g. rloop's ssl=): "–"
        if not ok:
            return {'error': info}
        if not info.startswith(loop + '.'):
            return {'error': f'wrong loop running: {info}'}
        if a.warmup:
            warm, _ = run_wrk(a, wrk, port, conns, a.warmup, tls)
            if 'error' in warm:
                return {'error': f'warm-up: {warm["error"]}'}
        cpu0 = nb.proc_cpu(srv.pid)  # the server is idle between the two wrk runs
        res, wrk_cpu = run_wrk(a, wrk, port, conns, a.duration, tls)
        cpu1 = nb.proc_cpu(srv.pid)
        if not srv.alive():
            return {'error': f'server died: {srv.error_tail()}'}
        if 'error' not in res and cpu0 is not None and cpu1 is not None and res['requests']:
            res['server_cpu_s'] = cpu1 - cpu0
            res['server_cpu_us_per_req'] = (cpu1 - cpu0) / res['requests'] * 1e6
            res['server_cpu_pct'] = 100 * (cpu1 - cpu0) / res['seconds']
            res['client_cpu_pct'] = 100 * wrk_cpu / res['seconds']
        res['loop_class'] = info
        return res
    finally:
        srv.stop()


def main(argv=None):
    a = parse_args(argv)
    wrk = ensure_wrk()
    uvicorn_version = probe_python_packages(a.python)
    if any(s.endswith('-tls') for s in a.servers):
        a.cert, a.key = nb.make_cert()
    versions, skipped = nb.probe_loops(a.python, a.loops)
    for loop, why in skipped.items():
        print(f'skipping {loop}: {why}', file=sys.stderr)
    loops = [lp for lp in a.loops if lp in versions]
    if not loops:
        sys.exit('no usable loop')
    cases = [(s, c) for s in a.servers for c in a.conns]
    print(f'{len(cases)} cases x {len(loops)} loops x {a.reps} reps, {a.duration} s each (+{a.warmup} s '
          f'warm-up); servers on CPU {a.server_cpu}, wrk on CPU {a.client_cpu}', file=sys.stderr)
    samples = {(case, lp): [] for case in cases for lp in loops}
    total, done = len(samples) * a.reps, 0
    for rep in range(a.reps):
        k = rep % len(loops)
        for case in cases:
            for loop in loops[k:] + loops[:k]:  # rotate, so nobody always goes first
                res = {'loop': loop, 'case': list(case), 'rep': rep, **sample(a, wrk, case, loop)}
                samples[case, loop].append(res)
                done += 1
                note = (f'{res["req_per_s"]:,.0f} req/s' if 'req_per_s' in res
                        else res.get('error') or 'not supported: ' + res.get('unsupported', '?'))
                nb.progress(f'[{done}/{total}] rep {rep + 1} {case[0]}/{case[1]} {loop}: {note}')
        if not sys.stderr.isatty():
            print(f'rep {rep + 1}/{a.reps} done', file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    rows = nb.summarize(samples, cases, loops)
    for r in rows:
        r['case_cells'] = [r['case'][0], str(r['case'][1])]
    wrk_version = subprocess.run([wrk, '-v'], capture_output=True, text=True).stdout.split('\n')[0]
    meta = {'date': nb.now_stamp(), 'machine': nb.machine(), 'versions': versions, 'skipped': skipped,
            'uvicorn': uvicorn_version, 'wrk': wrk_version, 'reps': a.reps, 'duration': a.duration,
            'warmup': a.warmup, 'server_cpu': a.server_cpu, 'client_cpu': a.client_cpu}
    path = nb.save(a.out, 'http', {'meta': meta, 'rows': rows,
                                   'samples': [r for v in samples.values() for r in v]})
    intro = None
    if a.markdown:
        m = meta['machine']
        intro = (f'\n### HTTP benchmark ({meta["date"][:8]})\n\n'
                 f'{m["cpu_model"]}, {m["nproc"]} CPUs, {m["platform"]}; server pinned to CPU {a.server_cpu}, '
                 f'{wrk_version.split(" [")[0]} (1 thread) to CPU {a.client_cpu}; uvicorn {uvicorn_version} '
                 '(--http httptools). Loops: ' + ', '.join(f'{k} {v}' for k, v in versions.items())
                 + f'. Median of {a.reps} fresh-process samples of {a.duration} s (after a {a.warmup} s wrk '
                 'warm-up). req/s: keep-alive GET / responses per second (higher is better); '
                 'srv CPU µs/req: server CPU time per request (lower is better); vs: ratio of req/s.\n')
    nb.print_report(rows, ['server', 'conns'], path, intro)
    failed = [r for r in rows if r['req_per_s'] is None and r['loop'] == 'ferroloop']
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
