"""Resumable, distributable dumps of many generated images into one zip (the 50k FID sets).

Each finished image is first written atomically as `<k:06d>.png` into a work folder next to the
zip (`<zip>.parts/`), together with the settings it was made with. A rerun of the same command
skips the batches whose images all exist, so Ctrl-C, `kill -9` or a crash lose at most the batches
in flight. Batches are fixed chunks of consecutive seeds (`seeds.fixed_chunks`), so a resumed or
multi-process run computes every image in exactly the same batch as an uninterrupted one. When every image exists, rank 0 writes the zip under a temporary name
(fixed timestamps, entries in seed order, stored uncompressed like upstream), renames it into
place and removes the work folder: a corrupt zip never sits under the final name, and the final
zip is byte-identical to an uninterrupted run's, whatever the number of processes.
"""

import concurrent.futures
import json
import os
import re
import shutil
import time
import zipfile

from edmguide import images as imagelib, seeds as seedlib
from edmguide.errors import UserError
from edmguide.generation import generate_batches
from edmguide.progress import progress_bar
from torch_utils import distributed as dist

ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
_PART_NAME = re.compile(r'^(\d{6,})\.png$')


def zip_file_name(net_path, seed, num_images, guidance_scale, method):
    """Upstream guidance-interval naming: `<stem>-s<seed>-nimg<N>-g<G:.2f>-<gi|cfg>.zip`."""
    stem = os.path.basename(str(net_path)).split('.pkl')[0]
    return f'{stem}-s{seed}-nimg{num_images}-g{guidance_scale:.2f}-{method}.zip'


def entry_name(index):
    return f'{index:06d}.png'


def _finished_parts(parts_dir):
    done = set()
    for name in os.listdir(parts_dir):
        match = _PART_NAME.match(name)
        if match:
            done.add(int(match.group(1)))
    return done


def _read_settings(parts_dir):
    """The settings a work folder was made with, or None if it has none yet."""
    settings_path = os.path.join(parts_dir, 'settings.json')
    if not os.path.isfile(settings_path):
        return None
    with open(settings_path) as f:
        return json.load(f)


def _check_parts_settings(parts_dir, settings):
    """Refuse an existing work folder that holds images made with other settings (read-only). A
    folder without finished images (a run that failed before its first batch, e.g. on a wrong
    guiding net) has nothing to mix up and is taken over with the new settings."""
    previous = _read_settings(parts_dir)
    if previous is not None and previous != settings and _finished_parts(parts_dir):
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        raise UserError(f'{parts_dir} holds an unfinished run with other settings ({", ".join(changed)}); '
                        f'rerun with the same settings or delete that folder')


def _prepare_parts_dir(parts_dir, settings):
    """Create the work folder (its settings already checked), clearing temp files of cut-off writes."""
    settings_path = os.path.join(parts_dir, 'settings.json')
    os.makedirs(parts_dir, exist_ok=True)
    for name in os.listdir(parts_dir):  # temp files of writes that were cut off
        if name.startswith('.tmp-'):
            os.remove(os.path.join(parts_dir, name))
    if _read_settings(parts_dir) != settings:  # new folder, or one without images taken over
        imagelib.atomic_write(settings_path, json.dumps(settings, indent=1, sort_keys=True).encode())


def _zip_is_complete(zip_path, settings):
    """True if `zip_path` exists and was written by a finished run with these settings."""
    if not os.path.isfile(zip_path):
        return False
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return json.loads(zf.comment.decode() or 'null') == settings
    except (zipfile.BadZipFile, ValueError, OSError):
        return False


def assemble_zip(parts_dir, zip_path, num_images, settings):
    """Write the zip from the finished parts under a temp name, then rename it into place."""
    with imagelib.atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, 'x', compression=zipfile.ZIP_STORED) as zf:
        for k in range(num_images):
            with open(os.path.join(parts_dir, entry_name(k)), 'rb') as f:
                data = f.read()
            zf.writestr(zipfile.ZipInfo(entry_name(k), date_time=ZIP_TIMESTAMP), data)
        zf.comment = json.dumps(settings, sort_keys=True).encode()


