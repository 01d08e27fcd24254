"""Progress of long work: a tqdm bar on a terminal, plain lines with ETA in logs.

`progress_bar(...)` takes tqdm's keyword arguments (total, initial, unit, desc, disable, leave,
dynamic_ncols, smoothing) and gives its methods (update, write, close, set_postfix_str; context
manager). When stderr is a terminal it is `tqdm.tqdm`. Otherwise (a log file, a pipe, a batch
job) a bar would print nothing useful, so it writes one plain line to stderr every `every`
percent of the total (and at the end), e.g.

    Generating:  1200/50000 img (2%), 14.2 img/s, elapsed 1:24, ETA 57:16

With an unknown total it writes a line every `interval` seconds instead. Work that ends within
`delay` seconds (3 by default) prints no line at all, so short jobs keep their stderr to errors.
"""

import sys
import time

import tqdm


def _clock(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


class PlainProgress:
    """The non-terminal form: periodic lines with count, percent, rate and ETA."""

    def __init__(self, total=None, initial=0, unit='it', desc=None, disable=False, file=None, every=5.0,
                 interval=30.0, delay=3.0, clock=time.monotonic, **_ignored):
        self.total, self.n, self.unit, self.desc = total, initial, unit, desc
        self.disable = bool(disable)
        self.file = file
        self.every, self.interval, self.delay, self.clock = every, interval, delay, clock
        self.lines = 0
        self.start_n, self.start = initial, clock()
        self.last_line_n, self.last_line_t = initial, self.start
        self.postfix = ''
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _out(self):
        return self.file or sys.stderr

    def format_line(self):
        elapsed = self.clock() - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f'{self.desc}: ' if self.desc else ''
        if self.total:
            count = f'{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)'
        else:
            count = f'{self.n} {self.unit}'
        parts = [head + count, f'{rate:.3g} {self.unit}/s', f'elapsed {_clock(elapsed)}']
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f'ETA {_clock((self.total - self.n) / rate)}')
        if self.postfix:
            parts.append(self.postfix)
        return ', '.join(parts)

    def _emit(self):
        if self.clock() - self.start < self.delay:
            return  # too early: short work prints nothing (the next step's line catches up)
        print(self.format_line(), file=self._out(), flush=True)
        self.lines += 1
        self.last_line_n, self.last_line_t = self.n, self.clock()

    def update(self, n=1):
        if self.disable or self.closed:
            return
        self.n += n
        if self.total:
            step = max(self.total * self.every / 100, 1)
            if self.n >= self.total or self.n - self.last_line_n >= step:
                self._emit()
        elif self.clock() - self.last_line_t >= self.interval:
            self._emit()

    def set_postfix_str(self, text='', refresh=True):
        del refresh
        self.postfix = text

    def write(self, text, file=None):
        """As `tqdm.write`: to stdout unless `file` is given."""
        print(text, file=file or sys.stdout, flush=True)

    def close(self):
        if self.disable or self.closed:
            self.closed = True
            return
        self.closed = True
        if self.n != self.last_line_n and self.n > self.start_n:
            self._emit()


def progress_bar(*args, file=None, **kwargs):
    """tqdm on a terminal, `PlainProgress` otherwise (see the module docstring)."""
    stream = file or sys.stderr
    disable = kwargs.get('disable', False)
    if disable:
        kwargs['disable'] = True
    isatty = getattr(stream, 'isatty', None)
    if isatty is not None and isatty():
        kwargs['disable'] = bool(disable)
        return tqdm.tqdm(*args, file=stream, **kwargs)
    return PlainProgress(*args, file=file, **kwargs)
