"""Stable Diffusion XL through diffusers: the project's sampler and w(sigma) on a discrete-VP UNet.

A diffusers `UNet2DConditionModel` trained on a discrete variance-preserving schedule (SD-XL:
scaled-linear betas 0.00085..0.012 over 1000 steps) becomes an EDM denoiser D(x; sigma):

- the training noise levels are sigma_i = sqrt((1 - abar_i) / abar_i), i = 0..999 (increasing);
- a requested sigma is quantised to the nearest level *in sigma* (|sigma - sigma_i| smallest, as
  Stability's generative-models `DiscreteDenoiser` does), and everything below uses that level s;
- the UNet sees x / sqrt(s^2 + 1) and the timestep i (the index of the level);
- epsilon prediction: D = x - s * eps;  v prediction: D = x / (s^2 + 1) - s / sqrt(s^2 + 1) * v.

`BoundDenoiser` binds one prompt's conditioning (text embeddings, pooled embedding, size/crop ids)
so the result is a plain D(x, sigma, labels) with labels unused: `edmguide.sampler.sampling.sample` runs it
unchanged, with the unconditional (negative-prompt) binding as the guiding net, evaluated only
where w != 1.

Starting noise: generative-models' `HeunEDMSampler` (the paper's SD-XL images) starts from
sqrt(1 + sigma_0^2) * noise (the standard deviation of x0 + sigma_0 * eps for data of unit
variance); EDM starts from sigma_0 * noise. The sampler option `init_noise` names both ('sgm', the
default here, and 'edm').

Negative prompt: an empty negative prompt gives all-zero text and pooled embeddings when the
folder's model_index.json says `force_zeros_for_empty_prompt` (true for SD-XL base) -- what
diffusers' SD-XL pipeline does when no negative prompt is passed ('zeros', the default). With
empty_negative='encode' it is run through the encoders like any other prompt, as diffusers does
for an explicit `negative_prompt=""`. A non-empty one always gives the encoders' outputs.

Loading without `accelerate`: diffusers would print a multi-line warning and fall back to
`low_cpu_mem_usage=False`; that setting is passed directly, so nothing is printed.

diffusers and transformers are imported inside functions only: the EDM2 paths never need them.
"""

import dataclasses
import json
import os

import torch

from edmguide.util.errors import UserError

# The paper's SD-XL sampler (shared/spec/paper-settings.md): 32 Heun steps, sigma 14.61 -> 0.03,
# rho = 3; interval (0.28, 5.42] = steps 10..25 of that schedule, w = 16.
DEFAULTS = dict(num_steps=32, sigma_min=0.03, sigma_max=14.61, rho=3)  # the fields of `default_options()`
DEFAULT_GUIDANCE = 16.0
DEFAULT_SIGMA_RANGE = (0.28, 5.42)
DEFAULT_INTERVAL = (10, 25)
# The starting state: 'sgm' = sqrt(1 + sigma_0^2) * noise (generative-models' HeunEDMSampler, the
# paper's SD-XL sampler), 'edm' = sigma_0 * noise (EDM, this project's EDM2 sampler).
DEFAULT_INIT_NOISE = 'sgm'
# An empty negative prompt: 'zeros' (when the model says force_zeros_for_empty_prompt; diffusers with
# no negative prompt) or 'encode' (the encoders' output for '', diffusers with negative_prompt='').
EMPTY_NEGATIVE = ('zeros', 'encode')

#----------------------------------------------------------------------------
# The discrete VP schedule.

def training_sigmas(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear'):
    """The model's training noise levels sigma_0 < ... < sigma_{T-1} (float64)."""
    if beta_schedule == 'scaled_linear':
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == 'linear':
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise UserError(f'scheduler beta_schedule {beta_schedule!r}: only scaled_linear and linear are supported')
    alphas_bar = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_bar) / alphas_bar).sqrt()


@dataclasses.dataclass
class Condition:
    """One prompt's conditioning for the SD-XL UNet (batch dimension 1, broadcast to the batch)."""
    embeds: torch.Tensor       # [1, tokens, dim_1 + dim_2]
    pooled: torch.Tensor       # [1, pooled_dim]
    time_ids: torch.Tensor     # [1, 6] = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)


