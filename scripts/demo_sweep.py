#!/usr/bin/env python3
"""Measure the demo's Fréchet distance (FD_digits) for each guidance method over a small weight sweep.

    python scripts/demo_sweep.py --num=500 --jobs=2 --out=docs/demo-sweep.md
"""

import concurrent.futures
import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide import images as imagelib, loading, presets, sweep  # noqa: E402
from edmguide.errors import UserError, run_cli  # noqa: E402
from edmguide.guidance import parse_interval  # noqa: E402

# The rows of the demo grid: (label, guiding net or None, limited to the interval?); weights and
# interval come from the command line.
METHODS = [(label, None if guide == 'none' else guide, interval is not None)
           for label, guide, _weight, interval in presets.DEMO_METHODS]


def _sweep_one(method, weights, interval, num_images):
    """One method's row, in its own process (one thread each, so --jobs processes share the cores)."""
    import torch
    torch.set_num_threads(1)
    label, guide, limited = method
    files = presets.DEMO_FILES
    net, encoder, gnet = loading.load_networks(files.cond, getattr(files, guide) if guide else None, 'cpu')
    row_weights = weights if guide else (1.0,)
    return sweep.sweep(net, encoder, files.ref, 'fd_digits', [(label, gnet, interval if limited else None, row_weights)],
                       num_images=num_images)[0]


@click.command()
@click.option('--num', 'num_images', type=click.IntRange(min=2), default=500, show_default=True, help='Images per setting')
@click.option('--weights', default='1.1,1.25,1.5,2,3', show_default=True, help='Guidance weights to try')
@click.option('--interval', default='15,21', show_default=True, help='Guided steps "start,stop" for the interval rows')
@click.option('--jobs', type=click.IntRange(min=1), default=2, show_default=True, help='Worker processes')
@click.option('--out', default='docs/demo-sweep.md', show_default=True, help='Markdown table to write')
def main(num_images, weights, interval, jobs, out):
    """Sweep guidance weights for no guidance, CFG, interval, autoguidance and autoguidance + interval."""
    def work():
        parsed = parse_interval(interval)
        if parsed is None:
            raise UserError(f'--interval must be "start,stop" step indices, got {interval!r}')
        start, stop = parsed
        try:
            weight_list = tuple(float(w) for w in weights.split(','))
        except ValueError:
            raise UserError(f'--weights must be comma-separated numbers, got {weights!r}') from None
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(_sweep_one, METHODS, [weight_list] * len(METHODS), [(start, stop)] * len(METHODS),
                                 [num_images] * len(METHODS)))
        command = f'python scripts/demo_sweep.py --num={num_images} --weights={weights} --interval={start},{stop} --out={out}'
        text = (f'{sweep.markdown_table(rows, "FD_digits")}\n\n{num_images} images per setting (seeds 0..{num_images - 1}, '
                f'random classes), 32 Heun steps (numerics edm2). Command: `{command}`\n')
        imagelib.atomic_write(out, text.encode())
        print(text)
    run_cli(work)


if __name__ == '__main__':
    main()
