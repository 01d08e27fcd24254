#!/usr/bin/env python3
"""Load time of a network: pickle vs `.safetensors` (issue 16), through `edmguide.nets.loading.load_network`.

    python benchmarks/bench_loading.py            # demo net + an img64-XXS-sized random EDM2 net (31M params)
    python benchmarks/bench_loading.py --quick    # demo net only, a few seconds
    python benchmarks/bench_loading.py --out benchmarks/results/loading-cpu.md

Both files hold the same float16 weights (the safetensors one is made by `edmguide.nets.convert`, with
its verification). Loads alternate pickle / safetensors for `--repeats` rounds; the table gives
medians of wall time and of process CPU time (on a shared machine wall time mostly measures the
other users' load). Loads happen in one process, so the pickle's embedded source is executed only
by the first pickle load (later ones reuse the module cache); the safetensors loader hashes all
weights (sha256) on every load, which dominates its time for large nets.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import dnnlib  # noqa: E402
from edmguide.nets import convert  # noqa: E402
from edmguide.nets import loading
from edmguide.nets import presets
from training import encoders, networks_edm2  # noqa: E402


def random_net(channels):
    """EDM2 img64-style Precond (64x64x3, 1000 classes) with every parameter random, in float16."""
    torch.manual_seed(0)
    net = networks_edm2.Precond(64, 3, 1000, model_channels=channels)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 0 else 1))
    return net.eval().requires_grad_(False).to(torch.float16)


def time_loads(path, repeats):
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        loading.load_network(path)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


SECTION = 'loading'
TITLE = '7. load time: pickle vs safetensors'
ORDER = 70


def run(ctx, repeats=5):
    """Median load times of the demo net (and, unless quick, a 31M-parameter random net) in both formats."""
    repeats = 2 if ctx.quick else repeats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [('demo digits-cond', os.path.join(presets.DEMO_DIR, 'digits-cond.pkl'))]
        if not ctx.quick:
            import pickle
            path = os.path.join(tmp, 'xxs.pkl')
            with open(path, 'wb') as f:
                pickle.dump(dnnlib.EasyDict(encoder=encoders.StandardRGBEncoder(), ema=random_net(64)), f)
            cases.append(('img64-XXS size (64 ch), random', path))
        for label, pkl in cases:
            st = os.path.join(tmp, os.path.basename(pkl).replace('.pkl', '.safetensors'))
            convert.convert(pkl, st, verbose=False)
            loading.load_network(pkl)  # first load executes the embedded source; not timed
            results = {}
            for _ in range(repeats):  # alternate so that load drift hits both alike
                for kind, path in (('pickle', pkl), ('safetensors', st)):
                    results.setdefault(kind, []).append(time_loads(path, 1))
            params = sum(p.numel() for p in loading.load_network(st)[0].parameters())
            for kind, path in (('pickle', pkl), ('safetensors', st)):
                rows.append(dict(net=label, params=params, format=kind, mib=os.path.getsize(path) / 2**20,
                                 wall_ms=statistics.median(r[0] for r in results[kind]) * 1000,
                                 cpu_ms=statistics.median(r[1] for r in results[kind]) * 1000))
    return dict(rows=rows, repeats=repeats, threads=torch.get_num_threads(), torch=torch.__version__)


def markdown(result):
    table = ['| net | params | format | MiB | wall ms (median) | CPU ms (median) |', '|---|---|---|---|---|---|']
    table += [f'| {r["net"]} | {r["params"] / 1e6:.1f}M | {r["format"]} | {r["mib"]:.1f} | {r["wall_ms"]:.0f} | {r["cpu_ms"]:.0f} |'
              for r in result['rows']]
    return ('\n'.join(table) + f'\n\n{result["repeats"]} loads each, alternating, torch threads {result["threads"]}, '
            f'torch {result["torch"]}.\n')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='demo net only')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', help='also write the markdown table to this file')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = markdown(run(dnnlib.EasyDict(quick=args.quick), repeats=args.repeats))
    print(text)
    if args.out:
        from edmguide.util.images import atomic_write
        atomic_write(args.out, text.encode('utf-8'))


if __name__ == '__main__':
    main()
