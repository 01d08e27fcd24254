#!/usr/bin/env python3
"""Generate images with EDM2 networks: per-seed PNGs, the guidance-interval paper's figure grids,
or the embedded demo's comparison grid.

Three ways to call it (the first two are upstream command lines, unchanged):
  seed mode (NVlabs/edm2):   --preset=NAME | --net=PKL [--gnet=PKL --guidance=W] --outdir=DIR --seeds=0-7
                             plus --guidance_interval="[17, 22]" or --guidance_sigma="(0.1886, 1.6086]"
  figure mode (GI paper):    --cond_pkl=PKL --uncond_pkl=PKL --figs=all --results_dir=DIR
  demo (no downloads):       --preset=demo --outdir=DIR, or no model options at all
  SD-XL (diffusers):         --sdxl=MODEL --prompt=TEXT [--negative_prompt=TEXT] --seeds=0-3 --outdir=DIR
                             (the GI paper's SD-XL sampler by default: 32 steps, w = 16 on steps 10..25,
                             starting from sqrt(1 + sigma_0^2) * noise; --sdxl_noise=edm for sigma_0 * noise)
  DiT-XL/2:                  --dit=MODEL --seeds=0-7 [--class=C[,C...]] --outdir=DIR
                             (DiT's 250-step DDPM sampler; by default the paper's FID setting, w = 2.5
                             on sigma in (0.34, 1.02] = 75 of 250 steps); --numerics=dit --seed=S
                             --class=LIST reproduces DiT's sample.py; --figs=comparison the Table 1 grid
"""

from edmguide.util import threads

threads.configure()  # before torch starts (it is imported lazily below, so --help stays fast)

import os  # noqa: E402

import click  # noqa: E402

from edmguide.jobs import cli  # noqa: E402
from edmguide.util.errors import UserError, run_cli  # noqa: E402
from edmguide.util.outputs import check_output_dir, claim_image_folder  # noqa: E402


def seed_folder_settings(net, gnet, guidance, interval, class_idx, max_batch_size, sampler, vae=None):
    """What decides the pixels of seed mode's PNGs (recorded in `<outdir>/settings.json`): the
    networks as named, w and where it applies, class, batch size (it fixes the batch shapes) and
    every sampler option. Not the seeds: more seeds of the same settings may join a folder."""
    guided = guidance is not None and guidance != 1
    classes = list(class_idx) if isinstance(class_idx, (list, tuple)) else class_idx
    return dict(net=str(net), gnet=str(gnet) if guided else None, guidance=float(guidance) if guided else 1.0,
                interval=interval.as_data() if guided and interval is not None else ('all' if guided else None),
                class_idx=classes, batch=max_batch_size, vae=vae, **sampler.as_record())


def generate_seed_images(net, outdir, *, gnet=None, guidance=None, interval=None, sampler=None,
                         seeds=range(16, 24), class_idx=None, max_batch_size=32, encoder_batch_size=4,
                         subdirs=False, device=None, verbose=False, overwrite=False, vae=None):
    """Upstream EDM2 seed mode: one `<seed:06d>.png` per seed in `outdir`. Returns the written paths.

    `guidance`: the weight; `interval`: a `guidance.Interval` (None: every step); `sampler`: the
    `schedule.SamplerOptions` (None: the defaults, 'edm2' numerics).
    `outdir` records the settings that made its images (`outputs.claim_image_folder`): a rerun
    with the same settings rewrites its seeds (identically), other settings are refused unless
    `overwrite`, which deletes the folder's seed images first."""
    from edmguide.nets import loading
    from edmguide.jobs.generation import generate_batches, pick_device, resolve_guidance, save_seed_images
    from edmguide.sampler.schedule import SamplerOptions
    from torch_utils import distributed as dist
    sampler = sampler or SamplerOptions()
    sampler.check_guidance(guidance, interval, '--guidance')
    device = pick_device(device)
    check_output_dir(outdir, '--outdir')  # before any network is loaded
    if guidance is not None and guidance != 1 and not gnet:
        raise UserError('Please specify --gnet when using guidance')
    settings = seed_folder_settings(net, gnet, guidance, interval, class_idx, max_batch_size, sampler, vae)
    removed = claim_image_folder(outdir, settings, overwrite=overwrite, write=dist.get_rank() == 0)
    if removed:
        dist.print0(f'--overwrite: deleted {removed} images of other settings in "{outdir}"')
    dist.barrier()  # no rank writes an image before rank 0 has claimed the folder
    gnet = gnet if (guidance is not None and guidance != 1) else None
    net, encoder, gnet = loading.load_networks(net, gnet, device, encoder_batch_size=encoder_batch_size, verbose=verbose,
                                               vae=vae)
    schedule = sampler.schedule(net, device=device)
    weights = resolve_guidance(schedule, guidance, interval)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}" ({weights})...')
    def report(batch, bar):
        if verbose:
            bar.write(f'batch {batch.batch_idx + 1}/{batch.num_batches}: evaluations per image net {batch.counter.net}, gnet {batch.counter.gnet}')
    batches = generate_batches(net, encoder, seeds, schedule, gnet=gnet, guidance=weights, class_idx=class_idx,
                               max_batch_size=max_batch_size, device=device)
    written = save_seed_images(batches, outdir, len(seeds), max_batch_size, subdirs=subdirs, on_batch=report)
    dist.print0('Done.')
    return written


