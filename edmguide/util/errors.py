"""One-line errors for users, and the CLI wrapper that prints them.

Library code raises `UserError` for problems with the user's input (a missing file, a pickle
without a network, a malformed interval, ...). Command-line entry points run their work through
`run_cli`, which turns such an error into a single `error: ...` line on stderr and exit status 1,
so that no traceback is shown for mistakes the user can fix; so does an `OSError` (an output folder
under a file, no permission, a full disk), whose message names the path (`with_path` adds it where
the operating system did not), and the error a process of a torchrun group gets when another one
(or the torchrun agent) has died: one line per rank.
"""

import os
import sys


class UserError(Exception):
    """A problem with the user's input or files; the message is one line that names it."""


def with_path(exc, path):
    """`exc` (an OSError) naming `path` if it names no file yet (e.g. ENOSPC from a write)."""
    if getattr(exc, 'filename', None) is None and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(path))
    return exc


def describe_os_error(exc):
    """'<path>: <reason>' (and the second path of a rename), or the plain message."""
    reason = exc.strerror or str(exc)
    if getattr(exc, 'filename', None) is None:
        return reason
    text = f'{os.fspath(exc.filename)}: {reason}'
    if getattr(exc, 'filename2', None) is not None:
        text += f' (-> {os.fspath(exc.filename2)})'
    return text


def _rank_prefix():
    rank = os.environ.get('RANK')
    return f'rank {rank}: ' if rank is not None and os.environ.get('WORLD_SIZE', '1') != '1' else ''


_LOST_PEER_MARKERS = ('Connection closed by peer', 'Connection reset by peer', 'gloo/transport',
                      'ncclRemoteError', 'NCCL communicator was aborted')


def is_lost_peer_error(exc):
    """True for the error a collective raises, in a process of a torchrun group, when another
    process of the group (or the agent) is gone: gloo raises a plain RuntimeError naming its
    transport, newer torch versions a DistError."""
    if os.environ.get('WORLD_SIZE', '1') == '1':
        return False
    try:
        import torch.distributed
        if isinstance(exc, torch.distributed.DistError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _LOST_PEER_MARKERS)


def _first_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def run_cli(func, *args, resume_hint=None, **kwargs):
    """Call `func`; report a `UserError` as one line and exit 1; Ctrl-C exits 130 with one line,
    which says how to resume (`resume_hint`) where the work can be resumed."""
    try:
        return func(*args, **kwargs)
    except UserError as exc:
        print(f'error: {exc}', file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # the file system refused (not a directory, permission, disk full)
        print(f'error: {describe_os_error(exc)}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f'\ninterrupted; {resume_hint}' if resume_hint else '\ninterrupted', file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:
        if not is_lost_peer_error(exc):
            raise
        print(f'error: {_rank_prefix()}lost contact with the other processes of this torchrun job '
              f'(one of them, or the torchrun agent, stopped): {_first_line(exc)}', file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # skip the broken process group's teardown, which may abort with a C++ message
