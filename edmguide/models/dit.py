"""DiT's own sampler (Peebles & Xie 2023) with a guidance weight per step, w(sigma).

DiT samples with a respaced DDPM ancestral loop, not the EDM Heun ODE. This module reproduces that
loop as facebookresearch/DiT's `create_diffusion("250")` + `p_sample_loop` run it (facts in
shared/spec/dit.md), and decides per step whether to guide from the step's noise level:

- Training schedule: beta linear 1e-4 .. 0.02 over T = 1000 steps (float64), abar = cumprod(1 - beta).
- Respacing to 250 steps keeps t = round(k * 999 / 249); the kept steps get new betas
  beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (abar before the first kept step = 1), and every
  coefficient below is a float64 array built from beta' and gathered per step, then cast to float32.
- One step from x_t (the network always sees the ORIGINAL timestep t):
  x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps;  mean = c1 x0 + c2 x;
  log var = frac log beta' + (1 - frac) log posterior_var_clipped, frac = (v + 1) / 2;
  x <- mean + exp(log var / 2) z, with z drawn at every step but not added at t = 0.
- Guided steps run the doubled batch [x; x] with labels [y; NULL_CLASS] and use
  eps = eps_u + w (eps_c - eps_u) on the first 3 latent channels (DiT's `forward_with_cfg`; all
  channels with guide_channels='all'); the other eps channel and the variance values v are the
  conditional half's. Unguided steps (w = 1) evaluate the conditional batch only.

Which sigma a step has (the guidance interval is (sigma_lo, sigma_hi], open below, closed above):
- 'paper' (default): the guidance-interval paper's Appendix A, EDM's iDDPM levels u_j
  (C1 = 0.001, C2 = 0.008, M = 1000) with j = M - t. This reproduces the paper's "w = 2.5 on 75 of
  250 steps" for (0.34, 1.02].
- 'model': the model's own noise level sigma_t = sqrt((1 - abar_t) / abar_t), which guides 41 steps.
Under 'paper' the last step (t = 0) has sigma = u_M = 0; a range whose lower bound is 0 (CFG's
(0, inf] included) covers it, so constant CFG guides all 250 steps, as DiT does.

Noise: per seed (`seeds.StackedRandomGenerator`: every image draws its initial z and one z per
step from its own generator), or numerics='dit' (`sample_dit_reference`): DiT's sample.py stream,
one generator seeded with `seed`, z for the whole batch, then each step a draw of the DOUBLED batch
(2n rows, the first n used), also on unguided steps, so that with every step guided the stream is
DiT's own.

The network is any callable `net(x, t, y) -> out` with x (N, C, H, W) float32, t (N,) int64
original timesteps, y (N,) int64 labels (NULL_CLASS = unconditional) and out (N, 2C, H, W): eps
in the first C channels, the learned-range values v in the last C (`edmguide.models.dit_net`).
"""

import dataclasses
import math

import numpy as np
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule, Interval, check_weight
from edmguide.sampler.sampling import EvalCounter, walk_tree  # per image: `net` conditional (main), `gnet` unconditional (guide)

NUM_TRAIN_STEPS = 1000
NUM_STEPS = 250
NULL_CLASS = 1000
NUM_CLASSES = 1000
DIT_GUIDED_CHANNELS = 3       # forward_with_cfg guides eps channels 0..2 only
MAPPINGS = ('paper', 'model')
DEFAULT_MAPPING = 'paper'
# Table 1 of the guidance-interval paper, DiT-XL/2 at ImageNet-512 (shared/spec/dit.md).
CFG_GUIDANCE = 1.5                 # CFG at every step
DEFAULT_GUIDANCE = 2.5             # the FID interval
DEFAULT_SIGMA_RANGE = (0.34, 1.02)
FD_GUIDANCE = 4.0                  # the FD_DINOv2 interval
FD_SIGMA_RANGE = (0.45, 1.23)
EDM_IDDPM = dict(C1=0.001, C2=0.008, M=1000)

