#!/usr/bin/env python3
"""Generate images with EDM2 networks: per-seed PNGs, the guidance-interval paper's figure grids,
or the embedded demo's comparison grid.

Three ways to call it (the first two are upstream command lines, unchanged):
  seed mode (NVlabs/edm2):   --preset=NAME | --net=PKL [--gnet=PKL --guidance=W] --outdir=DIR --seeds=0-7
                             plus --guidance_interval="[17, 22]" or --guidance_sigma="(0.1886, 1.6086]"
  figure mode (GI paper):    --cond_pkl=PKL --uncond_pkl=PKL --figs=all --results_dir=DIR
  demo (no downloads):       --preset=demo --outdir=DIR, or no model options at all
  SD-XL (diffusers):         --sdxl=MODEL --prompt=TEXT [--negative_prompt=TEXT] --seeds=0-3 --outdir=DIR
                             (the GI paper's SD-XL sampler by default: 32 steps, w = 16 on steps 10..25)
  DiT-XL/2:                  --dit=MODEL --seeds=0-7 [--class=C[,C...]] --outdir=DIR
                             (DiT's 250-step DDPM sampler; by default the paper's FID setting, w = 2.5
                             on sigma in (0.34, 1.02] = 75 of 250 steps); --numerics=dit --seed=S
                             --class=LIST reproduces DiT's sample.py; --figs=comparison the Table 1 grid
"""

from edmguide import threads

threads.configure()  # before torch starts (it is imported lazily below, so --help stays fast)

import os  # noqa: E402

import click  # noqa: E402

from edmguide import cli  # noqa: E402
from edmguide.errors import UserError, run_cli  # noqa: E402
from edmguide.outputs import check_output_dir  # noqa: E402


def generate_seed_images(net, outdir, *, gnet=None, guidance=None, guidance_interval=None, guidance_sigma=None,
                         seeds=range(16, 24), class_idx=None, max_batch_size=32, encoder_batch_size=4,
                         subdirs=False, numerics='edm2', device=None, verbose=False, **sampler_kwargs):
    """Upstream EDM2 seed mode: one `<seed:06d>.png` per seed in `outdir`. Returns the written paths."""
    from edmguide import images as imagelib, loading, seeds as seedlib
    from edmguide.generation import build_guidance, generate_batches, pick_device
    from edmguide.progress import progress_bar
    from edmguide.sampling import check_sampler_kwargs
    from torch_utils import distributed as dist
    check_sampler_kwargs(sampler_kwargs)
    device = pick_device(device)
    check_output_dir(outdir, '--outdir')  # before any network is loaded
    if guidance is not None and guidance != 1 and not gnet:
        raise UserError('Please specify --gnet when using guidance')
    gnet = gnet if (guidance is not None and guidance != 1) else None
    net, encoder, gnet = loading.load_networks(net, gnet, device, encoder_batch_size=encoder_batch_size, verbose=verbose)
    schedule = build_guidance(guidance, interval=guidance_interval, sigma_range=guidance_sigma, net=net, mode=numerics,
                              device=device, **sampler_kwargs)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}" ({schedule})...')
    written = []
    world_size = dist.get_world_size()
    step_images = seedlib.images_per_step([seedlib.rank_batches(len(seeds), max_batch_size, world_size, r)
                                           for r in range(world_size)])
    bar = progress_bar(total=len(seeds), unit='img', desc='Generating', disable=dist.get_rank() != 0, leave=False)
    for batch in generate_batches(net, encoder, seeds, gnet=gnet, guidance=schedule, class_idx=class_idx,
                                  max_batch_size=max_batch_size, device=device, mode=numerics, **sampler_kwargs):
        for seed, image in zip(batch.seeds, batch.images.cpu()):
            path = imagelib.seed_image_path(outdir, seed, subdirs)
            imagelib.save_png(path, image)
            written.append(path)
        bar.update(step_images[batch.batch_idx])
        if verbose:
            bar.write(f'batch {batch.batch_idx + 1}/{batch.num_batches}: evaluations per image net {batch.counter.net}, gnet {batch.counter.gnet}')
    bar.close()
    dist.print0('Done.')
    return written