def generate_figures(cond_pkl, uncond_pkl, figs='all', results_dir='./results', device=None, verbose=False, vae=None):
    """Upstream guidance-interval figure mode: grids under `<results_dir>/<fig>/`."""
    from edmguide.jobs import figures
    from edmguide.nets import loading
    from edmguide.jobs.generation import pick_device
    from edmguide.util.progress import progress_bar
    names = figures.parse_figure_names(figs)
    device = pick_device(device)
    check_output_dir(results_dir, '--results_dir')
    net, encoder, gnet = loading.load_networks(cond_pkl, uncond_pkl, device, encoder_batch_size=8, verbose=verbose,
                                               vae=vae)
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
    from edmguide.jobs import figures
    from edmguide.nets import loading
    from edmguide.nets import presets
    from edmguide.jobs.generation import pick_device
    from edmguide.sampler.guidance import Interval
    from edmguide.sampler.schedule import SamplerOptions
    seeds = list(presets.DEMO_SEEDS if seeds is None else seeds)
    classes = list(presets.DEMO_CLASSES if classes is None else classes)
    device = pick_device(device or 'cpu')
    check_output_dir(outdir, '--outdir')  # before 30 s of rendering
    files = presets.DEMO_FILES
    net, encoder = loading.load_network(files.cond, device)
    guides = dict(uncond=loading.load_network(files.uncond, device, want_encoder=False)[0],
                  bad=loading.load_network(files.bad, device, want_encoder=False)[0], none=None)
    schedule = SamplerOptions().schedule(net, device=device)
    methods = [(presets.demo_label(label, guide, weight, interval), guides[guide],
                schedule.guidance(weight, Interval.of_steps(*interval) if interval else None))
               for label, guide, weight, interval in presets.DEMO_METHODS]
    path = os.path.join(outdir, 'demo-comparison.png')
    print(f'Sampling {len(methods)} methods x {len(classes) * len(seeds)} images on {device} '
          f'(about 15-30 s on one CPU core)...', flush=True)
    figures.render_comparison(methods, net, encoder, classes, seeds, path, schedule)
    print(f'Wrote {path}: {len(methods)} rows (one per method, same seeds in every row), '
          f'{len(classes) * len(seeds)} columns (digit classes {" ".join(map(str, classes))}; '
          f'seeds {" ".join(map(str, seeds))} of each class)')
    for k, (label, _gnet, _guidance) in enumerate(methods):
        print(f'  row {k + 1}: {label}')
    return path


