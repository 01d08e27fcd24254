"""The one generation iterator: seeds in, decoded images out, batch by batch.

`generate_images.py` (PNG files and figure grids), `generate_zip.py` (50k-image zips) and
`calculate_metrics.py gen` (metrics on the fly) all consume `generate_batches`, so the per-seed
random draws, the sampler call and the decoding exist once. The image for a seed depends only on
the seed and the settings: every seed has its own random generator, so batch size, position in the
batch, number of processes and resumption do not change it.
"""

import os
import time

import numpy as np
import torch

import dnnlib
from edmguide.sampler import sampling
from edmguide.sampler import seeds as seedlib
from edmguide.util.errors import UserError
from torch_utils import distributed as dist


def generate_batches(net, encoder, seeds, schedule, *, gnet=None, guidance=None, class_idx=None,
                     max_batch_size=32, device=torch.device('cpu'), rank=None, world_size=None,
                     sync=True, batches=None):
    """Yield one EasyDict per batch of this rank's seeds.

    `schedule`: the `schedule.Schedule` to sample on (`SamplerOptions.schedule(net, device=...)`);
    its options' `mode` also decides how class labels are drawn (`seeds.draw_noise_and_labels`).
    `guidance`: as `sampling.sample` takes it, typically `schedule.guidance(weight, interval)`.
    `class_idx`: None (random class per seed, drawn from the seed), one class for all seeds, or a
    sequence with one class per seed.
    Fields: `images` (uint8 NCHW, on `device`), `latents` (sampler output), `labels`, `seeds`,
    `indices` (positions in `seeds`), `batch_idx`, `num_batches`, `counter` (network evaluations
    of this batch), `timing` (seconds spent sampling and decoding).

    Batching follows upstream EDM2 (numpy.array_split over `world_size` ranks) unless `batches`
    gives this rank's index arrays explicitly (e.g. `seeds.fixed_chunks` dealt over ranks, which
    makes the result independent of the number of processes); `sync` keeps the upstream barrier
    after every batch when a process group exists (every rank must then get as many batches).
    """
    for batch in generate_setting_batches(net, encoder, seeds, [(gnet, guidance)], schedule, class_idx=class_idx,
                                          max_batch_size=max_batch_size, device=device, rank=rank,
                                          world_size=world_size, sync=sync, batches=batches):
        batch.images, batch.latents = batch.images[0], batch.latents[0]
        yield batch


def generate_setting_batches(net, encoder, seeds, branches, schedule, *, class_idx=None, max_batch_size=32,
                             device=torch.device('cpu'), rank=None, world_size=None, sync=True, batches=None):
    """`generate_batches` for several guidance settings of the same seeds at once.

    `branches`: list of (gnet, guidance) pairs. Per batch, one EasyDict with `images` and `latents`
    (lists, one entry per branch, each identical to what `generate_batches` yields for that
    setting with the same seeds and batching), `labels`, `noise`, `seeds`, `indices`, `batch_idx`,
    `num_batches`, `counter` (evaluations made, shared prefixes computed once: `sampling.sample_tree`)
    and `timing`.

    The schedule owns its sampler (duck-typed): `schedule.check_branches(branches)` checks every
    branch before the first batch and `schedule.sample_tree(net, noise, labels, branches,
    randn_like=, counter=)` samples one batch; `schedule.options.mode` decides how labels are drawn.
    `schedule.Schedule` runs the Heun sampler (`sampling.sample_tree`); another model family's
    schedule plugs in its own loop (DiT's: `edmguide.models.dit.DiTSchedule`) and keeps everything
    else: per-seed generators, batching, decoding, the finiteness check.
    """
    mode = schedule.options.mode
    schedule.check_branches(branches)  # every branch checked before the first batch
    for batch in _seed_batches(net, seeds, class_idx=class_idx, max_batch_size=max_batch_size, device=device,
                               rank=rank, world_size=world_size, mode=mode, sync=sync, batches=batches):
        counter = sampling.EvalCounter()
        with torch.no_grad():
            latents = schedule.sample_tree(net, batch.noise, batch.labels, branches,
                                           randn_like=batch.rng.randn_like, counter=counter)
            _synchronize(device)
            t1 = time.perf_counter()
            for lat in latents:
                _check_finite(lat, batch.seeds)
            images = [encoder.decode(lat) for lat in latents]
            _synchronize(device)
        t2 = time.perf_counter()
        yield dnnlib.EasyDict(images=images, latents=latents, labels=batch.labels, noise=batch.noise,
                              seeds=batch.seeds, indices=batch.indices, batch_idx=batch.batch_idx,
                              num_batches=batch.num_batches, counter=counter,
                              timing=dnnlib.EasyDict(sampling=t1 - batch.t0, decoding=t2 - t1))


