"""Heun sampler for the EDM probability-flow ODE (Karras et al. 2022, Alg. 2) with guidance.

Small pieces: `noise_levels` builds the schedule, `sampler_sigmas` adds what one upstream mode
does to it, `guided_denoiser` combines main and guiding net for a weight w, and `sample_tree` loops
over the schedule it is given, asking each branch's `GuidanceSchedule` for w at every step and
computing the steps that branches share once; `sample` is its one-branch case.

Two modes reproduce the two upstream samplers bit for bit (see the compatibility spec):
- 'edm2' (NVlabs/edm2): float32 throughout, schedule used as is, main net called before the guide;
- 'gi' (guidance-interval): float64, schedule clamped to the net's sigma limits and passed
  through its `round_sigma` (also t_hat), guide called before the main net, output float32.
Known, harmless deviations from upstream GI: the guiding net is skipped where w == 1 (GI evaluates
both nets and lerps with weight 1, which is exact for finite outputs), and churn noise comes from the
caller's `randn_like` only on steps where churn is active (GI draws a zero-weighted normal tensor from
the global RNG at every step; with S_churn = 0 it has no numeric effect).
"""

import dataclasses
import math

import torch

from edmguide.errors import UserError
from edmguide.guidance import GuidanceSchedule

MODES = ('edm2', 'gi')
_MODE_DTYPE = {'edm2': torch.float32, 'gi': torch.float64}
# The options that shape the noise schedule (dtype too: float32 and float64 levels differ, so a step
# interval must be converted on the schedule of the dtype the sampler runs in).
SCHEDULE_KEYS = ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'dtype')
SAMPLER_KEYS = SCHEDULE_KEYS + ('S_churn', 'S_min', 'S_max', 'S_noise')  # every option of the sampler loop
OPTION_KEYS = tuple(k for k in SAMPLER_KEYS if k != 'dtype')  # the numeric options `check_sampler_options` checks
# Command-line spelling of each option, for messages.
_OPTION_NAMES = dict(num_steps='--steps', sigma_min='--sigma_min', sigma_max='--sigma_max', rho='--rho',
                     S_churn='--S_churn', S_min='--S_min', S_max='--S_max', S_noise='--S_noise')

#----------------------------------------------------------------------------
# Validating the options as a whole.

def check_sampler_options(num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, S_churn=0, S_min=0,
                          S_max=float('inf'), S_noise=1, *, dtype=torch.float64):
    """Refuse, with one line naming the option, every setting that would make the images
    non-finite or meaningless; the command-line parser and the sampler both call this.

    Each option alone must be in range (finite where infinity makes no sense), the combination
    must make sense (sigma_min < sigma_max, S_min <= S_max), and the schedule they give in `dtype`
    must be finite, positive and strictly decreasing (no overflow or underflow of sigma**(1/rho)).
    """
    def refuse(key, value, need):
        raise UserError(f'{_OPTION_NAMES[key]}={value!r}: {need}')

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


def check_sampler_kwargs(kwargs):
    """`check_sampler_options` on the sampler options among `kwargs` (other keys are ignored)."""
    check_sampler_options(**{k: v for k, v in kwargs.items() if k in OPTION_KEYS})


def check_schedule(t, dtype):
    """The levels t_0 > ... > t_{N-1} > 0 must be finite and strictly decreasing in `dtype`."""
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()) or not bool((t[1:] < t[:-1]).all()):
        raise UserError(f'these --sigma_min, --sigma_max, --rho and --steps give no usable {str(dtype).split(".")[-1]} '
                        f'noise schedule (levels {float(t[0]):g} .. {float(t[-1]):g} overflow, underflow to 0 or '
                        f'repeat)')

#----------------------------------------------------------------------------
# Noise schedule.

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


