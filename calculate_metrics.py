"""Fréchet metrics (FID, FD_DINOv2) and precision/recall of generated images, in both upstream command-line forms.

Guidance-interval form (one metric of a zip, result appended to <results_dir>/<metric>.jsonl):

    python calculate_metrics.py --gen_zip=net-s0-nimg50000-g2.00-gi.zip --ref_path=img512.pkl --metric=fid

EDM2 form (subcommands):

    python calculate_metrics.py calc --images=DIR_OR_ZIP --ref=REF.pkl [--metrics=fid,fd_dinov2]
    python calculate_metrics.py ref  --data=DIR_OR_ZIP --dest=REF.pkl [--metrics=fid,fd_dinov2,pr]   (or REF.npz: no pickle)
    python calculate_metrics.py gen  --net=NET.pkl [--gnet=G.pkl --guidance=2 --guidance_interval="[17, 22]"] --ref=REF.pkl
    python calculate_metrics.py sweep --net=NET.pkl --gnet=G.pkl --ref=REF.pkl --guidance=1.0:4.0:0.1 \
        --interval=all --interval="[17, 22]" --outdir=sweeps/xxl

References are upstream stats pickles or .npz files (EDM v1's or ours; paths or URLs); precision/recall ('pr')
needs a reference made by `ref --metrics=pr`, which stores the reference features. Detectors come
from the dnnlib cache (Inception and VGG-16 pickles) and torch hub (DINOv2), downloaded on first use.
"""

from edmguide.util import threads

threads.configure()  # before torch starts (it is imported lazily below, so --help stays fast)

import sys  # noqa: E402

import click  # noqa: E402

from edmguide.jobs import cli  # noqa: E402
from edmguide.jobs.cli import NUMERICS_HELP, PICKLE_NOTE, parse_guidance_options, sampler_options  # noqa: E402
from edmguide.util.errors import UserError, run_cli  # noqa: E402

SUBCOMMANDS = ('calc', 'gen', 'ref', 'sweep')
SWEEP_EPILOG = ('Writes sweep.jsonl, sweep.md and PNG plots to --outdir; rerunning the same command resumes '
                'from the checkpoints there.')

#----------------------------------------------------------------------------
# Shared helpers.

def print_results(results):
    """EDM2 style: `<metric> = <value:g>`, once (rank 0)."""
    from torch_utils import distributed as dist
    if dist.get_rank() == 0:
        for name, value in results.items():
            print(f'{name} = {value:g}')

def parse_metrics_option(text):
    from edmguide.metrics import kinds
    return None if text is None else kinds.metric_list(text)

def _init_distributed():
    """Join the process group under torchrun (nothing in a single process)."""
    from torch_utils import distributed as dist
    dist.init()

metrics_help = 'Comma-separated metrics  [default: fid,fd_dinov2, those the reference has]'
DIT_OPTIONS = ('dit', 'dit_vae', 'dit_embedding', 'dit_mapping', 'dit_guide_channels')
DIT_GEN_OPTIONS = DIT_OPTIONS + ('guidance', 'guidance_interval', 'guidance_sigma', 'ref_path', 'metrics', 'num_images',
                                 'seed', 'max_batch_size', 'class_idx', 'device', 'threads')
DIT_SWEEP_OPTIONS = DIT_OPTIONS + ('weights', 'intervals', 'outdir', 'checkpoint_every', 'overwrite', 'ref_path',
                                   'metrics', 'num_images', 'seed', 'max_batch_size', 'class_idx', 'device', 'threads')
device_option = click.option('--device', help='Torch device  [default: cuda if present, else cpu]', type=str, default=None)

#----------------------------------------------------------------------------
# Guidance-interval form.

@click.command(cls=cli.Command, context_settings={'help_option_names': ['-h', '--help']},
               epilog='EDM2 forms: calculate_metrics.py calc|gen|ref --help. ' + PICKLE_NOTE)
