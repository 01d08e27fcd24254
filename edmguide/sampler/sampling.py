"""Heun sampler for the EDM probability-flow ODE (Karras et al. 2022, Alg. 2) with guidance.

Small pieces: `schedule.SamplerOptions` holds the options and builds the `Schedule` (the noise
levels, with every guidance interval resolved on them), `guided_denoiser` combines main and guiding
net for a weight w, and `sample_tree` loops over the schedule it is given with each branch's
per-step weights, computing the steps that branches share once; `sample` is its one-branch case.

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

from edmguide.util.errors import UserError
from edmguide.sampler.schedule import SamplerOptions, Schedule, check_sampler_options, noise_levels, round_sigma

__all__ = ['EvalCounter', 'SamplerOptions', 'Schedule', 'check_sampler_options', 'guided_denoiser', 'make_schedule',
           'noise_levels', 'sample', 'sample_tree', 'step_keys', 'tree_evaluations']


def make_schedule(net, device=None, *, schedule=None, options=None, sigmas=None, **option_fields):
    """The `Schedule` a sampler call runs on: `schedule` as given, else `options` (a
    `SamplerOptions`, or its fields as keywords) applied to `net`, or to an explicit `sigmas`
    tensor (N+1 levels ending in 0, used as is)."""
    if schedule is not None:
        if options is not None or sigmas is not None or option_fields:
            raise TypeError('give the sampler either a schedule or options, not both')
        return schedule
    if options is None:
        options = SamplerOptions(**option_fields)
    elif option_fields:
        raise TypeError(f'give the sampler either options or option keywords, not both ({sorted(option_fields)})')
    if sigmas is not None:
        return Schedule(torch.as_tensor(sigmas).to(dtype=options.working_dtype, device=device), options, net=net)
    return options.schedule(net, device=device)

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

def sample(net, noise, labels=None, *, gnet=None, guidance=None, schedule=None, options=None, sigmas=None,
           randn_like=torch.randn_like, counter=None, progress=None, **option_fields):
    """Heun's 2nd-order method from noise to an image (no correction on the last step).

    net, gnet:  denoisers D(x, sigma, class_labels); gnet is the unconditional net (CFG) or a weaker
                net (autoguidance) -- the sampler does not care which.
    guidance:   GuidanceSchedule, a number (constant w), None (no guidance), or the per-step weights
                (a sequence of N numbers, e.g. `schedule.weights(...)`). Step i is guided with
                w(t_i), used for both of its evaluations.
    schedule:   the `Schedule` to run on; or `options` (`SamplerOptions`, or its fields as keywords:
                num_steps=32, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise, mode='edm2',
                dtype) applied to `net`, or to an explicit `sigmas` tensor ending in 0.
                'edm2' computes in float32 and returns it; 'gi' computes in float64 and returns float32.
    randn_like: churn noise source, e.g. StackedRandomGenerator.randn_like; only called on steps
                with S_churn > 0 and S_min <= t_i <= S_max.
    counter:    EvalCounter to add this call's evaluations to.
    progress:   callable receiving a dict (i, num_steps, sigma, sigma_hat, sigma_next, w, x) per step.

    This is `sample_tree` with one branch.
    """
    schedule = make_schedule(net, noise.device, schedule=schedule, options=options, sigmas=sigmas, **option_fields)
    return sample_tree(net, noise, labels, [(gnet, guidance)], schedule,
                       randn_like=randn_like, counter=counter, progress=progress)[0]


def sample_tree(net, noise, labels, branches, schedule=None, *, options=None, randn_like=torch.randn_like,
                counter=None, progress=None, **option_fields):
    """`sample` for several guidance settings of the same noise and labels at once.

    `branches`: list of (gnet, guidance) pairs, guidance as `sample` takes it; `schedule` (or
    `options`) as in `sample`. Returns one output per branch, each bit-identical to
    `sample(net, noise, labels, gnet=gnet, guidance=guidance, schedule=schedule)`. Branches whose
    per-step (guiding net, weight) sequences agree up to some step compute those steps once: the
    branches form a tree (`step_keys`) that is walked depth first, so at most one state per tree
    level is alive. `counter` receives the evaluations actually made; `tree_evaluations` gives
    them, and those of separate runs, without sampling.

    Churn draws random numbers, so branches that split after a churn step would see different noise
    than separate runs. Where the tree branches with churn active, `randn_like` must be the bound
    method of an object with `get_state()`/`set_state()` (`seeds.StackedRandomGenerator`): its state
    is saved at each branch point and restored for every child, which keeps the results identical.
    Any other noise source is refused there with a UserError. `progress` is `sample`'s per-step
    callback, called for every step computed.
    """
    schedule = make_schedule(net, noise.device, schedule=schedule, options=options, **option_fields)
    opts = schedule.options
    mode, dtype, out_dtype = opts.mode, opts.working_dtype, opts.result_dtype
    counter = counter if counter is not None else EvalCounter()
    if not branches:
        raise ValueError('sample_tree needs at least one branch')
    sigmas = schedule.sigmas.to(dtype=dtype, device=noise.device)
    steps = len(sigmas) - 1
    keys = step_keys(branches, schedule)  # weights decided on the host once, not with a sync per step
    rounding = (lambda t: round_sigma(net, t)) if mode == 'gi' else None
    levels = list(zip(sigmas[:-1], sigmas[1:]))
    S_churn, S_min, S_max, S_noise = opts.S_churn, opts.S_min, opts.S_max, opts.S_noise
    churn_steps = [bool(S_churn > 0 and S_min <= t_cur <= S_max) for t_cur, _ in levels]  # as upstream: tensor comparisons
    rng_state = _rng_state_access(randn_like) if any(churn_steps) and len(set(keys)) > 1 else None

    def step(x, i, key):
        gnet, w = branches_by_id[key[1]], key[0]
        denoise = guided_denoiser(net, gnet, labels, w, mode=mode, dtype=dtype, counter=counter)
        t_cur, t_next = levels[i]
        x_hat, t_hat = _churn(x, t_cur, steps, S_churn, S_min, S_max, S_noise, randn_like, round_sigma=rounding,
                              active=churn_steps[i])
        x = _heun_step(denoise, x_hat, t_hat, t_next, correct=(i < steps - 1))
        if progress is not None:
            progress(dict(i=i, num_steps=steps, sigma=float(t_cur), sigma_hat=float(t_hat),
                          sigma_next=float(t_next), w=w, x=x))
        return x

    branches_by_id = {None: None}
    for gnet, _guidance in branches:
        branches_by_id[id(gnet)] = gnet

    def check_split(i):
        if rng_state is None and any(churn_steps[i:]):
            raise UserError('sampling branches that differ on churn steps needs per-seed generators '
                            'whose state can be saved (seeds.StackedRandomGenerator.randn_like)')

    start = noise.to(dtype) * (sigmas[0] if opts.init_noise == 'edm' else schedule.vp_start_scale())
    outputs = walk_tree(start, keys, step, check_split=check_split,
                        get_state=rng_state.get if rng_state is not None else None,
                        set_state=rng_state.set if rng_state is not None else None)
    return [x.to(out_dtype) for x in outputs]


def walk_tree(start, keys, step, *, check_split=None, get_state=None, set_state=None):
    """Walk branches that share prefixes depth first; returns every branch's final state, in order.

    `keys[b][i]` is branch b's key at step i: branches whose keys agree on steps 0..i share one
    state there, computed once by `step(x, i, key)`. Where a group splits, `check_split(i)` may
    refuse, and `get_state()` saves the random source's state for the later children, which
    `set_state(state)` restores before each resumes, so every branch equals its own run. At most
    one state per tree level is alive. Used by the Heun sampler (`sample_tree`) and DiT's loop.
    """
    num_steps = len(keys[0])
    outputs = [None] * len(keys)
    pending = [(start, 0, list(range(len(keys))), None)]
    while pending:
        x, i, members, state = pending.pop()
        if state is not None:
            set_state(state)
        while i < num_steps:
            groups = {}
            for b in members:
                groups.setdefault(keys[b][i], []).append(b)
            if len(groups) > 1:
                if check_split is not None:
                    check_split(i)
                state = get_state() if get_state is not None else None
                for key, group in reversed(list(groups.items())[1:]):
                    pending.append((x, i, group, state))  # resumed at step i with this group's key
            key, members = next(iter(groups.items()))
            x = step(x, i, key)
            i += 1
        for b in members:
            outputs[b] = x
    return outputs


def branch_weights(guidance, schedule):
    """Per-step weights of one branch's guidance (see `sample`), checked against the schedule."""
    if isinstance(guidance, (list, tuple)):
        if len(guidance) != schedule.num_steps:
            raise ValueError(f'{len(guidance)} per-step weights for a {schedule.num_steps}-step schedule')
        return tuple(float(w) for w in guidance)
    return schedule.weights(guidance)


def step_keys(branches, schedule):
    """Per branch, the tuple of per-step keys (w, id of the guiding net or None where w == 1).

    Two branches compute the same state up to step i exactly when their keys agree on steps 0..i.
    Also checks that every guided branch has a guiding net.
    """
    keys = []
    for gnet, guidance in branches:
        weights = branch_weights(guidance, schedule)
        if gnet is None and any(w != 1 for w in weights):
            raise UserError(f'guidance ({guidance}) needs a guiding network (gnet)')
        for w in weights:
            if w != 1:
                schedule.check_weight(w)
        keys.append(tuple((w, None if w == 1 else id(gnet)) for w in weights))
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


def _churn(x, t_cur, steps, S_churn, S_min, S_max, S_noise, randn_like, round_sigma=None, active=True):
    """Raise the noise level to t_hat = (1+gamma) t_cur by adding fresh noise (Alg. 2, lines 4-6)."""
    if not active:
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
