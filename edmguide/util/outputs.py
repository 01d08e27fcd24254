"""Checking output locations before the long work starts.

Every script checks where it will write (`--outdir`, `--zip_dir`, `--results_dir`, `--dest`, the
demo's folder) before it loads a network, so that an unwritable location is a one-line error at
once rather than after hours of sampling or a whole feature pass. The checks create nothing that
stays behind: a folder that does not exist yet is probed by creating and removing a temporary
folder in its nearest existing parent.
"""

import errno
import json
import os
import re
import uuid

from edmguide.util.errors import UserError


def _nearest_existing(path):
    """The deepest existing path on the way up to `path` (which may itself exist)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _probe_writable(folder, label):
    """Create and remove a temporary entry in `folder`, or raise a UserError naming it."""
    probe = os.path.join(folder, f'.tmp-probe-{uuid.uuid4().hex}')
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(f'{label}: cannot write in {folder} ({exc.strerror or exc})') from None


def check_output_dir(path, option='output folder'):
    """Make sure the folder `path` exists and is writable, or can be created. Returns `path`.

    `option` names the setting in the error message, e.g. '--zip_dir'.
    """
    path = os.fspath(path)
    label = f'{option} {path}'
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'{label}: exists and is not a directory')
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise UserError(f'{label}: cannot create it, {existing} is a file '
                        f'({os.strerror(errno.ENOTDIR)})')
    _probe_writable(existing, label)
    return path


def check_output_file(path, option='output file'):
    """Make sure the file `path` can be written (atomically, beside its final name). Returns `path`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f'{option} {path}: is a directory, expected a file name')
    check_output_dir(os.path.dirname(os.path.abspath(path)), f'{option} {path}: folder')
    return path


def same_file(a, b):
    """True if paths `a` and `b` name the same file, whatever their spelling (relative, `..`,
    symlinks, hard links): compared by what they are, not by their strings."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would resolve to
        return os.path.realpath(a) == os.path.realpath(b)


def check_replaceable(path, option, *, overwrite=False, inputs=()):
    """Refuse to write `path` (the value of `option`) over finished work. The project's one rule
    for writers: an existing file is replaced only with `--overwrite`, and never when it is one of
    the command's own inputs (`inputs`: {option: path}), which it would destroy while reading it.
    Returns `path`."""
    path = os.fspath(path)
    for input_option, input_path in dict(inputs).items():
        if input_path is not None and same_file(path, input_path):
            raise UserError(f'{option} {path} is the same file as {input_option} {input_path}: writing it would '
                            f'destroy the input; choose another {option}')
    if os.path.lexists(path) and not overwrite:
        raise UserError(f'{option} {path} exists; nothing was written (use --overwrite to replace it)')
    return path


#----------------------------------------------------------------------------
# Folders of per-seed images: a record of the settings that made them.

FOLDER_RECORD = 'settings.json'
_SEED_PNG = re.compile(r'^\d{6,}\.png$')
_SEED_SUBDIR = re.compile(r'^\d{6,}$')


def seed_images_in(outdir):
    """Paths of the per-seed PNGs (`<seed:06d>.png`, also in per-1000 subfolders) in `outdir`."""
    found = []
    if not os.path.isdir(outdir):
        return found
    for entry in sorted(os.listdir(outdir)):
        path = os.path.join(outdir, entry)
        if _SEED_PNG.match(entry) and os.path.isfile(path):
            found.append(path)
        elif _SEED_SUBDIR.match(entry) and os.path.isdir(path):
            found += [os.path.join(path, name) for name in sorted(os.listdir(path))
                      if _SEED_PNG.match(name) and os.path.isfile(os.path.join(path, name))]
    return found


def _read_record(path):
    """The JSON object in `path`; None if there is no such file; a string saying why it is unreadable."""
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        return f'cannot read it: {exc}'
    return record if isinstance(record, dict) else f'holds a {type(record).__name__}, not a JSON object'


def claim_image_folder(outdir, settings, *, overwrite=False, write=True, option='--outdir'):
    """Make `outdir` a folder of images of `settings` (a JSON-able dict of everything that decides
    the pixels), recorded in `<outdir>/settings.json`, or refuse in one line, before any work.

    - The same settings recorded: the run goes on (it rewrites the seeds it makes, identically).
    - No record and no seed images: the folder is taken (the record is written).
    - Other settings, an unreadable record, or seed images without a record: refused, naming
      --overwrite, because nothing proves those images are of these settings.
    - With `overwrite`: the seed images there are deleted and the record replaced.
    Only a caller with `write` changes anything (rank 0 under torchrun; the others only check).
    Returns the number of seed images deleted.
    """
    from edmguide.util.images import atomic_write
    record_path = os.path.join(outdir, FOLDER_RECORD)
    previous = _read_record(record_path)
    if previous == settings:
        return 0
    images = seed_images_in(outdir)
    if previous is not None or images:
        if not overwrite:
            advice = f'use another {option}, or --overwrite to delete them and start over'
            if previous is None:
                raise UserError(f'{outdir} holds {len(images)} seed images but no {FOLDER_RECORD}, so nothing proves '
                                f'which settings made them; {advice}')
            if isinstance(previous, str):
                raise UserError(f'{record_path}: {previous}, so nothing proves which settings made the '
                                f'{len(images)} seed images there; {advice}')
            changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
            raise UserError(f'{outdir} holds images made with other settings ({", ".join(changed)}); {advice}')
    if write:
        for path in images:
            os.remove(path)
        atomic_write(record_path, (json.dumps(settings, indent=1, sort_keys=True) + '\n').encode())
    return len(images) if write else 0