def generate_figures(cond_pkl, uncond_pkl, figs='all', results_dir='./results', device=None, verbose=False):
    """Upstream guidance-interval figure mode: grids under `<results_dir>/<fig>/`."""
    from edmguide import figures, loading
    from edmguide.generation import pick_device
    from edmguide.progress import progress_bar
    names = figures.parse_figure_names(figs)
    device = pick_device(device)
    check_output_dir(results_dir, '--results_dir')
    net, encoder, gnet = loading.load_networks(cond_pkl, uncond_pkl, device, encoder_batch_size=8, verbose=verbose)
    figures.check_figure_classes(names, net, cond_pkl)  # every figure, before the first is rendered
    written = []
    with progress_bar(total=sum(figures.figure_images(name) for name in names), unit='img', desc='Figures') as bar:
        for name in names:
            bar.write(f'Rendering {name}...')
            written += figures.render_figure(name, net, gnet, encoder, results_dir, device=device, verbose=verbose,
                                             on_images=bar.update)
    print('Done.')
    return written


def generate_demo(outdir, device=None, seeds=None, classes=None):
    """The embedded demo: a labelled grid comparing the guidance methods on the digits models."""
    from edmguide import figures, loading, presets
    from edmguide.generation import build_guidance, pick_device
    seeds = list(presets.DEMO_SEEDS if seeds is None else seeds)
    classes = list(presets.DEMO_CLASSES if classes is None else classes)
    device = pick_device(device or 'cpu')
    check_output_dir(outdir, '--outdir')  # before 30 s of rendering
    files = presets.DEMO_FILES
    net, encoder = loading.load_network(files.cond, device)
    guides = dict(uncond=loading.load_network(files.uncond, device, want_encoder=False)[0],
                  bad=loading.load_network(files.bad, device, want_encoder=False)[0], none=None)
    methods = [(presets.demo_label(label, guide, weight, interval), guides[guide],
                build_guidance(weight, interval=interval, net=net, mode='edm2', device=device))
               for label, guide, weight, interval in presets.DEMO_METHODS]
    path = os.path.join(outdir, 'demo-comparison.png')
    print(f'Sampling {len(methods)} methods x {len(classes) * len(seeds)} images on {device} '
          f'(about 15-30 s on one CPU core)...', flush=True)
    figures.render_comparison(methods, net, encoder, classes, seeds, path, device=device)
    print(f'Wrote {path}: {len(methods)} rows (one per method, same seeds in every row), '
          f'{len(classes) * len(seeds)} columns (digit classes {" ".join(map(str, classes))}; '
          f'seeds {" ".join(map(str, seeds))} of each class)')
    for k, (label, _gnet, _guidance) in enumerate(methods):
        print(f'  row {k + 1}: {label}')
    return path


def generate_sdxl(model, prompt, outdir, *, negative_prompt='', guidance=None, guidance_interval=None,
                  guidance_sigma=None, seeds=range(4), max_batch_size=4, device=None, verbose=False, **sampler_kwargs):
    """SD-XL seed mode: `<seed:06d>.png` per seed; sampler options not given take the SD-XL defaults,
    and without an interval option the guidance is the paper's (0.28, 5.42] (steps 10..25 of 32)."""
    from edmguide import sdxl
    from edmguide.generation import pick_device
    from edmguide.sampling import check_sampler_kwargs
    kwargs = dict(sdxl.DEFAULTS, **sampler_kwargs)
    check_sampler_kwargs(kwargs)
    device = pick_device(device)
    check_output_dir(outdir, '--outdir')  # before the model is loaded
    weight = sdxl.DEFAULT_GUIDANCE if guidance is None else guidance
    schedule = sdxl.sdxl_guidance(weight, guidance_interval, guidance_sigma, device=device,
                                  **{k: v for k, v in kwargs.items() if k in sdxl.DEFAULTS})
    model = sdxl.load_sdxl(model, device)
    print(f'Generating {len(seeds)} images to "{outdir}" ({schedule}; {kwargs["num_steps"]} Heun steps, '
          f'sigma {kwargs["sigma_max"]:g} -> {kwargs["sigma_min"]:g}, rho {kwargs["rho"]:g})...', flush=True)
    written = sdxl.generate_sdxl_images(model, prompt, seeds, outdir, negative_prompt=negative_prompt,
                                        guidance=schedule, max_batch_size=max_batch_size, **kwargs)
    print('Done.')
    return written


