"""Shared helpers of bench/echo/run.py and bench/http/run.py: loop probing, pinning, server
processes, /proc CPU accounting, medians and ratios, plain and Markdown tables."""

import datetime
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))
from scenarios import LOOPS  # noqa: E402  ('asyncio', 'uvloop', 'rloop', 'rsloop', 'ferroloop')

CLK_TCK = os.sysconf('SC_CLK_TCK')


def csv_list(choices, convert=str):
    def parse(text):
        items = [convert(x) for x in text.split(',') if x]
        bad = [x for x in items if choices is not None and x not in choices]
        if bad:
            raise ValueError(f'unknown {bad}; choose from {", ".join(map(str, choices))}')
        return items
    return parse


def probe_loops(python, loops):
    """{loop: version} of the usable loops, {loop: reason} of the skipped ones."""
    versions, skipped = {}, {}
    for loop in loops:
        try:
            r = subprocess.run([python, str(BENCH / 'scenarios.py'), '--probe', loop],
                               capture_output=True, text=True, timeout=60)
            info = json.loads(r.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            info = {'error': repr(e)}
        if 'version' in info:
            versions[loop] = info['version']
        else:
            skipped[loop] = info.get('skipped') or info.get('error')
    return versions, skipped


FIFO = None  # a SCHED_FIFO priority for the servers and clients (--fifo), None: the normal scheduler


def pin(cpu):
    """preexec_fn pinning the child to one CPU (None: no pinning), and with FIFO set, putting it in
    the SCHED_FIFO class (so other load on the machine cannot preempt it; the kernel's RT
    throttling still leaves 5 % of each CPU to the rest)."""
    if cpu is None and FIFO is None:
        return None

    def setup():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if FIFO is not None:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO))
    return setup


