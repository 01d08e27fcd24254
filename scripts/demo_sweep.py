#!/usr/bin/env python3
"""The demo's guidance sweeps (README "Sweeps"): the analogues of GI Fig. 3 and Fig. 5 on the digits models.

    python scripts/demo_sweep.py --jobs=2

Three sweeps of `edmguide.sweeps.sweep` (one implementation, the one behind `calculate_metrics.py sweep`),
run in `--jobs` processes: FD_digits against w for CFG and the guidance interval (guide: the
unconditional net), the same for autoguidance (guide: the bad net), and a heatmap over interval
start/stop at one weight. Writes docs/demo-sweep.md and the PNGs in docs/figures/; the sweeps'
own reports and checkpoints stay in --workdir, so an interrupted run continues when rerun.
"""

import concurrent.futures
import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from edmguide.util import images as imagelib  # noqa: E402
from edmguide.nets import loading
from edmguide.nets import presets
from edmguide.sweeps import sweep
from edmguide.sweeps import sweep_report
from edmguide.jobs import cli  # noqa: E402
from edmguide.util.errors import UserError, run_cli  # noqa: E402
from edmguide.metrics import stats as stats_lib  # noqa: E402

METRIC = 'fd_digits'
# Legend of the Fig. 3 analogue: (guide, interval label) -> method.
LABELS = {('uncond', 'all'): 'CFG', ('bad', 'all'): 'autoguidance'}


def _run(job):
    """One sweep in its own process (one thread each, so the jobs share the cores)."""
    import torch
    torch.set_num_threads(1)
    files = presets.DEMO_FILES
    net, encoder, gnet = loading.load_networks(files.cond, getattr(files, job.guide), 'cpu')
    settings = sweep.expand_settings(job.weights, sweep.parse_intervals(job.intervals), [job.guide])
    schedule = sweep.SamplerOptions().schedule(net, device='cpu')
    records, summary = sweep.run_sweep(net, encoder, settings, schedule, guides={job.guide: gnet}, ref=stats_lib.load_reference(files.ref),
                                       ref_path=files.ref, metrics=[METRIC], outdir=job.outdir, num_images=job.num,
                                       max_batch_size=job.batch, device='cpu', record=dict(guide=job.guide),
                                       checkpoint_every=1, progress=False)
    sweep_report.write_report(job.outdir, records, [METRIC], summary)
    return records, summary


@click.command(cls=cli.Command)
@click.option('--num', 'num_images', type=click.IntRange(min=2), default=500, show_default=True, help='Images per setting (weight sweeps)')
@click.option('--weights', default='1,1.1,1.25,1.5,2,3', show_default=True, help='Guidance weights (list or start:stop:step; 1 = no guidance)')
@click.option('--interval', default='[15, 21]', show_default=True, help='Guided steps of the interval curves')
@click.option('--grid', default='[9..21:2, 15..27:2]', show_default=True, help='Intervals of the heatmap')
@click.option('--grid_weight', type=float, default=2.0, show_default=True, help='Weight of the heatmap (CFG guide)')
@click.option('--grid_num', type=click.IntRange(min=2), default=200, show_default=True, help='Images per heatmap cell')
@click.option('--batch', type=click.IntRange(min=1), default=250, show_default=True, help='Batch size')
@click.option('--jobs', type=click.IntRange(min=1), default=2, show_default=True, help='Worker processes')
@click.option('--workdir', default='out/demo-sweep', show_default=True, help='Sweep folders (reports, checkpoints)')
@click.option('--out', default='docs/demo-sweep.md', show_default=True, help='Markdown report to write')
@click.option('--figures', default='docs/figures', show_default=True, help='Folder for the two PNGs')
def main(num_images, weights, interval, grid, grid_weight, grid_num, batch, jobs, workdir, out, figures):
    """Sweep FD_digits over guidance weights and intervals on the embedded demo."""
    def work():
        weight_list = sweep.parse_weights(weights, '--weights')
        if len(sweep.parse_intervals([grid], '--grid')) < 2:
            raise UserError(f'--grid {grid!r}: a heatmap needs at least two intervals')
        curves = ['all', interval]
        job_list = [dnnlib.EasyDict(guide='uncond', weights=weight_list, intervals=curves, num=num_images),
                    dnnlib.EasyDict(guide='bad', weights=weight_list, intervals=curves, num=num_images),
                    dnnlib.EasyDict(guide='uncond', weights=[1.0, grid_weight], intervals=[grid], num=grid_num)]
        for name, job in zip(('cfg', 'autoguidance', 'heatmap'), job_list):
            job.update(batch=batch, outdir=os.path.join(workdir, name))
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            (cfg, cfg_sum), (ag, ag_sum), (heat, heat_sum) = pool.map(_run, job_list)
        label = sweep.parse_intervals([interval])[0].label
        labels = {**LABELS, ('uncond', label): 'guidance interval', ('bad', label): 'autoguidance + interval'}
        records = cfg + [r for r in ag if r['guide'] is not None]
        title = f'Demo: FD_digits against w ({num_images} images, interval {label} of 32 steps)'
        fig3 = sweep_report.plot_weights(records, METRIC, labels=labels, title=title)
        fig5 = list(sweep_report.heatmaps(heat, METRIC).values())[0]
        imagelib.atomic_write(os.path.join(figures, 'demo-sweep-weights.png'), fig3)
        imagelib.atomic_write(os.path.join(figures, 'demo-sweep-heatmap.png'), fig5)
        command = ('python scripts/demo_sweep.py' + ''.join(
            f' --{k}={v!r}' if ' ' in str(v) else f' --{k}={v}' for k, v in
            dict(num=num_images, weights=weights, interval=interval, grid=grid, grid_weight=grid_weight,
                 grid_num=grid_num, batch=batch).items()))
        text = '\n'.join([
            sweep_report.markdown(cfg, [METRIC], cfg_sum, title='Demo sweep: CFG and guidance interval (guide: digits-uncond)'),
            sweep_report.markdown(ag, [METRIC], ag_sum, title='Demo sweep: autoguidance (guide: digits-bad)'),
            sweep_report.markdown(heat, [METRIC], heat_sum, title=f'Demo sweep: interval grid at w = {grid_weight:g} (guide: digits-uncond)'),
            f'Seeds 0.. of each sweep, random classes, 32 Heun steps (numerics edm2), batch {batch}. Command: `{command}`', ''])
        imagelib.atomic_write(out, text.encode())
        print(text)
    run_cli(work)


if __name__ == '__main__':
    main()
