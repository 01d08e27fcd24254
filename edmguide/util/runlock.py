"""An exclusive lock on a work folder, so that two runs never work on the same output at once.

The lock is an advisory `flock` on a small file that records who holds it (process id, host).
The kernel releases the lock when its process ends, however it ends (`kill -9` included), so a
lock file left behind by a dead process is simply taken over. A second run that finds the lock
held refuses at once with one line naming the process that holds it.
"""

import errno
import fcntl
import os
import socket

from edmguide.util.errors import UserError

LOCK_NAME = 'lock'


def _holder(path):
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read().strip()
    except OSError:
        text = ''
    return text or 'another process'


class RunLock:
    """Hold `<folder>/lock` exclusively until `release` (or the end of the process)."""

    def __init__(self, folder, what):
        self.path = os.path.join(os.fspath(folder), LOCK_NAME)
        self.what = what
        self.fd = None

    def acquire(self):
        """Take the lock or raise a UserError naming its holder. Returns self."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(f'{self.what} is in use by another run ({_holder(self.path)}); '
                                    f'wait for it to finish or stop it, then rerun') from None
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks on this file system
                    self.fd = None
                    return self
                raise
            try:  # the file may have been removed (with its folder) by the holder we waited for
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
