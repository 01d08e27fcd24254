#!/usr/bin/env python
"""Train the embedded demo networks on scikit-learn's digits (CPU, one thread, deterministic).

    python scripts/train_demo.py --what=all --outdir=edmguide/demo/assets --seed=0

--what: cond | uncond | bad (EDM2 diffusion nets), features (the FD_digits feature/classifier net),
ref (reference statistics of the data under <outdir>/digits-features.pkl), or all (in that order:
features, ref, cond, uncond, bad). The library functions live in edmguide.demo.train/features.
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide.errors import run_cli  # noqa: E402

WHATS = ['cond', 'uncond', 'bad', 'features', 'ref', 'all']


def train_demo(what, outdir, seed=0, threads=1):
    """Produce the demo asset(s) `what` in `outdir`."""
    from edmguide.demo import features, train
    torch.set_num_threads(threads)
    todo = ['features', 'ref', 'cond', 'uncond', 'bad'] if what == 'all' else [what]
    for item in todo:
        start = time.time()
        if item == 'features':
            features.train_demo_features(outdir, seed=seed)
        elif item == 'ref':
            features.compute_demo_reference(outdir)
        else:
            train.train_demo_network(item, outdir, seed=seed)
        print(f'{item}: done in {time.time() - start:.0f}s', flush=True)


@click.command()
@click.option('--what', type=click.Choice(WHATS), default='all', show_default=True, help='What to train')
@click.option('--outdir', type=str, default='edmguide/demo/assets', show_default=True, help='Output folder')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed')
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True,
              help='Torch CPU threads (the shipped files were made with 1)')
def main(what, outdir, seed, threads):
    """Train the embedded demo networks and write them to OUTDIR."""
    run_cli(train_demo, what, outdir, seed=seed, threads=threads)


if __name__ == '__main__':
    main()
