"""Echo benchmark: asyncio, uvloop, rloop, rsloop and ferroloop echo servers against a compiled client,
with a plain-Rust epoll server as the ceiling (see bench/echo/README.md).

    python bench/echo/run.py [--quick] [--reps N] [--duration S] [--loops a,b] [--styles ...]
                             [--transports tcp,unix,udp] [--sizes 1024,...] [--conns 1,32]
                             [--rate closed,5000,20000] [--markdown]

Every sample is a fresh server process pinned to one CPU and a fresh client pinned to the other;
samples are interleaved (each repetition runs every case on every loop, the loop order rotating).
By default the client runs a closed loop (each connection sends its next request when the echo of
the previous one is back); `--rate R` runs an open loop at R requests per second instead (every
server gets the same offered load; see bench/README.md, "Equal offered load").
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netbench as nb  # noqa: E402

SERVER_PY = HERE / 'server.py'
CLIENT = HERE / 'target' / 'release' / 'echo-client'
RUST_SERVER = HERE / 'target' / 'release' / 'echo-server'
STYLES = ('protocol', 'streams', 'sock')
TRANSPORTS = ('tcp', 'unix', 'udp', 'tls')
UDP_MAX = 65507  # the largest UDP payload over IPv4: larger sizes have no UDP case
TLS_SIZES = (1024, 16 * 1024)  # the TLS cases' default sizes (one record and a full 16 KiB record)
TLS_STYLES = ('protocol', 'streams')  # ssl= exists for create_server and start_server only
SIZES = (1024, 10 * 1024, 100 * 1024)
CONNS = (1, 32)
# --quick: the cases that matter most, a few seconds each
QUICK_CASES = [('protocol', 'tcp', 1024, 32), ('streams', 'tcp', 1024, 32), ('sock', 'tcp', 1024, 32),
               ('protocol', 'tcp', 1024, 1), ('protocol', 'unix', 1024, 32), ('protocol', 'tcp', 102400, 32),
               ('protocol', 'udp', 1024, 32), ('protocol', 'tls', 1024, 32)]
CLOSED = None  # the load of a case: None = closed loop, a number = open loop at that many req/s
CEILING = 'rust'  # the plain-Rust echo-server, one per (transport, size, conns)


def size_label(n):
    return f'{n // 1024} KiB' if n % 1024 == 0 else f'{n} B'


def load_label(rate):
    return 'closed' if rate is CLOSED else f'{rate:,.0f}/s'


def parse_rate(text):
    """'closed' or a positive number of requests per second (the loads of `--rate`)."""
    if text == 'closed':
        return CLOSED
    r = float(text)
    if not r > 0:
        raise ValueError('a rate must be above 0')
    return int(r) if r == int(r) else r


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--loops', type=nb.csv_list(nb.LOOPS), default=list(nb.LOOPS))
    p.add_argument('--styles', type=nb.csv_list(STYLES))
    p.add_argument('--transports', type=nb.csv_list(TRANSPORTS))
    p.add_argument('--sizes', type=nb.csv_list(None, int), help='message sizes in bytes (1024,10240,102400)')
    p.add_argument('--conns', type=nb.csv_list(None, int), help='concurrent connections (1,32)')
    p.add_argument('--rate', type=nb.csv_list(None, parse_rate), metavar='R[,R...]',
                   help='open loop: total requests per second over all connections, each connection '
                        'sending on its own fixed schedule whether or not its echoes are back; a list '
                        'runs each load as its own case, "closed" meaning the default closed loop '
                        '(e.g. closed,5000,20000)')
    p.add_argument('--max-inflight', type=int, default=16,
                   help='open loop: requests sent and not yet answered per connection (default 16)')
    p.add_argument('--max-queued', type=float, default=25.0, metavar='PCT',
                   help='open loop: a server is overloaded when more than PCT %% of the requests went out '
                        'while an earlier one on their connection was unanswered (default 25)')
    p.add_argument('--reps', type=int, default=3, help='samples per case and loop (default 3)')
    p.add_argument('--duration', type=float, help='measured seconds per sample (default 5, --quick 2)')
    p.add_argument('--warmup', type=float, help='warm-up seconds before measuring (default 1, --quick 0.5)')
    p.add_argument('--quick', action='store_true',
                   help=f'smoke run: {len(QUICK_CASES)} cases (unless selected), 2 s each')
    p.add_argument('--no-ceiling', action='store_true', help='skip the plain-Rust echo-server')
    p.add_argument('--server-cpu', type=int, help='CPU of the servers (default: the first allowed)')
    p.add_argument('--client-cpu', type=int, help='CPU of the client (default: the second allowed)')
    p.add_argument('--python', default=sys.executable, help='interpreter of the Python servers')
    p.add_argument('--fifo', type=int, metavar='PRIO',
                   help='run servers and clients as SCHED_FIFO at this priority (root; isolates the '
                        'latency figures from other load on the machine)')
    p.add_argument('--no-build', action='store_true', help='do not run cargo build first')
    p.add_argument('--markdown', action='store_true', help='also print a Markdown report')
    p.add_argument('--out', type=Path, default=HERE / 'results', help='where the raw JSON goes')
    a = p.parse_args(argv)
    a.cert = a.key = None  # made once per run when a TLS case is selected
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 1.0)
    srv, cli = nb.default_cpus()
    a.server_cpu = srv if a.server_cpu is None else a.server_cpu
    a.client_cpu = cli if a.client_cpu is None else a.client_cpu
    rates = a.rate or [CLOSED]
    if a.quick and not (a.styles or a.transports or a.sizes or a.conns):
        a.cases = [case + (r,) for case in QUICK_CASES for r in rates]
    else:
        # UDP: the datagram Protocol server only ('protocol'), sizes that fit in one datagram;
        # TLS (TCP + ssl=): protocol and streams, 1 KiB and 16 KiB unless --sizes says otherwise
        def sizes(tr):
            return a.sizes or (TLS_SIZES if tr == 'tls' else SIZES)
        a.cases = [(st, tr, sz, c, r) for tr in (a.transports or TRANSPORTS) for sz in sizes(tr)
                   for c in (a.conns or CONNS) for r in rates for st in (a.styles or STYLES)
                   if (tr != 'udp' or (st == 'protocol' and sz <= UDP_MAX)) and (tr != 'tls' or st in TLS_STYLES)]
        if not a.cases:
            p.error('no case in that selection (UDP runs --styles protocol with sizes up to 65507, '
                    'TLS --styles protocol,streams)')
    return a


def build():
    env = dict(os.environ, CARGO_TARGET_DIR=str(HERE / 'target'))
    r = subprocess.run(['cargo', 'build', '--release', '-q', '--manifest-path', str(HERE / 'Cargo.toml')],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f'cargo build of bench/echo failed:\n{r.stderr}')


def sample(a, case, loop):
    """One fresh server + one client run: the client's JSON (plus CPU percentages) or {'error'}."""
    style, transport, size, conns, rate = case
    path = f'/tmp/ferroloop-echo-{os.getpid()}.sock'
    where = {'unix': ['--unix', path], 'tcp': ['--tcp', '127.0.0.1:0'], 'udp': ['--udp', '127.0.0.1:0'],
             'tls': ['--tls', '127.0.0.1:0', '--cert', a.cert, '--key', a.key]}[transport]
    if loop == CEILING:
        cmd = [str(RUST_SERVER)] + where
    else:
        cmd = [a.python, str(SERVER_PY), '--loop', loop, '--style', style] + where
    srv = nb.Server(cmd, a.server_cpu)
    try:
        line = srv.read_line(30)
        if line and line.startswith('UNSUPPORTED '):
            return {'unsupported': line.split(' ', 1)[1]}
        if not line or not line.startswith('LISTENING '):
            return {'error': f'server did not start: {srv.error_tail()}'}
        _, kind, addr = line.split(' ', 2)
        client = [str(CLIENT), f'--{kind}', addr, '--conns', str(conns), '--size', str(size),
                  '--warmup', str(a.warmup), '--duration', str(a.duration),
                  '--server-pid', str(srv.pid), '--timeout', '10']
        if rate is not CLOSED:
            client += ['--rate', str(rate), '--max-inflight', str(a.max_inflight), '--max-queued', str(a.max_queued)]
        try:
            r = subprocess.run(client, capture_output=True, text=True, preexec_fn=nb.pin(a.client_cpu),
                               timeout=a.warmup + a.duration + 60)
        except subprocess.TimeoutExpired:
            return {'error': 'client timed out'}
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {'error': f'client exit {r.returncode}: {(r.stderr.strip() or "no output")[-200:]}'}
        if not srv.alive():
            res = {'error': f'server died ({res.get("error", "during the run")}): {srv.error_tail()}'}
        elif 'error' in res:
            res['error'] += f' [server stderr: {srv.error_tail()}]'
        elif res.get('seconds'):
            res['server_cpu_pct'] = 100 * res['server_cpu_s'] / res['seconds']
            res['client_cpu_pct'] = 100 * res['client_cpu_s'] / res['seconds']
        return res
    finally:
        srv.stop()
        if transport == 'unix' and os.path.exists(path):
            os.unlink(path)


