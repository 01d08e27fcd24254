"""The sampler's options and the one noise-schedule tensor every guidance interval is resolved on.

`SamplerOptions` holds everything that decides the sampler's arithmetic (steps, sigma range, rho,
churn, upstream numerics, working dtype). It is parsed once, at the edge (a command line, a preset,
a library call), validated as a whole when it is made, and then passed around as one value.

`Schedule` is those options bound to a network and a device: it owns the tensor of noise levels
t_0 > t_1 > ... > t_{N-1} > t_N = 0 that the sampler runs on, and turns every guidance setting
(a weight and an `Interval`: all steps, step indices or a noise range) into a `GuidanceSchedule`
and a per-step weight vector against that same tensor, once. Because step indices are converted on
the very tensor the sampler uses (float32 and float64 levels differ, and 'gi' clamps and rounds
them by the net), the two ways of writing an interval give identical images.
"""

import dataclasses
import math

import torch

from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule, Interval, check_weight

MODES = ('edm2', 'gi')
INIT_NOISE = ('edm', 'sgm')  # starting state t_0 * noise, or sqrt(1 + t_0^2) * noise (see SamplerOptions)
MODE_DTYPE = {'edm2': torch.float32, 'gi': torch.float64}
# Command-line spelling of each option, for messages.
OPTION_NAMES = dict(num_steps='--steps', sigma_min='--sigma_min', sigma_max='--sigma_max', rho='--rho',
                    S_churn='--S_churn', S_min='--S_min', S_max='--S_max', S_noise='--S_noise')

#----------------------------------------------------------------------------
# Validating the options as a whole.

def check_sampler_options(num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, S_churn=0, S_min=0,
                          S_max=float('inf'), S_noise=1, *, dtype=torch.float64):
    """Refuse, with one line naming the option, every setting that would make the images
    non-finite or meaningless; the command-line parser and `SamplerOptions` both call this.

    Each option alone must be in range (finite where infinity makes no sense), the combination
    must make sense (sigma_min < sigma_max, S_min <= S_max), and the schedule they give in `dtype`
    must be finite, positive and strictly decreasing (no overflow or underflow of sigma**(1/rho)).
    """
    def refuse(key, value, need):
        raise UserError(f'{OPTION_NAMES[key]}={value!r}: {need}')

    if isinstance(num_steps, bool) or not float(num_steps).is_integer() or num_steps < 2:
        refuse('num_steps', num_steps, 'need an integer of at least 2 (the schedule needs two noise levels)')
    for key, value in (('sigma_min', sigma_min), ('sigma_max', sigma_max), ('rho', rho)):
        if not (math.isfinite(value) and value > 0):
            refuse(key, value, 'need a finite number > 0')
    if not sigma_min < sigma_max:
        raise UserError(f'--sigma_min={sigma_min!r}, --sigma_max={sigma_max!r}: need sigma_min < sigma_max')
    for key, value in (('S_churn', S_churn), ('S_min', S_min), ('S_noise', S_noise)):
        if not (math.isfinite(value) and value >= 0):
            refuse(key, value, 'need a finite number >= 0')
    if math.isnan(S_max) or S_max < 0:
        refuse('S_max', S_max, 'need a number >= 0 (inf for no upper limit)')
    if not S_min <= S_max:
        raise UserError(f'--S_min={S_min!r}, --S_max={S_max!r}: need S_min <= S_max')
    noise_levels(int(num_steps), sigma_min, sigma_max, rho, dtype=dtype)  # checks the schedule itself


def check_schedule(t, dtype):
    """The levels t_0 > ... > t_{N-1} > 0 must be finite and strictly decreasing in `dtype`."""
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()) or not bool((t[1:] < t[:-1]).all()):
        raise UserError(f'these --sigma_min, --sigma_max, --rho and --steps give no usable {str(dtype).split(".")[-1]} '
                        f'noise schedule (levels {float(t[0]):g} .. {float(t[-1]):g} overflow, underflow to 0 or '
                        f'repeat)')

#----------------------------------------------------------------------------
# Noise levels.

def noise_levels(num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, *, dtype=torch.float32, device=None):
    """Karras rho-schedule t_0 = sigma_max ... t_{N-1} = sigma_min, then t_N = 0 (N+1 values).

    Computed in `dtype` from an integer ramp with Python-float constants, exactly as both upstream
    samplers do, so float32 gives EDM2's levels and float64 gives GI's.
    """
    if num_steps < 2:
        raise UserError(f'num_steps must be at least 2, got {num_steps}')
    if not 0 < sigma_min < sigma_max:
        raise UserError(f'need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}')
    try:
        hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    except OverflowError:
        hi = lo = math.inf  # refused by check_schedule below, with the one-line message
    ramp = torch.arange(num_steps, dtype=dtype, device=device) / (num_steps - 1)
    t = (hi + ramp * (lo - hi)) ** rho
    check_schedule(t, dtype)
    return _append_zero(t)


def round_sigma(net, t):
    """The net's own `round_sigma` of t (identity for nets without one), in t's dtype and device."""
    fn = getattr(net, 'round_sigma', None)
    return torch.as_tensor(fn(t) if fn is not None else t, dtype=t.dtype, device=t.device)