def generate_sdxl(model, prompt, outdir, *, negative_prompt='', guidance=None, interval=None, sampler=None,
                  seeds=range(4), max_batch_size=4, device=None, verbose=False, empty_negative='zeros'):
    """SD-XL seed mode: `<seed:06d>.png` per seed; `sampler` defaults to the SD-XL sampler
    (`sdxl.default_options()`), and without an `interval` the guidance is the paper's (0.28, 5.42]
    (steps 10..25 of 32). `empty_negative` ('zeros' or 'encode'): see edmguide.models.sdxl."""
    from edmguide.models import sdxl
    from edmguide.jobs.generation import pick_device
    sampler = sampler or sdxl.default_options()
    weight = sdxl.DEFAULT_GUIDANCE if guidance is None else guidance
    sampler.check_guidance(weight, interval, '--guidance')
    sdxl.check_empty_negative(empty_negative)
    device = pick_device(device)
    check_output_dir(outdir, '--outdir')  # before the model is loaded
    schedule = sampler.schedule(device=device)
    weights = sdxl.sdxl_guidance(schedule, weight, interval)
    model = sdxl.load_sdxl(model, device)
    start = 'sqrt(1 + sigma_0^2)' if sampler.init_noise == 'sgm' else 'sigma_0'
    print(f'Generating {len(seeds)} images to "{outdir}" ({weights}; {sampler.num_steps} Heun steps, '
          f'sigma {sampler.sigma_max:g} -> {sampler.sigma_min:g}, rho {sampler.rho:g}, start {start} * noise)...',
          flush=True)
    written = sdxl.generate_sdxl_images(model, prompt, seeds, outdir, schedule, negative_prompt=negative_prompt,
                                        guidance=weights, max_batch_size=max_batch_size, empty_negative=empty_negative)
    print('Done.')
    return written


def generate_sdxl_figures(model, figs, prompts, outdir, *, negative_prompt='', seeds=(0, 1), max_batch_size=4,
                          device=None, init_noise='sgm', empty_negative='zeros'):
    """The GI paper's SD-XL comparisons (`--figs=sdxl-fig6,sdxl-fig8-hi,sdxl-fig8-lo` or `all`) as
    labelled grids `<outdir>/<name>.png`: rows = guidance settings, columns = prompts x seeds."""
    from edmguide.models import sdxl
    from edmguide.jobs.generation import pick_device
    names = sdxl.parse_figures(figs)
    from edmguide.sampler.schedule import SamplerOptions
    SamplerOptions(init_noise=init_noise)  # checks the name before the model is loaded
    sdxl.check_empty_negative(empty_negative)
    device = pick_device(device)
    check_output_dir(outdir, '--outdir')
    model = sdxl.load_sdxl(model, device)
    written = []
    for name in names:
        print(f'Rendering {name} ({len(prompts)} prompts x {len(seeds)} seeds)...', flush=True)
        written.append(sdxl.render_sdxl_figure(model, name, prompts, list(seeds), outdir,
                                               negative_prompt=negative_prompt, max_batch_size=max_batch_size,
                                               init_noise=init_noise, empty_negative=empty_negative))
        print(f'Wrote {written[-1]}')
    print('Done.')
    return written


def generate_dit(model, outdir, *, seeds, class_idx=None, guidance=None, interval=None, numerics=None, seed=0,
                 figs=None, max_batch_size=32, subdirs=False, overwrite=False, device=None, dit_vae=None,
                 dit_embedding='dit', dit_mapping='paper', dit_guide_channels='3'):
    """DiT mode: per-seed PNGs, DiT sample.py's batch (numerics 'dit') or the comparison grid
    (figs 'comparison'); `interval` a `guidance.Interval`, None (no guidance option given) for the
    paper's FID setting w = 2.5 on (0.34, 1.02]."""
    from edmguide.jobs.generation import pick_device
    from edmguide.models import dit, dit_generation
    weight = dit.DEFAULT_GUIDANCE if guidance is None else guidance
    dit_options = dit.DiTOptions(mapping=dit_mapping, guide_channels=dit_guide_channels,
                                 numerics='dit' if numerics == 'dit' else 'per-seed')
    dit_generation.check_options(dit_options, dit_embedding)
    device = pick_device(device)
    options = dict(options=dit_options, embedding=dit_embedding, vae=dit_vae or dit_generation.DEFAULT_VAE,
                   overwrite=overwrite, device=device)
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
                                                            interval=interval, **options)
    from torch_utils import distributed as dist
    dist.init()
    return dit_generation.generate_dit_images(model, outdir, seeds=seeds, class_idx=class_idx, guidance=weight,
                                              interval=interval, max_batch_size=max_batch_size, subdirs=subdirs,
                                              **options)


SDXL_OPTIONS = ('sdxl', 'prompt', 'negative_prompt', 'sdxl_noise', 'empty_negative', 'outdir', 'seeds', 'max_batch_size', 'guidance',
                'guidance_interval', 'guidance_sigma', 'device', 'verbose', 'threads', 'num_steps', 'sigma_min',
                'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise')
SDXL_FIGURE_OPTIONS = ('sdxl', 'figs', 'prompt', 'negative_prompt', 'sdxl_noise', 'empty_negative', 'outdir', 'seeds', 'max_batch_size', 'device',
                       'verbose', 'threads')
