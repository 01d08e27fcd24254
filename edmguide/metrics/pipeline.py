"""Metric jobs: image set or generator -> features -> accumulators -> results against a reference.

A metric's kind (`kinds.get_kind(name)`) says what is accumulated (float64 sums for Fréchet
metrics, the float16 features for precision/recall), what a reference file holds for it and how
its results come out; nothing here branches on the kind.
The same `compute_accumulators` consumes batches from image files and from the generation iterator, so
measuring on the fly (no PNGs written) and measuring a saved set give identical numbers for
identical images. Everything that can fail because of the user's files (reference, detectors,
image set) is checked before the long feature pass, and outputs are written only at the end.
"""

import json
import math
import os

import torch

from edmguide.jobs import generation
from edmguide.nets import loading
from edmguide.sampler import seeds as seedlib
from edmguide.util.errors import UserError, with_path
from edmguide.jobs.generation import pick_device
from edmguide.sampler.guidance import check_weight
from edmguide.metrics import detectors, kinds, precision_recall, stats as stats_lib
from edmguide.metrics.image_files import SUBSETS, ImageFiles, collate_images
from edmguide.util.outputs import check_output_dir, check_output_file, check_replaceable
from edmguide.util.progress import progress_bar
from edmguide.sampler.schedule import SamplerOptions
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

def metric_chunks(num_images, max_batch_size, world_size=None, rank=None):
    """This rank's image index chunks for a metric pass: fixed chunks of `max_batch_size`
    consecutive indices (`seeds.fixed_chunks`), dealt round-robin (`seeds.deal_chunks`: rank r
    takes chunks r, r+W, ..., padded with empty chunks at the end). A chunk's images, its batch
    shape and so its features do not depend on the number of processes, and rank r's step-s chunk
    is chunk s*W + r, which `gather_step` relies on to restore seed order."""
    world_size = dist.get_world_size() if world_size is None else world_size
    rank = dist.get_rank() if rank is None else rank
    return seedlib.deal_chunks(seedlib.fixed_chunks(num_images, max_batch_size), world_size, rank)

def metric_step_images(num_images, max_batch_size):
    """Images that all ranks together measure at each step of `metric_chunks` (for progress bars)."""
    world_size = dist.get_world_size()
    return seedlib.images_per_step([metric_chunks(num_images, max_batch_size, world_size, r)
                                    for r in range(world_size)])

def gather_step(features, keys, device, failure=None):
    """Every rank's features of one step, in rank order: a list of {key: float32 [n, D]} dicts.

    `features`: this rank's {key: [n, D]} for the step (empty when its chunk is empty). Since rank
    r's step-s chunk is chunk s*W + r (`metric_chunks`), updating accumulators with the returned
    dicts one after another gives them the rows in seed order, as in a single process. A rank that
    failed passes `failure` (its one-line message) instead; then every rank raises the lowest
    failing rank's message (`raise_on_every_rank`), so no rank waits in a collective forever.
    """
    feats = {k: v.detach().reshape(v.shape[0], -1).to(torch.float32) for k, v in features.items()}
    world_size = dist.get_world_size()
    if world_size == 1:
        if failure is not None:
            raise UserError(failure)
        return [feats]
    shapes = [tuple(feats[k].shape) if k in feats else (0, 0) for k in keys]
    header = torch.tensor([int(failure is not None)] + [x for shape in shapes for x in shape],
                          dtype=torch.int64, device=device)
    headers = [torch.zeros_like(header) for _ in range(world_size)]
    torch.distributed.all_gather(headers, header)
    headers = [h.tolist() for h in headers]
    if any(h[0] for h in headers):
        raise_on_every_rank(failure, device)
    per_rank = [{} for _ in range(world_size)]
    for i, key in enumerate(keys):
        rows = [h[1 + 2 * i] for h in headers]
        dim = max(h[2 + 2 * i] for h in headers)
        if max(rows) == 0:
            continue
        padded = torch.zeros([max(rows), dim], dtype=torch.float32, device=device)
        if rows[dist.get_rank()]:
            padded[:rows[dist.get_rank()]] = feats[key].to(device)
        gathered = [torch.zeros_like(padded) for _ in range(world_size)]
        torch.distributed.all_gather(gathered, padded)
        for r in range(world_size):
            if rows[r]:
                per_rank[r][key] = gathered[r][:rows[r]]
    return per_rank