def sampler_sigmas(net, mode='edm2', num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, *, dtype=None, device=None):
    """The schedule `sample` runs on by default in `mode` (build guidance intervals from this tensor).

    'gi' clamps (sigma_min, sigma_max) to the net's own limits and applies its `round_sigma`.
    """
    _check_mode(mode)
    dtype = dtype or _MODE_DTYPE[mode]
    if mode == 'gi':
        sigma_min = max(sigma_min, float(getattr(net, 'sigma_min', 0)))
        sigma_max = min(sigma_max, float(getattr(net, 'sigma_max', math.inf)))
        t = noise_levels(num_steps, sigma_min, sigma_max, rho, dtype=dtype, device=device)
        return _append_zero(_round_sigma(net, t[:-1]))
    return noise_levels(num_steps, sigma_min, sigma_max, rho, dtype=dtype, device=device)

#----------------------------------------------------------------------------
# Counting and guided evaluation.

@dataclasses.dataclass
class EvalCounter:
    """Network evaluations per image during `sample` (each call processes every image once).

    Pass a fresh counter per batch to read per-image counts.
    """
    net: int = 0
    gnet: int = 0


def guided_denoiser(net, gnet, labels, w, *, mode='edm2', dtype=torch.float32, counter=None):
    """D_w(x, t) = lerp(D_g, D, w) in `dtype`; just D (guide not called) when w == 1."""
    counter = counter if counter is not None else EvalCounter()

    def main(x, t):
        counter.net += 1
        return net(x, t, labels).to(dtype)

    def guide(x, t):
        counter.gnet += 1
        return gnet(x, t, labels).to(dtype)

    if w == 1:
        return main
    if gnet is None:
        raise UserError(f'guidance weight {w:g} needs a guiding network (gnet)')

    def denoise(x, t):
        if mode == 'gi':  # upstream GI evaluates the unconditional/guiding net first
            ref = guide(x, t)
            out = main(x, t)
        else:
            out = main(x, t)
            ref = guide(x, t)
        return torch.lerp(ref, out, w)
    return denoise

#----------------------------------------------------------------------------
# The sampler.

def sample(net, noise, labels=None, *, gnet=None, guidance=None, sigmas=None,
           num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, mode='edm2', dtype=None, out_dtype=None,
           S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
           randn_like=torch.randn_like, counter=None, progress=None, init_scale=None):
    """Heun's 2nd-order method from noise to an image (no correction on the last step).

    net, gnet:  denoisers D(x, sigma, class_labels); gnet is the unconditional net (CFG) or a weaker
                net (autoguidance) -- the sampler does not care which.
    guidance:   GuidanceSchedule or a number (constant w); None = no guidance. Step i is guided with
                w(t_i), used for both of its evaluations.
    sigmas:     schedule tensor [N+1] ending in 0; default `sampler_sigmas(net, mode, ...)`.
    dtype:      working precision (default float32 for 'edm2', float64 for 'gi');
    out_dtype:  result dtype (default: dtype for 'edm2', float32 for 'gi').
    randn_like: churn noise source, e.g. StackedRandomGenerator.randn_like; only called on steps
                with S_churn > 0 and S_min <= t_i <= S_max.
    counter:    EvalCounter to add this call's evaluations to.
    progress:   callable receiving a dict (i, num_steps, sigma, sigma_hat, sigma_next, w, x) per step.
    init_scale: the starting state is noise * init_scale; default (None) t_0, EDM's noise * sigma_max.
                Generative-models' SD-XL sampler starts from noise * sqrt(1 + t_0^2) (see edmguide.sdxl).

    This is `sample_tree` with one branch.
    """
    return sample_tree(net, noise, labels, [(gnet, guidance)], sigmas=sigmas, num_steps=num_steps,
                       sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, mode=mode, dtype=dtype,
                       out_dtype=out_dtype, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise,
                       randn_like=randn_like, counter=counter, progress=progress, init_scale=init_scale)[0]