def dump_zip(net, encoder, zip_path, seeds, *, settings, gnet=None, guidance=None, batch_size=64,
             device='cpu', mode='gi', verbose=False, progress=True, writer_threads=2, **sampler_kwargs):
    """Generate one image per seed (entry k = seeds[k]) into `zip_path`, resuming unfinished work.

    `settings` (a JSON-able dict of everything that determines the pixels) guards resumption:
    a work folder made with other settings is refused rather than mixed. PNG encoding and file
    writes run in `writer_threads` worker threads, overlapping with sampling.
    Returns a dict of timings and counts (rank 0's view).
    """
    seeds = [int(s) for s in seeds]
    # The chunking (hence the batch shapes, which may change kernel rounding) is part of the settings.
    settings = dict(settings, seeds_first=seeds[0] if seeds else None, num_images=len(seeds), batch_size=batch_size)
    parts_dir = zip_path + '.parts'
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
    if _zip_is_complete(zip_path, settings):
        dist.print0(f'{zip_path} is already complete; nothing to do.')
        return dict(generated=0, skipped=len(seeds))
    _check_parts_settings(parts_dir, settings)  # every rank, so that a mismatch stops all of them
    if rank == 0:
        _prepare_parts_dir(parts_dir, settings)
    dist.barrier()
    done = _finished_parts(parts_dir)
    dist.barrier()  # every rank has listed the folder before anything new is written
    # Chunks of consecutive seeds, fixed by the settings alone: a chunk is computed whole (or not at
    # all), so an image never depends on the number of processes or on where a run was cut off.
    pending = [chunk for chunk in seedlib.fixed_chunks(len(seeds), batch_size)
               if not all(int(k) in done for k in chunk)]
    if done and rank == 0:
        print(f'Resuming: {len(done)} of {len(seeds)} images already done.')
    timing = dict(sampling=0.0, decoding=0.0, writing=0.0)
    bar = progress_bar(total=len(seeds), initial=len(done), unit='img', desc='Generating', disable=(not progress or rank != 0),
                    dynamic_ncols=True, smoothing=0.1)
    # Images finished across all ranks at each of rank 0's batches (the last steps may be padded).
    step_images = seedlib.images_per_step([seedlib.deal_chunks(pending, world_size, r) for r in range(world_size)],
                                          count=lambda chunk: sum(int(k) not in done for k in chunk))
    writing_lock_free = []  # per-image write durations, appended by worker threads

    def write_one(k, image):
        t0 = time.perf_counter()
        imagelib.save_png(os.path.join(parts_dir, entry_name(k)), image)
        writing_lock_free.append(time.perf_counter() - t0)

    writes = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(writer_threads, 1)) as pool:
        for batch in generate_batches(net, encoder, seeds, gnet=gnet, guidance=guidance, device=device, mode=mode,
                                      batches=seedlib.deal_chunks(pending, world_size, rank), **sampler_kwargs):
            images = batch.images.permute(0, 2, 3, 1).cpu().numpy()
            writes += [pool.submit(write_one, int(k), img) for k, img in zip(batch.indices, images) if int(k) not in done]
            while len(writes) > 4 * batch_size:  # bound memory held by queued images
                writes.pop(0).result()
            timing['sampling'] += batch.timing.sampling
            timing['decoding'] += batch.timing.decoding
            bar.update(step_images[batch.batch_idx])
            if verbose and rank == 0:
                bar.write(f'batch {batch.batch_idx + 1}/{batch.num_batches}: sampling {batch.timing.sampling:.2f}s, '
                          f'decoding {batch.timing.decoding:.2f}s, evaluations/img net {batch.counter.net}, gnet {batch.counter.gnet}')
        for future in writes:
            future.result()
    bar.close()
    timing['writing'] = sum(writing_lock_free)
    dist.barrier()
    if rank == 0:
        missing = [k for k in range(len(seeds)) if not os.path.isfile(os.path.join(parts_dir, entry_name(k)))]
        if missing:
            raise UserError(f'{len(missing)} images are missing from {parts_dir} (first: {entry_name(missing[0])}); '
                            f'rerun the same command to finish them')
        t0 = time.perf_counter()
        assemble_zip(parts_dir, zip_path, len(seeds), settings)
        timing['zip'] = time.perf_counter() - t0
        shutil.rmtree(parts_dir, ignore_errors=True)
    dist.barrier()
    return dict(generated=len(seeds) - len(done), skipped=len(done), timing=timing)
