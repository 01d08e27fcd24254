"""Resumable, distributable dumps of many generated images into one zip (the 50k FID sets).

Each finished image is first written atomically as `<k:06d>.png` into a work folder next to the
zip (`<zip>.parts/`), together with the settings it was made with. A rerun of the same command
skips the batches whose images all exist, so Ctrl-C, `kill -9` or a crash lose at most the batches
in flight. Batches are fixed chunks of consecutive seeds (`seeds.fixed_chunks`), so a resumed or
multi-process run computes every image in exactly the same batch as an uninterrupted one. When
every image exists, rank 0 writes the zip under a temporary name (fixed timestamps, entries in seed
order, stored uncompressed like upstream, the settings as JSON in the zip comment), renames it into
place and removes the work folder: a corrupt zip never sits under the final name, and the final
zip is byte-identical to an uninterrupted run's, whatever the number of processes.

Nothing is lost or mixed: rank 0 locks the work folder for the whole run (`runlock`), so a second
run refuses instead of computing the same images; an existing image counts only once it decodes to
the right size and mode; images whose settings cannot be proven never count; the input files are
recorded by content digest (`digests`), so a network replaced at the same path is refused and the
same network under another spelling of its path is not; a finished zip of other settings is
replaced only with `overwrite`; and what a killed run left (temp files, a temp zip, the work
folder of a finished zip) is removed under the lock.
"""

import concurrent.futures
import io
import json
import os
import re
import shutil
import time
import zipfile

import PIL.Image

from edmguide.nets import digests
from edmguide.util import images as imagelib
from edmguide.sampler import seeds as seedlib
from edmguide.util.errors import UserError, describe_os_error
from edmguide.util.runlock import LOCK_NAME, RunLock
from edmguide.jobs.generation import generate_batches
from edmguide.nets.loading import network_stem
from edmguide.util.progress import progress_bar
from torch_utils import distributed as dist

ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
_PART_NAME = re.compile(r'^(\d{6,})\.png$')


def zip_file_name(net_path, seed, num_images, guidance_scale, method):
    """Upstream guidance-interval naming: `<stem>-s<seed>-nimg<N>-g<G:.2f>-<gi|cfg>.zip`."""
    return f'{network_stem(net_path)}-s{seed}-nimg{num_images}-g{guidance_scale:.2f}-{method}.zip'


def entry_name(index):
    return f'{index:06d}.png'


def _finished_parts(parts_dir):
    done = set()
    for name in os.listdir(parts_dir):
        match = _PART_NAME.match(name)
        if match:
            done.add(int(match.group(1)))
    return done


_UNREADABLE = object()


def _read_settings(parts_dir):
    """(settings, problem) of a work folder: (None, None) if it has none, (_UNREADABLE, reason)
    if settings.json cannot be read as a JSON object."""
    settings_path = os.path.join(parts_dir, 'settings.json')
    if not os.path.isfile(settings_path):
        return None, None
    try:
        with open(settings_path, encoding='utf-8') as f:
            settings = json.load(f)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        return _UNREADABLE, f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'
    if not isinstance(settings, dict):
        return _UNREADABLE, f'holds a {type(settings).__name__}, not a JSON object'
    return settings, None