def feed_step(accumulators, features, device, failure=None):
    """`gather_step` of this rank's {key: features}, then every accumulator {key: acc} updated with
    all ranks' rows in seed order. Returns the number of images of the step (all ranks)."""
    keys = list(accumulators)
    total = 0
    for feats in gather_step(features, keys, device, failure):
        for key, rows in feats.items():
            accumulators[key].update(rows)
        total += max((rows.shape[0] for rows in feats.values()), default=0)
    return total

def measure_features(images, metrics, dets, expected_dims, source='images'):
    """{metric: features [N, D]} of one uint8 NCHW batch, each checked against the reference's
    dimension (`expected_dims`, where known)."""
    images = to_rgb(images, source)
    out = {}
    for name in metrics:
        features = dets[name](images).reshape(images.shape[0], -1)
        dim = expected_dims.get(name)
        if dim is not None and features.shape[1] != dim:
            raise UserError(f'the {name} detector gives {features.shape[1]} features, '
                            f'but the reference has {dim}')
        out[name] = features
    return out

def compute_accumulators(batches, metrics, *, num_steps, device=None, detector_kwargs=None, dets=None,
                         expected_dims=None, total_images=None, step_images=None, source='images', progress=True):
    """Each metric's accumulator over uint8 NCHW image batches of all ranks, in seed order.

    `batches` yields this rank's batches of its `metric_chunks` (tensors, or `(tensor,
    error_message)` pairs from `iter_image_file_batches`), skipping empty chunks; `num_steps` is
    the length of its `metric_chunks` (the same on every rank). Every rank ends with the same
    accumulators, equal bit for bit to a single process's (`gather_step`, `FeatureStats`).
    `expected_dims` {metric: D} (the reference's) is checked on the first batch, so a detector
    that does not match the reference fails at once rather than after the whole pass.
    The progress bar counts images: `total_images` (all ranks) is its total and `step_images[i]`
    the images all ranks together measure at step i (default: those gathered).
    Returns ({metric: accumulator}, number of images).
    """
    device = pick_device(device, note=False)
    dets = dets if dets is not None else build_detectors(metrics, detector_kwargs)
    expected_dims = expected_dims or {}
    accumulators = {name: kinds.get_kind(name).accumulator() for name in metrics}
    rank = dist.get_rank()
    failure, step, num_images = None, 0, 0
    # A bar on a terminal, periodic lines with ETA in logs; leave=False + the context manager
    # clear the bar on errors too, so an error message starts on a clean line. Counts images.
    with progress_bar(total=total_images, unit='img', desc='Computing features', leave=False,
                      disable=not progress or rank != 0) as bar, torch.no_grad():
        batches = iter(batches)
        while step < num_steps:
            features = {}
            try:
                batch = next(batches, None)
                if isinstance(batch, tuple):
                    batch, error = batch
                    if error:
                        raise UserError(error)
                if batch is not None:
                    features = measure_features(batch.to(device), metrics, dets, expected_dims, source)
            except UserError as exc:
                failure = str(exc)
            made = feed_step(accumulators, features, device, failure)
            num_images += made
            bar.update(step_images[step] if step_images and step < len(step_images) else made)
            step += 1
    return accumulators, num_images

def reference_entries(accumulators, num_images):
    """The reference-file dict of accumulators: {'num_images': n, metric: entry} (upstream layout
    for Fréchet metrics, {'features'} for precision/recall)."""
    out = {'num_images': int(num_images)}
    for name, acc in accumulators.items():
        out[name] = kinds.get_kind(name).entry(acc)
    return out