def generate_sdxl_figures(model, figs, prompts, outdir, *, negative_prompt='', seeds=(0, 1), max_batch_size=4,
                          device=None):
    """The GI paper's SD-XL comparisons (`--figs=sdxl-fig6,sdxl-fig8-hi,sdxl-fig8-lo` or `all`) as
    labelled grids `<outdir>/<name>.png`: rows = guidance settings, columns = prompts x seeds."""
    from edmguide import sdxl
    from edmguide.generation import pick_device
    names = sdxl.parse_figures(figs)
    device = pick_device(device)
    check_output_dir(outdir, '--outdir')
    model = sdxl.load_sdxl(model, device)
    written = []
    for name in names:
        print(f'Rendering {name} ({len(prompts)} prompts x {len(seeds)} seeds)...', flush=True)
        written.append(sdxl.render_sdxl_figure(model, name, prompts, list(seeds), outdir,
                                               negative_prompt=negative_prompt, max_batch_size=max_batch_size))
        print(f'Wrote {written[-1]}')
    print('Done.')
    return written


def generate_dit(model, outdir, *, seeds, class_idx=None, guidance=None, guidance_interval=None,
                 guidance_sigma=None, numerics=None, seed=0, figs=None, max_batch_size=32, subdirs=False,
                 overwrite=False, device=None, **dit_options):
    """DiT mode: per-seed PNGs, DiT sample.py's batch (numerics 'dit') or the comparison grid
    (figs 'comparison'); without a guidance option, the paper's FID setting w = 2.5 on (0.34, 1.02]."""
    from edmguide.generation import pick_device
    from edmguide.models import dit, dit_generation
    device = pick_device(device)
    weight = dit.DEFAULT_GUIDANCE if guidance is None else guidance
    options = dict(mapping=dit_options.get('dit_mapping', dit.DEFAULT_MAPPING),
                   guide_channels=dit_options.get('dit_guide_channels', '3'),
                   embedding=dit_options.get('dit_embedding', 'dit'),
                   vae=dit_options.get('dit_vae', dit_generation.DEFAULT_VAE), overwrite=overwrite, device=device)
    if numerics == 'dit' and (isinstance(seed, bool) or seed < 0):
        raise UserError(f'--seed={seed}: seeds are non-negative integers')
    if figs is not None:
        if figs not in ('comparison', 'all'):
            raise UserError(f'--dit --figs={figs!r}: DiT has one figure, "comparison"')
        classes = (list(class_idx) if isinstance(class_idx, tuple) else
                   list(dit_generation.COMPARISON_CLASSES) if class_idx is None else [class_idx])
        return [dit_generation.render_dit_comparison(model, outdir, classes=classes, seeds=list(seeds), **options)]
    if numerics == 'dit':
        if class_idx is None:
            raise UserError('--numerics=dit needs --class: the class list of DiT\'s sample.py (one image per class)')
        classes = list(class_idx) if isinstance(class_idx, tuple) else [class_idx]
        return dit_generation.generate_dit_reference_images(model, outdir, classes=classes, seed=seed, guidance=weight,
                                                            interval=guidance_interval, sigma_range=guidance_sigma,
                                                            **options)
    from torch_utils import distributed as dist
    dist.init()
    return dit_generation.generate_dit_images(model, outdir, seeds=seeds, class_idx=class_idx, guidance=weight,
                                              interval=guidance_interval, sigma_range=guidance_sigma,
                                              max_batch_size=max_batch_size, subdirs=subdirs, **options)


SDXL_OPTIONS = ('sdxl', 'prompt', 'negative_prompt', 'outdir', 'seeds', 'max_batch_size', 'guidance',
                'guidance_interval', 'guidance_sigma', 'device', 'verbose', 'threads', 'num_steps', 'sigma_min',
                'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise')