def _clear_parts_dir(parts_dir):
    """Remove everything in the work folder except the lock (whose holder is this run)."""
    for name in os.listdir(parts_dir):
        if name == LOCK_NAME:
            continue
        path = os.path.join(parts_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _take_over_parts_dir(parts_dir, settings, overwrite):
    """Make the (locked) work folder one of `settings`: resume it if it was made with them, take it
    over if it holds no images (nothing to mix up) or `overwrite` is given, else refuse. Images
    whose settings cannot be proven (settings.json missing or unreadable) never count."""
    previous, problem = _read_settings(parts_dir)
    if digests.same(previous, settings):
        return
    images = _finished_parts(parts_dir)
    if images and not overwrite:
        advice = 'delete that folder or give --overwrite to start over'
        if previous is None:
            raise UserError(f'{parts_dir} holds {len(images)} images but no settings.json, so nothing proves '
                            f'which settings made them; {advice}')
        if previous is _UNREADABLE:
            raise UserError(f'{os.path.join(parts_dir, "settings.json")}: cannot read it ({problem}), so '
                            f'nothing proves which settings made the {len(images)} images there; {advice}')
        if digests.is_legacy(previous) and previous == digests.legacy_form(settings):
            raise UserError(f'{parts_dir} holds {len(images)} images of an older version of this program, which '
                            f'recorded the paths of the networks but not their contents, so nothing proves which '
                            f'files made them; {advice}')
        raise UserError(f'{parts_dir} holds an unfinished run made with {digests.difference(previous, settings)}; '
                        f'rerun with the same settings, or {advice}')
    _clear_parts_dir(parts_dir)
    imagelib.atomic_write(os.path.join(parts_dir, 'settings.json'),
                          json.dumps(settings, indent=1, sort_keys=True).encode(), make_dirs=False)


def zip_settings(zip_path):
    """The settings recorded in a zip written by `dump_zip` (its comment); None if the file is no
    such zip (missing, not a zip, or no settings recorded)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            recorded = json.loads(zf.comment.decode() or 'null')
    except (zipfile.BadZipFile, ValueError, OSError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _zip_is_complete(zip_path, settings, overwrite=False):
    """'same' if `zip_path` exists and was written by a finished run with these settings (input
    files compared by content), 'legacy' if an older version of this program, which recorded the
    input paths but not their digests, wrote it with these settings and paths (kept unless
    `overwrite`: nothing can be mixed into a finished zip), else None."""
    if not os.path.isfile(zip_path):
        return None
    recorded = zip_settings(zip_path)
    if digests.same(recorded, settings):
        return 'same'
    if not overwrite and digests.is_legacy(recorded) and recorded == digests.legacy_form(settings):
        return 'legacy'
    return None


def _check_replaceable(zip_path, settings, overwrite):
    """Refuse to replace a finished zip of other (or unknown) settings unless `overwrite`."""
    if overwrite or not os.path.lexists(zip_path):
        return
    recorded = zip_settings(zip_path)
    if recorded is None:
        raise UserError(f'{zip_path} exists and records no settings of this program (another program\'s zip, '
                        f'or not a zip); give --overwrite to replace it, or choose another --zip_dir')
    raise UserError(f'{zip_path} is a finished zip made with {digests.difference(recorded, settings)}; '
                    f'give --overwrite to replace it, or choose another --zip_dir')


def _remove_stale_temp_zips(zip_path):
    """Temp zips of assemblies that were cut off (kill -9); only called under the work folder's lock."""
    folder, name = os.path.split(os.path.abspath(zip_path))
    pattern = re.compile(r'^\.tmp-[0-9a-f]{32}-' + re.escape(name) + '$')
    for entry in os.listdir(folder):
        if pattern.match(entry):
            os.remove(os.path.join(folder, entry))


def _claim_work(zip_path, parts_dir, settings, lock, overwrite):
    """Rank 0: 'complete' (or 'complete-legacy', see `_zip_is_complete`) if the zip is done, else
    'work' with the work folder locked and ready.

    Cleans up what a killed run left: temp zips of a cut-off assembly, the work folder of a run
    killed between the rename and its removal, temp files of cut-off image writes."""
    state = _zip_is_complete(zip_path, settings, overwrite)
    if state and not os.path.lexists(parts_dir):
        return 'complete' if state == 'same' else 'complete-legacy'
    if not state:
        _check_replaceable(zip_path, settings, overwrite)
    os.makedirs(parts_dir, exist_ok=True)
    lock.acquire()
    _remove_stale_temp_zips(zip_path)
    state = _zip_is_complete(zip_path, settings, overwrite)
    if state:  # checked again under the lock: the zip is done
        shutil.rmtree(parts_dir, ignore_errors=True)
        lock.release()
        return 'complete' if state == 'same' else 'complete-legacy'
    for name in os.listdir(parts_dir):  # temp files of image writes that were cut off
        if name.startswith('.tmp-'):
            os.remove(os.path.join(parts_dir, name))
    _take_over_parts_dir(parts_dir, settings, overwrite)
    return 'work'


_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'  # the empty IEND chunk that closes every PNG


def image_format(encoder, net, device):
    """(size, PIL mode) of the images this encoder makes from this net's latents (one dummy decode)."""
    import torch
    latent = torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    with torch.no_grad():
        image = imagelib.to_pil(encoder.decode(latent)[0].cpu())
    return image.size, image.mode


def part_is_valid(path, size, mode):
    """True if `path` is a complete PNG that decodes to an image of `size` and PIL `mode`."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if not data.endswith(_PNG_END):
            return False
        with PIL.Image.open(io.BytesIO(data)) as image:
            if image.format != 'PNG' or image.size != tuple(size) or image.mode != mode:
                return False
            image.load()
        return True
    except Exception:  # any decoding failure (PIL raises several kinds) means "not a finished image"
        return False


def _discard_bad_parts(parts_dir, done, size, mode, rank, world_size, threads=4):
    """Check this rank's share of the finished parts; delete the bad ones. Returns how many."""
    mine = sorted(done)[rank::world_size]
    paths = [os.path.join(parts_dir, entry_name(k)) for k in mine]
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        valid = list(pool.map(lambda p: part_is_valid(p, size, mode), paths))
    bad = [p for p, ok in zip(paths, valid) if not ok]
    for path in bad:
        os.remove(path)
    return len(bad)


def assemble_zip(parts_dir, zip_path, num_images, settings):
    """Write the zip from the finished parts under a temp name, then rename it into place."""
    with imagelib.atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, 'x', compression=zipfile.ZIP_STORED) as zf:
        for k in range(num_images):
            with open(os.path.join(parts_dir, entry_name(k)), 'rb') as f:
                data = f.read()
            zf.writestr(zipfile.ZipInfo(entry_name(k), date_time=ZIP_TIMESTAMP), data)
        zf.comment = json.dumps(settings, sort_keys=True).encode()