def compute_stats(batches, metrics, **kwargs):
    """Statistics of uint8 NCHW image batches for each metric, combined over all ranks
    (`compute_accumulators`' arguments). Returns the upstream stats dict {'num_images': n,
    metric: {'mu', 'sigma'}} (float64), with {'features'} entries for precision/recall metrics."""
    return reference_entries(*compute_accumulators(batches, metrics, **kwargs))

def raise_on_every_rank(failure, device):
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

def iter_image_file_batches(dataset, max_batch_size=64, num_workers=2, rank=0, world_size=1):
    """DataLoader over this rank's non-empty `metric_chunks` of an ImageFiles set; yields (uint8
    NCHW, error) pairs. Returns (loader, number of steps including empty trailing chunks)."""
    dealt = metric_chunks(len(dataset), max_batch_size, world_size, rank)
    chunks = [c for c in dealt if len(c)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=num_workers,
                                         collate_fn=collate_images,
                                         prefetch_factor=(2 if num_workers > 0 else None))
    return loader, len(dealt)

def compute_accumulators_for_images(image_path, metrics, *, max_size=None, seed=0, max_batch_size=64,
                                    num_workers=2, device=None, detector_kwargs=None, dets=None,
                                    expected_dims=None, min_images=2, progress=True, subset='random'):
    """Accumulators of an image directory/zip (all images, or `max_size` of them: a seeded subset,
    or with `subset='first'` the first ones in file order); returns ({metric: accumulator}, number of images)."""
    dataset = ImageFiles(image_path, max_size=max_size, seed=seed, subset=subset)
    if max_size is not None and dataset.num_found < max_size:
        if dataset.num_found < min_images:  # no --num would do: say what the set lacks
            raise UserError(f'{image_path}: Found {dataset.num_found} images, but need at least {min_images}')
        raise UserError(f'{image_path}: Found {dataset.num_found} images, but expected at least {max_size}; '
                        f'use --num={dataset.num_found} (or fewer) to measure them')
    if len(dataset) < min_images:
        raise UserError(f'{image_path}: Found {len(dataset)} images, but need at least {min_images}')
    dets = dets if dets is not None else build_detectors(metrics, detector_kwargs)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    loader, num_steps = iter_image_file_batches(dataset, max_batch_size, num_workers, rank, world_size)
    return compute_accumulators(loader, metrics, num_steps=num_steps, device=device, dets=dets,
                                expected_dims=expected_dims, total_images=len(dataset),
                                step_images=metric_step_images(len(dataset), max_batch_size), source=image_path,
                                progress=progress)

def compute_stats_for_images(image_path, metrics, **kwargs):
    """Statistics of an image directory/zip (all images, or a seeded subset of `max_size`), as the
    stats dict of `compute_stats` (`compute_accumulators_for_images`' arguments)."""
    return reference_entries(*compute_accumulators_for_images(image_path, metrics, **kwargs))

#----------------------------------------------------------------------------
# Comparing with a reference.

def has_reference_entry(ref, name):
    """Whether `ref` holds what metric `name` needs (statistics or features, by the metric's kind)."""
    return name in ref and name != 'num_images' and kinds.get_kind(name).has_entry(ref[name])

def describe_reference(ref):
    """What a reference holds, entry by entry, for messages: 'fd_digits (mu/sigma), pr_digits (features)'."""
    def what(entry):
        if isinstance(entry, dict) and 'mu' in entry and 'sigma' in entry:
            return 'mu/sigma'
        if isinstance(entry, dict) and 'features' in entry:
            return 'features'
        return 'no statistics'
    described = [f'{name} ({what(ref[name])})' for name in stats_lib.reference_metrics(ref)]
    return ', '.join(described) or 'nothing'

def missing_reference_message(ref, name, ref_path):
    """The one line for a metric the reference cannot serve; for features, how to make them."""
    have = describe_reference(ref)
    if detectors.metric_kind(name) == 'pr':
        return (f'{ref_path}: no reference features for metric "{name}" (it has: {have}); make a reference '
                f'with them: python calculate_metrics.py ref --data=DATASET --dest=REF.pkl --metrics={name}')
    return f'{ref_path}: no statistics for metric "{name}" (it has: {have})'

