"""One-way TLS transfer: 1 GiB from the compiled client into a sink server on each loop and into a
plain-Rust TLS server on the same OpenSSL and cipher (see bench/README.md, "TLS").

    python bench/echo/transfer.py [--quick] [--bytes N] [--reps 3] [--loops a,b] [--transports tls,tcp]
                                  [--ciphersuites TLS_AES_256_GCM_SHA384] [--markdown]

Each sample: a fresh server (bench/echo/server.py --style sink, a Protocol counting the bytes, or
echo-server --tls --sink) pinned to one CPU, and `echo-client --transfer BYTES` pinned to the other:
an 8-byte length, BYTES bytes in 256 KiB writes, then the client waits for the server's "DONE".
Throughput = BYTES / (first write .. DONE); server CPU per GiB from /proc/PID/stat over that window.
The client encrypts as much as the server decrypts: when `cli CPU` is near 100 % the client is the
limit (notably against the plain-Rust server), and `srv CPU s/GiB` is the figure to compare.
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netbench as nb  # noqa: E402
_spec = importlib.util.spec_from_file_location('echo_run', HERE / 'run.py')  # not bench/run.py
echo_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(echo_run)
CLIENT, RUST_SERVER, SERVER_PY, build = echo_run.CLIENT, echo_run.RUST_SERVER, echo_run.SERVER_PY, echo_run.build

CEILING = 'rust'
GIB = 1 << 30


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--loops', type=nb.csv_list(nb.LOOPS), default=list(nb.LOOPS))
    p.add_argument('--transports', type=nb.csv_list(('tls', 'tcp')), default=['tls'],
                   help='tls (default; with the plain-Rust TLS ceiling) and/or tcp (loops only)')
    p.add_argument('--bytes', type=int, help='bytes per transfer (default 1 GiB; --quick 128 MiB)')
    p.add_argument('--reps', type=int, help='samples per loop (default 3; --quick 1)')
    p.add_argument('--quick', action='store_true', help='smoke run: 128 MiB, 1 rep')
    p.add_argument('--ciphersuites', default='TLS_AES_256_GCM_SHA384', help='the TLS 1.3 suite the client offers')
    p.add_argument('--server-cpu', type=int, help='CPU of the servers (default: the first allowed)')
    p.add_argument('--client-cpu', type=int, help='CPU of the client (default: the second allowed)')
    p.add_argument('--python', default=sys.executable, help='interpreter of the Python servers')
    p.add_argument('--no-build', action='store_true', help='do not run cargo build first')
    p.add_argument('--markdown', action='store_true', help='also print a Markdown report')
    p.add_argument('--out', type=Path, default=HERE / 'results', help='where the raw JSON goes')
    a = p.parse_args(argv)
    a.bytes = a.bytes or (128 << 20 if a.quick else GIB)
    a.reps = a.reps or (1 if a.quick else 3)
    srv, cli = nb.default_cpus()
    a.server_cpu = srv if a.server_cpu is None else a.server_cpu
    a.client_cpu = cli if a.client_cpu is None else a.client_cpu
    return a


def sample(a, transport, loop):
    where = ['--tls', '127.0.0.1:0', '--cert', a.cert, '--key', a.key] if transport == 'tls' \
        else ['--tcp', '127.0.0.1:0']
    if loop == CEILING:
        cmd = [str(RUST_SERVER)] + where + ['--sink']
    else:
        cmd = [a.python, str(SERVER_PY), '--loop', loop, '--style', 'sink'] + where
    srv = nb.Server(cmd, a.server_cpu)
    try:
        line = srv.read_line(30)
        if line and line.startswith('UNSUPPORTED '):
            return {'unsupported': line.split(' ', 1)[1]}
        if not line or not line.startswith('LISTENING '):
            return {'error': f'server did not start: {srv.error_tail()}'}
        _, kind, addr = line.split(' ', 2)
        client = [str(CLIENT), f'--{kind}', addr, '--transfer', str(a.bytes), '--server-pid', str(srv.pid),
                  '--ciphersuites', a.ciphersuites]
        try:
            r = subprocess.run(client, capture_output=True, text=True, preexec_fn=nb.pin(a.client_cpu),
                               timeout=600)
        except subprocess.TimeoutExpired:
            return {'error': 'client timed out'}
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {'error': f'client exit {r.returncode}: {(r.stderr.strip() or "no output")[-200:]}'}
        if 'error' in res:
            res['error'] += f' [server: {srv.error_tail()}]'
        elif res.get('server_cpu_s') is not None:
            res['server_cpu_s_per_gib'] = res['server_cpu_s'] / (res['bytes'] / GIB)
        return res
    finally:
        srv.stop()


def main(argv=None):
    a = parse_args(argv)
    if not a.no_build:
        build()
    a.cert, a.key = nb.make_cert()
    versions, skipped = nb.probe_loops(a.python, a.loops)
    for loop, why in skipped.items():
        print(f'skipping {loop}: {why}', file=sys.stderr)
    loops = [lp for lp in a.loops if lp in versions]
    plan = [(tr, loops + ([CEILING] if tr == 'tls' else [])) for tr in a.transports]
    samples = {(tr, lp): [] for tr, lps in plan for lp in lps}
    print(f'{len(samples)} (transport, server) pairs x {a.reps} reps, {a.bytes / 2**20:,.0f} MiB each; '
          f'server on CPU {a.server_cpu}, client on CPU {a.client_cpu}', file=sys.stderr)
    total, done = len(samples) * a.reps, 0
    for rep in range(a.reps):
        for tr, lps in plan:
            k = rep % len(lps)
            for loop in lps[k:] + lps[:k]:
                res = {'loop': loop, 'transport': tr, 'rep': rep, **sample(a, tr, loop)}
                samples[tr, loop].append(res)
                done += 1
                note = (f'{res["mib_per_s"]:,.0f} MiB/s' if 'mib_per_s' in res
                        else res.get('error') or 'not supported')
                nb.progress(f'[{done}/{total}] rep {rep + 1} {tr} {loop}: {note}')
        if not sys.stderr.isatty():
            print(f'rep {rep + 1}/{a.reps} done', file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)

    def med(key, field):
        vals = [r[field] for r in samples.get(key, []) if r.get(field) is not None]
        return statistics.median(vals) if vals else None

    head = ['transport', 'server', 'MiB/s', 'spread', 'srv CPU s/GiB', 'srv CPU', 'cli CPU', 'vs asyncio', 'vs ceiling',
            'cipher', 'note']
    body, rows = [], []
    for tr, lps in plan:
        for loop in lps:
            res = samples[tr, loop]
            rates = [r['mib_per_s'] for r in res if 'mib_per_s' in r]
            m = med((tr, loop), 'mib_per_s')
            cpu = med((tr, loop), 'server_cpu_s_per_gib')
            row = {'transport': tr, 'loop': loop, 'mib_per_s': m, 'server_cpu_s_per_gib': cpu,
                   'error': next((r['error'] for r in res if 'error' in r), None),
                   'unsupported': next((r['unsupported'] for r in res if 'unsupported' in r), None)}
            rows.append(row)
            base, ceil = med((tr, 'asyncio'), 'mib_per_s'), med((tr, CEILING), 'mib_per_s')
            name = '(plain Rust)' if loop == CEILING else loop
            if m is None:
                mark = '–' if row['unsupported'] and not row['error'] else 'ERROR'
                note = 'not supported' if mark == '–' else (row['error'] or '')[:90].replace('|', '/')
                body.append([tr, name, mark, '', '', '', '', '', '', '', note])
                continue
            secs = med((tr, loop), 'seconds')
            body.append([tr, name, nb.fmt_num(m), f'{(max(rates) - min(rates)) / m:.0%}', nb.fmt_num(cpu, 2),
                         nb.pct(100 * med((tr, loop), 'server_cpu_s') / secs if secs else None),
                         nb.pct(100 * med((tr, loop), 'client_cpu_s') / secs if secs else None),
                         nb.fmt_ratio(m / base if base else None), nb.fmt_ratio(m / ceil if ceil else None),
                         next((r['cipher'] for r in res if 'cipher' in r), ''), ''])
    meta = {'date': nb.now_stamp(), 'machine': nb.machine(), 'versions': versions, 'skipped': skipped,
            'reps': a.reps, 'bytes': a.bytes, 'server_cpu': a.server_cpu, 'client_cpu': a.client_cpu}
    path = nb.save(a.out, 'transfer', {'meta': meta, 'rows': rows,
                                       'samples': [r for v in samples.values() for r in v]})
    print(nb.plain_table(head, body, left=2))
    print(f'\nraw: {path}')
    if a.markdown:
        m = meta['machine']
        print(f'\n### One-way TLS transfer ({meta["date"][:8]})\n\n'
              f'{m["cpu_model"]}, {m["nproc"]} CPUs, {m["platform"]}; server pinned to CPU {a.server_cpu}, '
              f'client to CPU {a.client_cpu}. Loops: ' + ', '.join(f'{k} {v}' for k, v in versions.items())
              + f'. {a.bytes / 2**20:,.0f} MiB client -> server, median of {a.reps} fresh servers; MiB/s higher '
              'is better, server CPU seconds per GiB lower is better; vs: ratio of MiB/s.\n')
        print(nb.markdown_table(head, body, left=2))
    return 1 if any(r['mib_per_s'] is None for r in rows if r['loop'] in ('ferroloop', CEILING)) else 0


if __name__ == '__main__':
    sys.exit(main())