#----------------------------------------------------------------------------
# Schedules (float64 NumPy, as DiT builds them).

def train_betas(num_train_steps=NUM_TRAIN_STEPS):
    """DiT's linear beta schedule 1e-4 .. 0.02 (float64)."""
    return np.linspace(1e-4, 0.02, num_train_steps, dtype=np.float64)


def train_alphas_cumprod(num_train_steps=NUM_TRAIN_STEPS):
    return np.cumprod(1.0 - train_betas(num_train_steps))


def respaced_timesteps(num_steps=NUM_STEPS, num_train_steps=NUM_TRAIN_STEPS):
    """The original timesteps DiT keeps, ascending: round(k (T - 1) / (n - 1)), k = 0..n-1."""
    if not 2 <= num_steps <= num_train_steps:
        raise UserError(f'DiT step count must be 2..{num_train_steps}, got {num_steps}')
    stride = (num_train_steps - 1) / (num_steps - 1)
    steps, position = [], 0.0
    for _ in range(num_steps):  # DiT accumulates the stride; round() is Python's (half to even)
        steps.append(round(position))
        position += stride
    if len(set(steps)) != num_steps:
        raise UserError(f'cannot respace {num_train_steps} steps into {num_steps} distinct ones')
    return np.array(steps, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """Per respaced step i (ascending t), the float64 arrays of DiT's respaced diffusion."""
    timesteps: np.ndarray           # original t of step i
    betas: np.ndarray               # beta'_i
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    log_betas: np.ndarray


def coefficients(num_steps=NUM_STEPS):
    """DiT's respaced diffusion: new betas from the kept steps, then every coefficient in float64."""
    timesteps = respaced_timesteps(num_steps)
    abar_kept = train_alphas_cumprod()[timesteps]
    betas = 1.0 - abar_kept / np.concatenate([[1.0], abar_kept[:-1]])
    abar = np.cumprod(1.0 - betas)          # the respaced diffusion recomputes abar from its betas
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    return Coefficients(
        timesteps=timesteps, betas=betas,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
        posterior_log_variance_clipped=np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]])),
        log_betas=np.log(betas))


def model_sigma(t):
    """The model's own noise level at original timestep(s) t: sqrt((1 - abar_t) / abar_t)."""
    abar = train_alphas_cumprod()[np.asarray(t)]
    return np.sqrt((1.0 - abar) / abar)


def iddpm_levels(C1=0.001, C2=0.008, M=1000):
    """EDM's iDDPM levels u_0 > ... > u_M = 0 (float64, M + 1 values)."""
    def abar(j):
        return math.sin(0.5 * math.pi * j / (M * (C2 + 1))) ** 2
    u = np.zeros(M + 1, dtype=np.float64)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar(j - 1) / abar(j), C1) - 1)
    return u


def step_sigmas(mapping=DEFAULT_MAPPING, num_steps=NUM_STEPS):
    """The noise level of each sampling step, in sampling order (step 0 = t 999 .. step n-1 = t 0)."""
    t = respaced_timesteps(num_steps)[::-1]
    if mapping == 'model':
        return model_sigma(t)
    if mapping == 'paper':
        return iddpm_levels(**EDM_IDDPM)[EDM_IDDPM['M'] - t]
    raise UserError(f'DiT sigma mapping must be one of {", ".join(MAPPINGS)}, got {mapping!r}')

#----------------------------------------------------------------------------
# w(sigma) -> one weight per step.

def _covers(lo, hi, sigma):
    """(lo, hi] open below; a range starting at 0 also covers the level 0 itself (see the module doc)."""
    return lo < sigma <= hi or (lo == 0 and sigma == 0)


