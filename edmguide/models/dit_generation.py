"""DiT images for the scripts: loading by name, per-seed PNGs, DiT sample.py batches, the comparison
grid and 50k zips, all on DiT's own sampler (`edmguide.models.dit`).

Per-seed work goes through the one generation iterator (`edmguide.jobs.generation`) with DiT's sampler
plugged in through its schedule object (`dit.DiTSchedule`, duck-typed like `schedule.Schedule`),
so the per-seed generators, batching, decoding, finiteness check and the resumable zips
(`edmguide.jobs.zipdump`) are the EDM2 ones. The networks come from `edmguide.models.dit_net`
(`load_dit_network`, `load_dit_vae`), imported by name when a DiT is first loaded.
"""

import dataclasses
import importlib
import os
import sys

import torch

from edmguide.util import images as imagelib
from edmguide.util.errors import UserError
from edmguide.sampler.guidance import Interval
from edmguide.models import dit
from edmguide.util.outputs import check_output_dir
from edmguide.util.progress import progress_bar

DEFAULT_VAE = 'stabilityai/sd-vae-ft-ema'  # DiT's sample_ddp.py (its FID runs); sample.py defaults to -mse
EMBEDDINGS = ('dit', 'diffusers')  # dit_net.EMBEDDINGS (kept here so options are checked before torch loads it)
GUIDE_CHANNELS = dit.GUIDE_CHANNELS
COMPARISON_CLASSES = (88, 207, 360, 387)  # macaw, golden retriever, otter, lesser panda: the grid's default columns
COMPARISON_ROWS = (  # (label, weight, sigma range): Table 1's DiT settings
    ('CFG (w = 1.5, all 250 steps)', dit.CFG_GUIDANCE, Interval()),
    ('interval (0.34, 1.02] (w = 2.5)', dit.DEFAULT_GUIDANCE, Interval.of_sigma(*dit.DEFAULT_SIGMA_RANGE)),
    ('interval (0.45, 1.23] (w = 4.0)', dit.FD_GUIDANCE, Interval.of_sigma(*dit.FD_SIGMA_RANGE)),
)

#----------------------------------------------------------------------------
# Options and loading.

def check_options(options=None, embedding='dit'):
    """One `error:` line for a DiT option value outside its choices (`DiTOptions` checks its own
    fields when made). Returns the options (default `DiTOptions()`)."""
    if embedding not in EMBEDDINGS:
        raise UserError(f'--dit_embedding={embedding!r}: choose one of {", ".join(EMBEDDINGS)}')
    return options if options is not None else dit.DiTOptions()


def _interval(interval):
    """None: the paper's FID interval (the DiT commands' default); else the `Interval` given."""
    return dit.DEFAULT_INTERVAL if interval is None else interval


def load_dit_models(model, *, vae=DEFAULT_VAE, embedding='dit', device=None):
    """(net, decoder) for the generation iterator: the DiT network and its VAE from `dit_net`."""
    try:
        dit_net = importlib.import_module('edmguide.models.dit_net')
    except ModuleNotFoundError as exc:
        if exc.name != 'edmguide.models.dit_net':
            raise
        raise UserError('DiT networks are loaded by edmguide.models.dit_net, which this installation lacks') from None
    net = dit_net.load_dit_network(model, embedding=embedding, device=device if device is not None else 'cpu')
    decoder = dit_net.load_dit_vae(vae, device=device if device is not None else 'cpu')
    if int(getattr(net, 'num_classes', dit.NUM_CLASSES)) != dit.NUM_CLASSES:
        raise UserError(f'{model}: a DiT with {net.num_classes} classes; DiT-XL/2 and this sampler use ImageNet\'s 1000')
    return dit.GenerationNet(net), dit.GenerationDecoder(decoder)


def describe(guidance, schedule):
    """'w = 2.5 on steps [124, 198] (75 of 250 steps; sigma (0.34, 1.02] under the paper mapping)'."""
    mapping = schedule.options.mapping
    steps = schedule.guided_step_list(guidance)
    if not steps:
        return 'no guidance (250 conditional evaluations per image)'
    weights = sorted({w for w in schedule.weights(guidance) if w != 1})
    w = ', '.join(f'{v:g}' for v in weights)
    n = schedule.num_steps
    if len(steps) == n:
        return f'w = {w} on all {n} steps (CFG)'
    return (f'w = {w} on steps [{steps[0]}, {steps[-1]}] ({len(steps)} of {n}; {guidance} '
            f'under the {mapping!r} sigma mapping)')