def resolve_metrics(requested, ref, ref_path):
    """Metrics to compute: those asked for (each must be in the reference), or by default the
    default metrics the reference has (so an FID-only .npz works without naming --metrics).
    Precision/recall is computed only when asked for: it costs far more than the Fréchet metrics."""
    available = [name for name in stats_lib.reference_metrics(ref)
                 if name in detectors.metric_names() and has_reference_entry(ref, name)]
    if requested is None:
        chosen = [name for name in DEFAULT_METRICS if name in available]
        if chosen:  # a partial reference, e.g. an FID-only .npz: say what is left out
            for name in DEFAULT_METRICS:
                if name not in available:
                    _note0(f'note: skipping {name}, which {ref_path} has no statistics for')
            return chosen
        # None of the defaults, e.g. the demo's reference: the registered metrics it has, silently
        # (they are the reference's whole content, so nothing is being skipped).
        chosen = [name for name in detectors.metric_names()
                  if name in available and detectors.metric_kind(name) == 'frechet']
        if not chosen:
            raise UserError(f'{ref_path}: no statistics for any of {", ".join(DEFAULT_METRICS)} '
                            f'(it has: {describe_reference(ref)})')
        return chosen
    requested = kinds.metric_list(requested)
    for name in requested:
        if not has_reference_entry(ref, name):
            raise UserError(missing_reference_message(ref, name, ref_path))
    return list(requested)

def reference_dims(ref, metrics, ref_path):
    """{metric: feature dimension} of the reference (mu/sigma or feature shapes checked)."""
    return {name: kinds.get_kind(name).dim(ref, name, ref_path) for name in metrics}

def _result_key(key, name, metrics):
    """The name a metric's value is reported under: its own, except that with several precision/recall
    metrics at once their 'precision'/'recall' become 'precision_<metric>'."""
    num_pr = sum(detectors.metric_kind(m) == 'pr' for m in metrics)
    return key if key == name or num_pr <= 1 else f'{key}_{name}'

def result_names(metrics):
    """Every name the results of `metrics` come under, in order ('fid', 'precision', 'recall', ...)."""
    return [_result_key(key, name, metrics) for name in metrics for key in kinds.result_names(name)]

def metric_results(name, accumulator, ref, metrics, ref_path='reference', device=None):
    """{result name: value} of one metric against `ref` (values as they come, finite or not)."""
    values = kinds.get_kind(name).results(name, accumulator, ref[name], path=ref_path, device=device)
    return {_result_key(key, name, metrics): float(value) for key, value in values.items()}

def _finite(key, value, ref_path):
    """`value` as a float, or a UserError if it is not finite: such a value is never printed as a
    result nor written (NaN is not JSON either)."""
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f'{key} is not finite ({value}) for these images against {ref_path}; nothing was written')
    return value

def results_to_reference(accumulators, ref, metrics, ref_path='reference', device=None):
    """{result name: value} of each metric against `ref`: {'fid': v, ...} for Fréchet metrics,
    {'precision': p, 'recall': r} for precision/recall (several PR metrics: 'precision_<metric>').
    A value that is not finite is a UserError: it is never printed nor written."""
    results = {}
    for name in metrics:
        for key, value in metric_results(name, accumulators[name], ref, metrics, ref_path, device).items():
            results[key] = _finite(key, value, ref_path)
    return results

def frechet_to_reference(stats, ref, metrics, ref_path='reference'):
    """{metric: Fréchet distance between `stats` and `ref`} for each metric."""
    results = {}
    for name in metrics:
        stats_lib.reference_dim(ref, name, ref_path)
        results.update(kinds.frechet_entry_results(name, stats[name]['mu'], stats[name]['sigma'], ref[name], ref_path))
    return {key: _finite(key, value, ref_path) for key, value in results.items()}

#----------------------------------------------------------------------------
# Jobs behind the command-line forms.