def step_weights(guidance, mapping=DEFAULT_MAPPING, num_steps=NUM_STEPS):
    """Guidance weight of each sampling step: `guidance` is None (none), a number (every step) or a
    GuidanceSchedule decided on the steps' sigmas under `mapping`."""
    if guidance is None:
        return (1.0,) * num_steps
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
        return (float(guidance),) * num_steps
    if not isinstance(guidance, GuidanceSchedule):
        raise TypeError(f'guidance must be None, a number or a GuidanceSchedule, got {type(guidance).__name__}')
    weights = []
    for sigma in step_sigmas(mapping, num_steps).tolist():
        w = 1.0
        for lo, hi, seg_w in guidance.segments:
            if _covers(lo, hi, sigma):
                w = seg_w
        weights.append(float(w))
    return tuple(weights)


def guided_steps(guidance, mapping=DEFAULT_MAPPING, num_steps=NUM_STEPS):
    """Indices (sampling order) of the steps with w != 1."""
    return [k for k, w in enumerate(step_weights(guidance, mapping, num_steps)) if w != 1]


def step_interval_schedule(weight, start, stop, mapping=DEFAULT_MAPPING, num_steps=NUM_STEPS):
    """Steps start..stop (inclusive, sampling order) as the sigma range (sigma_{stop+1}, sigma_start]
    of `mapping`. Where sigma_{stop+1} is the level 0 of the paper mapping's last step, the lower bound
    is the smallest positive float instead (0 itself would also cover that step); the last step alone
    under 'paper' is (0, smallest positive float]."""
    sigmas = step_sigmas(mapping, num_steps).tolist()
    if not 0 <= start <= stop <= num_steps - 1:
        raise UserError(f'guidance interval [{start}, {stop}] must satisfy 0 <= start <= stop <= {num_steps - 1} '
                        f'for DiT\'s {num_steps} steps')
    lo = sigmas[stop + 1] if stop + 1 < num_steps else 0.0
    if lo == 0 and stop + 1 < num_steps:
        lo = math.nextafter(0.0, 1.0)
    hi = sigmas[start] if sigmas[start] > 0 else math.nextafter(0.0, 1.0)  # [249, 249] under 'paper': (0, tiny]
    schedule = GuidanceSchedule.sigma_range(weight, lo, hi)
    assert guided_steps(schedule, mapping, num_steps) == list(range(start, stop + 1)) or weight == 1
    return schedule


def dit_guidance(weight=DEFAULT_GUIDANCE, interval=None, *, mapping=DEFAULT_MAPPING, num_steps=NUM_STEPS):
    """w(sigma) for DiT from a weight and an `Interval` (step indices [start, stop], a noise range
    (lo, hi] under `mapping`, or every step); None: the paper's FID interval (0.34, 1.02].
    Weight 1 (or None) is no guidance. A range that guides no step is refused, naming the levels,
    because the run would silently be unguided."""
    step_sigmas(mapping, num_steps)  # checks the mapping name
    if weight is None or weight == 1:
        return GuidanceSchedule.none()
    interval = interval if interval is not None else DEFAULT_INTERVAL
    if interval.kind == 'steps':
        return step_interval_schedule(weight, interval.steps[0], interval.steps[1], mapping, num_steps)
    lo, hi = interval.sigma if interval.kind == 'sigma' else (0.0, math.inf)
    schedule = GuidanceSchedule.sigma_range(weight, lo, hi)
    if not guided_steps(schedule, mapping, num_steps):
        levels = step_sigmas(mapping, num_steps)
        raise UserError(f'the guidance range ({lo:g}, {hi:g}] guides none of DiT\'s {num_steps} steps under the '
                        f'{mapping!r} sigma mapping (its levels run from {levels[0]:.6g} down to {levels[-1]:.6g}; '
                        f'the nearest are {_nearest_levels(levels, lo, hi)})')
    return schedule


def _nearest_levels(levels, lo, hi):
    below = [s for s in levels if s <= lo]
    above = [s for s in levels if s > hi]
    parts = []
    if above:
        parts.append(f'{min(above):.6g} above')
    if below:
        parts.append(f'{max(below):.6g} below')
    return ' and '.join(parts) or 'none'


