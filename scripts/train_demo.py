#!/usr/bin/env python
"""Train the embedded demo networks on scikit-learn's digits (CPU, one thread, deterministic).

    python scripts/train_demo.py --what=all --outdir=edmguide/demo/assets --seed=0

--what: cond | uncond | bad (EDM2 diffusion nets), features (the FD_digits feature/classifier net),
ref (reference statistics of the data under <outdir>/digits-features.pkl), convert (the .safetensors
and .npz copies the demo loads, from the pickles in <outdir>), or all (in that order: features, ref,
cond, uncond, bad, convert). Files that already exist are replaced only with --overwrite. The
library functions live in edmguide.demo.train/features/release.
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide.jobs import cli  # noqa: E402
from edmguide.util.errors import run_cli  # noqa: E402

WHATS = ['cond', 'uncond', 'bad', 'features', 'ref', 'convert', 'all']
ORDER = ['features', 'ref', 'cond', 'uncond', 'bad', 'convert']


def outputs_of(item, outdir):
    """The files step `item` writes in `outdir`."""
    from edmguide.demo import features, release, train
    if item == 'convert':
        return list(release.code_free_files(outdir).values())
    name = {'features': features.FEATURES_FILE, 'ref': features.REF_FILE}.get(item) or train.DEMO_NETWORKS[item].file
    return [os.path.join(outdir, name)] + ([] if item == 'ref' else [os.path.join(outdir, name.replace('.pkl', '.log.json'))])


def train_demo(what, outdir, seed=0, threads=1, overwrite=False):
    """Produce the demo asset(s) `what` in `outdir`; existing files are replaced only with `overwrite`
    (checked for every step before the first one runs)."""
    from edmguide.demo import features, release, train
    from edmguide.util.outputs import check_replaceable
    torch.set_num_threads(threads)
    todo = ORDER if what == 'all' else [what]
    for item in todo:
        for path in outputs_of(item, outdir):
            check_replaceable(path, '--outdir file', overwrite=overwrite)
    for item in todo:
        start = time.time()
        if item == 'features':
            features.train_demo_features(outdir, seed=seed)
        elif item == 'ref':
            features.compute_demo_reference(outdir)
        elif item == 'convert':
            for path in outputs_of('convert', outdir):  # allowed above; the converter keeps what exists
                if overwrite and os.path.lexists(path):
                    os.remove(path)
            release.write_code_free_copies(outdir)
        else:
            train.train_demo_network(item, outdir, seed=seed)
        print(f'{item}: done in {time.time() - start:.0f}s', flush=True)


@click.command(cls=cli.Command)
@click.option('--what', type=click.Choice(WHATS), default='all', show_default=True, help='What to train')
@click.option('--outdir', type=str, default='edmguide/demo/assets', show_default=True, help='Output folder')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed')
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True,
              help='Torch CPU threads (the shipped files were made with 1)')
@click.option('--overwrite', is_flag=True, help='Replace files that already exist in --outdir')
def main(what, outdir, seed, threads, overwrite):
    """Train the embedded demo networks and write them to OUTDIR."""
    run_cli(train_demo, what, outdir, seed=seed, threads=threads, overwrite=overwrite)


if __name__ == '__main__':
    main()