def dump_zip(net, encoder, zip_path, seeds, schedule, *, settings, gnet=None, guidance=None, batch_size=64,
             device='cpu', verbose=False, progress=True, writer_threads=2, overwrite=False):
    """Generate one image per seed (entry k = seeds[k]) into `zip_path`, resuming unfinished work.

    `settings` (a JSON-able dict of everything that determines the pixels, the input files as
    `digests.input_record` under 'inputs') guards resumption: a work folder made with other
    settings or other input files is refused rather than mixed, and so is replacing a finished zip
    of other settings, unless `overwrite`; input files are compared by content, not path. The work folder is locked for the run, so
    a second run on the same zip refuses at once. Existing parts count only after they decode to
    an image of the right size and mode; bad ones are regenerated. PNG encoding and file writes run
    in `writer_threads` worker threads, overlapping with sampling.
    `schedule` and `guidance` as `generation.generate_batches` takes them.
    Returns a dict of timings and counts (rank 0's view).
    """
    seeds = seedlib.as_seed_sequence(seeds)
    # The chunking (hence the batch shapes, which may change kernel rounding) is part of the settings.
    settings = dict(settings, seeds_first=int(seeds[0]) if len(seeds) else None, num_images=len(seeds),
                    batch_size=batch_size)
    parts_dir = zip_path + '.parts'
    rank, world_size = dist.get_rank(), dist.get_world_size()
    lock = RunLock(parts_dir, parts_dir) if rank == 0 else None
    status = None
    if rank == 0:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
            status = _claim_work(zip_path, parts_dir, settings, lock, overwrite)
        except UserError as exc:
            status = f'error: {exc}'
        except OSError as exc:
            status = f'error: {describe_os_error(exc)}'
    status = dist.broadcast_object(status)  # a refusal stops every rank with rank 0's line
    if status.startswith('error: '):
        if lock is not None:
            lock.release()
        raise UserError(status[len('error: '):])
    if status.startswith('complete'):
        if status == 'complete-legacy':
            dist.print0(f'note: {zip_path} was made by an older version of this program, which recorded the paths '
                        f'of the networks but not their contents; it is kept as it is (--overwrite regenerates it).')
        dist.print0(f'{zip_path} is already complete; nothing to do.')
        return dict(generated=0, skipped=len(seeds))
    try:
        return _fill_and_assemble(net, encoder, zip_path, parts_dir, seeds, settings, schedule, gnet=gnet,
                                  guidance=guidance, batch_size=batch_size, device=device, verbose=verbose,
                                  progress=progress, writer_threads=writer_threads)
    finally:
        if lock is not None:
            lock.release()


def _fill_and_assemble(net, encoder, zip_path, parts_dir, seeds, settings, schedule, *, gnet, guidance, batch_size,
                       device, verbose, progress, writer_threads):
    """The locked part of `dump_zip`: check the parts, generate the missing ones, write the zip."""
    import torch
    rank, world_size = dist.get_rank(), dist.get_world_size()
    done = {k for k in _finished_parts(parts_dir) if k < len(seeds)}
    if done:
        size, image_mode = image_format(encoder, net, device)
        bad = torch.tensor([_discard_bad_parts(parts_dir, done, size, image_mode, rank, world_size)],
                           dtype=torch.int64)
        dist.all_reduce_sum(bad)
        if int(bad) and rank == 0:
            print(f'note: {int(bad)} images in {parts_dir} were incomplete or unreadable; regenerating them.')
        dist.barrier()
        done = {k for k in _finished_parts(parts_dir) if k < len(seeds)}
    dist.barrier()  # every rank has listed the folder before anything new is written
    # Chunks of consecutive seeds, fixed by the settings alone: a chunk is computed whole (or not at
    # all), so an image never depends on the number of processes or on where a run was cut off.
    pending = [chunk for chunk in seedlib.fixed_chunks(len(seeds), batch_size)
               if not all(int(k) in done for k in chunk)]
    if done and rank == 0:
        print(f'Resuming: {len(done)} of {len(seeds)} images already done.')
    timing = dict(sampling=0.0, decoding=0.0, writing=0.0)
    bar = progress_bar(total=len(seeds), initial=len(done), unit='img', desc='Generating',
                       disable=(not progress or rank != 0), dynamic_ncols=True, smoothing=0.1)
    # Images finished across all ranks at each of rank 0's batches (the last steps may be padded).
    step_images = seedlib.images_per_step([seedlib.deal_chunks(pending, world_size, r) for r in range(world_size)],
                                          count=lambda chunk: sum(int(k) not in done for k in chunk))
    writing_lock_free = []  # per-image write durations, appended by worker threads

    def write_one(k, image):
        t0 = time.perf_counter()
        imagelib.atomic_write(os.path.join(parts_dir, entry_name(k)), imagelib.encode_png(image), make_dirs=False)
        writing_lock_free.append(time.perf_counter() - t0)

    writes = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(writer_threads, 1)) as pool:
        for batch in generate_batches(net, encoder, seeds, schedule, gnet=gnet, guidance=guidance, device=device,
                                      batches=seedlib.deal_chunks(pending, world_size, rank)):
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
