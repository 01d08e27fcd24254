"""Guidance weight as a function of noise level, w(sigma), kept as plain data.

The sampler asks a `GuidanceSchedule` for the weight of each Heun step and evaluates the guiding
network only where the answer is not 1. Constant CFG, the guidance interval, autoguidance (same
schedule, a weaker guiding net) and multi-segment schedules are therefore one mechanism.

An interval is written two ways:
- as a noise range (sigma_lo, sigma_hi] -- open below, closed above, as in the GI paper;
- as inclusive step indices [start, stop] into a schedule t_0 > t_1 > ... > t_N = 0, as in the
  upstream `--guidance_interval="[17, 22]"` option.
Step i is guided when its own noise level t_i lies in the range, so [start, stop] is the range
(t_{stop+1}, t_start] and both forms make identical decisions (hence identical images) as long as
the conversion used the very schedule tensor the sampler runs on.
"""

import ast
import dataclasses
import math
import operator
import re

from edmguide.util.errors import UserError

#----------------------------------------------------------------------------
# The weight.

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max

def check_weight(w, option='--guidance'):
    """Refuse a guidance weight the sampler cannot use: not a number, infinite, or beyond float32's
    range (the 'edm2' sampler computes in float32, where 1e39 is infinity; the same limit holds for
    every mode so that a setting never works in one and fails in the other). Returns w as a float."""
    try:
        value = float(w)
    except (TypeError, ValueError):
        raise UserError(f'{option}={w!r}: not a number') from None
    if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise UserError(f'{option}={w!r}: need a finite weight within float32 range (|w| <= {FLOAT32_MAX:.4g})')
    return value

#----------------------------------------------------------------------------
# The schedule.

@dataclasses.dataclass(frozen=True)
class GuidanceSchedule:
    """w(sigma): weight w on each segment (sigma_lo, sigma_hi], 1 everywhere else.

    Segments may not overlap; the sampler decides each step from its starting noise level.
    """
    segments: tuple = ()

    def __post_init__(self):
        segs = []
        for seg in self.segments:
            if len(seg) != 3:
                raise UserError(f'guidance segment {seg!r} is not (sigma_lo, sigma_hi, w)')
            lo, hi, w = (float(v) for v in seg)
            _check_range(lo, hi)
            check_weight(w)
            segs.append((lo, hi, w))
        segs.sort(key=lambda s: -s[1])
        for (lo_a, _hi_a, _), (_lo_b, hi_b, _) in zip(segs, segs[1:]):
            if hi_b > lo_a:
                raise UserError(f'guidance segments overlap: {tuple(segs)}')
        object.__setattr__(self, 'segments', tuple(segs))

    # Constructors ----------------------------------------------------------

    @classmethod
    def none(cls):
        """No guidance: w = 1 everywhere, the guiding net is never evaluated."""
        return cls(())

    @classmethod
    def constant(cls, w):
        """Guidance at every step (classic CFG / autoguidance): the range (0, inf]."""
        return cls(((0.0, math.inf, w),))

    @classmethod
    def sigma_range(cls, w, sigma_lo, sigma_hi):
        """Guidance for noise levels in (sigma_lo, sigma_hi] (the paper's form)."""
        return cls(((sigma_lo, sigma_hi, w),))

    @classmethod
    def step_indices(cls, w, start, stop, sigmas):
        """Guidance for Heun steps start..stop (inclusive) of the schedule `sigmas` (upstream form).

        Stored as (t_{stop+1}, t_start], taken from `sigmas` itself, so it is exact for that tensor.
        """
        lo, hi = indices_to_sigma_range(start, stop, sigmas)
        return cls(((lo, hi, w),))

    # Queries ---------------------------------------------------------------

    def weight(self, sigma):
        """w at noise level `sigma` (a float or a one-element tensor)."""
        sigma = float(sigma)
        for lo, hi, w in self.segments:
            if lo < sigma <= hi:
                return w
        return 1.0

    @property
    def is_active(self):
        """True if some segment has a weight other than 1 (a guiding net is needed)."""
        return any(w != 1 for _, _, w in self.segments)

    def step_weights(self, sigmas):
        """Weight of each of the len(sigmas)-1 Heun steps, decided from t_i."""
        levels = _levels(sigmas)
        return [self.weight(t) for t in levels[:-1]]

    def to_step_indices(self, sigmas):
        """Per segment, the inclusive steps (start, stop, w) it covers in `sigmas`.

        Segments that contain no step are left out; a one-segment schedule gives at most one entry.
        """
        levels = _levels(sigmas)[:-1]
        out = []
        for lo, hi, w in self.segments:
            steps = [i for i, t in enumerate(levels) if lo < t <= hi]
            if steps:
                out.append((steps[0], steps[-1], w))
        return tuple(out)

    def snapped(self, sigmas):
        """Move every finite non-zero bound to the nearest level of `sigmas` (in log sigma).

        The paper prints bounds rounded to two decimals, e.g. (0.28, 2.90] for steps [15, 21],
        while t_15 = 2.9015 > 2.90; snapping recovers the intended steps exactly.
        """
        levels = _levels(sigmas)
        positive = [t for t in levels if t > 0]
        def snap(v):
            if v == 0 or math.isinf(v):
                return v
            return min(positive, key=lambda t: abs(math.log(t) - math.log(v)))
        return GuidanceSchedule(tuple((snap(lo), snap(hi), w) for lo, hi, w in self.segments))

    def as_data(self):
        """The segments as JSON-able [lo, hi, w] lists, exact (a float keeps every digit through JSON;
        an infinite bound is the string 'inf'). For records that must tell schedules apart, such as
        the settings a resumable run is checked against; str() rounds to 6 digits for people."""
        return [[v if math.isfinite(v) else 'inf' for v in seg] for seg in self.segments]

    def rounded_bounds_hint(self, sigmas):
        """Steps the schedule would guide if its bounds were the paper's two-decimal roundings of
        levels of `sigmas`, when that differs from what the bounds select as written; else None.

        (0.28, 2.90] is how the paper prints steps [15, 21] = (0.28304, 2.9015], but taken literally
        it guides steps [16, 22]. Bounds that are not such roundings never give a hint, and neither
        do bounds that snap to the same level (a range between two levels holds none of them).
        """
        try:
            snapped = self.snapped(sigmas)
        except UserError:  # both bounds nearest to one level: not the rounding of a range of levels
            return None
        def looks_rounded(bound, level):
            return bound == level or (math.isfinite(bound) and bound > 0 and round(level, 2) == round(bound, 2))
        if any(not (looks_rounded(lo, s_lo) and looks_rounded(hi, s_hi))
               for (lo, hi, _), (s_lo, s_hi, _) in zip(self.segments, snapped.segments)):
            return None
        literal, intended = self.to_step_indices(sigmas), snapped.to_step_indices(sigmas)
        return intended if intended != literal else None

    def __str__(self):
        if not self.is_active:
            return 'no guidance'
        return ', '.join(f'w={w:g} on ({lo:g}, {hi:g}]' for lo, hi, w in self.segments if w != 1)