def evaluations_line(guidance, schedule):
    guided = len(schedule.guided_step_list(guidance))
    n = schedule.num_steps
    return f'evaluations per image: {n} conditional + {guided} unconditional = {n + guided}'


def _check_free(paths, overwrite):
    """Refuse to replace existing images unless `overwrite` (before anything is loaded)."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise UserError(f'{len(existing)} of the {len(paths)} images exist already (first: {existing[0]}); '
                        f'give --overwrite to replace them, or choose another --outdir')

#----------------------------------------------------------------------------
# Per-seed PNGs.

def _schedule(options, embedding, device=None):
    return check_options(options, embedding).schedule(device=device)


def generate_dit_images(model, outdir, *, seeds, class_idx=None, guidance=dit.DEFAULT_GUIDANCE, interval=None,
                        options=None, embedding='dit', vae=DEFAULT_VAE, max_batch_size=32, subdirs=False,
                        overwrite=False, device='cpu'):
    """One `<seed:06d>.png` per seed; each image depends only on its seed, class and the settings.
    `class_idx`: None (a class per seed drawn from its generator), one class, or one per seed.
    `interval`: a `guidance.Interval` (None: the paper's FID interval); `options`: `dit.DiTOptions`."""
    from edmguide.jobs.generation import generate_batches, save_seed_images
    from torch_utils import distributed as dist
    schedule = _schedule(options, embedding, device)
    if class_idx is not None:
        classes = dit.check_classes(class_idx)
        if not isinstance(class_idx, int) and len(classes) not in (1, len(seeds)):
            raise UserError(f'{len(classes)} classes for {len(seeds)} seeds: give one class, or one per seed')
        class_idx = classes[0] if len(classes) == 1 else classes
    weights = schedule.guidance(guidance, _interval(interval))
    check_output_dir(outdir, '--outdir')
    paths = [imagelib.seed_image_path(outdir, s, subdirs) for s in seeds]
    _check_free(paths, overwrite)
    net, decoder = load_dit_models(model, vae=vae, embedding=embedding, device=device)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}" with DiT\'s {schedule.num_steps}-step sampler: '
                f'{describe(weights, schedule)}; {evaluations_line(weights, schedule)}')
    batches = generate_batches(net, decoder, seeds, schedule, guidance=weights, class_idx=class_idx,
                               max_batch_size=max_batch_size, device=device)
    written = save_seed_images(batches, outdir, len(seeds), max_batch_size, subdirs=subdirs)
    dist.print0('Done.')
    return written

#----------------------------------------------------------------------------
# DiT sample.py's numerics.

def reference_image_path(outdir, seed, k, class_idx):
    return os.path.join(outdir, f'sample-s{seed}-{k:03d}-class{class_idx:03d}.png')


def generate_dit_reference_images(model, outdir, *, classes, seed=0, guidance=dit.DEFAULT_GUIDANCE, interval=None,
                                  options=None, embedding='dit', vae=DEFAULT_VAE, overwrite=False, device='cpu'):
    """DiT sample.py for `seed` and the class list (one batch, one global-style generator):
    `sample-s<seed>-<k>-class<c>.png` per class. Returns the written paths."""
    schedule = _schedule(options, embedding, device)
    classes = dit.check_classes(classes)
    weights = schedule.guidance(guidance, _interval(interval))
    check_output_dir(outdir, '--outdir')
    paths = [reference_image_path(outdir, seed, k, c) for k, c in enumerate(classes)]
    _check_free(paths, overwrite)
    net, decoder = load_dit_models(model, vae=vae, embedding=embedding, device=device)
    print(f'Generating {len(classes)} images to "{outdir}" as DiT\'s sample.py does (seed {seed}): '
          f'{describe(weights, schedule)}; {evaluations_line(weights, schedule)}', flush=True)
    opts = schedule.options
    bar = progress_bar(total=schedule.num_steps, unit='step', desc='Sampling', leave=False)
    with torch.no_grad():
        latents = dit.sample_dit_reference(net.net, classes, seed, weights, device=device, mapping=opts.mapping,
                                           guide_channels=opts.guide_channels, num_steps=opts.num_steps,
                                           progress=lambda info: bar.update(1))
        bar.close()
        if not bool(torch.isfinite(latents).all()):
            raise UserError('the sampler produced non-finite latents; nothing was written')
        images = decoder.decode(latents).cpu()
    for path, image in zip(paths, images):
        imagelib.save_png(path, image)
    print('Done.')
    return paths

#----------------------------------------------------------------------------
# The comparison grid: CFG at every step vs the paper's intervals.

