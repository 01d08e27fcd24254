#!/usr/bin/env python3
"""Generate many images (e.g. 50k for FID) into one zip, with CFG or autoguidance, optionally
limited to a guidance interval. Resumable; distributable with torchrun.

Command lines of upstream guidance-interval work unchanged, e.g.
    python generate_zip.py --cond_pkl=NET.pkl --uncond_pkl=GUIDE.pkl --guidance_scale=2.0 \\
        --guidance_interval="[17, 22]"
DiT-XL/2 with DiT's own 250-step sampler (default: the paper's FID setting, w = 2.5 on (0.34, 1.02]):
    python generate_zip.py --dit=DiT-XL-2-512x512.pt --num_images=50000
"""

from edmguide.util import threads

threads.configure()  # before torch starts (it is imported lazily below, so --help stays fast)

import os  # noqa: E402

import click  # noqa: E402

from edmguide.jobs import cli  # noqa: E402
from edmguide.util.errors import UserError, run_cli  # noqa: E402

RESUME_HINT = 'rerun the same command to continue where it stopped (finished images are kept)'


def generate_zip(cond_pkl, uncond_pkl=None, zip_dir='./results', num_images=50000, batch_size=64,
                 batch_size_decoder=8, guidance_scale=2.0, interval=None, sampler=None,
                 seed=0, device=None, verbose=False, progress=True, overwrite=False, vae=None):
    """Write `<zip_dir>/<net>-s<seed>-nimg<N>-g<G>-<gi|cfg>.zip`.

    `interval`: a `guidance.Interval` (None: upstream's default, steps [17, 22]; `Interval()` for
    every step); `sampler`: the `schedule.SamplerOptions` (None: defaults with 'gi' numerics).

    A finished zip of the same name made with other settings is replaced only with `overwrite`
    (which also discards an unfinished work folder of other settings).
    Returns dump_zip's statistics (images generated and skipped, seconds per stage) with the zip's
    path under 'path'."""
    from edmguide.nets import digests
    from edmguide.nets import loading
    from edmguide.jobs.generation import pick_device, resolve_guidance
    from edmguide.sampler.guidance import Interval, method_tag
    from edmguide.util.outputs import check_output_dir
    from edmguide.sampler.schedule import SamplerOptions
    from edmguide.jobs.zipdump import dump_zip, zip_file_name
    from torch_utils import distributed as dist
    if num_images < 1:
        raise UserError('--num_images must be at least 1')
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise UserError(f'--seed={seed}: seeds are non-negative integers')
    sampler = sampler or SamplerOptions(mode='gi')
    interval = interval if interval is not None else Interval.of_steps(17, 22)
    sampler.check_guidance(guidance_scale, interval, '--guidance_scale')
    device = pick_device(device)
    check_output_dir(zip_dir, '--zip_dir')  # before any network is loaded
    guided = guidance_scale != 1
    if guided and uncond_pkl is None:
        raise UserError('guidance needs a guiding network: give --uncond_pkl (or --gnet)')
    net, encoder, gnet = loading.load_networks(cond_pkl, uncond_pkl if guided else None, device,
                                               encoder_batch_size=batch_size_decoder, verbose=verbose, vae=vae)
    schedule = sampler.schedule(net, device=device)
    guidance = resolve_guidance(schedule, guidance_scale, interval, what='--guidance_scale')
    zip_path = os.path.join(zip_dir, zip_file_name(cond_pkl, seed, num_images, guidance_scale, method_tag(interval)))
    inputs = digests.input_record(net=cond_pkl, gnet=uncond_pkl if guided else None)  # content, not path
    settings = dict(inputs=inputs, guidance=guidance.as_data(), **sampler.as_record())
    if vae is not None:  # recorded only when given, so zips made before --vae existed still match
        settings['vae'] = vae
    dist.print0(f'Generating {num_images} images and saving them to "{zip_path}..."')
    stats = dump_zip(net, encoder, zip_path, range(seed, seed + num_images), schedule, settings=settings, gnet=gnet,
                     guidance=guidance, batch_size=batch_size, device=device, verbose=verbose,
                     progress=progress, overwrite=overwrite)
    if verbose and dist.get_rank() == 0 and 'timing' in stats:
        t = stats['timing']
        print('Timing (s): ' + ', '.join(f'{k} {v:.2f}' for k, v in t.items()))
    dist.print0('Done.')
    return dict(stats, path=zip_path)


DIT_OPTIONS = ('dit', 'dit_vae', 'dit_embedding', 'dit_mapping', 'dit_guide_channels', 'zip_dir', 'num_images',
               'batch_size', 'guidance_scale', 'guidance_interval', 'guidance_sigma', 'seed', 'device', 'overwrite',
               'verbose', 'threads')
DIT_ONLY_OPTIONS = ('dit_vae', 'dit_embedding', 'dit_mapping', 'dit_guide_channels')


@click.command(cls=cli.Command, epilog=cli.PICKLE_NOTE)
@click.option('--cond_pkl', '--net', 'cond_pkl', help='Main network pickle or .safetensors (path or URL); required '
              'unless --dit', metavar='PKL')