SDXL_FIGURE_OPTIONS = ('sdxl', 'figs', 'prompt', 'negative_prompt', 'outdir', 'seeds', 'max_batch_size', 'device',
                       'verbose', 'threads')
SDXL_ONLY_OPTIONS = ('prompt', 'negative_prompt')
FIGURE_MODE_OPTIONS = ('cond_pkl', 'uncond_pkl', 'figs', 'results_dir', 'seed', 'verbose', 'device', 'threads')
DEMO_OPTIONS = ('preset', 'outdir', 'device', 'verbose', 'threads')
DIT_ONLY_OPTIONS = ('dit_vae', 'dit_embedding', 'dit_mapping', 'dit_guide_channels', 'overwrite')
DIT_COMMON = ('dit', 'outdir', 'device', 'verbose', 'threads') + DIT_ONLY_OPTIONS
DIT_OPTIONS = DIT_COMMON + ('seeds', 'class_idx', 'max_batch_size', 'subdirs', 'guidance', 'guidance_interval',
                            'guidance_sigma', 'numerics')
DIT_SAMPLE_PY_OPTIONS = DIT_COMMON + ('seed', 'class_idx', 'guidance', 'guidance_interval', 'guidance_sigma', 'numerics')
DIT_FIGURE_OPTIONS = DIT_COMMON + ('figs', 'seeds', 'class_idx')


def _options_given(ctx):
    """{parameter name: option spelling} of the options written on the command line."""
    return {p.name: p.opts[0] for p in ctx.command.params
            if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE}


def _refuse_unused(given, used, mode):
    """One-line error for options the chosen mode would silently ignore."""
    unused = [spelling for name, spelling in given.items() if name not in used]
    if unused:
        raise UserError(f'{mode}; {", ".join(unused)} would be ignored there')


@click.command(cls=cli.Command, epilog=cli.PICKLE_NOTE)
@click.option('--preset', help='Configuration preset (see README), e.g. edm2-img512-s-guid-fid or demo', metavar='STR')
@click.option('--net', help='Network pickle or .safetensors filename or URL', metavar='PATH|URL')
@click.option('--gnet', help='Guiding network pickle or .safetensors filename or URL', metavar='PATH|URL')
@click.option('--outdir', help='Where to save the output images', metavar='DIR')
@click.option('--subdirs', help='Create subdirectory for every 1000 seeds', is_flag=True)
@click.option('--seeds', help='List of random seeds (e.g. 1,2,5-10)', metavar='LIST', default='16-19', show_default=True)
@click.option('--class', 'class_idx', help='Class label  [default: random]; with --dit also a list: one class per '
              'seed, or the class list of --numerics=dit', type=cli.ClassList())
@click.option('--batch', 'max_batch_size', help='Maximum batch size', type=click.IntRange(min=1), default=32, show_default=True)
@click.option('--guidance', help='Guidance strength  [default: 1; no guidance]', type=float)
@click.option('--guidance_interval', help='Guide only steps "[start, stop]" (inclusive indices)', metavar='"[I0, I1]"')
@click.option('--guidance_sigma', help=cli.GUIDANCE_SIGMA_HELP, metavar='"(LO, HI]"')
@click.option('--numerics', type=click.Choice(['edm2', 'gi', 'dit']), default=None,
              help=cli.NUMERICS_HELP + "; with --dit: 'dit' = DiT sample.py's noise for --seed and the --class list  "
              '[default: edm2; gi in figure mode; per-seed noise with --dit]')
@click.option('--device', help='Torch device (default: cuda if available, else cpu)', metavar='DEV')
@click.option('--cond_pkl', help='Figure mode: conditional network pickle or .safetensors', metavar='PKL')
@click.option('--uncond_pkl', help='Figure mode: guiding (unconditional) network pickle or .safetensors', metavar='PKL')
@click.option('--figs', help='Figure mode: comma-separated figure names or "all"', metavar='LIST')
@click.option('--results_dir', help='Figure mode: output directory', metavar='DIR', default='./results', show_default=True)
@click.option('--seed', help='--dit --numerics=dit: the seed of sample.py; figure mode: accepted for compatibility, '
              'unused', type=int, default=0)
