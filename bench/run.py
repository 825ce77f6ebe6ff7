"""Micro-benchmarks: asyncio, uvloop, rloop, rsloop and ferroloop side by side (see bench/README.md).

    python bench/run.py [--quick] [--reps N] [--scale S] [--loops a,b] [--scenarios x,y]
                        [--cpu N|none] [--markdown]

Every sample is a fresh process (bench/scenarios.py) pinned to one CPU; the samples are
interleaved (each repetition runs every scenario on every loop, in a rotating loop order), so
drift of the machine (thermal, other load) spreads over all loops instead of biasing one.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scenarios import EXTRA_LOOPS, LOOPS, SCENARIOS  # noqa: E402

sys.path.insert(0, str(HERE / 'echo'))
from netbench import machine  # noqa: E402  (one description of the machine for every bench)

WORKER = str(HERE / 'scenarios.py')
BASELINES = ('asyncio', 'uvloop', 'rloop', 'rsloop', 'ferroloop')  # the ratio columns: loop / baseline


def csv_list(choices):
    def parse(text):
        items = [x for x in text.split(',') if x]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f'unknown {bad}; choose from {", ".join(choices)}')
        return items
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--loops', type=csv_list(LOOPS + EXTRA_LOOPS), default=list(LOOPS),
                   help='comma-separated subset (ferroloop-timed: ferroloop with enable_timing on)')
    p.add_argument('--scenarios', type=csv_list(list(SCENARIOS)), default=list(SCENARIOS),
                   help='comma-separated subset')
    p.add_argument('--reps', type=int, help='samples per scenario and loop (default 5, --quick 3)')
    p.add_argument('--scale', type=float, help='multiplies every operation count (default 1.0)')
    p.add_argument('--quick', action='store_true', help='smoke run: --scale 0.1 --reps 3')
    p.add_argument('--cpu', default='auto',
                   help='CPU to pin each worker to: a number, "auto" (the last allowed one) or "none"')
    p.add_argument('--python', default=sys.executable, help='interpreter for the workers')
    p.add_argument('--timeout', type=float, default=300, help='seconds before a worker is killed')
    p.add_argument('--markdown', action='store_true', help='also print a Markdown report')
    p.add_argument('--out', type=Path, default=HERE / 'results', help='where the raw JSON goes')
    a = p.parse_args(argv)
    a.reps = a.reps or (3 if a.quick else 5)
    a.scale = a.scale or (0.1 if a.quick else 1.0)
    if a.cpu == 'auto':
        a.cpu = max(os.sched_getaffinity(0))  # CPU 0 usually takes more interrupts
    elif a.cpu == 'none':
        a.cpu = None
    else:
        a.cpu = int(a.cpu)
    return a


def run_json(cmd, timeout):
    """Run a worker; its last stdout line as JSON, or {'error': ...}."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'timeout after {timeout:g} s'}
    lines = r.stdout.strip().splitlines()
    if lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    tail = (r.stderr.strip().splitlines() or ['no output'])[-1]
    return {'error': f'exit {r.returncode}: {tail}'}


def probe(a):
    """{loop: version} of the usable loops, {loop: reason} of the skipped ones."""
    versions, skipped = {}, {}
    for loop in a.loops:
        info = run_json([a.python, WORKER, '--probe', loop], 60)
        if 'version' in info:
            versions[loop] = info['version']
        else:
            skipped[loop] = info.get('skipped') or info.get('error')
    return versions, skipped