#----------------------------------------------------------------------------
# Where guidance applies, as the user wrote it.

@dataclasses.dataclass(frozen=True)
class Interval:
    """Where guidance applies, before it is resolved on a schedule (`schedule.Schedule.guidance`):
    kind 'all' (every step), 'steps' (inclusive indices (start, stop)) or 'sigma' (noise range
    (lo, hi], open below). `grid` names the sweep grid it was expanded from, if any.
    This is the one value every command-line spelling parses into: `--guidance_interval`,
    `--guidance_sigma`, the sweep's `--interval`, presets and figure definitions."""
    kind: str = 'all'
    steps: tuple = None
    sigma: tuple = None
    grid: str = None

    def __post_init__(self):
        if self.kind not in ('all', 'steps', 'sigma'):
            raise ValueError(f'interval kind must be all, steps or sigma, got {self.kind!r}')
        if (self.kind == 'steps') != (self.steps is not None) or (self.kind == 'sigma') != (self.sigma is not None):
            raise ValueError(f'interval of kind {self.kind!r} with steps={self.steps!r}, sigma={self.sigma!r}')
        if self.steps is not None:
            object.__setattr__(self, 'steps', tuple(int(v) for v in self.steps))
        if self.sigma is not None:
            object.__setattr__(self, 'sigma', tuple(float(v) for v in self.sigma))

    @classmethod
    def of_steps(cls, start, stop):
        return cls('steps', steps=(start, stop))

    @classmethod
    def of_sigma(cls, lo, hi):
        _check_range(float(lo), float(hi))
        return cls('sigma', sigma=(lo, hi))

    @classmethod
    def from_options(cls, interval_text=None, sigma_text=None):
        """The pair --guidance_interval ("[a, b]" or "None") / --guidance_sigma ("(lo, hi]"): at most one."""
        steps = parse_interval(interval_text) if interval_text is not None else None
        sigma = parse_sigma_range(sigma_text) if sigma_text is not None else None
        if steps is not None and sigma is not None:
            raise UserError('use either --guidance_interval (step indices) or --guidance_sigma (noise range), not both')
        if steps is not None:
            return cls.of_steps(*steps)
        return cls.of_sigma(*sigma) if sigma is not None else cls()

    @property
    def label(self):
        """Short text for tables and records: all, [a, b] or (lo, hi] (6 significant digits)."""
        if self.kind == 'all':
            return 'all'
        if self.kind == 'steps':
            return f'[{self.steps[0]}, {self.steps[1]}]'
        return f'({self.sigma[0]:g}, {self.sigma[1]:g}]'

    def spelling(self):
        """How a user writes it on the command line, exact (for messages)."""
        if self.kind == 'steps':
            return f'--guidance_interval="[{self.steps[0]}, {self.steps[1]}]"'
        if self.kind == 'sigma':
            return f'--guidance_sigma="({self.sigma[0]!r}, {self.sigma[1]!r}]"'
        return 'guidance at every step'

    def as_data(self):
        """JSON-able exact form: 'all', [a, b] or {'sigma': [lo, hi]} (infinity as the string 'inf')."""
        if self.kind == 'all':
            return 'all'
        if self.kind == 'steps':
            return list(self.steps)
        return {'sigma': [v if math.isfinite(v) else 'inf' for v in self.sigma]}