@click.option('--gen_zip', help='Zip (or directory) of generated images', type=str, required=True)
@click.option('--ref_path', help='Reference statistics (.pkl or .npz, path or URL)', type=str, required=True)
@click.option('--results_dir', help='Where <metric>.jsonl is appended', type=str, default='./results', show_default=True)
@click.option('--metric', help="Metric: 'fid', 'fd_dinov2', 'pr' or another registered one (e.g. the demo's 'fd_digits')", type=str, default='fid', show_default=True)
@click.option('--batch_size', help='Images per detector batch', type=click.IntRange(min=1), default=128, show_default=True)
@device_option
@threads.threads_option
def gi_cli(gen_zip, ref_path, results_dir, metric, batch_size, device):
    """Compute one metric of a zip of generated images (guidance-interval form)."""
    from edmguide.metrics import detectors, pipeline
    names = []  # the metric as kinds.metric_list reads it (spaces dropped), set by job()

    def report(results):
        if detectors.metric_kind(names[0]) == 'frechet':
            print(f'{detectors.metric_label(names[0])} = {results[names[0]]:.2f}', flush=True)
        else:  # shares in [0, 1]: three decimals, as papers report them
            for name, value in results.items():
                print(f'{name.capitalize()} = {value:.3f}', flush=True)

    def job():
        names.append(pipeline.single_metric(metric))
        _init_distributed()  # under torchrun the ranks share the images; rank 0 prints and appends once
        return pipeline.gi_calculate_metric(gen_zip, ref_path, metric=names[0], results_dir=results_dir,
                                            batch_size=batch_size, device=device, report=report)
    run_cli(job)

#----------------------------------------------------------------------------
# EDM2 form.

@click.group(cls=cli.Group, context_settings={'help_option_names': ['-h', '--help']})
def edm2_cli():
    """Calculate Fréchet metrics and precision/recall of image sets or of a network's samples (EDM2 form)."""

@edm2_cli.command(epilog=PICKLE_NOTE)
@click.option('--images', 'image_path', help='Directory or zip of images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics', metavar='PKL|NPZ|URL', type=str, required=True)
@click.option('--metrics', help=metrics_help, type=str, default=None)
@click.option('--num', '--num_images', 'num_images', help='Number of images to use', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='Random seed for choosing the images', type=int, default=0, show_default=True)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--workers', 'num_workers', help='Subprocesses for data loading', type=click.IntRange(min=0), default=2, show_default=True)
@device_option
@threads.threads_option
def calc(image_path, ref_path, metrics, num_images, seed, max_batch_size, num_workers, device):
    """Metrics of a set of images against reference statistics."""
    from edmguide.metrics import pipeline
    _init_distributed()
    results = run_cli(lambda: pipeline.calc_metrics_for_images(
        image_path, ref_path, parse_metrics_option(metrics), num_images=num_images, seed=seed,
        max_batch_size=max_batch_size, num_workers=num_workers, device=device))
    print_results(results)