@click.option('--sdxl', help='SD-XL mode: diffusers model id or local folder', metavar='MODEL')
@click.option('--prompt', help='SD-XL mode: text prompt (repeat it for several rows of --figs)', metavar='TEXT',
              multiple=True)
@click.option('--negative_prompt', help='SD-XL mode: prompt of the guiding (unconditional) branch', metavar='TEXT',
              default='', show_default=True)
@click.option('--dit', help="DiT mode: a DiT checkpoint (.pt) or diffusers folder/id; DiT's 250-step sampler, by "
              "default the paper's FID setting w = 2.5 on sigma in (0.34, 1.02] (75 of 250 steps; CFG at every "
              'step: --guidance=1.5 --guidance_sigma="(0, inf]")', metavar='MODEL')
@click.option('--dit_vae', help='DiT mode: VAE id or folder  [default: stabilityai/sd-vae-ft-ema]', metavar='VAE')
@click.option('--dit_embedding', type=click.Choice(['dit', 'diffusers']), default='dit', show_default=True,
              help="DiT mode: timestep embedding of DiT's code, or diffusers' as it ships")
@click.option('--dit_mapping', type=click.Choice(['paper', 'model']), default='paper', show_default=True,
              help="DiT mode: a step's sigma: the paper's Appendix A (EDM iDDPM u_{1000-t}) or the model's "
              'sqrt((1-abar_t)/abar_t)')
@click.option('--dit_guide_channels', type=click.Choice(['3', 'all']), default='3', show_default=True,
              help="DiT mode: latent channels guided (DiT's forward_with_cfg guides 3 of 4)")
