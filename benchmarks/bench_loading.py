#!/usr/bin/env python3
"""Load time of a network: pickle vs `.safetensors` (issue 16), through `edmguide.loading.load_network`.

    python benchmarks/bench_loading.py            # demo net + an img64-XXS-sized random EDM2 net (31M params)
    python benchmarks/bench_loading.py --quick    # demo net only, a few seconds
    python benchmarks/bench_loading.py --out benchmarks/results/loading-cpu.md

Both files hold the same float16 weights (the safetensors one is made by `edmguide.convert`, with
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
from edmguide import convert, loading, presets  # noqa: E402
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='demo net only')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', help='also write the markdown table to this file')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [('demo digits-cond', os.path.join(presets.DEMO_DIR, 'digits-cond.pkl'))]
        if not args.quick:
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
            for _ in range(args.repeats):  # alternate so that load drift hits both alike
                for kind, path in (('pickle', pkl), ('safetensors', st)):
                    results.setdefault(kind, []).append(time_loads(path, 1))
            params = sum(p.numel() for p in loading.load_network(st)[0].parameters())
            for kind, path in (('pickle', pkl), ('safetensors', st)):
                wall = statistics.median(r[0] for r in results[kind])
                cpu = statistics.median(r[1] for r in results[kind])
                rows.append((label, f'{params / 1e6:.1f}M', kind, f'{os.path.getsize(path) / 2**20:.1f}',
                             f'{wall * 1000:.0f}', f'{cpu * 1000:.0f}'))
    table = ['| net | params | format | MiB | wall ms (median) | CPU ms (median) |',
             '|---|---|---|---|---|---|'] + ['| ' + ' | '.join(r) + ' |' for r in rows]
    text = '\n'.join(table) + f'\n\n{args.repeats} loads each, alternating, torch threads {args.threads}, torch {torch.__version__}.\n'
    print(text)
    if args.out:
        from edmguide.images import atomic_write
        atomic_write(args.out, text.encode('utf-8'))


if __name__ == '__main__':
    main()