def mapping_table(ranges=(DEFAULT_SIGMA_RANGE, FD_SIGMA_RANGE), num_steps=NUM_STEPS):
    """Per sigma range and mapping: (number of guided steps, first and last step index, their t)."""
    t = respaced_timesteps(num_steps)[::-1]
    rows = []
    for lo, hi in ranges:
        for mapping in MAPPINGS:
            steps = guided_steps(GuidanceSchedule.sigma_range(2.0, lo, hi), mapping, num_steps)
            rows.append(dict(range=(lo, hi), mapping=mapping, count=len(steps), steps=(steps[0], steps[-1]),
                             t=(int(t[steps[-1]]), int(t[steps[0]]))))
    return rows

#----------------------------------------------------------------------------
# Noise sources.

class DiTStream:
    """DiT sample.py's noise: one generator seeded with `seed` on `device`; every per-step draw is a
    doubled batch (2n rows) of which the first n are used."""

    def __init__(self, device, seed):
        self.generator = torch.Generator(torch.device(device)).manual_seed(int(seed))

    def initial(self, shape, device):
        return torch.randn(list(shape), generator=self.generator, device=device)

    def randn_like(self, x):
        doubled = [2 * x.shape[0]] + list(x.shape[1:])
        return torch.randn(doubled, generator=self.generator, dtype=x.dtype, device=x.device)[:x.shape[0]]

    def get_state(self):
        return self.generator.get_state()

    def set_state(self, state):
        self.generator.set_state(state)

#----------------------------------------------------------------------------
# The sampler.

def _gather(array, i, device):
    """Coefficient i of a float64 array as a float32 0-d tensor (DiT gathers float64, casts to float32)."""
    return torch.tensor(float(array[i]), dtype=torch.float64).to(torch.float32).to(device)


def _check_guide_channels(guide_channels, channels):
    if guide_channels == 'all':
        return channels
    try:
        count = int(guide_channels)
    except (TypeError, ValueError):
        count = None
    if count is None or not 1 <= count <= channels:
        raise UserError(f"DiT guide_channels must be 'all' or a count 1..{channels}, got {guide_channels!r}")
    return count


def model_output(net, x, t, y, w, guide_channels, counter):
    """(eps, v) at step t with weight w: the conditional net alone where w == 1, else DiT's
    doubled-batch CFG on the first `guide_channels` eps channels."""
    channels = x.shape[1]
    tt = torch.full([x.shape[0]], int(t), dtype=torch.int64, device=x.device)
    if w == 1:
        counter.net += 1
        out = net(x, tt, y)
        return out[:, :channels], out[:, channels:]
    counter.net += 1
    counter.gnet += 1
    n = x.shape[0]
    null = torch.full_like(y, NULL_CLASS)
    out = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]))
    cond, uncond = out[:n], out[n:]
    guided = uncond[:, :guide_channels] + w * (cond[:, :guide_channels] - uncond[:, :guide_channels])
    eps = torch.cat([guided, cond[:, guide_channels:channels]], dim=1)
    return eps, cond[:, channels:]


def ddpm_step(coef, i, x, eps, v, z):
    """One step of DiT's p_sample at respaced index i (ascending t): float32 with coefficients gathered
    from float64, learned-range variance, no clipping of x0, no noise added at i = 0."""
    dev = x.device
    min_log = _gather(coef.posterior_log_variance_clipped, i, dev)
    max_log = _gather(coef.log_betas, i, dev)
    frac = (v + 1) / 2
    log_variance = frac * max_log + (1 - frac) * min_log
    x0 = _gather(coef.sqrt_recip_alphas_cumprod, i, dev) * x - _gather(coef.sqrt_recipm1_alphas_cumprod, i, dev) * eps
    mean = _gather(coef.posterior_mean_coef1, i, dev) * x0 + _gather(coef.posterior_mean_coef2, i, dev) * x
    nonzero = torch.tensor(float(i != 0), dtype=torch.float32, device=dev)
    return mean + nonzero * torch.exp(0.5 * log_variance) * z


