"""What the input files of a resumable run ARE: content digests, and comparing recorded settings by them.

A resumable run (a zip dump's work folder, a sweep's checkpoints) records the settings it was
made with and refuses to continue under other ones. Its input files (networks, reference
statistics) are recorded as `{'path': <as the user spelled it>, 'sha256': <hex digest of the
bytes>}` under the settings' key 'inputs': the path is for people, the digest is what is compared.
So a network retrained or replaced at the same path is refused (naming the file), and the same
file under another spelling of its path (relative or absolute, through a symlink) is accepted.

Settings recorded by versions before the digests (paths as top-level values, no 'inputs') are
told apart by `legacy_form`: they can be recognised, never proven.
"""

import hashlib

from edmguide.nets import loading

CHUNK = 1 << 20

#----------------------------------------------------------------------------
# Digests.

def file_sha256(path_or_url):
    """Hex SHA-256 of the bytes of a local file or URL (its download-cache copy), read in chunks."""
    local = loading.local_file(path_or_url)
    digest = hashlib.sha256()
    with open(local, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def input_record(**paths):
    """{name: {'path': str, 'sha256': hex} or None (not used)}, each file read once."""
    return {name: None if path is None else {'path': str(path), 'sha256': file_sha256(path)}
            for name, path in sorted(paths.items())}

#----------------------------------------------------------------------------
# Comparing recorded settings.

def comparable(settings):
    """`settings` with each input file reduced to its digest: what tells two runs apart."""
    inputs = settings.get('inputs')
    if not isinstance(inputs, dict):
        return settings
    stripped = {k: (v.get('sha256') if isinstance(v, dict) else v) for k, v in inputs.items()}
    return dict(settings, inputs=stripped)


def same(recorded, settings):
    """True if `recorded` settings name the same work as `settings` (input files compared by digest)."""
    return isinstance(recorded, dict) and comparable(recorded) == comparable(settings)


def legacy_form(settings):
    """`settings` as versions without digests recorded them: each input's path as a top-level value."""
    out = {k: v for k, v in settings.items() if k != 'inputs'}
    for name, entry in (settings.get('inputs') or {}).items():
        out[name] = None if entry is None else entry['path']
    return out


def is_legacy(recorded):
    """True for settings recorded before input digests existed (no 'inputs' entry)."""
    return isinstance(recorded, dict) and 'inputs' not in recorded


def difference(recorded, settings):
    """Why `recorded` is not `settings`, as a phrase to follow 'made with': a changed input file
    named first (its path now, and then if it differs), else the names of the other settings that
    differ (`recorded` of an older version is compared with `legacy_form(settings)`)."""
    if is_legacy(recorded):
        a, b = recorded, legacy_form(settings)
        return f'other settings ({", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))})'
    old_inputs = recorded.get('inputs') if isinstance(recorded.get('inputs'), dict) else {}
    for name, entry in sorted((settings.get('inputs') or {}).items()):
        old = old_inputs.get(name)
        if isinstance(old, dict) and isinstance(entry, dict) and old.get('sha256') != entry['sha256']:
            then = '' if old.get('path') == entry['path'] else f', then given as {old.get("path")}'
            return f'a different {name} file ({entry["path"]}{then}: its content, SHA-256, differs)'
    a, b = comparable(recorded), comparable(settings)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f'other settings ({", ".join(changed)})'

#----------------------------------------------------------------------------
