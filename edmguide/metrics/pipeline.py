"""Metric jobs: image set or generator -> features -> statistics -> Fréchet distance to a reference.

The same `compute_stats` consumes batches from image files and from the generation iterator, so
measuring on the fly (no PNGs written) and measuring a saved set give identical numbers for
identical images. Everything that can fail because of the user's files (reference, detectors,
image set) is checked before the long feature pass, and outputs are written only at the end.
"""

import json
import math
import os

import numpy as np
import torch

from edmguide import generation, loading, seeds as seedlib
from edmguide.errors import UserError, with_path
from edmguide.generation import pick_device
from edmguide.metrics import detectors, stats as stats_lib
from edmguide.metrics.frechet import frechet_distance
from edmguide.metrics.image_files import ImageFiles, collate_images
from edmguide.outputs import check_output_dir, check_output_file
from edmguide.progress import progress_bar
from torch_utils import distributed as dist

DEFAULT_METRICS = ('fid', 'fd_dinov2')

#----------------------------------------------------------------------------
# Small helpers.

def to_rgb(images, source='images'):
    """uint8 NCHW with 3 channels for the detectors: grayscale (1 channel) is repeated to RGB.

    The image reader keeps gray images single-channel (as upstream), but both detectors are RGB
    networks; other channel counts (e.g. RGBA) are refused rather than guessed.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(f'{source}: expected uint8 NCHW images, got {images.dtype} {list(images.shape)}')
    if images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    if images.shape[1] != 3:
        raise UserError(f'{source}: images have {images.shape[1]} channels; '
                        'metrics need RGB (3) or grayscale (1)')
    return images

def _note0(*args):
    """A note for the user on stdout (as upstream; stderr is kept for the error line), rank 0."""
    if dist.get_rank() == 0:
        print(*args, flush=True)

#----------------------------------------------------------------------------
# Statistics.

def build_detectors(metrics, detector_kwargs=None):
    """{metric: detector}, loaded before any image is read so a missing detector fails early."""
    detector_kwargs = detector_kwargs or {}
    dets = {}
    for name in metrics:
        try:
            dets[name] = detectors.get_detector(name, **detector_kwargs.get(name, {}))
        except UserError as exc:
            if name not in DEFAULT_METRICS:
                raise
            raise UserError(f'{exc}; {DEMO_METRIC_HINT}') from exc
    return dets

DEMO_METRIC_HINT = ("for the embedded demo's digits, which need no download, use --metrics=fd_digits "
                    "(--metric=fd_digits in the guidance-interval form)")

def compute_stats(batches, metrics, *, device=None, detector_kwargs=None, dets=None,
                  expected_dims=None, total_images=None, step_images=None, source='images', progress=True):
    """Statistics of uint8 NCHW image batches for each metric, summed over all ranks.

    `batches` yields tensors (or `(tensor, error_message)` pairs from `iter_image_file_batches`).
    `expected_dims` {metric: D} (the reference's) is checked on the first batch, so a detector
    that does not match the reference fails at once rather than after the whole pass.
    The progress bar counts images: `total_images` (all ranks) is its total and `step_images[i]` the
    images all ranks together measure at batch i (default: this rank's batch).
    Returns the upstream stats dict {'num_images': n, metric: {'mu', 'sigma'}} (float64).
    """
    device = pick_device(device, note=False)
    dets = dets if dets is not None else build_detectors(metrics, detector_kwargs)
    expected_dims = expected_dims or {}
    accumulators = {name: stats_lib.FeatureStats() for name in metrics}
    rank = dist.get_rank()
    failure = None
    # A bar on a terminal, periodic lines with ETA in logs; leave=False + the context manager
    # clear the bar on errors too, so an error message starts on a clean line. Counts images.
    with progress_bar(total=total_images, unit='img', desc='Computing features', leave=False,
                      disable=not progress or rank != 0) as bar, torch.no_grad():
        try:
            for step, batch in enumerate(batches):
                if isinstance(batch, tuple):
                    batch, error = batch
                    if error:
                        raise UserError(error)
                images = to_rgb(batch.to(device), source)
                for name in metrics:
                    features = dets[name](images).reshape(images.shape[0], -1)
                    dim = expected_dims.get(name)
                    if dim is not None and features.shape[1] != dim:
                        raise UserError(f'the {name} detector gives {features.shape[1]} features, '
                                        f'but the reference has {dim}')
                    accumulators[name].update(features)
                bar.update(step_images[step] if step_images and step < len(step_images) else images.shape[0])
        except UserError as exc:
            failure = str(exc)
    _raise_on_every_rank(failure, device)
    per_metric = {}
    num_images = 0
    for name in metrics:
        acc = accumulators[name]
        dim = acc.sum.shape[0] if acc.sum is not None else expected_dims.get(name, 0)
        if dist.get_world_size() > 1:  # a rank that saw no images learns the dimension from the others
            dim_t = torch.tensor([dim], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(dim_t, op=torch.distributed.ReduceOp.MAX)
            dim = int(dim_t)
        num_images = acc.all_reduce(dim, device).num
        per_metric[name] = acc.mean_and_cov()
    return stats_lib.make_stats_dict(num_images, per_metric)

def _raise_on_every_rank(failure, device):
    """Raise UserError(failure) on every rank if any rank has a failure message (the lowest
    failing rank's message), so that no rank is left waiting in the all-reduce that a failed rank
    never reaches."""
    if dist.get_world_size() > 1:
        flag = torch.tensor([0 if failure is None else dist.get_world_size() - dist.get_rank()],
                            dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if int(flag) > 0:
            message = [failure]
            on_gpu = torch.device(device).type == 'cuda'
            torch.distributed.broadcast_object_list(message, src=dist.get_world_size() - int(flag),
                                                    device=(torch.device(device) if on_gpu else None))
            failure = message[0]
    if failure is not None:
        raise UserError(failure)

def _nonempty_chunks(num, max_batch_size, world_size, rank):
    return [c for c in seedlib.rank_batches(num, max_batch_size, world_size, rank) if len(c)]

def iter_image_file_batches(dataset, max_batch_size=64, num_workers=2, rank=0, world_size=1):
    """DataLoader over this rank's chunks of an ImageFiles set (split as seeds are split for
    generation); yields (uint8 NCHW, error) pairs. Returns (loader, number of batches)."""
    chunks = _nonempty_chunks(len(dataset), max_batch_size, world_size, rank)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=num_workers,
                                         collate_fn=collate_images,
                                         prefetch_factor=(2 if num_workers > 0 else None))
    return loader, len(chunks)

def compute_stats_for_images(image_path, metrics, *, max_size=None, seed=0, max_batch_size=64,
                             num_workers=2, device=None, detector_kwargs=None, dets=None,
                             expected_dims=None, min_images=2, progress=True):
    """Statistics of an image directory/zip (all images, or a seeded subset of `max_size`)."""
    dataset = ImageFiles(image_path, max_size=max_size, seed=seed)
    if max_size is not None and dataset.num_found < max_size:
        raise UserError(f'{image_path}: Found {dataset.num_found} images, but expected at least {max_size}; '
                        f'use --num={dataset.num_found} (or fewer) to measure them')
    if len(dataset) < min_images:
        raise UserError(f'{image_path}: Found {len(dataset)} images, but need at least {min_images}')
    dets = dets if dets is not None else build_detectors(metrics, detector_kwargs)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    loader, _num_batches = iter_image_file_batches(dataset, max_batch_size, num_workers, rank, world_size)
    step_images = seedlib.images_per_step([_nonempty_chunks(len(dataset), max_batch_size, world_size, r)
                                           for r in range(world_size)])
    return compute_stats(loader, metrics, device=device, dets=dets, expected_dims=expected_dims,
                         total_images=len(dataset), step_images=step_images, source=image_path, progress=progress)

#----------------------------------------------------------------------------
# Comparing with a reference.

def resolve_metrics(requested, ref, ref_path):
    """Metrics to compute: those asked for (each must be in the reference), or by default the
    default metrics the reference has (so an FID-only .npz works without naming --metrics)."""
    available = stats_lib.reference_metrics(ref)
    if requested is None:
        chosen = [name for name in DEFAULT_METRICS if name in available]
        if chosen:  # a partial reference, e.g. an FID-only .npz: say what is left out
            for name in DEFAULT_METRICS:
                if name not in available:
                    _note0(f'note: skipping {name}, which {ref_path} has no statistics for')
            return chosen
        # None of the defaults, e.g. the demo's reference: the registered metrics it has, silently
        # (they are the reference's whole content, so nothing is being skipped).
        chosen = [name for name in detectors.metric_names() if name in available]
        if not chosen:
            raise UserError(f'{ref_path}: no statistics for any of {", ".join(DEFAULT_METRICS)} '
                            f'(it has: {", ".join(available) or "none"})')
        return chosen
    detectors.check_metric_names(requested)
    for name in requested:
        if name not in available:
            raise UserError(f'{ref_path}: no statistics for metric "{name}" '
                            f'(it has: {", ".join(available) or "none"})')
    return list(requested)

def reference_dims(ref, metrics, ref_path):
    """{metric: feature dimension} of the reference (mu/sigma shapes checked)."""
    return {name: stats_lib.reference_dim(ref, name, ref_path) for name in metrics}

def frechet_to_reference(stats, ref, metrics, ref_path='reference'):
    """{metric: Fréchet distance between `stats` and `ref`} for each metric."""
    results = {}
    for name in metrics:
        dim = stats_lib.reference_dim(ref, name, ref_path)
        mu = np.asarray(stats[name]['mu'])
        if mu.shape != (dim,):
            raise UserError(f'{ref_path}: "{name}" reference has {dim} features, '
                            f'but the images gave {mu.shape[0]}')
        value = float(frechet_distance(stats[name]['mu'], stats[name]['sigma'],
                                       ref[name]['mu'], ref[name]['sigma']))
        if not math.isfinite(value):  # never printed as a value nor written (NaN is not JSON either)
            raise UserError(f'{name} is not finite ({value}) for these images against {ref_path}; '
                            f'nothing was written')
        results[name] = value
    return results

#----------------------------------------------------------------------------
# Jobs behind the command-line forms.

def calc_metrics_for_images(image_path, ref_path, metrics=None, *, num_images=50000, seed=0,
                            max_batch_size=64, num_workers=2, device=None, progress=True):
    """EDM2 `calc`: FD of a seeded subset of `num_images` images against a reference."""
    device = pick_device(device, note=False)  # a device this machine lacks is one line, at once
    ref = stats_lib.load_reference(ref_path)
    metrics = resolve_metrics(metrics, ref, ref_path)
    dims = reference_dims(ref, metrics, ref_path)
    dets = build_detectors(metrics)
    stats = compute_stats_for_images(image_path, metrics, max_size=num_images, seed=seed,
                                     max_batch_size=max_batch_size, num_workers=num_workers,
                                     device=device, dets=dets, expected_dims=dims, progress=progress)
    return frechet_to_reference(stats, ref, metrics, ref_path)

def make_reference(image_path, dest_path, metrics=DEFAULT_METRICS, *, max_batch_size=64,
                   num_workers=2, device=None, progress=True):
    """EDM2 `ref`: statistics of all images, pickled atomically to `dest_path` (rank 0 writes)."""
    metrics = detectors.check_metric_names(metrics)
    device = pick_device(device, note=False)
    check_output_file(dest_path, '--dest')  # before the feature pass, not after it
    stats = compute_stats_for_images(image_path, metrics, max_batch_size=max_batch_size,
                                     num_workers=num_workers, device=device, progress=progress)
    if dist.get_rank() == 0:
        stats_lib.save_stats(stats, dest_path)
    return stats

def calc_metrics_for_generator(batches, num_images, ref_path, metrics=None, *, ref=None,
                               device=None, dets=None, progress=True, step_images=None):
    """EDM2 `gen`: FD of images coming from a generation iterator (EasyDicts with `.images`)."""
    ref = ref if ref is not None else stats_lib.load_reference(ref_path)
    metrics = resolve_metrics(metrics, ref, ref_path)
    dims = reference_dims(ref, metrics, ref_path)
    dets = dets if dets is not None else build_detectors(metrics)
    images = (batch.images for batch in batches)
    stats = compute_stats(images, metrics, device=device, dets=dets, expected_dims=dims, total_images=num_images,
                          step_images=step_images, source='generated images', progress=progress)
    if stats['num_images'] != num_images:
        raise UserError(f'generated {stats["num_images"]} images, expected {num_images}')
    return frechet_to_reference(stats, ref, metrics, ref_path)

def calc_metrics_for_network(net_path, ref_path, metrics=None, *, gnet_path=None, guidance=None,
                             guidance_interval=None, guidance_sigma=None, num_images=50000, seed=0,
                             max_batch_size=32, class_idx=None, mode='edm2', device=None,
                             progress=True, **sampler_kwargs):
    """EDM2 `gen` (extended with guidance intervals): sample seeds seed..seed+num-1 and measure the
    images as they come, never writing them. `guidance_interval` = (start, stop) step indices,
    `guidance_sigma` = (lo, hi] noise range; at most one of them.
    """
    device = pick_device(device, note=False)
    ref = stats_lib.load_reference(ref_path) # fail early, before loading networks
    metrics = resolve_metrics(metrics, ref, ref_path)
    reference_dims(ref, metrics, ref_path) # checks the reference's shapes, also before loading networks
    dets = build_detectors(metrics)
    guided = guidance is not None and guidance != 1
    if guided and gnet_path is None:
        raise UserError('Please specify --gnet when using guidance')
    net, encoder, gnet = loading.load_networks(net_path, gnet_path if guided else None, device)
    schedule = generation.build_guidance(guidance, guidance_interval, guidance_sigma, net=net,
                                         mode=mode, device=device, **sampler_kwargs)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    batches = generation.generate_batches(net, encoder, range(seed, seed + num_images), gnet=gnet,
                                          guidance=schedule, class_idx=class_idx,
                                          max_batch_size=max_batch_size, device=device, rank=rank,
                                          world_size=world_size, mode=mode, **sampler_kwargs)
    step_images = seedlib.images_per_step([_nonempty_chunks(num_images, max_batch_size, world_size, r)
                                           for r in range(world_size)])
    return calc_metrics_for_generator(batches, num_images, ref_path, metrics, ref=ref, device=device,
                                      dets=dets, progress=progress, step_images=step_images)

def gi_result_name(gen_zip):
    """The 'gen_zip' field of guidance-interval's jsonl: basename cut at the first '.zip'."""
    return os.path.basename(os.path.normpath(gen_zip)).split('.zip')[0]

def gi_calculate_metric(gen_zip, ref_path, metric='fid', results_dir='./results', batch_size=128,
                        num_workers=0, device=None, progress=True, report=None):
    """Guidance-interval form: one metric over all images of `gen_zip`, appended to
    `<results_dir>/<metric>.jsonl`. Returns (value, num_images).

    The results folder is checked before the feature pass. Under torchrun the ranks share the
    images and only rank 0 calls `report(value)` (the CLI prints there, before anything is written)
    and appends the one record.

    As upstream guidance-interval, DINOv2 inputs are resized with PIL (same as its torchvision
    pipeline for square images). Statistics are float64 throughout; upstream's float32 mean differs
    from it only by float32 round-off.
    """
    detectors.check_metric_names([metric])
    check_output_dir(results_dir, '--results_dir')
    device = pick_device(device, note=False)
    ref = stats_lib.load_reference(ref_path)
    resolve_metrics([metric], ref, ref_path)
    detector_kwargs = {'fd_dinov2': {'resize_mode': 'pil'}}
    dims = reference_dims(ref, [metric], ref_path)
    dets = build_detectors([metric], detector_kwargs)
    stats = compute_stats_for_images(gen_zip, [metric], max_batch_size=batch_size,
                                     num_workers=num_workers, device=device, dets=dets,
                                     expected_dims=dims, progress=progress)
    value = frechet_to_reference(stats, ref, [metric], ref_path)[metric]
    if dist.get_rank() == 0:
        if report is not None:
            report(value)
        record = {'gen_zip': gi_result_name(gen_zip), metric: value, 'num_gen_images': stats['num_images']}
        append_jsonl(os.path.join(results_dir, f'{metric}.jsonl'), record)
    return value, stats['num_images']

def append_jsonl(path, record):
    """Append one JSON line in a single write (a complete line or nothing); errors name `path`."""
    line = json.dumps(record, allow_nan=False) + '\n'
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'a', encoding='utf-8') as f:
            f.write(line)
    except OSError as exc:
        raise with_path(exc, path) from None

#----------------------------------------------------------------------------