def sample_dit_tree(net, noise, labels, guidances, *, noise_source, mapping=DEFAULT_MAPPING, guide_channels=3,
                    num_steps=NUM_STEPS, counter=None, progress=None):
    """DiT's loop for several guidance settings of the same start noise and labels at once.

    net:          callable net(x, t, y) -> (N, 2C, H, W) (module doc).
    noise:        initial latents z (N, C, H, W), float32.
    labels:       class indices (N,) int64.
    guidances:    one per branch: None, a number (every step) or a GuidanceSchedule (see `step_weights`).
    noise_source: object with randn_like(x), get_state() and set_state(): a
                  `seeds.StackedRandomGenerator` (per seed) or a `DiTStream` (sample.py's stream); it
                  is called once per step (including the last, whose draw is not added).
    Returns one float32 latent tensor per branch, each identical bit for bit to running that branch
    alone. Branches guiding the same steps with the same weights up to step k share those steps;
    where they split, the noise source's state is saved and restored for every child, so each
    branch replays the per-step noise it would have drawn alone. `counter` receives the evaluations
    actually made (per image); `progress(dict(i, num_steps, t, w))` is called per computed step.
    """
    if not guidances:
        raise ValueError('sample_dit_tree needs at least one branch')
    counter = counter if counter is not None else EvalCounter()
    coef = coefficients(num_steps)
    guide_channels = _check_guide_channels(guide_channels, noise.shape[1])
    keys = [step_weights(g, mapping, num_steps) for g in guidances]
    labels = torch.as_tensor(labels, dtype=torch.int64, device=noise.device)

    def step(x, k, w):
        i = num_steps - 1 - k  # respaced index, counted down from the noisiest step
        t = int(coef.timesteps[i])
        eps, v = model_output(net, x, t, labels, w, guide_channels, counter)
        z = noise_source.randn_like(x)
        x = ddpm_step(coef, i, x, eps.to(torch.float32), v.to(torch.float32), z)
        if progress is not None:
            progress(dict(i=k, num_steps=num_steps, t=t, w=w))
        return x

    return walk_tree(noise.to(torch.float32), keys, step, get_state=noise_source.get_state,
                     set_state=noise_source.set_state)


def sample_dit(net, noise, labels, guidance=None, *, noise_source, **kwargs):
    """`sample_dit_tree` with one branch."""
    return sample_dit_tree(net, noise, labels, [guidance], noise_source=noise_source, **kwargs)[0]


def sample_dit_reference(net, classes, seed, guidance=None, *, device='cpu', **kwargs):
    """DiT sample.py's numerics: z = randn(n, C, H, W) from a generator seeded with `seed` on
    `device`, then one doubled-batch draw per step. Returns the latents (n, C, H, W)."""
    classes = check_classes(classes, getattr(net, 'num_classes', NUM_CLASSES))
    stream = DiTStream(device, seed)
    size = int(net.input_size)
    noise = stream.initial([len(classes), int(net.in_channels), size, size], device)
    labels = torch.tensor(classes, dtype=torch.int64, device=device)
    return sample_dit(net, noise, labels, guidance, noise_source=stream, **kwargs)


def tree_evaluations(guidances, mapping=DEFAULT_MAPPING, num_steps=NUM_STEPS):
    """(evaluations the tree makes, evaluations of separate runs) per image, as EvalCounters."""
    keys = [step_weights(g, mapping, num_steps) for g in guidances]
    made, separate = EvalCounter(), EvalCounter()
    for k in range(num_steps):
        for nodes, counter in (({key[:k + 1] for key in keys}, made), ([key[:k + 1] for key in keys], separate)):
            for node in nodes:
                counter.net += 1
                counter.gnet += node[-1] != 1
    return made, separate


def check_classes(classes, num_classes=NUM_CLASSES):
    """Class indices as a list of ints in 0..num_classes-1, or one `error:` line."""
    classes = [classes] if isinstance(classes, (int, np.integer)) else list(classes)
    if not classes:
        raise UserError('DiT needs at least one class')
    for c in classes:
        if isinstance(c, bool) or int(c) != c or not 0 <= int(c) < num_classes:
            raise UserError(f'class {c} is outside 0..{num_classes - 1} (DiT\'s ImageNet classes)')
    return [int(c) for c in classes]

