"""edmguide.util.progress: plain progress lines (count, percent, rate, ETA) when stderr is not a terminal."""

import io

import tqdm

from edmguide.util.progress import PlainProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_every_few_percent_with_rate_and_eta():
    out, clock = io.StringIO(), FakeClock()
    with progress_bar(total=200, unit='img', desc='Generating', file=out, every=10, delay=0, clock=clock) as bar:
        assert isinstance(bar, PlainProgress)  # a StringIO is not a terminal
        for _ in range(20):
            clock.t += 1.0
            bar.update(10)  # 10 images per second
    lines = out.getvalue().splitlines()
    assert len(lines) == 10, lines  # one line per 10% (20 images), the last one at 100%
    assert lines[0] == 'Generating: 20/200 img (10%), 10 img/s, elapsed 0:02, ETA 0:18'
    assert lines[-1].startswith('Generating: 200/200 img (100%)') and 'ETA' not in lines[-1]


def test_resumed_count_rate_counts_only_new_work_and_close_prints_the_rest():
    out, clock = io.StringIO(), FakeClock()
    bar = progress_bar(total=100, initial=50, unit='img', file=out, every=50, delay=0, clock=clock)
    clock.t = 5.0
    bar.update(5)
    bar.write('a message', file=out)  # as tqdm.write: stdout unless told otherwise
    bar.close()
    assert out.getvalue().splitlines() == ['a message', '55/100 img (55%), 1 img/s, elapsed 0:05, ETA 0:45']


def test_short_work_prints_no_line():
    out, clock = io.StringIO(), FakeClock()
    with progress_bar(total=10, file=out, clock=clock) as bar:  # default delay: 3 s
        for _ in range(10):
            clock.t += 0.2
            bar.update(1)
    assert out.getvalue() == ''


def test_disabled_bar_prints_nothing_and_a_terminal_gets_tqdm():
    out = io.StringIO()
    with progress_bar(total=10, file=out, disable=True) as bar:
        bar.update(10)
    assert out.getvalue() == ''

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    bar = progress_bar(total=3, file=Terminal(), leave=False, dynamic_ncols=True, smoothing=0.1)
    assert isinstance(bar, tqdm.tqdm)
    bar.close()