def ceiling_case(case):
    return ('-',) + tuple(case[1:])


def collect(a, loops):
    """Interleaved samples: {(case, loop): [result, ...]}; the case order of the report."""
    groups = []  # (transport, size, conns) in first-seen order, each with its styles
    for case in a.cases:
        if case[1:] not in [g for g, _ in groups]:
            groups.append((case[1:], []))
        next(s for g, s in groups if g == case[1:]).append(case)
    plan = []  # [(case, [loops])] in run and report order
    for key, cases in groups:
        plan += [(case, loops) for case in cases]
        if not a.no_ceiling:
            plan.append((ceiling_case(cases[0]), [CEILING]))
    samples = {(case, lp): [] for case, lps in plan for lp in lps}
    total, done = len(samples) * a.reps, 0
    for rep in range(a.reps):
        for case, lps in plan:
            k = rep % len(lps)
            for loop in lps[k:] + lps[:k]:  # rotate, so nobody always goes first
                res = {'loop': loop, 'case': list(case[:4]), 'rep': rep, **sample(a, case, loop)}
                if a.rate:
                    res['load'] = load_label(case[4])
                samples[case, loop].append(res)
                done += 1
                note = (f'{res["req_per_s"]:,.0f} req/s' if 'req_per_s' in res
                        else res.get('error') or 'not supported: ' + res.get('unsupported', '?'))
                if res.get('overloaded'):
                    note += f' (overloaded: {res.get("overload")})'
                nb.progress(f'[{done}/{total}] rep {rep + 1} {"/".join(map(str, case))} {loop}: {note}')
        if not sys.stderr.isatty():
            print(f'rep {rep + 1}/{a.reps} done', file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return samples, [case for case, _ in plan]


def tls_cost_table(rows, markdown):
    """For each TLS row with a plain-TCP row of the same style, size, connections and server: server
    CPU per request over TLS / over plain TCP (what TLS costs on that loop; lower is better)."""
    us = {(tuple(r['case']), r['loop']): r['server_cpu_us_per_req'] for r in rows}
    loads = any(r['case'][4] is not CLOSED for r in rows)
    head = ['style', 'size', 'conns'] + (['load'] if loads else []) + ['loop', 'tcp µs/req', 'tls µs/req', 'tls / tcp']
    body = []
    for r in rows:
        st, tr, sz, c, rate = r['case']
        if tr != 'tls':
            continue
        tcp = us.get(((st, 'tcp', sz, c, rate), r['loop']))
        tls = r['server_cpu_us_per_req']
        if tcp and tls:
            body.append([r['case_cells'][0], size_label(sz), str(c)] + ([load_label(rate)] if loads else [])
                        + [r['loop'], nb.fmt_num(tcp, 1), nb.fmt_num(tls, 1), f'{tls / tcp:.2f}x'])
    if not body:
        return
    caption = '\nTLS cost: server CPU per request over TLS / over plain TCP, same loop and case (lower is better):\n'
    print(caption)
    left = 5 if loads else 4
    print(nb.plain_table(head, body, left=left, note=False))
    if markdown:
        print(caption)
        print(nb.markdown_table(head, body, left=left, note=False))


def mark_overloaded(samples):
    """Open loop: a sample whose server did not keep up with the offered rate (answered under 95 %
    of it, its backlog grew, or over --max-queued % of sends went out behind an unanswered request)
    has no valid CPU figure: its server CPU per request is moved aside. When that is so for at least
    half of a case's samples of a server, the server gets no CPU figure for that case at all.
    Returns {key: note} for the rows: 'OVERLOADED' or how many samples were dropped."""
    marks = {}
    for key, results in samples.items():
        over = [r for r in results if r.get('overloaded')]
        if not over:
            continue
        ok = [r for r in results if 'req_per_s' in r]
        invalid = over if 2 * len(over) < len(ok) else results
        for r in invalid:
            if nb.US in r:
                r[nb.US + '_invalid'] = r.pop(nb.US)
        reason = over[0].get('overload', '?')
        if invalid is results:
            marks[key] = ('overloaded', f'in {len(over)}/{len(ok)}: {reason}')
        else:
            marks[key] = ('dropped', f'{len(over)}/{len(ok)} overloaded, left out: {reason}')
    return marks


def ferroloop_table(rows, loops, markdown, ceiling):
    """ferroloop's server CPU per request divided by asyncio's, the plain-Rust server's and the
    cheapest compiled peer's (uvloop, rloop, rsloop), per case and load (lower is better)."""
    if 'ferroloop' not in loops:
        return
    us = {(tuple(r['case']), r['loop']): r['server_cpu_us_per_req'] for r in rows}
    loads = any(r['case'][4] is not CLOSED for r in rows)
    head = ['style', 'transport', 'size', 'conns'] + (['load'] if loads else []) + \
        ['ferroloop µs/req', '/ asyncio'] + (['/ plain Rust'] if ceiling else []) + ['/ best peer', 'best peer']
    body = []
    for r in rows:
        if r['loop'] != 'ferroloop':
            continue
        case = tuple(r['case'])
        st, tr, sz, c, rate = case
        fl = us.get((case, 'ferroloop'))
        peers = [(us[case, p], p) for p in nb.PEERS if us.get((case, p))]
        best = min(peers) if peers else (None, '-')
        cells = [st, tr, size_label(sz), str(c)] + ([load_label(rate)] if loads else [])
        ratio = lambda ref: f'{fl / ref:.2f}x' if fl and ref else '-'  # noqa: E731
        cells += [nb.fmt_num(fl, 1) if fl else '-', ratio(us.get((case, 'asyncio')))]
        if ceiling:
            cells.append(ratio(us.get((ceiling_case(case), CEILING))))
        cells += [ratio(best[0]), best[1]]
        body.append(cells)
    caption = ('\nferroloop server CPU per request / the other server\'s, same case and load '
               '(lower is better; "-": a figure is missing or its server was overloaded):\n')
    left = 5 if loads else 4
    print(caption)
    print(nb.plain_table(head, body, left=left))
    if markdown:
        print(caption)
        print(nb.markdown_table(head, body, left=left))


def mode_text(a):
    """Which load the figures are from, for the report."""
    closed = ('closed loop (each connection sends its next request when the echo of the previous one '
              'is back; req/s is the server\'s capacity)')
    if not a.rate:
        return closed
    opened = [r for r in a.rate if r is not CLOSED]
    text = (f'open loop at {", ".join(f"{r:,.0f}" for r in opened)} req/s (--rate: every server offered the '
            f'same load, each connection sending on a fixed schedule, up to {a.max_inflight} unanswered; '
            'latency from the scheduled send; a server answering under 95 % of the rate, whose backlog grew, '
            f'or that kept up only by taking queued requests of a connection together (over {a.max_queued:g} % '
            'of sends behind an unanswered request) is marked OVERLOADED and gets no CPU figure)')
    return text + ('; and ' + closed if CLOSED in a.rate else '')


def main(argv=None):
    a = parse_args(argv)
    nb.FIFO = a.fifo
    if not a.no_build:
        build()
    if any(case[1] == 'tls' for case in a.cases):
        a.cert, a.key = nb.make_cert()
    versions, skipped = nb.probe_loops(a.python, a.loops)
    for loop, why in skipped.items():
        print(f'skipping {loop}: {why}', file=sys.stderr)
    loops = [lp for lp in a.loops if lp in versions]
    if not loops:
        sys.exit('no usable loop')
    mode = mode_text(a)
    print(f'{len(a.cases)} cases x {len(loops)} loops x {a.reps} reps, {a.duration:g} s each '
          f'(+{a.warmup:g} s warm-up); server on CPU {a.server_cpu}, client on CPU {a.client_cpu}; {mode}',
          file=sys.stderr)
    samples, order = collect(a, loops)
    overloaded = mark_overloaded(samples)
    rows = nb.summarize(samples, order, loops + [CEILING], ceiling_key=lambda c: (ceiling_case(c), CEILING))
    for r in rows:
        st, tr, sz, c, rate = r['case']
        r['case_cells'] = [st if r['loop'] != CEILING else '(plain Rust)', tr, size_label(sz), str(c)] + \
            ([load_label(rate)] if a.rate else [])
        kind, note = overloaded.get((r['case'], r['loop']), (None, None))
        if kind:
            r[kind] = note  # 'overloaded': no CPU figure; 'dropped': from the samples that kept up
    meta = {'date': nb.now_stamp(), 'machine': nb.machine(), 'versions': versions, 'skipped': skipped,
            'reps': a.reps, 'duration': a.duration, 'warmup': a.warmup,
            'server_cpu': a.server_cpu, 'client_cpu': a.client_cpu, 'mode': mode}
    if a.rate:
        meta['max_inflight'] = a.max_inflight
    # the raw file keeps 'case' as (style, transport, size, conns), as plot.py reads it; the load apart
    saved = [dict(r, case=list(r['case'][:4]), **({'load': load_label(r['case'][4])} if a.rate else {}))
             for r in rows]
    path = nb.save(a.out, 'echo', {'meta': meta, 'rows': saved,
                                   'samples': [r for v in samples.values() for r in v]})
    intro = None
    if a.markdown:
        m = meta['machine']
        intro = (f'\n### Echo benchmark ({meta["date"][:8]})\n\n'
                 f'{m["cpu_model"]}, {m["nproc"]} CPUs, {m["platform"]}; server pinned to CPU {a.server_cpu}, '
                 f'client (bench/echo echo-client) to CPU {a.client_cpu}. Loops: '
                 + ', '.join(f'{k} {v}' for k, v in versions.items())
                 + f'. Median of {a.reps} fresh-process samples of {a.duration:g} s (after {a.warmup:g} s warm-up). '
                 + f'Load: {mode}. '
                 'req/s: request/response round trips per second over all connections (higher is better); '
                 'srv CPU µs/req: server CPU time (user+sys) per request (lower is better); '
                 'vs: ratio of req/s.\n')
    print(f'Load: {mode}.')
    nb.print_report(rows, ['style', 'transport', 'size', 'conns'] + (['load'] if a.rate else []), path, intro,
                    ceiling=not a.no_ceiling)
    tls_cost_table(rows, a.markdown)
    if a.rate:
        ferroloop_table(rows, loops, a.markdown, ceiling=not a.no_ceiling)
    failed = [r for r in rows if r['req_per_s'] is None and r['loop'] in ('ferroloop', CEILING)]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