@edm2_cli.command()
@click.option('--data', 'image_path', help='Directory or zip of dataset images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path', help='Output statistics: .pkl (pickle, as upstream) or .npz (NumPy, no pickle)', metavar='PKL|NPZ', type=str, required=True)
@click.option('--metrics', help="Comma-separated metrics ('pr' stores the features themselves)", type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--pr_num', 'max_pr_images', help='Most images whose features precision/recall stores', type=click.IntRange(min=4), default=200000, show_default=True)
@click.option('--pr_subset', help="Which images when the set is larger: the first in file order (as pr50k3) or a seeded random subset", type=click.Choice(['first', 'random']), default='first', show_default=True)
@click.option('--seed', help='Random seed for --pr_subset=random', type=int, default=0, show_default=True)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--workers', 'num_workers', help='Subprocesses for data loading', type=click.IntRange(min=0), default=2, show_default=True)
@click.option('--overwrite', help='Replace an existing --dest file', is_flag=True)
@device_option
@threads.threads_option
def ref(image_path, dest_path, metrics, max_pr_images, pr_subset, seed, max_batch_size, num_workers, device, overwrite):
    """Reference statistics (and precision/recall features) of a dataset, saved as a pickle (or .npz without pickle)."""
    from edmguide.metrics import pipeline
    from torch_utils import distributed as dist
    _init_distributed()
    run_cli(lambda: pipeline.make_reference(
        image_path, dest_path, parse_metrics_option(metrics), max_batch_size=max_batch_size,
        num_workers=num_workers, device=device, seed=seed, max_pr_images=max_pr_images, pr_subset=pr_subset,
        overwrite=overwrite))
    if dist.get_rank() == 0:
        print(f'Saved reference statistics to "{dest_path}"')

def dit_options(func):
    """The DiT options `gen` and `sweep` share: --dit selects DiT mode, the others apply only with it."""
    options = [
        click.option('--dit', help="DiT mode: a DiT checkpoint (.pt) or diffusers folder/id, DiT's 250-step sampler guided "
                     "by its null class (gen's default: the paper's FID setting w = 2.5 on sigma in (0.34, 1.02])", metavar='MODEL',
                     default=None),
        click.option('--dit_vae', help='DiT mode: VAE id or folder  [default: stabilityai/sd-vae-ft-ema]', metavar='VAE'),
        click.option('--dit_embedding', type=click.Choice(list(cli.DIT_EMBEDDINGS)), help='DiT mode: timestep embedding  [default: dit]'),
        click.option('--dit_mapping', type=click.Choice(['paper', 'model']), help="DiT mode: a step's sigma  [default: paper]"),
        click.option('--dit_guide_channels', type=click.Choice(['3', 'all']), help='DiT mode: guided latent channels  [default: 3]'),
    ]
    for option in reversed(options):
        func = option(func)
    return func

def _given_options():
    """{parameter name: its first spelling} of the options given on the command line."""
    ctx = click.get_current_context()
    return {p.name: p.opts[0] for p in ctx.command.params
            if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE}

def _check_dit_mode(given, dit, allowed):
    """One `error:` line for an option the mode given does not use: an EDM2 option with --dit, a
    DiT option without it."""
    if dit:
        unused = [spelling for name, spelling in given.items() if name not in allowed]
        if unused:
            raise UserError(f'--dit runs DiT\'s own sampler; {", ".join(unused)} would be ignored there')
    else:
        dit_only = [given[name] for name in DIT_OPTIONS[1:] if name in given]
        if dit_only:
            raise UserError(f'{", ".join(dit_only)} only apply with --dit')

def _dit_model(dit, dit_vae, dit_embedding, dit_mapping, dit_guide_channels):
    """The `dit_generation.DiTModel` of the DiT options (defaults where not given)."""
    from edmguide.models import dit as ditlib, dit_generation
    options = ditlib.DiTOptions(mapping=dit_mapping or ditlib.DEFAULT_MAPPING, guide_channels=dit_guide_channels or '3')
    return dit_generation.DiTModel(dit, vae=dit_vae or dit_generation.DEFAULT_VAE, embedding=dit_embedding or 'dit',
                                   options=options)

def generation_options(func):
    """The options `gen` and `sweep` share (the networks, reference, seeds, sampler and device)."""
    options = [
        click.option('--net', 'net_path', help='Main network pickle or .safetensors  [required unless --dit]', metavar='PKL|SAFETENSORS|URL', type=str, default=None),
        click.option('--gnet', 'gnet_path', help='Guiding network pickle or .safetensors', metavar='PKL|SAFETENSORS|URL', type=str, default=None),
        click.option('--numerics', 'mode', help=NUMERICS_HELP, type=click.Choice(['edm2', 'gi']), default='edm2', show_default=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', type=click.IntRange(min=0), default=None),
        click.option('--ref', 'ref_path', help='Reference statistics', metavar='PKL|NPZ|URL', type=str, required=True),
        click.option('--metrics', help=metrics_help, type=str, default=None),
        click.option('--num', '--num_images', 'num_images', help='Number of images to generate', type=click.IntRange(min=2), default=50000, show_default=True),
        click.option('--seed', help='First random seed', type=int, default=0, show_default=True),
        click.option('--batch', 'max_batch_size', help='Maximum batch size', type=click.IntRange(min=1), default=32, show_default=True),
        click.option('--vae', help='VAE for latent-space networks: a diffusers model id or local folder, instead of the '
                     'name the network records (a .safetensors must record a known one otherwise)', metavar='ID|DIR',
                     type=str, default=None),
    ]
    func = threads.threads_option(sampler_options(device_option(func)))
    for option in reversed(options):
        func = option(func)
    return func

@edm2_cli.command(epilog=PICKLE_NOTE)
@click.option('--guidance', help='Guidance weight w (none or 1 = no guidance)', type=float, default=None)
@click.option('--guidance_interval', help='Guide only steps [start, stop] (inclusive), e.g. "[17, 22]"', type=str, default=None)
@click.option('--guidance_sigma', help=cli.GUIDANCE_SIGMA_HELP, metavar='"(LO, HI]"', type=str, default=None)
@dit_options
@generation_options
def gen(net_path, gnet_path, guidance, guidance_interval, guidance_sigma, ref_path, metrics,
        num_images, seed, device, mode, sampler, dit, dit_vae, dit_embedding, dit_mapping, dit_guide_channels,
        **kwargs):
    """Metrics of a network's samples, generated on the fly (no images are written)."""
    from edmguide.metrics import pipeline
    given = _given_options()
    if not dit and net_path is None:
        raise click.UsageError("Missing option '--net' (or --dit).")
    _init_distributed()
    def job():
        _check_dit_mode(given, dit, DIT_GEN_OPTIONS)
        if dit:
            from edmguide.models import dit as ditlib, dit_generation
            model = _dit_model(dit, dit_vae, dit_embedding, dit_mapping, dit_guide_channels)
            weight = ditlib.DEFAULT_GUIDANCE if guidance is None else guidance
            interval = (parse_guidance_options(guidance_interval, guidance_sigma, weight)
                        if guidance_interval is not None or guidance_sigma is not None else None)  # None: paper's FID
            return dit_generation.calc_metrics_for_dit(
                dit, ref_path, parse_metrics_option(metrics), guidance=weight, interval=interval,
                options=model.options, embedding=model.embedding, vae=model.vae,
                num_images=num_images, seed=seed, device=device, max_batch_size=kwargs['max_batch_size'],
                class_idx=kwargs['class_idx'])
        interval = parse_guidance_options(guidance_interval, guidance_sigma, guidance)
        return pipeline.calc_metrics_for_network(
            net_path, ref_path, parse_metrics_option(metrics), gnet_path=gnet_path, guidance=guidance,
            interval=interval, sampler=sampler.replace(mode=mode), num_images=num_images, seed=seed,
            device=device, **kwargs)
    print_results(run_cli(job))

@edm2_cli.command(epilog=PICKLE_NOTE + ' ' + SWEEP_EPILOG)
@click.option('--guidance', 'weights', help='Weights: "1.5,2,2.5" or inclusive "start:stop:step"', type=str, required=True)
@click.option('--interval', 'intervals', help='Where to guide (repeatable): all, "[a, b]" steps, "(lo, hi]" noise levels, '
              'or the grid "[a0..a1, b0..b1]"  [default: all]', type=str, multiple=True)
@click.option('--outdir', help='Output folder (results, plots, checkpoints)', type=str, required=True)
@click.option('--checkpoint_every', help='Checkpoint the statistics every N batches', type=click.IntRange(min=1), default=8, show_default=True)
@click.option('--overwrite', help='Discard checkpoints and results in --outdir that this sweep cannot resume', is_flag=True)
@dit_options
@generation_options
def sweep(mode, sampler, dit, dit_vae, dit_embedding, dit_mapping, dit_guide_channels, **kwargs):
    """Metrics of many guidance settings (weights x intervals) over the same seeds, sharing trajectory prefixes."""
    given = _given_options()
    if not dit and kwargs['net_path'] is None:
        raise click.UsageError("Missing option '--net' (or --dit).")
    from edmguide.sweeps import sweep as sweep_lib
    from torch_utils import distributed as dist
    _init_distributed()

    def job():
        _check_dit_mode(given, dit, DIT_SWEEP_OPTIONS)
        model = _dit_model(dit, dit_vae, dit_embedding, dit_mapping, dit_guide_channels) if dit else None
        return sweep_lib.sweep_command(metrics=parse_metrics_option(kwargs.pop('metrics')), dit=model,
                                       sampler=None if dit else sampler.replace(mode=mode), **kwargs)
    lines = run_cli(job, resume_hint=sweep_lib.RESUME_HINT)
    if dist.get_rank() == 0:
        print('\n'.join(lines))

#----------------------------------------------------------------------------

def main(argv=None):
    """Dispatch: a first argument calc/gen/ref/sweep selects the EDM2 group, anything else the GI form."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith('-') and argv[0] not in SUBCOMMANDS:
        # Not an option, so not the guidance-interval form either: a mistyped subcommand.
        click.echo(f'error: no such subcommand "{argv[0]}"; the subcommands are {", ".join(SUBCOMMANDS)} '
                   f'(or the guidance-interval form: calculate_metrics.py --gen_zip=ZIP --ref_path=REF)', err=True)
        sys.exit(2)
    if argv and argv[0] in SUBCOMMANDS:
        edm2_cli.main(args=argv, prog_name='calculate_metrics.py')
    else:
        gi_cli.main(args=argv, prog_name='calculate_metrics.py')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