SDXL_ONLY_OPTIONS = ('prompt', 'negative_prompt', 'sdxl_noise', 'empty_negative')
FIGURE_MODE_OPTIONS = ('cond_pkl', 'uncond_pkl', 'figs', 'results_dir', 'seed', 'verbose', 'device', 'threads', 'vae')
DEMO_OPTIONS = ('preset', 'outdir', 'device', 'verbose', 'threads')
DIT_ONLY_OPTIONS = ('dit_vae', 'dit_embedding', 'dit_mapping', 'dit_guide_channels')
DIT_COMMON = ('dit', 'outdir', 'device', 'verbose', 'threads', 'overwrite') + DIT_ONLY_OPTIONS
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
@click.option('--vae', help='VAE for latent-space networks: a diffusers model id or local folder, instead of the name the network records (a .safetensors must record a known one otherwise)', metavar='ID|DIR')
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
@click.option('--dit_embedding', type=click.Choice(list(cli.DIT_EMBEDDINGS)), default='dit', show_default=True,
              help="DiT mode: timestep embedding of DiT's code, or diffusers' as it ships")
@click.option('--dit_mapping', type=click.Choice(['paper', 'model']), default='paper', show_default=True,
              help="DiT mode: a step's sigma: the paper's Appendix A (EDM iDDPM u_{1000-t}) or the model's "
              'sqrt((1-abar_t)/abar_t)')
@click.option('--dit_guide_channels', type=click.Choice(['3', 'all']), default='3', show_default=True,
              help="DiT mode: latent channels guided (DiT's forward_with_cfg guides 3 of 4)")
@click.option('--overwrite', help='Seed mode: delete the images of other settings in --outdir and start over; '
              'DiT mode: replace existing images',
              is_flag=True)
@click.option('--sdxl_noise', type=click.Choice(['sgm', 'edm']), default='sgm', show_default=True,
              help='SD-XL mode: starting state; sgm = sqrt(1+sigma_0^2)*noise (generative-models, the paper), '
                   'edm = sigma_0*noise')
@click.option('--empty_negative', type=click.Choice(['zeros', 'encode']), default='zeros', show_default=True,
              help='SD-XL mode: an empty --negative_prompt gives zero embeddings (zeros, when the model sets '
                   'force_zeros_for_empty_prompt) or the encoded "" (encode, diffusers with negative_prompt="")')