def render_dit_comparison(model, outdir, *, classes, seeds, options=None, embedding='dit', vae=DEFAULT_VAE,
                          overwrite=False, device='cpu', scale=1):
    """`<outdir>/dit-comparison.png`: one row per Table 1 setting (CFG w = 1.5 at every step, the FID
    interval, the FD_DINOv2 interval), one column per (class, seed), the same noise in every row. The
    rows are sampled together (`DiTSchedule.sample_tree`): the two interval rows share their unguided
    first steps. Returns the path."""
    from edmguide.jobs.figures import layout_comparison
    from edmguide.jobs.generation import generate_setting_batches
    schedule = _schedule(options, embedding, device)
    classes = dit.check_classes(classes)
    rows = [(label, schedule.guidance(w, interval)) for label, w, interval in COMPARISON_ROWS]
    check_output_dir(outdir, '--outdir')
    path = os.path.join(outdir, 'dit-comparison.png')
    _check_free([path], overwrite)
    net, decoder = load_dit_models(model, vae=vae, embedding=embedding, device=device)
    column_seeds = [s for _ in classes for s in seeds]
    column_classes = [c for c in classes for _ in seeds]
    tiles = [[] for _ in rows]
    print(f'Sampling {len(rows)} rows x {len(column_seeds)} images (sigma mapping {schedule.options.mapping!r})...',
          flush=True)
    for batch in generate_setting_batches(net, decoder, column_seeds, [(None, g) for _, g in rows], schedule,
                                          class_idx=column_classes, max_batch_size=len(column_seeds), device=device,
                                          rank=0, world_size=1, sync=False):
        for row, images in zip(tiles, batch.images):
            row += [imagelib.to_hwc_uint8(img) for img in images]
    labels = [f'{label}: {len(schedule.guided_step_list(g))} guided steps' for label, g in rows]
    grid = layout_comparison(tiles, labels, scale=scale, column_headers=([f'class {c}' for c in classes],
                                                                          [f'seed {s}' for s in column_seeds]),
                             group_size=len(seeds))
    imagelib.save_png(path, grid)
    print(f'Wrote {path}')
    for k, label in enumerate(labels):
        print(f'  row {k + 1}: {label}')
    return path

#----------------------------------------------------------------------------
# Metrics on the fly (calculate_metrics.py gen --dit).

def calc_metrics_for_dit(model, ref_path, metrics=None, *, guidance=dit.DEFAULT_GUIDANCE, interval=None,
                         options=None, embedding='dit', vae=DEFAULT_VAE, num_images=50000, seed=0, max_batch_size=32,
                         class_idx=None, device=None, progress=True):
    """Metrics of DiT's samples of seeds seed..seed+N-1, measured as they come (nothing is written);
    the images are those `generate_dit_images` writes for the same seeds and settings. Batches are
    `pipeline.metric_chunks` (fixed chunks dealt round-robin), as `calc_metrics_for_network`'s."""
    from edmguide.jobs import generation
    from edmguide.metrics import pipeline, stats as stats_lib
    from torch_utils import distributed as dist
    device = generation.pick_device(device, note=False)
    schedule = _schedule(options, embedding, device)
    if class_idx is not None:
        class_idx = dit.check_classes(class_idx)[0]
    weights = schedule.guidance(guidance, _interval(interval))
    ref = stats_lib.load_reference(ref_path)  # before the networks: a bad reference fails at once
    metrics = pipeline.resolve_metrics(metrics, ref, ref_path)
    pipeline.reference_dims(ref, metrics, ref_path)
    dets = pipeline.build_detectors(metrics)
    net, decoder = load_dit_models(model, vae=vae, embedding=embedding, device=device)
    # stderr: a metric command's stdout holds only its results
    dist.print0(f'DiT: {describe(weights, schedule)}; {evaluations_line(weights, schedule)}', file=sys.stderr)
    chunks = pipeline.metric_chunks(num_images, max_batch_size)
    batches = generation.generate_batches(net, decoder, range(seed, seed + num_images), schedule, guidance=weights,
                                          class_idx=class_idx, batches=chunks, sync=False, device=device)
    return pipeline.calc_metrics_for_generator(batches, num_images, ref_path, metrics, num_steps=len(chunks), ref=ref,
                                               device=device, dets=dets, progress=progress,
                                               step_images=pipeline.metric_step_images(num_images, max_batch_size))

#----------------------------------------------------------------------------
# Sweeps (calculate_metrics.py sweep --dit).