def sample_tree(net, noise, labels, branches, *, mode='edm2', dtype=None, out_dtype=None, sigmas=None,
                num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float('inf'),
                S_noise=1, randn_like=torch.randn_like, counter=None, progress=None, init_scale=None):
    """`sample` for several guidance settings of the same noise and labels at once.

    `branches`: list of (gnet, guidance) pairs, guidance as `sample` takes it. Returns one output per
    branch, each bit-identical to `sample(net, noise, labels, gnet=gnet, guidance=guidance, ...)` with
    the same options. Branches whose per-step (guiding net, weight) sequences agree up to some step
    compute those steps once: the branches form a tree (`step_keys`) that is walked depth first, so
    at most one state per tree level is alive. `counter` receives the evaluations actually made;
    `tree_evaluations` gives them, and those of separate runs, without sampling.

    Churn draws random numbers, so branches that split after a churn step would see different noise
    than separate runs. Where the tree branches with churn active, `randn_like` must be the bound
    method of an object with `get_state()`/`set_state()` (`seeds.StackedRandomGenerator`): its state
    is saved at each branch point and restored for every child, which keeps the results identical.
    Any other noise source is refused there with a UserError. `progress` is `sample`'s per-step
    callback, called for every step computed; `init_scale` as in `sample`.
    """
    _check_mode(mode)
    dtype = dtype or _MODE_DTYPE[mode]
    check_sampler_options(num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise, dtype=dtype)
    out_dtype = out_dtype or (dtype if mode == 'edm2' else torch.float32)
    counter = counter if counter is not None else EvalCounter()
    if not branches:
        raise ValueError('sample_tree needs at least one branch')
    if sigmas is None:
        sigmas = sampler_sigmas(net, mode, num_steps, sigma_min, sigma_max, rho, dtype=dtype, device=noise.device)
    sigmas = sigmas.to(dtype=dtype, device=noise.device)
    steps = len(sigmas) - 1
    if steps < 1 or sigmas[-1] != 0:
        raise UserError('noise schedule must have at least two levels and end with 0')
    keys = step_keys(branches, sigmas)  # weights decided on the host once, not with a sync per step
    round_sigma = (lambda t: _round_sigma(net, t)) if mode == 'gi' else None
    levels = list(zip(sigmas[:-1], sigmas[1:]))
    churn_steps = [bool(S_churn > 0 and S_min <= t_cur <= S_max) for t_cur, _ in levels]
    rng_state = _rng_state_access(randn_like) if any(churn_steps) and len(set(keys)) > 1 else None
    outputs = [None] * len(branches)

    def step(x, i, key):
        gnet, w = branches_by_id[key[1]], key[0]
        denoise = guided_denoiser(net, gnet, labels, w, mode=mode, dtype=dtype, counter=counter)
        t_cur, t_next = levels[i]
        x_hat, t_hat = _churn(x, t_cur, steps, S_churn, S_min, S_max, S_noise, randn_like, round_sigma=round_sigma)
        x = _heun_step(denoise, x_hat, t_hat, t_next, correct=(i < steps - 1))
        if progress is not None:
            progress(dict(i=i, num_steps=steps, sigma=float(t_cur), sigma_hat=float(t_hat),
                          sigma_next=float(t_next), w=w, x=x))
        return x

    branches_by_id = {None: None}
    for gnet, _guidance in branches:
        branches_by_id[id(gnet)] = gnet

    # Depth first: follow the group of branches step by step; where it splits, keep the state (and
    # the generators' state, if churn draws) for the later children while the first one runs.
    if init_scale is not None and not (math.isfinite(init_scale) and init_scale > 0):
        raise UserError(f'init_scale must be a finite number > 0, got {init_scale!r}')
    start = noise.to(dtype) * (sigmas[0] if init_scale is None else init_scale)
    pending = [(start, 0, list(range(len(branches))), None)]
    while pending:
        x, i, members, state = pending.pop()
        if state is not None:
            rng_state.set(state)
        while i < steps:
            groups = {}
            for b in members:
                groups.setdefault(keys[b][i], []).append(b)
            if len(groups) > 1:
                if rng_state is None and any(churn_steps[i:]):
                    raise UserError('sampling branches that differ on churn steps needs per-seed generators '
                                    'whose state can be saved (seeds.StackedRandomGenerator.randn_like)')
                state = rng_state.get() if rng_state is not None else None
                later = list(groups.items())[1:]
                for key, group in reversed(later):
                    pending.append((x, i, group, state))  # resumed at step i with this group's key
                key, members = next(iter(groups.items()))
            else:
                (key, members), = groups.items()
            x = step(x, i, key)
            i += 1
        for b in members:
            outputs[b] = x.to(out_dtype)
    return outputs


