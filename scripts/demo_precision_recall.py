#!/usr/bin/env python3
"""The demo's precision and recall (pr_digits) against the guidance weight, for CFG over all steps and
for the guidance interval: the analogue of the guidance-interval paper's Fig. 4.

    python scripts/demo_precision_recall.py --num=500 --weights=1,1.5,2,2.5,3,4 --interval="[15, 21]" \
        --out=docs/demo-precision-recall.md --figure=docs/figures/demo_precision_recall.png

One sweep (`edmguide.sweeps.sweep`, the implementation behind `calculate_metrics.py sweep`) over weights x
{all, interval} with the CFG guide, metrics fd_digits and pr_digits, every setting on the same seeds;
the same numbers come from `calculate_metrics.py sweep --metrics=fd_digits,pr_digits`. The sweep's
own report and checkpoints stay in --workdir, so an interrupted run continues when rerun.
"""

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edmguide.util import images as imagelib  # noqa: E402
from edmguide.nets import loading
from edmguide.nets import presets
from edmguide.sweeps import sweep
from edmguide.sweeps import sweep_report
from edmguide.jobs import cli  # noqa: E402
from edmguide.util.errors import run_cli  # noqa: E402
from edmguide.metrics import stats as stats_lib  # noqa: E402

METRICS = ['fd_digits', 'pr_digits']


def measure(weights, interval, num_images, workdir):
    """{method label: {w: {'fd_digits', 'precision', 'recall'}}} from one sweep with the CFG guide."""
    files = presets.DEMO_FILES
    net, encoder, gnet = loading.load_networks(files.cond, files.uncond, 'cpu')
    intervals = sweep.parse_intervals(['all', interval])
    settings = sweep.expand_settings(weights, intervals, ['uncond'])
    schedule = sweep.SamplerOptions().schedule(net, device='cpu')
    records, summary = sweep.run_sweep(net, encoder, settings, schedule, guides={'uncond': gnet}, ref=stats_lib.load_reference(files.ref),
                                       ref_path=files.ref, metrics=METRICS, outdir=workdir, num_images=num_images,
                                       max_batch_size=250, device='cpu', record=dict(script='demo_precision_recall'),
                                       checkpoint_every=1)
    sweep_report.write_report(workdir, records, ['fd_digits', 'precision', 'recall'], summary)
    rows = {'CFG': {}, f'interval {intervals[1].label}': {}}
    for r in records:
        values = {k: r[k] for k in ('fd_digits', 'precision', 'recall')}
        if r['guide'] is None:  # w = 1 is no guidance, the same for both methods
            for row in rows.values():
                row[1.0] = values
        else:
            rows['CFG' if r['interval'] is None else f'interval {intervals[1].label}'][r['guidance']] = values
    return rows

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


@click.command(cls=cli.Command)
@click.option('--num', 'num_images', type=click.IntRange(min=4), default=500, show_default=True, help='Images per setting')
@click.option('--weights', default='1,1.5,2,2.5,3,4', show_default=True, help='Guidance weights (list or start:stop:step)')
@click.option('--interval', default='[15, 21]', show_default=True, help='Guided steps of the interval rows')
@click.option('--workdir', default='out/demo-precision-recall', show_default=True, help='Sweep folder (report, checkpoints)')
@click.option('--out', default='docs/demo-precision-recall.md', show_default=True, help='Markdown table to write')
@click.option('--figure', default='docs/figures/demo_precision_recall.png', show_default=True, help='PNG to write')
def main(num_images, weights, interval, workdir, out, figure):
    """Precision/recall of the demo against the weight, CFG and the interval (one sweep)."""
    def work():
        import torch
        torch.set_num_threads(1)
        weight_list = sweep.parse_weights(weights, '--weights')
        rows = measure(weight_list, interval, num_images, workdir)
        command = (f'python scripts/demo_precision_recall.py --num={num_images} --weights={weights} '
                   f'--interval="{interval}" --out={out} --figure={figure}')
        text = (f'{markdown(rows, weight_list)}\n\n{num_images} images per setting (seeds 0..{num_images - 1}, random '
                f'classes, 32 Heun steps, batch 250), against all 1797 digits; k = 3. Command: `{command}`\n')
        imagelib.atomic_write(out, text.encode())
        plot(rows, weight_list, figure)
        print(text)
    run_cli(work)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