class SDXLDenoiser:
    """EDM denoiser D(x, sigma, cond) around a discrete-VP diffusers UNet (see the module docstring)."""

    def __init__(self, unet, prediction_type='epsilon', sigmas=None):
        if prediction_type not in ('epsilon', 'v_prediction'):
            raise UserError(f'scheduler prediction_type {prediction_type!r}: only epsilon and v_prediction are supported')
        self.unet = unet
        self.prediction_type = prediction_type
        self.sigmas = (training_sigmas() if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)).cpu()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        self.img_channels = unet.config.in_channels
        self.img_resolution = unet.config.sample_size

    def sigma_index(self, sigma):
        """Index of the nearest training level (nearest in sigma), same shape as `sigma`."""
        sigma = torch.as_tensor(sigma)
        flat = sigma.detach().to('cpu', torch.float64).reshape(-1)
        idx = (flat[None, :] - self.sigmas[:, None]).abs().argmin(dim=0)
        return idx.reshape(sigma.shape)

    def round_sigma(self, sigma):
        """`sigma` quantised to the nearest training level (float64, on the input's device)."""
        sigma = torch.as_tensor(sigma)
        return self.sigmas[self.sigma_index(sigma)].to(sigma.device)

    def __call__(self, x, sigma, cond):
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma).reshape(-1)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        idx = self.sigma_index(sigma)
        s = self.sigmas[idx].to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
        c_in = 1 / (s ** 2 + 1).sqrt()
        dtype = self.unet.dtype
        out = self.unet((x * c_in).to(dtype), idx.to(x.device),
                        encoder_hidden_states=_batch(cond.embeds, batch).to(dtype),
                        added_cond_kwargs=dict(text_embeds=_batch(cond.pooled, batch).to(dtype),
                                               time_ids=_batch(cond.time_ids, batch).to(dtype)),
                        return_dict=False)[0].to(x.dtype)
        if self.prediction_type == 'epsilon':
            return x - s * out
        return x / (s ** 2 + 1) - s / (s ** 2 + 1).sqrt() * out


class BoundDenoiser:
    """D(x, sigma, labels) with one conditioning bound; `labels` must be None (the sampler's default)."""

    def __init__(self, denoiser, cond):
        self.denoiser, self.cond = denoiser, cond
        self.sigma_min, self.sigma_max = denoiser.sigma_min, denoiser.sigma_max
        self.round_sigma = denoiser.round_sigma
        self.img_channels, self.img_resolution = denoiser.img_channels, denoiser.img_resolution

    def __call__(self, x, sigma, labels=None):
        if labels is not None:
            raise ValueError('SD-XL denoisers take their conditioning from the bound prompt, not labels')
        return self.denoiser(x, sigma, self.cond)


def _batch(t, batch):
    return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t

#----------------------------------------------------------------------------
# The model: loading, prompts, decoding.

SUBFOLDERS = dict(unet='unet', vae='vae', text_encoder='text_encoder', text_encoder_2='text_encoder_2',
                  tokenizer='tokenizer', tokenizer_2='tokenizer_2')


@dataclasses.dataclass
class SDXLModel:
    denoiser: SDXLDenoiser
    vae: object
    text_encoder: object
    text_encoder_2: object
    tokenizer: object
    tokenizer_2: object
    device: torch.device
    force_zeros_for_empty_prompt: bool = True

    @property
    def vae_scale_factor(self):
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self):
        """Image size in pixels (the UNet's latent sample size times the VAE's factor)."""
        return self.denoiser.img_resolution * self.vae_scale_factor