def collect(a, loops):
    """Interleaved samples: {(scenario, loop): [result dict, ...]}."""
    samples = {(s, lp): [] for s in a.scenarios for lp in loops}
    total, done = len(samples) * a.reps, 0
    for rep in range(a.reps):
        order = loops[rep % len(loops):] + loops[:rep % len(loops)]  # nobody always goes first
        for scenario in a.scenarios:
            for loop in order:
                cmd = [a.python, WORKER, scenario, loop, '--scale', str(a.scale)]
                if a.cpu is not None:
                    cmd += ['--cpu', str(a.cpu)]
                res = {'scenario': scenario, 'loop': loop, 'rep': rep, **run_json(cmd, a.timeout)}
                samples[scenario, loop].append(res)
                done += 1
                if sys.stderr.isatty():  # a progress line in a terminal, nothing in logs
                    note = (f'{res["ops_per_cpu_s"]:,.0f} ops/CPU-s' if 'ops_per_cpu_s' in res
                            else res.get('error') or res.get('unsupported'))
                    print(f'\r[{done}/{total}] rep {rep + 1} {scenario:<15} {loop:<10} {note}'[:100].ljust(100),
                          end='', file=sys.stderr, flush=True)
        if not sys.stderr.isatty():
            print(f'rep {rep + 1}/{a.reps} done', file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return samples


def summarize(samples):
    """Rows: scenario, loop, median ops/CPU-s and ops/wall-s, spread, ratios to the baselines."""
    med = {}
    rows = []
    for (scenario, loop), results in samples.items():
        good = [r for r in results if r.get('ops_per_cpu_s')]
        errors = [r['error'] for r in results if 'error' in r]
        unsupported = next((r['unsupported'] for r in results if 'unsupported' in r), None)
        cpu = [r['ops_per_cpu_s'] for r in good]
        m = statistics.median(cpu) if cpu else None
        med[scenario, loop] = m
        rows.append({
            'scenario': scenario, 'loop': loop, 'n': len(good), 'median_ops_per_cpu_s': m,
            'median_ops_per_wall_s': statistics.median(r['ops_per_wall_s'] for r in good) if good else None,
            # (max - min) / median: how much the samples disagree; large means noisy numbers
            'spread': (max(cpu) - min(cpu)) / m if cpu else None,
            'error': errors[0] if errors else None,
            'unsupported': unsupported,  # the loop lacks the feature: "–", not a failure
        })
    for row in rows:
        for base in BASELINES:
            b, m = med.get((row['scenario'], base)), row['median_ops_per_cpu_s']
            row[f'vs_{base}'] = m / b if m and b else None
    return rows


def geomean_rows(rows, loops):
    """Per loop, the geometric mean of its ratios over the scenarios that have both numbers."""
    out = []
    for loop in loops:
        row = {'scenario': 'geomean', 'loop': loop}
        for base in BASELINES:
            vals = [r[f'vs_{base}'] for r in rows if r['loop'] == loop and r[f'vs_{base}']]
            row[f'vs_{base}'] = statistics.geometric_mean(vals) if vals else None
        out.append(row)
    return out


def fmt_ratio(x):
    return f'{x:.2f}x' if x else '-'


def fmt_rate(x):
    return f'{x:,.0f}' if x else '-'


def table_cells(rows, baselines):
    head = ['scenario', 'loop', 'ops/CPU-s', 'ops/wall-s', 'spread'] + [f'vs {b}' for b in baselines]
    body = []
    for r in rows:
        cells = [r['scenario'], r['loop'], fmt_rate(r.get('median_ops_per_cpu_s')),
                 fmt_rate(r.get('median_ops_per_wall_s')),
                 f'{r["spread"]:.0%}' if r.get('spread') is not None else '']
        cells += [fmt_ratio(r.get(f'vs_{b}')) for b in baselines]
        if r.get('error') and not r.get('median_ops_per_cpu_s'):
            cells[2] = 'ERROR'
        elif r.get('unsupported') and not r.get('median_ops_per_cpu_s'):
            cells[2] = '–'
        body.append(cells)
    return head, body


def plain_table(head, body):
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: '  '.join(str(c).rjust(w) if i > 1 else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return '\n'.join([line(head), line(['-' * w for w in widths])] + [line(c) for c in body])


def markdown_table(head, body):
    out = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * 2 + ['---:'] * (len(head) - 2)) + '|']
    return '\n'.join(out + ['| ' + ' | '.join(c) + ' |' for c in body])


def pinning(cpu):
    return 'workers not pinned' if cpu is None else f'workers pinned to CPU {cpu}'


def main(argv=None):
    a = parse_args(argv)
    python = subprocess.run([a.python, '-c', 'import sys; print(sys.version.split()[0])'],
                            capture_output=True, text=True, check=True).stdout.strip()
    versions, skipped = probe(a)
    for loop, why in skipped.items():
        print(f'skipped {loop}: {why}', file=sys.stderr)
    loops = [lp for lp in a.loops if lp in versions]
    if not loops:
        sys.exit('no loop to benchmark')
    meta = {'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'python': python, 'versions': versions, 'skipped': skipped, 'machine': machine(),
            'scale': a.scale, 'reps': a.reps, 'cpu': a.cpu,
            'metric': 'operations per CPU-second (process_time of the worker, all threads)'}
    print(f'Python {python}; ' + ', '.join(f'{k} {v}' for k, v in versions.items())
          + f'; scale {a.scale:g}, {a.reps} reps, ' + pinning(a.cpu), file=sys.stderr)

    samples = collect(a, loops)
    rows = summarize(samples)
    # 'vs ferroloop' only when ferroloop-timed is measured beside it (the cost of timing)
    baselines = [b for b in BASELINES if b in loops
                 and (b != 'ferroloop' or 'ferroloop-timed' in loops)]
    head, body = table_cells(rows + (geomean_rows(rows, loops) if baselines else []), baselines)
    print(plain_table(head, body))
    for r in rows:
        if r['error'] or r.get('unsupported'):
            print(f'note: {r["scenario"]} on {r["loop"]}: {r["error"] or "not supported: " + r["unsupported"]}')

    a.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S') + f'-{os.getpid()}'
    path = a.out / f'bench-{stamp}.json'
    path.write_text(json.dumps({'meta': meta, 'summary': rows,
                                'samples': [r for res in samples.values() for r in res]}, indent=1))
    print(f'raw results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}')

    if a.markdown:
        m = meta['machine']
        print(f'\n### Benchmarks ({meta["date"][:10]})\n\n'
              f'Python {python}; ' + ', '.join(f'{k} {v}' for k, v in versions.items())
              + f'. {m["cpu_model"]}, {m["nproc"]} CPUs, {pinning(a.cpu)}. '
              f'Median of {a.reps} fresh-process runs at scale {a.scale:g}; '
              f'"vs X" = ops per CPU-second divided by X\'s; higher is better.\n')
        print(markdown_table(head, body))
    failed = any(r['error'] for r in rows)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
