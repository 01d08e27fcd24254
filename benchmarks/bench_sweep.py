#!/usr/bin/env python3
"""Benchmark (issue 14): one `calculate_metrics.py sweep` process against separate `gen` processes.

    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py [--out DIR] [--num 32] [--batch 32]

Two grids on the embedded demo (32 Heun steps, metric fd_digits, CFG guide):
- the issue's grid: weights {1.5, 2.5} x intervals {[15, 21], [17, 22]} (4 settings);
- a GI Fig. 5 style grid: every [a, b] with a in 15..19, b in 19..23 at w = 2 (25 settings).
For each: wall time of the sweep process and of one `gen` process per setting (run one after the
other, as a user would), network evaluations per image of both (exact, from the tree of settings),
and whether the sweep's values equal the separate runs' printed values. Writes bench-sweep.md and
bench-sweep.json to --out (default: a new temporary folder) and prints the table. Wall times on a
shared machine include other tenants' load: rerun for a quiet measurement.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dnnlib  # noqa: E402
from edmguide.nets import loading  # noqa: E402
from edmguide.nets import presets
from edmguide.sampler import sampling
from edmguide.sweeps import sweep

FILES = presets.DEMO_FILES
GRIDS = {
    'issue grid (4 settings)': (['1.5', '2.5'], ['[15, 21]', '[17, 22]']),
    'Fig. 5 style grid (25 settings)': (['2'], ['[15..19, 19..23]']),
}


def _run(args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'calculate_metrics.py')] + args, cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f'calculate_metrics.py {" ".join(args)} failed:\n{result.stderr}')
    return wall, result.stdout


def _evaluations(weights, intervals):
    net = loading.load_networks(FILES.cond, None, 'cpu')[0]
    settings = sweep.expand_settings([float(w) for w in weights], sweep.parse_intervals(intervals), ['g'])
    schedule = sampling.SamplerOptions().schedule(net, device='cpu')
    guidance = sweep.setting_guidance(schedule, settings)
    made, separate = sampling.tree_evaluations(sampling.step_keys([(object(), g) for g in guidance], schedule))
    return settings, made.net + made.gnet, separate.net + separate.gnet


def bench(name, weights, intervals, num, batch, workdir):
    common = ['--net', FILES.cond, '--gnet', FILES.uncond, '--ref', FILES.ref, '--metrics', 'fd_digits',
              '--num', str(num), '--batch', str(batch), '--device', 'cpu']
    settings, made, separate = _evaluations(weights, intervals)
    outdir = os.path.join(workdir, name.split()[0] + '-' + str(len(settings)))
    sweep_wall, _ = _run(['sweep'] + common + ['--guidance', ','.join(weights), '--outdir', outdir]
                         + [f'--interval={i}' for i in intervals])
    with open(os.path.join(outdir, 'sweep.jsonl'), encoding='utf-8') as f:
        records = [json.loads(line) for line in f]
    gen_walls, equal = [], True
    for s, r in zip(settings, records):
        wall, out = _run(['gen'] + common + ['--guidance', repr(s.weight),
                                             f'--guidance_interval=[{s.interval.steps[0]}, {s.interval.steps[1]}]'])
        gen_walls.append(wall)
        equal &= out.strip() == f'fd_digits = {r["fd_digits"]:g}'
    return dict(grid=name, settings=len(settings), images=num, batch=batch, evals_sweep=made, evals_separate=separate,
                eval_ratio=made / separate, wall_sweep=sweep_wall, wall_separate=sum(gen_walls),
                wall_ratio=sweep_wall / sum(gen_walls), values_equal=bool(equal))


SECTION = 'sweep'
TITLE = '8. guidance sweeps: shared prefixes vs separate gen processes'
ORDER = 80


def run(ctx, num=32, batch=32, grids='all'):
    """Both grids (the issue grid alone, 2 images, in quick mode); rows of `bench`."""
    if ctx.quick:
        num, batch, grids = 2, 2, 'issue'
    chosen = {k: v for i, (k, v) in enumerate(GRIDS.items()) if grids == 'all' or grids == ('issue', 'fig5')[i]}
    rows = [bench(name, w, i, num, batch, ctx.tmpdir) for name, (w, i) in chosen.items()]
    return dict(rows=rows, num=num, batch=batch, omp_threads=os.environ.get('OMP_NUM_THREADS', 'unset'))


def markdown(result):
    lines = [f'Demo networks, {result["num"]} images, batch {result["batch"]}, OMP_NUM_THREADS={result["omp_threads"]}; '
             'separate = one `calculate_metrics.py gen` process per setting, run one after the other.', '',
             '| grid | settings | evals/img sweep | evals/img separate | ratio | wall sweep (s) | wall separate (s) | ratio | values equal |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in result['rows']:
        lines.append(f'| {r["grid"]} | {r["settings"]} | {r["evals_sweep"]} | {r["evals_separate"]} | {r["eval_ratio"]:.3f} | '
                     f'{r["wall_sweep"]:.1f} | {r["wall_separate"]:.1f} | {r["wall_ratio"]:.3f} | {r["values_equal"]} |')
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=None, help='results folder (default: a new temporary folder)')
    parser.add_argument('--num', type=int, default=32)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--grids', default='all', help="'all', 'issue' or 'fig5'")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix='bench-sweep-')
    os.makedirs(out, exist_ok=True)
    result = run(dnnlib.EasyDict(quick=False, tmpdir=out), num=args.num, batch=args.batch, grids=args.grids)
    text = markdown(result)
    with open(os.path.join(out, 'bench-sweep.md'), 'w', encoding='utf-8') as f:
        f.write(text)
    with open(os.path.join(out, 'bench-sweep.json'), 'w', encoding='utf-8') as f:
        json.dump(result['rows'], f, indent=1)
    print(text)
    print(f'written to {out}')


if __name__ == '__main__':
    main()