def load_sdxl(model, device=None, dtype=None):
    """SD-XL components from a diffusers model id or local folder (diffusers' cache; offline when
    cached, or with HF_HUB_OFFLINE=1). fp16 on CUDA, float32 elsewhere, unless `dtype` is given.
    The VAE is always float32 (SD-XL's VAE overflows in fp16; diffusers upcasts it too, `force_upcast`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = dtype or (torch.float16 if device.type == 'cuda' else torch.float32)
    classes = dict(unet=UNet2DConditionModel, vae=AutoencoderKL, text_encoder=CLIPTextModel,
                   text_encoder_2=CLIPTextModelWithProjection, tokenizer=CLIPTokenizer, tokenizer_2=CLIPTokenizer)
    parts = {}
    for name, cls in classes.items():
        kwargs = {} if name.startswith('tokenizer') else dict(torch_dtype=torch.float32 if name == 'vae' else dtype)
        if name in ('unet', 'vae') and not _accelerate_available():
            kwargs['low_cpu_mem_usage'] = False  # what diffusers falls back to, without its multi-line warning
        try:
            parts[name] = cls.from_pretrained(model, subfolder=SUBFOLDERS[name], **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f'--sdxl={model!r}: cannot load {SUBFOLDERS[name]} ({first})') from None
    for name in ('unet', 'vae', 'text_encoder', 'text_encoder_2'):
        parts[name] = parts[name].to(device).eval().requires_grad_(False)
    sched = _load_config(model, 'scheduler', 'scheduler_config.json')
    index = _load_config(model, None, 'model_index.json')
    sigmas = training_sigmas(sched.get('num_train_timesteps', 1000), sched.get('beta_start', 0.00085),
                             sched.get('beta_end', 0.012), sched.get('beta_schedule', 'scaled_linear'))
    denoiser = SDXLDenoiser(parts.pop('unet'), sched.get('prediction_type', 'epsilon'), sigmas)
    return SDXLModel(denoiser=denoiser, device=device,
                     force_zeros_for_empty_prompt=bool(index.get('force_zeros_for_empty_prompt', True)), **parts)


def _accelerate_available():
    import importlib.util
    return importlib.util.find_spec('accelerate') is not None


def _load_config(model, subfolder, filename):
    """A JSON config of the model folder or hub id (through diffusers' config loader); {} when it has none."""
    if os.path.isdir(model):
        path = os.path.join(model, subfolder or '', filename)
        if not os.path.isfile(path):
            return {}
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler
    cls = EulerDiscreteScheduler if filename == 'scheduler_config.json' else DiffusionPipeline
    try:
        return dict(cls.load_config(model, subfolder=subfolder) if subfolder else cls.load_config(model))
    except Exception:  # no such file in the repository, or offline and not cached
        return {}


@torch.no_grad()
def encode_prompt(model, prompt, *, negative=False, empty_negative='zeros'):
    """Condition for `prompt`: penultimate hidden states of both text encoders concatenated, the
    second encoder's projected pooled output, and the size/crop ids for an uncropped square image.
    An empty negative prompt gives zeros when the model says `force_zeros_for_empty_prompt` and
    `empty_negative` is 'zeros'; with 'encode' it is encoded like any prompt."""
    check_empty_negative(empty_negative)
    hidden, pooled = [], None
    for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
        ids = tokenizer([prompt], padding='max_length', max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors='pt').input_ids.to(model.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = getattr(out, 'text_embeds', None)
    embeds = torch.cat(hidden, dim=-1).float()
    pooled = pooled.float()
    if negative and prompt == '' and model.force_zeros_for_empty_prompt and empty_negative == 'zeros':
        embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    size = model.resolution
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=model.device)
    return Condition(embeds=embeds, pooled=pooled, time_ids=time_ids)


@torch.no_grad()
def decode(model, latents):
    """Latents [B, 4, h, w] -> uint8 images [B, 3, H, W]."""
    vae = model.vae
    images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
    return (images.float() * 127.5 + 128).clip(0, 255).to(torch.uint8)

#----------------------------------------------------------------------------
# Generation.

def default_options(**changes):
    """The SD-XL sampler's `SamplerOptions` (the paper's: 32 Heun steps, sigma 14.61 -> 0.03, rho 3,
    'edm2' float32 arithmetic, starting from sqrt(1 + sigma_0^2) * noise as generative-models'
    HeunEDMSampler), with `changes` (fields given on the command line) applied."""
    from edmguide.sampler.schedule import SamplerOptions
    return SamplerOptions(**{**DEFAULTS, "init_noise": DEFAULT_INIT_NOISE, **changes})


def default_interval(schedule):
    """The paper's SD-XL interval on `schedule`: (0.28, 5.42] is how the paper prints (t_26, t_10]
    of the default 32-step schedule (t_26 = 0.2809, t_10 = 5.4173), so on that schedule it is
    steps 10..25 exactly (taken literally, 0.28 < t_26 would also guide step 26); on any other
    schedule it is the literal range."""
    from edmguide.sampler.guidance import Interval
    opts = schedule.options
    if all(getattr(opts, k) == v for k, v in DEFAULTS.items()) and opts.mode == 'edm2' and opts.dtype is None:
        return Interval.of_steps(*DEFAULT_INTERVAL)
    return Interval.of_sigma(*DEFAULT_SIGMA_RANGE)


def sdxl_guidance(schedule, weight=DEFAULT_GUIDANCE, interval=None):
    """w(sigma) for SD-XL on `schedule` (`default_options().schedule()`, or other options): `interval`
    (a `guidance.Interval`), or the paper's (`default_interval`) when None."""
    return schedule.guidance(weight, interval if interval is not None else default_interval(schedule))


def check_empty_negative(empty_negative):
    if empty_negative not in EMPTY_NEGATIVE:
        raise UserError(f'--empty_negative={empty_negative!r}: choose from {", ".join(EMPTY_NEGATIVE)}')


def _noise(model, seeds):
    from edmguide.sampler.seeds import StackedRandomGenerator
    rng = StackedRandomGenerator(model.device, seeds)
    res = model.denoiser.img_resolution
    return rng, rng.randn([len(seeds), model.denoiser.img_channels, res, res], device=model.device)


def sample_latents(model, cond, uncond, seeds, guidance, schedule, *, counter=None):
    """Latents for `seeds` (one batch): per-seed noise from StackedRandomGenerator, the EDM Heun
    sampler on `schedule`, whose options also say the starting state (`default_options()`:
    sqrt(1 + sigma_0^2) * noise, as generative-models; init_noise='edm': sigma_0 * noise)."""
    from edmguide.sampler import sampling
    net = BoundDenoiser(model.denoiser, cond)
    gnet = BoundDenoiser(model.denoiser, uncond)
    rng, noise = _noise(model, seeds)
    with torch.no_grad():
        return sampling.sample(net, noise, None, gnet=gnet, guidance=guidance, schedule=schedule,
                               randn_like=rng.randn_like, counter=counter)


def generate_sdxl_images(model, prompt, seeds, outdir, schedule, *, negative_prompt='', guidance=None,
                         max_batch_size=4, verbose=True, empty_negative='zeros'):
    """One `<seed:06d>.png` per seed in `outdir`; `guidance` is a GuidanceSchedule, a number or None
    (see `sdxl_guidance`); `empty_negative` as in `encode_prompt`.
    Prints the evaluations per image (main / guide). Returns the written paths."""
    from edmguide.util import images as imagelib
    from edmguide.util.outputs import check_output_dir
    from edmguide.util.progress import progress_bar
    from edmguide.sampler.sampling import EvalCounter
    check_empty_negative(empty_negative)
    check_output_dir(outdir, '--outdir')
    seeds = list(seeds)
    cond = encode_prompt(model, prompt)
    uncond = encode_prompt(model, negative_prompt, negative=True, empty_negative=empty_negative)
    written = []
    with progress_bar(total=len(seeds), unit='img', desc='Generating', leave=False) as bar:
        for start in range(0, len(seeds), max_batch_size):
            batch = seeds[start:start + max_batch_size]
            counter = EvalCounter()
            latents = sample_latents(model, cond, uncond, batch, guidance, schedule, counter=counter)
            if not bool(torch.isfinite(latents).all()):
                raise UserError(f'seeds {batch}: the sampler produced non-finite latents')
            for seed, image in zip(batch, decode(model, latents).cpu()):
                path = imagelib.seed_image_path(outdir, seed)
                imagelib.save_png(path, image)
                written.append(path)
                if verbose:
                    bar.write(f'{os.path.basename(path)}: evaluations main = {counter.net}, guide = {counter.gnet}')
            bar.update(len(batch))
    return written

#----------------------------------------------------------------------------
# Figures: the GI paper's SD-XL comparisons (Fig. 6) and interval-bound sweeps (Fig. 8).

def figure_methods(name):
    """(label, GuidanceSchedule) rows of an SD-XL figure on the default 32-step schedule.

    'sdxl-fig6': CFG w = 2 and w = 16 over all sigma, and w = 16 on the paper's interval.
    'sdxl-fig8-hi' / 'sdxl-fig8-lo': w = 16 with the upper bound swept (lower bound 0.28), or the
    lower bound swept (upper bound 5.42). The sweep values are this project's choice of levels
    along the schedule (`SWEEP_STARTS`, `SWEEP_STOPS`); the paper's Fig. 8 shows the same kind of sweep.
    """
    from edmguide.sampler.guidance import GuidanceSchedule, Interval
    schedule = default_options().schedule()
    if name == 'sdxl-fig6':
        return [('CFG w=2, all sigma', GuidanceSchedule.constant(2)),
                ('CFG w=16, all sigma', GuidanceSchedule.constant(16)),
                ('interval w=16, sigma in (0.28, 5.42]', sdxl_guidance(schedule, 16))]
    if name in ('sdxl-fig8-hi', 'sdxl-fig8-lo'):
        levels = schedule.levels
        ranges = ([(start, 25) for start in SWEEP_STARTS] if name == 'sdxl-fig8-hi'
                  else [(10, stop) for stop in SWEEP_STOPS])
        rows = []
        for start, stop in ranges:
            lo, hi = levels[stop + 1], levels[start]
            rows.append((f'w=16, sigma in ({lo:.2f}, {hi:.2f}] (steps {start}-{stop})',
                         sdxl_guidance(schedule, 16, Interval.of_steps(start, stop))))
        return rows
    raise UserError(f'--figs: unknown SD-XL figure {name!r}; choose from {", ".join(FIGURES)}')


FIGURES = ('sdxl-fig6', 'sdxl-fig8-hi', 'sdxl-fig8-lo')
# Fig. 8 sweeps on the default 32-step schedule, as step ranges (exact on that schedule): the upper
# bound moved with the lower kept at 0.28 (t_26), then the lower moved with the upper kept at 5.42 (t_10).
SWEEP_STARTS = (0, 5, 10, 15, 20)
SWEEP_STOPS = (31, 28, 25, 22, 19)


def parse_figures(text):
    names = list(FIGURES) if text in ('all', 'sdxl') else [n.strip() for n in text.split(',') if n.strip()]
    for name in names:
        figure_methods(name)  # refuses unknown names before any work
    return names


def render_sdxl_figure(model, name, prompts, seeds, outdir, *, negative_prompt='', max_batch_size=4,
                       init_noise=DEFAULT_INIT_NOISE, empty_negative='zeros'):
    """`<outdir>/<name>.png`: one labelled row per method, one column per (prompt, seed); every row
    uses the same noise. All rows of a batch run as one `sample_tree`, so steps they share are
    computed once. Returns the path."""
    from edmguide.util import images as imagelib
    from edmguide.sampler import sampling
    from edmguide.jobs.figures import layout_comparison
    methods = figure_methods(name)
    schedule = default_options(init_noise=init_noise).schedule(device=model.device)
    uncond = encode_prompt(model, negative_prompt, negative=True, empty_negative=empty_negative)
    gnet = BoundDenoiser(model.denoiser, uncond)
    rows = [[] for _ in methods]
    for prompt in prompts:
        net = BoundDenoiser(model.denoiser, encode_prompt(model, prompt))
        for start in range(0, len(seeds), max_batch_size):
            batch = list(seeds)[start:start + max_batch_size]
            rng, noise = _noise(model, batch)
            with torch.no_grad():
                outs = sampling.sample_tree(net, noise, None, [(gnet, g) for _, g in methods], schedule,
                                            randn_like=rng.randn_like)
            for row, latents in zip(rows, outs):
                row.extend(decode(model, latents).cpu())
    short = [p if len(p) <= 40 else p[:37] + '...' for p in prompts]
    headers = (short, [f'seed {s}' for _ in prompts for s in seeds])
    scale = max(1, 256 // model.resolution)  # small (test) models are enlarged so the labels fit
    grid = layout_comparison(rows, [label for label, _ in methods], scale=scale, column_headers=headers,
                             group_size=len(seeds))
    path = os.path.join(outdir, f'{name}.png')
    imagelib.save_png(path, grid)
    return path