def _seed_batches(net, seeds, *, class_idx, max_batch_size, device, rank, world_size, mode, sync, batches):
    """This rank's batches of seeds with their per-seed generators, initial noise and labels (the part
    of generation that does not depend on guidance). The barrier after a batch (upstream EDM2's)
    happens when the consumer asks for the next one."""
    seeds = seedlib.as_seed_sequence(seeds)  # ranges stay lazy: a billion seeds start at once
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    if batches is None:
        batches = seedlib.rank_batches(len(seeds), max_batch_size, world_size, rank)
    for batch_idx, indices in enumerate(batches):
        if len(indices) != 0:
            batch_seeds = [int(seeds[i]) for i in indices]
            t0 = time.perf_counter()
            rng = seedlib.StackedRandomGenerator(device, batch_seeds)
            batch_classes = class_idx if class_idx is None or np.ndim(class_idx) == 0 else [class_idx[i] for i in indices]
            noise, labels = seedlib.draw_noise_and_labels(rng, net, class_idx=batch_classes, mode=mode)
            yield dnnlib.EasyDict(rng=rng, noise=noise, labels=labels, seeds=batch_seeds, indices=list(indices),
                                  batch_idx=batch_idx, num_batches=len(batches), t0=t0)
        if sync and world_size > 1:
            dist.barrier()


def _check_finite(latents, batch_seeds):
    """Refuse to turn non-finite sampler output into images (they would be black or garbage)."""
    finite = torch.isfinite(latents.reshape(latents.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = [seed for seed, ok in zip(batch_seeds, finite.tolist()) if not ok]
        raise UserError(f'the sampler produced non-finite values (NaN or infinity) for {len(bad)} of '
                        f'{len(batch_seeds)} images (first seed {bad[0]}); check the sampler options '
                        f'(--sigma_min, --sigma_max, --rho, --S_*) and the networks; nothing was written for them')


def _synchronize(device):
    """Wait for queued GPU work, so that per-stage timings mean something."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def pick_device(requested=None, *, note=True):
    """`requested` if given, else this process's CUDA device when present, else CPU (with a one-line
    note unless `note` is False: metric scripts keep their stdout to the results)."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise UserError(f'--device {requested!r}: {exc}') from None
        check_device(device, requested)
        return device
    if torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    if note:
        dist.print0('note: no CUDA device found, running on the CPU (slow for the real EDM2 networks)')
    return torch.device('cpu')


def check_device(device, requested=None):
    """One line, not a traceback at the first tensor, for a device this machine or torch build lacks."""
    name = requested if requested is not None else str(device)
    if device.type == 'cpu':
        return
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f'--device {name!r}: CUDA is not available here (no GPU, no driver, or a torch '
                            f'build without CUDA: torch {torch.__version__}); use --device=cpu')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f'--device {name!r}: there is no such GPU ({torch.cuda.device_count()} '
                            f'visible: cuda:0..cuda:{torch.cuda.device_count() - 1})')
        return
    try:
        torch.empty(1, device=device)
    except Exception as exc:  # mps without Metal, a backend torch was built without, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f'--device {name!r}: cannot use it ({first})') from None


def resolve_guidance(schedule, weight, interval=None, *, what='--guidance', note=True):
    """`schedule.guidance(weight, interval)`, plus a note on rank 0 (if `note`) when a noise range
    looks like the paper's two-decimal rounding of levels but selects other steps (e.g. (0.28, 2.90])."""
    guidance = schedule.guidance(weight, interval, what=what)
    message = schedule.rounded_bounds_note(guidance, interval)
    if note and message:
        dist.print0(message)
    return guidance


def save_seed_images(batches, outdir, num_seeds, max_batch_size, *, subdirs=False, on_batch=None):
    """Write `<outdir>/<seed:06d>.png` (per-1000 subfolders with `subdirs`) for every image of the
    generation iterator's `batches` (seed mode's upstream EDM2 split of `num_seeds` seeds into
    `max_batch_size` batches over the ranks), with a progress bar on rank 0 counting all ranks'
    images. `on_batch(batch, bar)` is called after each batch (e.g. for verbose lines). Returns the
    paths this rank wrote."""
    from edmguide.util import images as imagelib
    from edmguide.util.progress import progress_bar
    world_size = dist.get_world_size()
    step_images = seedlib.images_per_step([seedlib.rank_batches(num_seeds, max_batch_size, world_size, r)
                                           for r in range(world_size)])
    written = []
    with progress_bar(total=num_seeds, unit='img', desc='Generating', disable=dist.get_rank() != 0,
                      leave=False) as bar:
        for batch in batches:
            for seed, image in zip(batch.seeds, batch.images.cpu()):
                path = imagelib.seed_image_path(outdir, seed, subdirs)
                imagelib.save_png(path, image)
                written.append(path)
            bar.update(step_images[batch.batch_idx])
            if on_batch is not None:
                on_batch(batch, bar)
    return written