@dataclasses.dataclass(frozen=True)
class DiTModel:
    """A DiT as `calculate_metrics.py sweep --dit` samples it (`sweep.sweep_command(dit=...)`): the
    network, its VAE, the timestep embedding and the sampler's `dit.DiTOptions`, checked when made.
    The sweep's guide is the network itself with the null class, named GUIDE in the results."""
    model: str
    vae: str = DEFAULT_VAE
    embedding: str = 'dit'
    options: dit.DiTOptions = dataclasses.field(default_factory=dit.DiTOptions)

    GUIDE = 'null-class'

    def __post_init__(self):
        check_options(self.options, self.embedding)

    def schedule(self, device=None):
        return self.options.schedule(device=device)

    def check_class(self, class_idx):
        """None (a class per seed) or one class in 0..999, else one `error:` line."""
        return None if class_idx is None else dit.check_classes(class_idx)[0]

    def record(self, ref_path):
        """What identifies the sweep's inputs (besides `DiTOptions.as_record`, which the sweep
        records itself): files by SHA-256 (a .pt checkpoint, a VAE file, the reference), hub ids and
        folders by name, and the embedding."""
        from edmguide.nets import digests
        inputs, names = _input_record(self.model, self.vae)
        return dict(inputs=dict(inputs, **digests.input_record(ref=ref_path)), **names, dit_embedding=self.embedding)

    def load(self, device):
        """(net, decoder) for the generation iterator (`load_dit_models`)."""
        return load_dit_models(self.model, vae=self.vae, embedding=self.embedding, device=device)

#----------------------------------------------------------------------------
# Zips (the 50k FID sets).

def _input_record(model, vae):
    """(inputs, names): the input files by SHA-256 (`digests.input_record`: a .pt checkpoint, a VAE
    file) and, by name, those that are hub ids or folders."""
    from edmguide.nets import digests
    files = {name: str(path) for name, path in (('dit', model), ('dit_vae', vae)) if path and os.path.isfile(str(path))}
    names = {f'{name}_source': str(path) for name, path in (('dit', model), ('dit_vae', vae)) if name not in files}
    return digests.input_record(**files), names


def generate_dit_zip(model, zip_dir='./results', *, num_images=50000, seed=0, batch_size=64,
                     guidance=dit.DEFAULT_GUIDANCE, interval=None, options=None, embedding='dit', vae=DEFAULT_VAE,
                     device='cpu', verbose=False, progress=True, overwrite=False):
    """`<zip_dir>/<model>-s<seed>-nimg<N>-g<G>-<cfg|gi|gi-model>.zip` of seeds seed..seed+N-1, a random
    class per seed (drawn from the seed, as DiT's sample_ddp.py draws random classes), with the
    guarantees of `zipdump.dump_zip` (resumable, settings-checked, atomic). Returns its statistics."""
    from edmguide.jobs.zipdump import dump_zip, zip_file_name
    from torch_utils import distributed as dist
    schedule = _schedule(options, embedding, device)
    if num_images < 1:
        raise UserError('--num_images must be at least 1')
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise UserError(f'--seed={seed}: seeds are non-negative integers')
    weights = schedule.guidance(guidance, _interval(interval))
    check_output_dir(zip_dir, '--zip_dir')
    mapping = schedule.options.mapping
    every_step = len(schedule.guided_step_list(weights)) in (0, schedule.num_steps)
    method = 'cfg' if every_step else ('gi' if mapping == dit.DEFAULT_MAPPING else f'gi-{mapping}')
    stem = str(model)[:-3] if str(model).endswith('.pt') else str(model)
    zip_path = os.path.join(zip_dir, zip_file_name(stem, seed, num_images, 1.0 if guidance is None else guidance,
                                                   method))
    inputs, names = _input_record(model, vae)
    settings = dict(inputs=inputs, **names, dit_embedding=embedding, guidance=weights.as_data(),
                    guided_steps=schedule.guided_step_list(weights), **schedule.options.as_record())
    net, decoder = load_dit_models(model, vae=vae, embedding=embedding, device=device)
    dist.print0(f'Generating {num_images} images to "{zip_path}" with DiT\'s {schedule.num_steps}-step sampler: '
                f'{describe(weights, schedule)}; {evaluations_line(weights, schedule)}')
    stats = dump_zip(net, decoder, zip_path, range(seed, seed + num_images), schedule, settings=settings,
                     guidance=weights, batch_size=batch_size, device=device, verbose=verbose, progress=progress,
                     overwrite=overwrite)
    dist.print0('Done.')
    return dict(stats, path=zip_path)

#----------------------------------------------------------------------------