#----------------------------------------------------------------------------
# The generation iterator's view of a DiT (edmguide.jobs.generation.generate_batches, dump_zip).

class GenerationNet:
    """A DiT network presented to `edmguide.jobs.generation`: img_channels, img_resolution, label_dim
    (its per-seed noise and labels are drawn like EDM2's), called as the DiT network."""

    def __init__(self, net):
        self.net = net
        self.img_channels = int(net.in_channels)
        self.img_resolution = int(net.input_size)
        self.label_dim = int(getattr(net, 'num_classes', NUM_CLASSES))

    def __call__(self, x, t, y):
        return self.net(x, t, y)


class GenerationDecoder:
    """The DiT VAE (decode -> uint8 NHWC) as the generation iterator's encoder (decode -> uint8 NCHW)."""

    def __init__(self, vae):
        self.vae = vae

    def decode(self, latents):
        images = torch.as_tensor(self.vae.decode(latents))
        return images.permute(0, 3, 1, 2).to(latents.device)


NUMERICS = ('per-seed', 'dit')
GUIDE_CHANNELS = ('3', 'all')
DEFAULT_INTERVAL = Interval.of_sigma(*DEFAULT_SIGMA_RANGE)  # DiT commands' default: the paper's FID interval



@dataclasses.dataclass(frozen=True)
class DiTOptions:
    """Every option of DiT's sampler, checked when made (one `error:` line if not): the sigma
    `mapping` that decides which steps a noise range guides, the eps channels guided
    (`guide_channels` 3 = DiT's forward_with_cfg, 'all'), the number of respaced steps, the noise
    `numerics` ('per-seed': one generator per seed; 'dit': sample.py's one stream) and `mode`, how
    the generation iterator draws labels for seeds without a class (EDM2's way)."""
    mapping: str = DEFAULT_MAPPING
    guide_channels: object = 3
    num_steps: int = NUM_STEPS
    numerics: str = 'per-seed'
    mode: str = 'edm2'

    def __post_init__(self):
        if self.mapping not in MAPPINGS:
            raise UserError(f'--dit_mapping={self.mapping!r}: choose one of {", ".join(MAPPINGS)}')
        if str(self.guide_channels) not in GUIDE_CHANNELS:
            raise UserError(f'--dit_guide_channels={self.guide_channels!r}: choose one of {", ".join(GUIDE_CHANNELS)}')
        object.__setattr__(self, 'guide_channels', 'all' if str(self.guide_channels) == 'all' else DIT_GUIDED_CHANNELS)
        if isinstance(self.num_steps, bool) or int(self.num_steps) != self.num_steps or not 1 <= self.num_steps <= NUM_TRAIN_STEPS:
            raise UserError(f'DiT steps must be an integer in 1..{NUM_TRAIN_STEPS}, got {self.num_steps!r}')
        object.__setattr__(self, 'num_steps', int(self.num_steps))
        if self.numerics not in NUMERICS:
            raise UserError(f'--numerics={self.numerics!r} with --dit: choose one of {", ".join(NUMERICS)}')
        if self.mode != 'edm2':
            raise UserError(f'DiT draws labels as EDM2 does (mode \'edm2\'), got mode {self.mode!r}')

    def replace(self, **changes):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def as_record(self):
        """JSON-able dict of every field, for settings files a resumed run is checked against."""
        return dict(sampler='dit-ddpm', mapping=self.mapping, guide_channels=str(self.guide_channels),
                    num_steps=self.num_steps, numerics=self.numerics, mode=self.mode)

    def schedule(self, net=None, *, device=None):
        """The `DiTSchedule` of these options (`net` and `device` are accepted as
        `schedule.SamplerOptions.schedule` takes them; DiT's levels depend on neither)."""
        del net
        return DiTSchedule(self, device=device)