#----------------------------------------------------------------------------
# Conversions between the two forms.

def indices_to_sigma_range(start, stop, sigmas):
    """Inclusive steps [start, stop] of `sigmas` -> (t_{stop+1}, t_start] as Python floats."""
    levels = _levels(sigmas)
    num_steps = len(levels) - 1
    try:
        if isinstance(start, bool) or isinstance(stop, bool):
            raise TypeError
        start, stop = operator.index(start), operator.index(stop)
    except TypeError:
        raise UserError(f'guidance interval bounds must be integers, got {start!r}, {stop!r}') from None
    if not 0 <= start <= stop <= num_steps - 1:
        raise UserError(f'guidance interval [{start}, {stop}] must satisfy '
                        f'0 <= start <= stop <= {num_steps - 1} for {num_steps} steps')
    return levels[stop + 1], levels[start]


def sigma_range_to_indices(sigma_lo, sigma_hi, sigmas):
    """(sigma_lo, sigma_hi] -> inclusive steps (start, stop) whose t_i it contains, or None."""
    _check_range(float(sigma_lo), float(sigma_hi))
    found = GuidanceSchedule.sigma_range(2.0, sigma_lo, sigma_hi).to_step_indices(sigmas)
    return found[0][:2] if found else None


def method_tag(interval):
    """Upstream file-name tag: 'gi' when guidance is limited to an interval (step indices or a
    noise range: an `Interval` of another kind than 'all', or a (start, stop) pair), 'cfg' when it
    is applied at every step (an `Interval()` or None)."""
    if isinstance(interval, Interval):
        return 'gi' if interval.kind != 'all' else 'cfg'
    return 'gi' if interval is not None else 'cfg'

#----------------------------------------------------------------------------
# Parsers for command-line strings.

def parse_interval(text):
    """Upstream `--guidance_interval` syntax: "[17, 22]" (any 2-sequence) or "None" -> tuple or None.

    Only the syntax is checked here; bounds against the step count are checked by
    `GuidanceSchedule.step_indices`.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        value = text
    else:
        if text.strip() in ('', 'None', 'none'):
            return None
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise UserError(f'guidance interval {text!r} is not of the form "[start, stop]" or "None"') from None
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UserError(f'guidance interval {text!r} must be two integer step indices "[start, stop]" or "None"')
    start, stop = value
    if start > stop:
        raise UserError(f'guidance interval {text!r} has start > stop')
    if start < 0:
        raise UserError(f'guidance interval {text!r} has a negative step index')
    return (start, stop)


_NUM = r'\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf)\s*'
_SIGMA_RANGE = re.compile(r'^\s*(\(?)' + _NUM + r',' + _NUM + r'(\]?)\s*$', re.IGNORECASE)


def parse_sigma_range(text):
    """Noise range "0.28,2.9" or "(0.28, 2.90]" -> (sigma_lo, sigma_hi); open below, closed above."""
    m = _SIGMA_RANGE.match(text) if isinstance(text, str) else None
    if m is None:
        raise UserError(f'sigma range {text!r} is not of the form "lo,hi" or "(lo, hi]" '
                        '(the range is open below and closed above)')
    opening, lo, hi, closing = m.groups()
    if bool(opening) != bool(closing):
        raise UserError(f'sigma range {text!r}: write both brackets as "(lo, hi]" or neither')
    lo, hi = float(lo), float(hi)
    _check_range(lo, hi, text)
    return lo, hi

#----------------------------------------------------------------------------
# Helpers.

def _check_range(lo, hi, text=None):
    what = f'sigma range {text!r}' if text is not None else f'sigma range ({lo:g}, {hi:g}]'
    if math.isnan(lo) or math.isnan(hi):
        raise UserError(f'{what} contains NaN')
    if lo < 0:
        raise UserError(f'{what} must have sigma_lo >= 0')
    if not lo < hi:
        raise UserError(f'{what} must have sigma_lo < sigma_hi')


def _levels(sigmas):
    """Schedule tensor (or sequence) -> list of Python floats, exact for float32/float64."""
    levels = [float(t) for t in (sigmas.tolist() if hasattr(sigmas, 'tolist') else sigmas)]
    if len(levels) < 2 or any(a <= b for a, b in zip(levels, levels[1:])):
        raise UserError('noise schedule must be strictly decreasing with at least one step')
    return levels

#----------------------------------------------------------------------------