def calc_metrics_for_images(image_path, ref_path, metrics=None, *, num_images=50000, seed=0,
                            max_batch_size=64, num_workers=2, device=None, progress=True):
    """EDM2 `calc`: metrics of a seeded subset of `num_images` images against a reference
    ({'fid': v, ...}, with 'precision'/'recall' for a PR metric)."""
    device = pick_device(device, note=False)  # a device this machine lacks is one line, at once
    ref = stats_lib.load_reference(ref_path)
    metrics = resolve_metrics(metrics, ref, ref_path)
    dims = reference_dims(ref, metrics, ref_path)
    dets = build_detectors(metrics)
    accs, _num = compute_accumulators_for_images(image_path, metrics, max_size=num_images, seed=seed,
                                                 max_batch_size=max_batch_size, num_workers=num_workers,
                                                 device=device, dets=dets, expected_dims=dims, progress=progress)
    return results_to_reference(accs, ref, metrics, ref_path, device=pick_device(device, note=False))

def make_reference(image_path, dest_path, metrics=DEFAULT_METRICS, *, max_batch_size=64,
                   num_workers=2, device=None, progress=True, seed=0, max_pr_images=precision_recall.MAX_REAL,
                   overwrite=False, pr_subset='first'):
    """EDM2 `ref`: statistics of all images, pickled atomically to `dest_path` (rank 0 writes).

    An existing `dest_path` is replaced only with `overwrite`, and never when it is the image set itself.

    Precision/recall metrics store their features instead, of at most `max_pr_images` images: the
    first ones in file order (`pr_subset='first'`, as pr50k3 takes the first 200k dataset items), or
    with `pr_subset='random'` a subset drawn with `seed` as `calc` draws one; if the set is larger,
    they get a pass of their own.
    """
    if pr_subset not in SUBSETS:
        raise UserError(f'--pr_subset must be one of {", ".join(SUBSETS)}, got "{pr_subset}"')
    metrics = kinds.metric_list(metrics)
    device = pick_device(device, note=False)
    check_output_file(dest_path, '--dest')  # before the feature pass, not after it
    check_replaceable(dest_path, '--dest', overwrite=overwrite, inputs={'--data': image_path})
    num_found = ImageFiles(image_path).num_found
    limited = [name for name in metrics if kinds.get_kind(name).max_ref_images is not None
               and max_pr_images is not None and num_found > max_pr_images]
    passes = [(None, [name for name in metrics if name not in limited]), (max_pr_images, limited)]
    min_images = 2 if all(detectors.metric_kind(name) == 'frechet' for name in metrics) else precision_recall.NHOOD_SIZE + 1
    out = {}
    for max_size, names in passes:
        if names:
            stats = compute_stats_for_images(image_path, names, max_size=max_size, seed=seed, subset=pr_subset,
                                             max_batch_size=max_batch_size, num_workers=num_workers,
                                             device=device, min_images=min_images, progress=progress)
            out = {**stats, **out} # num_images of the all-images pass wins
    if dist.get_rank() == 0:
        stats_lib.save_stats(out, dest_path)
    return out

def calc_metrics_for_generator(batches, num_images, ref_path, metrics=None, *, num_steps, ref=None,
                               device=None, dets=None, progress=True, step_images=None):
    """EDM2 `gen`: metrics of images coming from a generation iterator (EasyDicts with `.images`)
    that makes this rank's `metric_chunks` (`num_steps` of them, see `compute_accumulators`)."""
    ref = ref if ref is not None else stats_lib.load_reference(ref_path)
    metrics = resolve_metrics(metrics, ref, ref_path)
    dims = reference_dims(ref, metrics, ref_path)
    dets = dets if dets is not None else build_detectors(metrics)
    images = (batch.images for batch in batches)
    accs, num = compute_accumulators(images, metrics, num_steps=num_steps, device=device, dets=dets,
                                     expected_dims=dims, total_images=num_images, step_images=step_images,
                                     source='generated images', progress=progress)
    if num != num_images:
        raise UserError(f'generated {num} images, expected {num_images}')
    return results_to_reference(accs, ref, metrics, ref_path, device=pick_device(device, note=False))

