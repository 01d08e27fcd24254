#!/usr/bin/env python3
"""Measure the demo's Fréchet distance (FD_digits) for each guidance method over a small weight sweep.

    python scripts/demo_sweep.py --num=2000 --out=docs/demo-sweep.md
"""

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide import images as imagelib, loading, presets, sweep  # noqa: E402
from edmguide.errors import run_cli  # noqa: E402

WEIGHTS = (1.5, 2.0, 3.0)


@click.command()
@click.option('--num', 'num_images', type=click.IntRange(min=2), default=2000, show_default=True, help='Images per setting')
@click.option('--interval', default='15,21', show_default=True, help='Guided steps "start,stop" for the interval rows')
@click.option('--out', default='docs/demo-sweep.md', show_default=True, help='Markdown table to write')
@click.option('--threads', type=int, default=2, show_default=True)
def main(num_images, interval, out, threads):
    """Sweep guidance weights for no guidance, CFG, interval, autoguidance and autoguidance + interval."""
    import torch
    torch.set_num_threads(threads)
    start, stop = (int(v) for v in interval.split(','))

    def work():
        files = presets.DEMO_FILES
        net, encoder = loading.load_network(files.cond)
        uncond = loading.load_network(files.uncond, want_encoder=False)[0]
        bad = loading.load_network(files.bad, want_encoder=False)[0]
        methods = [('no guidance', None, None, (1.0,)),
                   ('CFG', uncond, None, WEIGHTS),
                   ('guidance interval', uncond, (start, stop), WEIGHTS),
                   ('autoguidance', bad, None, WEIGHTS),
                   ('autoguidance + interval', bad, (start, stop), WEIGHTS)]
        rows = sweep.sweep(net, encoder, files.ref, 'fd_digits', methods, num_images=num_images)
        table = sweep.markdown_table(rows, 'FD_digits')
        command = f'python scripts/demo_sweep.py --num={num_images} --interval={start},{stop} --out={out}'
        text = f'{table}\n\n{num_images} images per setting (seeds 0..{num_images - 1}, random classes), 32 Heun steps, `{command}`.\n'
        imagelib.atomic_write(out, text.encode())
        print(text)
    run_cli(work)


if __name__ == '__main__':
    main()
