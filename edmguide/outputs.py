"""Checking output locations before the long work starts.

Every script checks where it will write (`--outdir`, `--zip_dir`, `--results_dir`, `--dest`, the
demo's folder) before it loads a network, so that an unwritable location is a one-line error at
once rather than after hours of sampling or a whole feature pass. The checks create nothing that
stays behind: a folder that does not exist yet is probed by creating and removing a temporary
folder in its nearest existing parent.
"""

import errno
import os
import uuid

from edmguide.errors import UserError


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