@click.option('--uncond_pkl', '--gnet', 'uncond_pkl', help='Guiding network pickle or .safetensors: unconditional (CFG) or weaker (autoguidance)', metavar='PKL')
@click.option('--zip_dir', help='Output directory', metavar='DIR', default='./results', show_default=True)
@click.option('--num_images', help='Number of images', type=click.IntRange(min=1), default=50000, show_default=True)
@click.option('--batch_size', help='Sampler batch size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--batch_size_decoder', help='Decoder (VAE) batch size', type=click.IntRange(min=1), default=8, show_default=True)
@click.option('--guidance_scale', help='Guidance weight G', type=float, default=2.0, show_default=True)
@click.option('--guidance_interval', help='Guided step indices "[start, stop]" (inclusive) or "None" for all steps', default='[17, 22]', show_default=True)
@click.option('--guidance_sigma', help=cli.GUIDANCE_SIGMA_HELP + ', instead of step indices', metavar='"(LO, HI]"')
@click.option('--seed', help='First seed', type=int, default=0, show_default=True)
@click.option('--numerics', type=click.Choice(['gi', 'edm2']), default='gi', show_default=True, help=cli.NUMERICS_HELP)
@click.option('--device', help='Torch device (default: cuda if available, else cpu)', metavar='DEV')
@click.option('--vae', help='VAE for latent-space networks: a diffusers model id or local folder, instead of the name the network records (a .safetensors must record a known one otherwise)', metavar='ID|DIR')
@click.option('--overwrite', help='Replace a finished zip (or discard a work folder) made with other settings', is_flag=True)
@click.option('--dit', help="DiT mode: a DiT checkpoint (.pt) or diffusers folder/id, DiT's 250-step sampler, a random "
              "class per seed; default guidance the paper's FID setting w = 2.5 on sigma in (0.34, 1.02]", metavar='MODEL')
@click.option('--dit_vae', help='DiT mode: VAE id or folder  [default: stabilityai/sd-vae-ft-ema]', metavar='VAE')
@click.option('--dit_embedding', type=click.Choice(list(cli.DIT_EMBEDDINGS)), help="DiT mode: timestep embedding  [default: dit]")
@click.option('--dit_mapping', type=click.Choice(['paper', 'model']), help="DiT mode: a step's sigma  [default: paper]")
@click.option('--dit_guide_channels', type=click.Choice(['3', 'all']), help='DiT mode: guided latent channels  [default: 3]')
@cli.verbose_option('Per-batch timing')
@threads.threads_option
@cli.sampler_options
def main(guidance_interval, guidance_sigma, numerics, sampler, dit, dit_vae, dit_embedding, dit_mapping,
         dit_guide_channels, **kwargs):
    """Generate a zip of images with guidance limited to an interval (or CFG / autoguidance)."""
    ctx = click.get_current_context()
    interval_given = ctx.get_parameter_source('guidance_interval').name != 'DEFAULT'
    given = {p.name: p.opts[0] for p in ctx.command.params
             if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE}

    def work():
        if dit:
            unused = [spelling for name, spelling in given.items() if name not in DIT_OPTIONS]
            if unused:
                raise UserError(f'--dit runs DiT\'s own sampler; {", ".join(unused)} would be ignored there')
            from edmguide.models import dit as ditlib, dit_generation
            from edmguide.jobs.generation import pick_device
            from torch_utils import distributed as dist
            weight = kwargs['guidance_scale'] if 'guidance_scale' in given else ditlib.DEFAULT_GUIDANCE
            interval = (cli.parse_guidance_options(guidance_interval if interval_given else None, guidance_sigma,
                                                   weight, '--guidance_scale')
                        if interval_given or guidance_sigma is not None else None)  # None: the paper's FID interval
            dit_options = ditlib.DiTOptions(mapping=dit_mapping or ditlib.DEFAULT_MAPPING,
                                            guide_channels=dit_guide_channels or '3')
            dist.init()
            return dit_generation.generate_dit_zip(
                dit, kwargs['zip_dir'], num_images=kwargs['num_images'], seed=kwargs['seed'],
                batch_size=kwargs['batch_size'], guidance=weight, interval=interval, options=dit_options,
                embedding=dit_embedding or 'dit', vae=dit_vae or dit_generation.DEFAULT_VAE,
                device=pick_device(kwargs['device']), verbose=kwargs['verbose'], overwrite=kwargs['overwrite'])
        misplaced = [given[name] for name in DIT_ONLY_OPTIONS if name in given]
        if misplaced:
            raise UserError(f'{", ".join(misplaced)} only apply with --dit')
        if kwargs['cond_pkl'] is None:
            raise click.UsageError("Missing option '--cond_pkl' / '--net'.")
        # The upstream default "[17, 22]" yields to an explicit --guidance_sigma.
        explicit_interval = guidance_interval if (interval_given or guidance_sigma is None) else None
        from torch_utils import distributed as dist
        interval = cli.parse_guidance_options(explicit_interval, guidance_sigma, kwargs['guidance_scale'],
                                              '--guidance_scale')
        dist.init()
        generate_zip(interval=interval, sampler=sampler.replace(mode=numerics), **kwargs)
    run_cli(work, resume_hint=RESUME_HINT)


if __name__ == '__main__':
    main()
