#!/usr/bin/env python3
"""The demo's precision and recall (pr_digits) against the guidance weight, for CFG over all steps and
for the guidance interval: the analogue of the guidance-interval paper's Fig. 4.

    python scripts/demo_precision_recall.py --num=500 --weights=1,1.5,2,2.5,3,4 --interval=15,21 \
        --out=docs/demo-precision-recall.md --figure=docs/figures/demo_precision_recall.png

Every setting measures the same seeds through the function behind `calculate_metrics.py gen`
(`pipeline.calc_metrics_for_network`), with `fd_digits` alongside. Once `calculate_metrics.py sweep`
exists, the same numbers come from it with `--metrics=fd_digits,pr_digits`.
"""

import concurrent.futures
import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide import images as imagelib, presets  # noqa: E402
from edmguide.errors import UserError, run_cli  # noqa: E402
from edmguide.guidance import parse_interval  # noqa: E402
from edmguide.metrics import pipeline  # noqa: E402

METRICS = ['fd_digits', 'pr_digits']


def measure_row(label, interval, weights, num_images):
    """{w: {'fd_digits', 'precision', 'recall'}} for CFG (guide: the unconditional net), in its own process."""
    import torch
    torch.set_num_threads(1)
    files = presets.DEMO_FILES
    row = {}
    for w in weights:
        row[w] = pipeline.calc_metrics_for_network(
            files.cond, files.ref, METRICS, gnet_path=files.uncond, guidance=w, guidance_interval=interval,
            num_images=num_images, seed=0, max_batch_size=250, device='cpu', progress=False)
        print(f'{label:18s} w={w:<4g} ' + '  '.join(f'{k}={v:.4f}' for k, v in row[w].items()), flush=True)
    return row


def markdown(rows, weights):
    lines = ['| w | ' + ' | '.join(f'{label} {col}' for label in rows for col in ('precision', 'recall', 'FD_digits')) + ' |',
             '|---|' + '---|' * (3 * len(rows))]
    for w in weights:
        cells = [f'{rows[label][w][key]:.3f}' if key != 'fd_digits' else f'{rows[label][w][key]:.1f}'
                 for label in rows for key in ('precision', 'recall', 'fd_digits')]
        lines.append(f'| {w:g} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(rows, weights, path):
    import io
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharex=True)
    for ax, key in zip(axes, ('precision', 'recall')):
        for (label, row), style in zip(rows.items(), ('o--', 's-')):
            ax.plot(weights, [row[w][key] for w in weights], style, label=label)
        ax.set_title(key.capitalize())
        ax.set_xlabel('guidance weight w')
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    plt.close(fig)
    imagelib.atomic_write(path, buf.getvalue())


@click.command()
@click.option('--num', 'num_images', type=click.IntRange(min=4), default=500, show_default=True, help='Images per setting')
@click.option('--weights', default='1,1.5,2,2.5,3,4', show_default=True, help='Guidance weights')
@click.option('--interval', default='15,21', show_default=True, help='Guided steps "start,stop" of the interval rows')
@click.option('--out', default='docs/demo-precision-recall.md', show_default=True, help='Markdown table to write')
@click.option('--figure', default='docs/figures/demo_precision_recall.png', show_default=True, help='PNG to write')
def main(num_images, weights, interval, out, figure):
    """Precision/recall of the demo against the weight, CFG and the interval (two processes)."""
    def work():
        parsed = parse_interval(interval)
        if parsed is None:
            raise UserError(f'--interval must be "start,stop" step indices, got {interval!r}')
        try:
            weight_list = tuple(float(w) for w in weights.split(','))
        except ValueError:
            raise UserError(f'--weights must be comma-separated numbers, got {weights!r}') from None
        labels = {'CFG': None, f'interval [{parsed[0]}, {parsed[1]}]': tuple(parsed)}
        with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
            futures = {label: pool.submit(measure_row, label, iv, weight_list, num_images) for label, iv in labels.items()}
            rows = {label: future.result() for label, future in futures.items()}
        command = (f'python scripts/demo_precision_recall.py --num={num_images} --weights={weights} '
                   f'--interval={parsed[0]},{parsed[1]} --out={out} --figure={figure}')
        text = (f'{markdown(rows, weight_list)}\n\n{num_images} images per setting (seeds 0..{num_images - 1}, random '
                f'classes, 32 Heun steps), against all 1797 digits; k = 3. Command: `{command}`\n')
        imagelib.atomic_write(out, text.encode())
        plot(rows, weight_list, figure)
        print(text)
    run_cli(work)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