def default_cpus():
    """(server CPU, client CPU): the first two allowed CPUs, or (None, None) with fewer."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def proc_cpu(pid):
    """utime + stime (seconds, all threads) of a process, from /proc/PID/stat; None if gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            rest = f.read().rsplit(')', 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class Server:
    """A server subprocess; stderr goes to a temp file (read for error notes)."""

    def __init__(self, cmd, cpu, cwd=None, env=None):
        self.errfile = open(f'/tmp/netbench-{os.getpid()}-{time.monotonic_ns()}.err', 'w+')
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errfile, text=True,
                                     preexec_fn=pin(cpu), cwd=cwd, env=env, start_new_session=True)
        self.pid = self.proc.pid

    def read_line(self, timeout):
        """First stdout line (the LISTENING line), or None if it does not come in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                return self.proc.stdout.readline().strip() or None
            if self.proc.poll() is not None:
                return None
        return None

    def alive(self):
        return self.proc.poll() is None

    def error_tail(self, n=1):
        self.errfile.flush()
        self.errfile.seek(0)
        lines = [x for x in self.errfile.read().strip().splitlines() if x.strip()]
        code = self.proc.poll()
        tail = ' | '.join(lines[-n:]) if lines else 'no stderr'
        return f'exit {code}: {tail}' if code is not None else tail

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc.stdout.close()
        self.errfile.close()
        os.unlink(self.errfile.name)


# --- statistics ----------------------------------------------------------------------------------
US = 'server_cpu_us_per_req'
RATIOS = ('asyncio', 'uvloop', 'best')  # 'best' = the best of uvloop, rloop and rsloop in that case
PEERS = ('uvloop', 'rloop', 'rsloop')  # the compiled peers 'best' is taken from
BEST_LABEL = 'best(uv,r,rs)'


def summarize(samples, case_order, loops, ceiling_key=None):
    """samples: {(case, loop): [result]} with 'req_per_s' (or 'error'). Rows with medians and the
    ratios of req/s: vs asyncio, vs uvloop, vs best(uvloop, rloop, rsloop), vs the ceiling (ceiling_key(case)
    gives the (case, loop) of the reference sample list, or None)."""
    def med(key, field='req_per_s'):
        vals = [r[field] for r in samples.get(key, []) if r.get(field) is not None and 'error' not in r]
        return statistics.median(vals) if vals else None

    rows = []
    for case in case_order:
        for loop in loops:
            if (case, loop) not in samples:
                continue
            results = samples[case, loop]
            good = [r for r in results if 'error' not in r and r.get('req_per_s')]
            unsupported = next((r['unsupported'] for r in results if 'unsupported' in r), None)
            rates = [r['req_per_s'] for r in good]
            m = statistics.median(rates) if rates else None
            row = {'case': case, 'loop': loop, 'n': len(good), 'failed': len(results) - len(good), 'req_per_s': m,
                   'spread': (max(rates) - min(rates)) / m if m else None,
                   'error': next((r['error'] for r in results if 'error' in r), None),
                   'unsupported': unsupported}  # the loop lacks the feature: "–", not a failure
            row['failed'] -= sum('unsupported' in r for r in results)
            for f in ('server_cpu_us_per_req', 'p50_us', 'p99_us', 'p999_us', 'max_us', 'server_cpu_pct',
                      'client_cpu_pct', 'resent', 'queued_pct'):
                row[f] = med((case, loop), f)
            bests = [x for x in (med((case, p)) for p in PEERS) if x]
            refs = {'asyncio': med((case, 'asyncio')), 'uvloop': med((case, 'uvloop')),
                    'best': max(bests) if bests else None}
            if ceiling_key:
                refs['ceiling'] = med(ceiling_key(case))
            for name, ref in refs.items():
                row[f'vs_{name}'] = m / ref if m and ref else None
            # the same on CPU cost: reference's server µs/req / this one's (> 1: cheaper than it)
            cost = row['server_cpu_us_per_req']
            cheapest = [x for x in (med((case, p), US) for p in PEERS) if x]
            crefs = {'asyncio': med((case, 'asyncio'), US), 'uvloop': med((case, 'uvloop'), US),
                     'best': min(cheapest) if cheapest else None}
            if ceiling_key:
                crefs['ceiling'] = med(ceiling_key(case), US)
            for name, ref in crefs.items():
                row[f'cpu_vs_{name}'] = ref / cost if cost and ref else None
            rows.append(row)
    return rows


def fmt_ratio(x):
    return f'{x:.2f}x' if x else '-'


def pct(x):
    return f'{x:.0f}%' if x is not None else '-'


def fmt_num(x, digits=0):
    return f'{x:,.{digits}f}' if x is not None else '-'


def table_cells(rows, case_cols, ceiling=False):
    ratios = list(RATIOS) + (['ceiling'] if ceiling else [])
    head = case_cols + ['loop', 'req/s', 'spread', 'srv CPU µs/req', 'srv CPU', 'cli CPU', 'p50 µs', 'p99 µs'] + \
        [f'vs {BEST_LABEL if r == "best" else r}' for r in ratios] + ['note']
    body = []
    for r in rows:
        cells = list(r['case_cells']) + [r['loop']]
        if r['req_per_s'] is None and r.get('unsupported') and not r.get('error'):
            note = ('not supported: ' + r['unsupported'])[:90].replace('|', '/')
            cells += ['–'] + [''] * (len(head) - len(cells) - 2) + [note]
        elif r['req_per_s'] is None:
            note = (r.get('error') or 'no sample')[:90].replace('|', '/')
            cells += ['ERROR'] + [''] * (len(head) - len(cells) - 2) + [note]
        else:
            cells += [fmt_num(r['req_per_s']), f'{r["spread"]:.0%}', fmt_num(r['server_cpu_us_per_req'], 1),
                      pct(r.get('server_cpu_pct')), pct(r.get('client_cpu_pct')),
                      fmt_num(r['p50_us']), fmt_num(r['p99_us'])]
            cells += [fmt_ratio(r.get(f'vs_{x}')) for x in ratios]
            notes = [f'{r["n"]}/{r["n"] + r["failed"]} ok'] if r['failed'] else []
            if r.get('queued_pct') is not None:  # open loop: sends behind an unanswered request
                notes.append(f'queued {r["queued_pct"]:.1f}%')
            if r.get('overloaded'):  # open loop (echo --rate): the server did not keep up
                notes.append('OVERLOADED ' + r['overloaded'])
            elif r.get('dropped'):  # open loop: some samples did not keep up and were left out
                notes.append(r['dropped'])
            cells.append('; '.join(notes)[:120].replace('|', '/'))
        body.append(cells)
    return head, body


def cpu_table_cells(rows, case_cols, ceiling=False):
    """The server-CPU view: µs per request and how much cheaper than each reference (ref / this)."""
    ratios = list(RATIOS) + (['ceiling'] if ceiling else [])
    head = case_cols + ['loop', 'srv CPU µs/req', 'req per srv CPU-s'] + \
        [f'vs {BEST_LABEL if r == "best" else r}' for r in ratios]
    body = []
    for r in rows:
        us = r.get('server_cpu_us_per_req')
        cells = list(r['case_cells']) + [r['loop']]
        if not us:
            mark = ('–' if r.get('unsupported') and not r.get('error')
                    else 'OVERLOADED' if r.get('overloaded') else 'ERROR')
            cells += [mark] + [''] * (len(head) - len(cells) - 1)
        else:
            cells += [fmt_num(us, 1), fmt_num(1e6 / us)] + [fmt_ratio(r.get(f'cpu_vs_{x}')) for x in ratios]
        body.append(cells)
    return head, body


def plain_table(head, body, left=1, note=True):
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]

    def line(cells):  # the case columns and the last (note) column left-aligned, numbers right
        return '  '.join(str(c).ljust(w) if i < left or (note and i == len(widths) - 1) else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return '\n'.join([line(head), line(['-' * w for w in widths])] + [line(c) for c in body])


def markdown_table(head, body, left=1, note=True):
    out = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join(['---'] * left + ['---:'] * (len(head) - left - note) + ['---'] * note) + '|']
    return '\n'.join(out + ['| ' + ' | '.join(map(str, c)) + ' |' for c in body])


CPU_CAPTION = "\nServer CPU per request (vs X = X's µs/req / this one's: above 1 = cheaper than X):\n"


def print_report(rows, case_cols, path, markdown_intro=None, ceiling=False):
    """The req/s and server-CPU tables as plain text and the raw file's path; with
    `markdown_intro` (heading and method paragraph) the same tables again as Markdown."""
    left = len(case_cols) + 1  # the case columns and the loop
    head, body = table_cells(rows, case_cols, ceiling=ceiling)
    chead, cbody = cpu_table_cells(rows, case_cols, ceiling=ceiling)
    print(plain_table(head, body, left=left))
    print(CPU_CAPTION)
    print(plain_table(chead, cbody, left=left, note=False))
    print(f'\nraw: {path}')
    if markdown_intro is not None:
        print(markdown_intro)
        print(markdown_table(head, body, left=left))
        print(CPU_CAPTION)
        print(markdown_table(chead, cbody, left=left, note=False))


def make_cert():
    """A self-signed P-256 certificate for localhost in a fresh temporary directory (removed at
    exit): (cert path, key path). Made with the openssl command line tool."""
    import atexit
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix='ferroloop-bench-tls-')
    atexit.register(shutil.rmtree, d, True)
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    r = subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                        '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost'],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f'openssl req failed: {r.stderr.strip()[-300:]}')
    return cert, key


def machine():
    model = ''
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'nproc': os.cpu_count(), 'cpu_model': model or platform.processor(),
            'platform': platform.platform(), 'python': sys.version.split()[0]}


def now_stamp():
    return datetime.datetime.now().strftime('%Y%m%d-%H%M%S')


def save(out_dir, prefix, payload):
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f'{prefix}-{now_stamp()}.json'
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def progress(text):
    if sys.stderr.isatty():
        print(f'\r{text}'[:110].ljust(110), end='', file=sys.stderr, flush=True)
