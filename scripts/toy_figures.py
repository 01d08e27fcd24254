#!/usr/bin/env python
"""Render the toy figures: guidance interval in 1D (gi_1d.png) and autoguidance in 2D (ag_2d.png).

    python scripts/toy_figures.py --outdir docs/figures              # from the shipped MLPs, < 1 min
    python scripts/toy_figures.py --outdir docs/figures --retrain    # retrain the 2D MLPs first

--retrain writes new pickles and JSON logs to --assets (default: edmguide/toys/assets, the shipped
ones). Runs on the CPU with one thread. The library code lives in edmguide.toys.
"""

import os
import sys

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide.jobs import cli  # noqa: E402
from edmguide.util.errors import UserError, run_cli  # noqa: E402

FIGURES = ('gi_1d', 'ag_2d')


def toy_figures(outdir, *, retrain=False, assets_dir=None, which=FIGURES, models=None, log=print):
    """Render the figures `which` into `outdir`; return {name: path}."""
    from edmguide.toys import ag_2d, gi_1d
    assets_dir = assets_dir or ag_2d.ASSETS_DIR
    torch.set_num_threads(1)
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    if 'gi_1d' in which:
        paths['gi_1d'] = os.path.join(outdir, 'gi_1d.png')
        gi_1d.render(paths['gi_1d'])
        log(f'wrote {paths["gi_1d"]}')
    if 'ag_2d' in which:
        if retrain:
            for name in (models or ag_2d.MODELS):
                log(f'training {name} ...')
                _, record = ag_2d.train_model(name, assets_dir=assets_dir, log=log)
                log(f'{name}: {record["seconds"]:.0f}s, final loss {record["final_loss"]:.4f}')
        missing = [p for p in map(lambda n: ag_2d.model_path(n, assets_dir), ag_2d.MODELS) if not os.path.isfile(p)]
        if missing:
            raise UserError(f'{missing[0]}: toy model pickle not found (run with --retrain)')
        ag_models = ag_2d.load_models(assets_dir)
        paths['ag_2d'] = os.path.join(outdir, 'ag_2d.png')
        ag_2d.render(paths['ag_2d'], ag_models)
        log(f'wrote {paths["ag_2d"]}')
    return paths


@click.command(cls=cli.Command)
@click.option('--outdir', help='Where to write the PNGs', metavar='DIR', type=str, default='docs/figures', show_default=True)
@click.option('--retrain', help='Retrain the 2D toy MLPs first', is_flag=True)
@click.option('--assets', 'assets_dir', help='Folder of the 2D toy MLP pickles [default: edmguide/toys/assets]',
              metavar='DIR', type=str, default=None)
@click.option('--only', help='Render just one figure', type=click.Choice(FIGURES), default=None)
@click.option('--model', 'models', help='With --retrain: retrain only this model (repeatable)', multiple=True,
              type=click.Choice(['main', 'guide-cfg', 'guide-ag']))
def main(outdir, retrain, assets_dir, only, models):
    """Render the 1D guidance-interval and 2D autoguidance toy figures."""
    run_cli(toy_figures, outdir, retrain=retrain, assets_dir=assets_dir, which=(only,) if only else FIGURES,
            models=models or None)


if __name__ == '__main__':
    main()