@click.option('--overwrite', help='DiT mode: replace existing images', is_flag=True)
@cli.verbose_option('Print sampler details')
@threads.threads_option
@cli.sampler_options
def main(preset, net, gnet, outdir, seeds, guidance_interval, guidance_sigma, numerics,
         cond_pkl, uncond_pkl, figs, results_dir, seed, verbose, device, sdxl, prompt, negative_prompt, dit,
         dit_vae, dit_embedding, dit_mapping, dit_guide_channels, overwrite, **opts):
    """Generate images using the given model(s)."""
    given = _options_given(click.get_current_context())

    def work():
        if dit:
            if sdxl:
                raise UserError('--dit and --sdxl are two models: give one')
            if outdir is None:
                raise UserError('--dit needs --outdir')
            from edmguide.seeds import parse_seed_list
            if figs:
                _refuse_unused(given, DIT_FIGURE_OPTIONS, '--dit --figs renders the Table 1 comparison grid')
            elif numerics == 'dit':
                _refuse_unused(given, DIT_SAMPLE_PY_OPTIONS, "--numerics=dit samples DiT's sample.py batch (--seed, "
                                                             'the --class list)')
            else:
                _refuse_unused(given, DIT_OPTIONS, '--dit samples per seed (--numerics=dit for sample.py)')
                if numerics is not None:
                    raise UserError(f'--numerics={numerics} is an EDM2 sampler; with --dit give dit or nothing')
            interval, sigma_range = cli.parse_guidance_options(guidance_interval, guidance_sigma)
            if guidance_interval is not None and interval is None:  # "None": every step (CFG)
                sigma_range = (0.0, float('inf'))
            dit_options = {name: value for name, value in (('dit_vae', dit_vae), ('dit_embedding', dit_embedding),
                                                           ('dit_mapping', dit_mapping),
                                                           ('dit_guide_channels', dit_guide_channels))
                           if value is not None}
            return generate_dit(dit, outdir, seeds=parse_seed_list(seeds), class_idx=opts['class_idx'],
                                guidance=opts['guidance'], guidance_interval=interval, guidance_sigma=sigma_range,
                                numerics=numerics, seed=seed, figs=figs, max_batch_size=opts['max_batch_size'],
                                subdirs=opts['subdirs'], overwrite=overwrite, device=device, **dit_options)
        misplaced = [given[name] for name in DIT_ONLY_OPTIONS if name in given]
        if misplaced or numerics == 'dit':
            raise UserError(f'{", ".join(misplaced) or "--numerics=dit"} only apply with --dit')
        if isinstance(opts['class_idx'], tuple):
            raise UserError('--class takes one class here; class lists only apply with --dit')
        if sdxl:
            if not prompt:
                raise UserError('--sdxl needs --prompt')
            if outdir is None:
                raise UserError('--sdxl needs --outdir')
            from edmguide.seeds import parse_seed_list
            if figs:
                _refuse_unused(given, SDXL_FIGURE_OPTIONS, "--sdxl --figs renders the paper's SD-XL comparisons "
                                                           'with its sampler settings')
                return generate_sdxl_figures(sdxl, figs, list(prompt), outdir, negative_prompt=negative_prompt,
                                             seeds=parse_seed_list(seeds), device=device,
                                             max_batch_size=opts['max_batch_size'] if 'max_batch_size' in given else 4)
            _refuse_unused(given, SDXL_OPTIONS, '--sdxl runs the SD-XL model with a prompt')
            if len(prompt) > 1:
                raise UserError('--prompt given more than once: only --figs takes several prompts')
            interval, sigma_range = cli.parse_guidance_options(guidance_interval, guidance_sigma)
            from edmguide.sampling import OPTION_KEYS
            sampler = {k: v for k, v in opts.items() if k in OPTION_KEYS and k in given}  # others: SD-XL defaults
            return generate_sdxl(sdxl, prompt[0], outdir, negative_prompt=negative_prompt, guidance=opts['guidance'],
                                 guidance_interval=interval, guidance_sigma=sigma_range, seeds=parse_seed_list(seeds),
                                 max_batch_size=opts['max_batch_size'] if 'max_batch_size' in given else 4,
                                 device=device, verbose=verbose, **sampler)
        misplaced = [given[name] for name in SDXL_ONLY_OPTIONS if name in given]
        if misplaced:
            raise UserError(f'{", ".join(misplaced)} only apply with --sdxl')
        if cond_pkl or uncond_pkl or figs:
            _refuse_unused(given, FIGURE_MODE_OPTIONS, "figure mode renders the paper's figures with their own settings")
            if not (cond_pkl and uncond_pkl):
                raise UserError('figure mode needs both --cond_pkl and --uncond_pkl')
            return generate_figures(cond_pkl, uncond_pkl, figs or 'all', results_dir, device=device, verbose=verbose)
        if preset == 'demo' or (preset is None and net is None and not set(given) - set(DEMO_OPTIONS)):
            _refuse_unused(given, DEMO_OPTIONS, '--preset=demo renders the fixed comparison grid of the embedded demo')
            return generate_demo(outdir or 'out/demo', device=device)
        from edmguide import presets
        from edmguide.seeds import parse_seed_list
        from torch_utils import distributed as dist
        interval, sigma_range = cli.parse_guidance_options(guidance_interval, guidance_sigma)
        settings = dict(net=net, gnet=gnet, guidance=opts.pop('guidance'))
        if preset is not None:
            chosen = presets.get_preset(preset)
            if chosen is None:
                raise click.UsageError(f'Invalid configuration preset "{preset}"')
            for key in ('net', 'gnet', 'guidance'):
                if settings[key] is None:
                    settings[key] = chosen[key]
            if interval is None and sigma_range is None and chosen.get('guidance_interval'):
                interval = tuple(chosen.guidance_interval)
        if settings['net'] is None:
            raise click.UsageError('Please specify either --preset or --net')
        if settings['guidance'] is not None and settings['guidance'] != 1 and settings['gnet'] is None:
            raise click.UsageError('Please specify --gnet when using guidance')
        if outdir is None:
            raise click.UsageError('Please specify --outdir')
        dist.init()
        return generate_seed_images(settings['net'], outdir, gnet=settings['gnet'], guidance=settings['guidance'],
                                    guidance_interval=interval, guidance_sigma=sigma_range, seeds=parse_seed_list(seeds),
                                    numerics=numerics or 'edm2', device=device, verbose=verbose, **opts)
    run_cli(work)


if __name__ == '__main__':
    main()