def _append_zero(t):
    return torch.cat([t, t.new_zeros([1])])

#----------------------------------------------------------------------------
# The options.

@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """Every option of the Heun sampler, checked together when made (one `error:` line if not).

    `mode` picks the upstream arithmetic reproduced ('edm2': float32, schedule as given; 'gi':
    float64, schedule clamped to the net's sigma limits and rounded by its `round_sigma`);
    `dtype` overrides the working precision (None: the mode's), `out_dtype` the result's (None:
    the working precision for 'edm2', float32 for 'gi', as upstream). `init_noise` is the starting
    state: 'edm' = t_0 * noise (EDM, both upstream EDM2 samplers), 'sgm' = sqrt(1 + t_0^2) * noise
    (generative-models' HeunEDMSampler, the GI paper's SD-XL sampler: the standard deviation of
    x_0 + t_0 * noise for data of unit variance).
    """
    num_steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    mode: str = 'edm2'
    dtype: torch.dtype = None
    out_dtype: torch.dtype = None
    init_noise: str = 'edm'

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f'sampler mode (--numerics) must be one of {", ".join(MODES)}, got {self.mode!r}')
        if self.init_noise not in INIT_NOISE:
            raise UserError(f'starting noise must be one of {", ".join(INIT_NOISE)}, got {self.init_noise!r}')
        for name in ('dtype', 'out_dtype'):
            value = getattr(self, name)
            if value is not None and value not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                raise UserError(f'sampler {name} must be a torch floating-point dtype, got {value!r}')
        check_sampler_options(self.num_steps, self.sigma_min, self.sigma_max, self.rho, self.S_churn, self.S_min,
                              self.S_max, self.S_noise, dtype=self.working_dtype)
        object.__setattr__(self, 'num_steps', int(self.num_steps))

    @property
    def working_dtype(self):
        """The precision the sampler computes in."""
        return self.dtype or MODE_DTYPE[self.mode]

    @property
    def result_dtype(self):
        """The dtype of the sampler's result (upstream GI returns float32)."""
        return self.out_dtype or (self.working_dtype if self.mode == 'edm2' else torch.float32)

    def replace(self, **changes):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def as_record(self):
        """JSON-able dict of every field (exact floats, 'inf' for infinity), for settings files that a
        resumed run is checked against."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ('dtype', 'out_dtype'):
                value = None if value is None else str(value).split('.')[-1]
            elif isinstance(value, float) and not math.isfinite(value):
                value = 'inf' if value > 0 else '-inf'
            out[field.name] = value
        return out

    def check_weight(self, weight, what=None):
        """`guidance.check_weight`: a finite weight within float32's range, in every mode (so that a
        setting never works in one mode and fails in another); one `error:` line naming `what`."""
        check_weight(weight, what or '--guidance')

    def check_guidance(self, weight, interval=None, what=None):
        """What can be checked of a guidance setting before any network is loaded: the weight, and
        step indices against the number of steps (noise ranges need the schedule: `Schedule.guidance`)."""
        if weight is None or weight == 1:
            return
        self.check_weight(weight, what)
        if interval is not None and interval.kind == 'steps':
            start, stop = interval.steps
            if not 0 <= start <= stop <= self.num_steps - 1:
                raise UserError(f'step interval [{start}, {stop}]: step indices must satisfy 0 <= start <= stop <= '
                                f'{self.num_steps - 1} for {self.num_steps} steps')

    def schedule(self, net=None, *, device=None):
        """The `Schedule` these options give for `net` (which matters in 'gi' mode) on `device`."""
        dtype = self.working_dtype
        sigma_min, sigma_max = self.sigma_min, self.sigma_max
        if self.mode == 'gi':
            sigma_min = max(sigma_min, float(getattr(net, 'sigma_min', 0)))
            sigma_max = min(sigma_max, float(getattr(net, 'sigma_max', math.inf)))
        t = noise_levels(self.num_steps, sigma_min, sigma_max, self.rho, dtype=dtype, device=device)
        if self.mode == 'gi':
            t = _append_zero(round_sigma(net, t[:-1]))
        return Schedule(t, self, net=net)

#----------------------------------------------------------------------------
# The schedule of one run.

class Schedule:
    """Noise levels t_0 > ... > t_{N-1} > t_N = 0 of one run and the guidance settings resolved on them.

    Made by `SamplerOptions.schedule(net, device=...)`, or from an explicit tensor (toy samplers,
    tests). `sigmas` is the tensor the sampler runs on; `levels` the same values as Python floats.
    """

    def __init__(self, sigmas, options=None, *, net=None):
        self.options = options if options is not None else SamplerOptions()
        self.sigmas = torch.as_tensor(sigmas)
        self.levels = tuple(float(t) for t in self.sigmas.tolist())
        self.net = net
        if len(self.levels) < 2 or self.levels[-1] != 0 or any(a <= b for a, b in zip(self.levels, self.levels[1:])):
            raise UserError('noise schedule must be strictly decreasing, have at least two levels and end with 0')

    @property
    def num_steps(self):
        return len(self.levels) - 1

    def vp_start_scale(self):
        """sqrt(1 + t_0^2), computed in float64 from the first level of this schedule ('sgm' start)."""
        return math.sqrt(1 + self.levels[0] * self.levels[0])

    def step_levels(self):
        """t_0 .. t_{N-1}: the level each step starts from, which decides its weight."""
        return self.levels[:-1]

    def guidance(self, weight, interval=None, *, what=None):
        """The `GuidanceSchedule` of `weight` on `interval` (an `Interval`; None = every step).

        Step indices [start, stop] become (t_{stop+1}, t_start], taken from this schedule's own
        tensor; a noise range is kept as written. Weight None or 1 is no guidance. A weight that is
        not a finite number in the working dtype, and an interval that guides no step of this
        schedule, are refused with one line (`what` names the option in it).
        """
        interval = interval if interval is not None else Interval()
        if weight is None or weight == 1:
            return GuidanceSchedule.none()
        self.options.replace(num_steps=self.num_steps).check_guidance(weight, interval, what)
        if interval.kind == 'all':
            return GuidanceSchedule.constant(weight)
        if interval.kind == 'steps':
            start, stop = interval.steps
            return GuidanceSchedule.sigma_range(weight, self.levels[stop + 1], self.levels[start])
        lo, hi = interval.sigma
        guidance = GuidanceSchedule.sigma_range(weight, lo, hi)
        if not guidance.to_step_indices(self.sigmas):
            intended = guidance.rounded_bounds_hint(self.sigmas)
            hint = (f'; if it is a range rounded as the paper prints them, the steps meant are '
                    f'--guidance_interval="[{intended[0][0]}, {intended[0][1]}]"' if intended else
                    '; widen the range or give step indices (--guidance_interval)')
            raise UserError(f'noise range ({lo!r}, {hi!r}] guides no step of this {self.num_steps}-step schedule '
                            f'(steps start at levels {self.describe_levels()}){hint}')
        return guidance

    def check_weight(self, weight, what=None):
        """`SamplerOptions.check_weight` for this schedule's working dtype."""
        self.options.check_weight(weight, what)

    def weights(self, guidance):
        """Per-step weights (a tuple of N floats) of a `GuidanceSchedule`, a number (constant w) or None."""
        if guidance is None:
            return (1.0,) * self.num_steps
        if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
            guidance = GuidanceSchedule.constant(guidance) if guidance != 1 else GuidanceSchedule.none()
        if not isinstance(guidance, GuidanceSchedule):
            raise TypeError(f'guidance must be a GuidanceSchedule, a number or None, got {type(guidance).__name__}')
        return tuple(float(w) for w in guidance.step_weights(self.levels))

    def guided_steps(self, guidance):
        """(first, last) guided step of a one-segment guidance, or None if it guides none."""
        found = [i for i, w in enumerate(self.weights(guidance)) if w != 1]
        return (found[0], found[-1]) if found else None

    def check_branches(self, branches):
        """Check every (gnet, guidance) branch against this schedule before sampling (`sampling.step_keys`)."""
        from edmguide.sampler import sampling  # sampling imports this module
        sampling.step_keys(branches, self)

    def tree_evaluations(self, branches):
        """(evaluations the tree makes, evaluations of separate runs) per image of the (gnet,
        guidance) branches, as EvalCounters (`sampling.tree_evaluations` of `sampling.step_keys`)."""
        from edmguide.sampler import sampling  # sampling imports this module
        return sampling.tree_evaluations(sampling.step_keys(branches, self))

    def sample_tree(self, net, noise, labels, branches, *, randn_like, counter):
        """This schedule's sampler for several branches at once: `sampling.sample_tree` on it."""
        from edmguide.sampler import sampling  # sampling imports this module
        return sampling.sample_tree(net, noise, labels, branches, self, randn_like=randn_like, counter=counter)

    def describe_levels(self, limit=8):
        """The step levels for messages: all of them if few, else the first and last few."""
        levels = [f'{t:.4g}' for t in self.step_levels()]
        if len(levels) > limit:
            levels = levels[:limit // 2] + ['...'] + levels[-(limit // 2):]
        return ', '.join(levels)

    def rounded_bounds_note(self, guidance, interval):
        """A one-line note when a noise range looks like the paper's two-decimal rounding of levels
        but selects other steps than those levels would (e.g. (0.28, 2.90]); else None."""
        if interval is None or interval.kind != 'sigma' or not guidance.is_active:
            return None
        intended = guidance.rounded_bounds_hint(self.sigmas)
        if not intended:
            return None
        literal = guidance.to_step_indices(self.sigmas)
        guided = f'steps [{literal[0][0]}, {literal[0][1]}]' if literal else 'no step'
        start, stop, _ = intended[0]
        lo, hi = interval.sigma
        return (f'note: the noise range ({lo:g}, {hi:g}] guides {guided} of this {self.num_steps}-step schedule; '
                f'if it is a range rounded as the paper prints them, the steps meant are '
                f'--guidance_interval="[{start}, {stop}]"')