def calc_metrics_for_network(net_path, ref_path, metrics=None, *, gnet_path=None, guidance=None, interval=None,
                             sampler=None, num_images=50000, seed=0, max_batch_size=32, class_idx=None,
                             device=None, progress=True, vae=None):
    """EDM2 `gen` (extended with guidance intervals): sample seeds seed..seed+num-1 and measure the
    images as they come, never writing them. `guidance` is the weight, `interval` a
    `guidance.Interval` (None: every step), `sampler` the `SamplerOptions` (None: defaults).
    """
    if guidance is not None:
        check_weight(guidance)  # with the other options, before any work
    device = pick_device(device, note=False)
    ref = stats_lib.load_reference(ref_path) # fail early, before loading networks
    metrics = resolve_metrics(metrics, ref, ref_path)
    reference_dims(ref, metrics, ref_path) # checks the reference's shapes, also before loading networks
    dets = build_detectors(metrics)
    guided = guidance is not None and guidance != 1
    if guided and gnet_path is None:
        raise UserError('Please specify --gnet when using guidance')
    net, encoder, gnet = loading.load_networks(net_path, gnet_path if guided else None, device, vae=vae)
    schedule = (sampler or SamplerOptions()).schedule(net, device=device)
    weights = generation.resolve_guidance(schedule, guidance, interval)
    chunks = metric_chunks(num_images, max_batch_size)
    batches = generation.generate_batches(net, encoder, range(seed, seed + num_images), schedule, gnet=gnet,
                                          guidance=weights, class_idx=class_idx, batches=chunks,
                                          sync=False, device=device)
    return calc_metrics_for_generator(batches, num_images, ref_path, metrics, num_steps=len(chunks), ref=ref,
                                      device=device, dets=dets, progress=progress,
                                      step_images=metric_step_images(num_images, max_batch_size))

def single_metric(metric):
    """The guidance-interval form's single --metric, read by `kinds.metric_list` like every list."""
    names = kinds.metric_list(metric)
    if len(names) != 1:
        raise UserError(f'--metric={metric}: the guidance-interval form computes one metric; '
                        f'for several use: calculate_metrics.py calc --metrics={",".join(names)}')
    return names[0]

def gi_result_name(gen_zip):
    """The 'gen_zip' field of guidance-interval's jsonl: basename cut at the first '.zip'."""
    return os.path.basename(os.path.normpath(gen_zip)).split('.zip')[0]

def gi_calculate_metric(gen_zip, ref_path, metric='fid', results_dir='./results', batch_size=128,
                        num_workers=0, device=None, progress=True, report=None):
    """Guidance-interval form: one metric over all images of `gen_zip`, appended to
    `<results_dir>/<metric>.jsonl`. Returns ({result name: value}, num_images): {metric: FD} for
    a Fréchet metric, {'precision': p, 'recall': r} for precision/recall.

    The results folder is checked before the feature pass. Under torchrun the ranks share the
    images and only rank 0 calls `report(results)` (the CLI prints there, before anything is
    written) and appends the one record.

    As upstream guidance-interval, DINOv2 inputs are resized with PIL (same as its torchvision
    pipeline for square images). Statistics are float64 throughout; upstream's float32 mean differs
    from it only by float32 round-off.
    """
    metric = single_metric(metric)
    check_output_dir(results_dir, '--results_dir')
    device = pick_device(device, note=False)
    ref = stats_lib.load_reference(ref_path)
    resolve_metrics([metric], ref, ref_path)
    detector_kwargs = {'fd_dinov2': {'resize_mode': 'pil'}}
    dims = reference_dims(ref, [metric], ref_path)
    dets = build_detectors([metric], detector_kwargs)
    accs, num = compute_accumulators_for_images(gen_zip, [metric], max_batch_size=batch_size,
                                                num_workers=num_workers, device=device, dets=dets,
                                                expected_dims=dims, progress=progress)
    results = results_to_reference(accs, ref, [metric], ref_path, device=device)
    if dist.get_rank() == 0:
        if report is not None:
            report(results)
        record = {'gen_zip': gi_result_name(gen_zip), **results, 'num_gen_images': num}
        append_jsonl(os.path.join(results_dir, f'{metric}.jsonl'), record)
    return results, num

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
