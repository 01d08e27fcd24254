"""One-line errors for users, and the CLI wrapper that prints them.

Library code raises `UserError` for problems with the user's input (a missing file, a pickle
without a network, a malformed interval, ...). Command-line entry points run their work through
`run_cli`, which turns such an error into a single `error: ...` line on stderr and exit status 1,
so that no traceback is shown for mistakes the user can fix; so does an `OSError` (an output folder
under a file, no permission, a full disk), whose message names the path.
"""

import sys


class UserError(Exception):
    """A problem with the user's input or files; the message is one line that names it."""


def run_cli(func, *args, resume_hint=None, **kwargs):
    """Call `func`; report a `UserError` as one line and exit 1; Ctrl-C exits 130 with one line,
    which says how to resume (`resume_hint`) where the work can be resumed."""
    try:
        return func(*args, **kwargs)
    except (UserError, OSError) as exc:  # OSError: the file system refused (not a directory, permission, disk full)
        print(f'error: {exc}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f'\ninterrupted; {resume_hint}' if resume_hint else '\ninterrupted', file=sys.stderr)
        sys.exit(130)