def step_keys(branches, sigmas):
    """Per branch, the tuple of per-step keys (w, id of the guiding net or None where w == 1).

    Two branches compute the same state up to step i exactly when their keys agree on steps 0..i.
    Also checks that every guided branch has a guiding net.
    """
    keys = []
    for gnet, guidance in branches:
        guidance = as_schedule(guidance)
        if guidance.is_active and gnet is None:
            raise UserError(f'guidance ({guidance}) needs a guiding network (gnet)')
        keys.append(tuple((float(w), None if w == 1 else id(gnet)) for w in guidance.step_weights(sigmas)))
    return keys


def tree_evaluations(keys):
    """(evaluations made by the tree, evaluations of separate runs) per image, as EvalCounters.

    `keys` from `step_keys`. Each step costs one evaluation of each net it uses, two unless it is the
    last step (whose target noise level is 0 and which has no correction).
    """
    made, separate = EvalCounter(), EvalCounter()
    steps = len(keys[0]) if keys else 0
    for i in range(steps):
        cost = 2 if i < steps - 1 else 1
        nodes = {k[:i + 1] for k in keys}
        for node_set, counter in ((nodes, made), ([k[:i + 1] for k in keys], separate)):
            for node in node_set:
                counter.net += cost
                counter.gnet += cost if node[-1][1] is not None else 0
    return made, separate


class _RngStateAccess:
    def __init__(self, owner):
        self.get, self.set = owner.get_state, owner.set_state


def _rng_state_access(randn_like):
    owner = getattr(randn_like, '__self__', None)
    if owner is not None and hasattr(owner, 'get_state') and hasattr(owner, 'set_state'):
        return _RngStateAccess(owner)
    return None


def _churn(x, t_cur, steps, S_churn, S_min, S_max, S_noise, randn_like, round_sigma=None):
    """Raise the noise level to t_hat = (1+gamma) t_cur by adding fresh noise (Alg. 2, lines 4-6)."""
    if not (S_churn > 0 and S_min <= t_cur <= S_max):
        return x, t_cur
    gamma = min(S_churn / steps, math.sqrt(2) - 1)
    t_hat = t_cur + gamma * t_cur
    if round_sigma is not None:
        t_hat = round_sigma(t_hat)
    x_hat = x + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x)
    return x_hat, t_hat


def _heun_step(denoise, x_hat, t_hat, t_next, correct):
    """Euler step t_hat -> t_next, then the trapezoidal correction unless t_next is the final 0."""
    d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    if correct:
        d_next = (x_next - denoise(x_next, t_next)) / t_next
        x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
    return x_next

#----------------------------------------------------------------------------
# Helpers.

def _append_zero(t):
    return torch.cat([t, t.new_zeros([1])])


def _round_sigma(net, t):
    fn = getattr(net, 'round_sigma', None)
    return torch.as_tensor(fn(t) if fn is not None else t, dtype=t.dtype, device=t.device)


def as_schedule(guidance):
    """None -> no guidance, a number -> constant w, a GuidanceSchedule as is."""
    if guidance is None:
        return GuidanceSchedule.none()
    if isinstance(guidance, GuidanceSchedule):
        return guidance
    if isinstance(guidance, (int, float)):
        return GuidanceSchedule.constant(guidance)
    raise TypeError(f'guidance must be a GuidanceSchedule or a number, got {type(guidance).__name__}')


def _check_mode(mode):
    if mode not in MODES:
        raise UserError(f"sampler mode must be one of {MODES}, got {mode!r}")

#----------------------------------------------------------------------------
