"""Plot an echo benchmark result: server CPU per request, every case, every loop, beside the
plain-Rust ceiling (lower is better; the CPU figure is the stable one on a shared machine).

    python bench/echo/plot.py [RESULT.json] [--out bench/echo/echo.png]

RESULT defaults to the newest file in bench/echo/results/. Needs matplotlib (bench/requirements.txt).
"""

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ('asyncio', 'uvloop', 'rloop', 'rsloop', 'ferroloop', 'rust')
COLORS = {'asyncio': '#9e9e9e', 'uvloop': '#1f77b4', 'rloop': '#ff7f0e', 'rsloop': '#9467bd', 'ferroloop': '#d62728',
          'rust': '#2ca02c'}
LABELS = {'rust': 'plain Rust (ceiling)'}


def size_label(n):
    return f'{n // 1024} KiB' if n % 1024 == 0 else f'{n} B'


def load(path):
    data = json.loads(path.read_text())
    cpu = {}   # (style, transport, size, conns) -> {loop: µs/req}
    for row in data['rows']:
        value = row.get('server_cpu_us_per_req')
        if value is None or row.get('error') or row.get('load', 'closed') != 'closed':
            continue  # a run with --rate: the closed-loop rows only
        cpu.setdefault(tuple(row['case']), {})[row['loop']] = value
    # The ceiling is measured once per (transport, size, conns): show it beside every style.
    ceiling = {k[1:]: v['rust'] for k, v in cpu.items() if 'rust' in v}
    for key, loops in cpu.items():
        if key[1:] in ceiling:
            loops.setdefault('rust', ceiling[key[1:]])
    return data['meta'], {k: v for k, v in cpu.items() if 'rust' not in v or len(v) > 1}


def plot(meta, cpu, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    styles = [st for st in ('protocol', 'streams', 'sock') if any(c[0] == st for c in cpu)]
    fig, axes = plt.subplots(len(styles), 1, figsize=(12, 3.6 * len(styles)), squeeze=False)
    for ax, style in zip(axes[:, 0], styles):
        cases = sorted((c for c in cpu if c[0] == style), key=lambda c: (c[1], c[2], c[3]))
        loops = [lp for lp in ORDER if any(lp in cpu[c] for c in cases)]
        width = 0.8 / len(loops)
        for i, lp in enumerate(loops):
            xs = [k + (i - (len(loops) - 1) / 2) * width
                  for k, c in enumerate(cases) if lp in cpu[c]]
            ys = [cpu[c][lp] for c in cases if lp in cpu[c]]
            ax.bar(xs, ys, width, label=LABELS.get(lp, lp), color=COLORS.get(lp))
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f'{t} {size_label(z)}\n{n} conn' for _, t, z, n in cases], fontsize=8)
        ax.set_yscale('log')
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel('µs server CPU / request')
        ax.set_title(f'{style} echo server', fontsize=10)
        ax.grid(axis='y', which='both', alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(ORDER))
    versions = ', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())
    m = meta.get('machine', {})
    fig.suptitle(f"Echo benchmark {meta.get('date', '')} (lower is better): CPython "
                 f"{m.get('python', '?')}, {m.get('cpu_model', '?')} x{m.get('nproc', '?')}; "
                 f"{versions}; median of {meta.get('reps')} x {meta.get('duration')} s",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('result', nargs='?', type=Path)
    p.add_argument('--out', type=Path, default=HERE / 'echo.png')
    a = p.parse_args(argv)
    path = a.result or max((HERE / 'results').glob('echo-*.json'))
    meta, cpu = load(path)
    if not cpu:
        raise SystemExit(f'{path}: no successful rows')
    print(plot(meta, cpu, a.out))


if __name__ == '__main__':
    main()