class DiTSchedule:
    """DiT's sampler bound to its options, duck-typed like `edmguide.sampler.schedule.Schedule` for the
    generation iterator, the zips and the sweep: `options`, `levels` (each step's sigma under the
    mapping, in sampling order), `num_steps`, `guidance(weight, interval)`, `weights(guidance)`,
    `guided_steps(guidance)`, `check_branches(branches)`, `tree_evaluations(branches)`,
    `rounded_bounds_note(guidance, interval)` and
    `sample_tree(net, noise, labels, branches, randn_like=, counter=)`."""

    def __init__(self, options=None, *, device=None):
        self.options = options if options is not None else DiTOptions()
        self.device = device
        self.levels = tuple(float(s) for s in step_sigmas(self.options.mapping, self.options.num_steps).tolist())

    @property
    def num_steps(self):
        return self.options.num_steps

    def guidance(self, weight, interval=None, *, what=None):
        """The GuidanceSchedule of `weight` on `interval` (an `Interval`; None = every step) under this
        schedule's mapping. Weight None or 1 is no guidance; a weight that is not a finite float32
        number and a range that guides no step are refused with one line."""
        if weight is not None and weight != 1:
            check_weight(weight, what or '--guidance')
        return dit_guidance(weight, interval if interval is not None else Interval(), mapping=self.options.mapping,
                            num_steps=self.num_steps)

    def weights(self, guidance):
        """Per-step weights (a tuple of num_steps floats) of a GuidanceSchedule, a number or None."""
        return step_weights(guidance, self.options.mapping, self.num_steps)

    def guided_steps(self, guidance):
        """(first, last) guided step, or None if it guides none (as `Schedule.guided_steps`)."""
        found = self.guided_step_list(guidance)
        return (found[0], found[-1]) if found else None

    def guided_step_list(self, guidance):
        """Indices of every guided step (sampling order)."""
        return guided_steps(guidance, self.options.mapping, self.num_steps)

    def check_branches(self, branches):
        """Check every (gnet, guidance) branch before sampling (gnet is unused: DiT guides with its
        own null class); returns the per-branch weights."""
        if not branches:
            raise ValueError('DiT sampling needs at least one branch')
        keys = [self.weights(g) for _, g in branches]
        for weights in keys:
            for w in set(weights):
                if w != 1:
                    check_weight(w, '--guidance')
        return keys

    def tree_evaluations(self, branches):
        """(evaluations the tree makes, evaluations of separate runs) per image of the (gnet,
        guidance) branches, as EvalCounters (`tree_evaluations`: one conditional evaluation per step,
        one unconditional per guided step, a prefix shared while the branches guide the same steps
        counted once), as `Schedule.tree_evaluations` counts the Heun sampler's."""
        self.check_branches(branches)
        return tree_evaluations([g for _, g in branches], self.options.mapping, self.num_steps)

    def rounded_bounds_note(self, guidance, interval):
        """None: DiT's noise ranges are decided on the mapping's levels as given (no rounding note)."""
        del guidance, interval
        return None

    def sample_tree(self, net, noise, labels, branches, *, randn_like, counter=None):
        """`sample_dit_tree` as the generation iterator calls a schedule's sampler: one-hot labels,
        (gnet, guidance) branches and the per-seed generators' bound `randn_like` (its object is the
        noise source, whose state is replayed where branches split)."""
        if self.options.numerics != 'per-seed':
            raise UserError('the generation iterator samples per seed; numerics \'dit\' is sample_dit_reference\'s')
        source = randn_like.__self__
        indices = labels.argmax(dim=1) if labels.ndim == 2 else labels
        return sample_dit_tree(net, noise, indices, [g for _, g in branches], noise_source=source,
                               mapping=self.options.mapping, guide_channels=self.options.guide_channels,
                               num_steps=self.num_steps, counter=counter)

    def describe_levels(self, limit=8):
        levels = [f'{t:.4g}' for t in self.levels]
        if len(levels) > limit:
            levels = levels[:limit // 2] + ['...'] + levels[-(limit // 2):]
        return ', '.join(levels)

#----------------------------------------------------------------------------