@cli.verbose_option('Print sampler details')
@threads.threads_option
@cli.sampler_options
def main(preset, net, gnet, outdir, seeds, guidance_interval, guidance_sigma, numerics,
         cond_pkl, uncond_pkl, figs, results_dir, seed, verbose, device, sdxl, prompt, negative_prompt, sdxl_noise,
         empty_negative, dit, dit_vae, dit_embedding, dit_mapping, dit_guide_channels, sampler, **opts):
    """Generate images using the given model(s)."""
    given = _options_given(click.get_current_context())

    def work():
        if dit:
            if sdxl:
                raise UserError('--dit and --sdxl are two models: give one')
            if outdir is None:
                raise UserError('--dit needs --outdir')
            from edmguide.sampler.seeds import parse_seed_list
            if figs:
                _refuse_unused(given, DIT_FIGURE_OPTIONS, '--dit --figs renders the Table 1 comparison grid')
            elif numerics == 'dit':
                _refuse_unused(given, DIT_SAMPLE_PY_OPTIONS, "--numerics=dit samples DiT's sample.py batch (--seed, "
                                                             'the --class list)')
            else:
                _refuse_unused(given, DIT_OPTIONS, '--dit samples per seed (--numerics=dit for sample.py)')
                if numerics is not None:
                    raise UserError(f'--numerics={numerics} is an EDM2 sampler; with --dit give dit or nothing')
            interval = (cli.parse_guidance_options(guidance_interval, guidance_sigma, opts['guidance'])
                        if guidance_interval is not None or guidance_sigma is not None else None)
            if interval is None and opts['guidance'] is not None:
                cli.parse_guidance_options(None, None, opts['guidance'])  # the weight, checked before any work
            return generate_dit(dit, outdir, seeds=parse_seed_list(seeds), class_idx=opts['class_idx'],
                                guidance=opts['guidance'], interval=interval, numerics=numerics, seed=seed, figs=figs,
                                max_batch_size=opts['max_batch_size'], subdirs=opts['subdirs'],
                                overwrite=opts['overwrite'], device=device, dit_vae=dit_vae,
                                dit_embedding=dit_embedding, dit_mapping=dit_mapping,
                                dit_guide_channels=dit_guide_channels)
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
            from edmguide.sampler.seeds import parse_seed_list
            if figs:
                _refuse_unused(given, SDXL_FIGURE_OPTIONS, "--sdxl --figs renders the paper's SD-XL comparisons "
                                                           'with its sampler settings')
                return generate_sdxl_figures(sdxl, figs, list(prompt), outdir, negative_prompt=negative_prompt,
                                             seeds=parse_seed_list(seeds), device=device, init_noise=sdxl_noise,
                                             empty_negative=empty_negative,
                                             max_batch_size=opts['max_batch_size'] if 'max_batch_size' in given else 4)
            _refuse_unused(given, SDXL_OPTIONS, '--sdxl runs the SD-XL model with a prompt')
            if len(prompt) > 1:
                raise UserError('--prompt given more than once: only --figs takes several prompts')
            from edmguide.models import sdxl as sdxl_lib
            interval = (cli.parse_guidance_options(guidance_interval, guidance_sigma, opts['guidance'])
                        if guidance_interval is not None or guidance_sigma is not None else None)
            fields = {k: getattr(sampler, k) for k in cli.SAMPLER_FIELDS if k in given}  # others: SD-XL defaults
            return generate_sdxl(sdxl, prompt[0], outdir, negative_prompt=negative_prompt, guidance=opts['guidance'],
                                 interval=interval, sampler=sdxl_lib.default_options(init_noise=sdxl_noise, **fields),
                                 seeds=parse_seed_list(seeds),
                                 max_batch_size=opts['max_batch_size'] if 'max_batch_size' in given else 4,
                                 device=device, verbose=verbose, empty_negative=empty_negative)
        misplaced = [given[name] for name in SDXL_ONLY_OPTIONS if name in given]
        if misplaced:
            raise UserError(f'{", ".join(misplaced)} only apply with --sdxl')
        if cond_pkl or uncond_pkl or figs:
            _refuse_unused(given, FIGURE_MODE_OPTIONS, "figure mode renders the paper's figures with their own settings")
            if not (cond_pkl and uncond_pkl):
                raise UserError('figure mode needs both --cond_pkl and --uncond_pkl')
            return generate_figures(cond_pkl, uncond_pkl, figs or 'all', results_dir, device=device, verbose=verbose,
                                    vae=opts['vae'])
        if preset == 'demo' or (preset is None and net is None and not set(given) - set(DEMO_OPTIONS)):
            _refuse_unused(given, DEMO_OPTIONS, '--preset=demo renders the fixed comparison grid of the embedded demo')
            return generate_demo(outdir or 'out/demo', device=device)
        from edmguide.nets import presets
        from edmguide.sampler.seeds import parse_seed_list
        from torch_utils import distributed as dist
        interval = cli.parse_guidance_options(guidance_interval, guidance_sigma, opts['guidance'])
        settings = dict(net=net, gnet=gnet, guidance=opts.pop('guidance'))
        if preset is not None:
            chosen = presets.get_preset(preset)
            if chosen is None:
                raise click.UsageError(f'Invalid configuration preset "{preset}"')
            for key in ('net', 'gnet', 'guidance'):
                if settings[key] is None:
                    settings[key] = chosen[key]
            if interval.kind == 'all' and chosen.get('guidance_interval'):
                from edmguide.sampler.guidance import Interval
                interval = Interval.of_steps(*chosen.guidance_interval)
        if settings['net'] is None:
            raise click.UsageError('Please specify either --preset or --net')
        if settings['guidance'] is not None and settings['guidance'] != 1 and settings['gnet'] is None:
            raise click.UsageError('Please specify --gnet when using guidance')
        if outdir is None:
            raise click.UsageError('Please specify --outdir')
        dist.init()
        return generate_seed_images(settings['net'], outdir, gnet=settings['gnet'], guidance=settings['guidance'],
                                    interval=interval, sampler=sampler.replace(mode=numerics or 'edm2'),
                                    seeds=parse_seed_list(seeds), device=device, verbose=verbose, **opts)
    run_cli(work)


if __name__ == '__main__':
    main()
