#!/usr/bin/env python3
"""Benchmark 7 (issue 23): one prepared GPU check of fp16 numerics, throughput, speed options and
metric blocks. Through the runner (section `gpu`), or on its own:

    python benchmarks/bench_gpu.py                          # CUDA: writes benchmarks/results/gpu-<device>.md/.json
    python benchmarks/bench_gpu.py --device=cpu --quick     # tiny sizes, seconds (tests/test_benchmarks.py)

Four parts, each with a time allowance (`ALLOWANCE_S`, and `TOTAL_S` for the section); a part starts
no new row once its allowance is spent and names the rows it skipped, so the whole run stays under
8 minutes on one modern GPU even where the estimates behind the sizes are off:

1. fp16 parity: random-weight EDM2 nets at the real XS and S shapes (img512: 64x64x4 latents, img64:
   64x64x3 pixels), built from the presets, sampled in the default CUDA numerics (the net's
   `use_fp16`) and in float32 (`force_fp32=True`, cuDNN TF32 off) from the same noise; the first
   images also in float32 on the CPU. Reported: max |delta| of the uint8 images, the share of uint8
   values that differ, and the FD between the feature sets of a random-weight conv detector. The same
   for a tiny SD-XL UNet (diffusers) and, where `edmguide.models.dit` offers `bench_denoiser`, a DiT.
2. throughput: XS/S/M-shaped img512 nets at batch 32/64/128: CFG at every step, the interval
   [17, 22] and a tree sweep (`sampling.sample_tree`) of a 2 x 2 grid, against `upstream_loop`, a
   plain per-step Heun loop written here with upstream's arithmetic (float32, both nets at every
   step, weight 1 outside the interval as guidance-interval's code does). Evaluations/s and the
   achieved TFLOP/s against the GPU's dense fp16 peak (bench_precision's table, or 'unknown').
3. metric blocks: precision/recall's distance blocks at 50k x 50k (4096-d float16 features, as
   VGG16's) with time and peak memory; feature throughput of FD_DINOv2's detector (the real one if
   torch hub has it cached, else a random-weight ViT-L/14 of the same shape, named in the table).
4. speed options (not defaults; candidates for an opt-in `--fast` numerics): channels_last, TF32,
   CUDA graphs, torch.compile, each sampled from the same noise and compared with the default
   images (equal or max |delta| in uint8 units).

Every network has random weights; nothing is downloaded. Latent nets' "images" are the latents
mapped by the pixel rule x * 127.5 + 128 (a stand-in for the VAE decode, which needs weights).
"""

import argparse
import math
import os
import re
import sys
import tempfile

from common import *  # noqa: F401,F403  (sizes, networks, timers shared by the benchmark modules)
from common import ROOT, _rel_err, small_net_kwargs  # noqa: F401

SECTION = 'gpu'
TITLE = '7. GPU: fp16 parity, throughput, speed options, metric blocks'
ORDER = 70

ALLOWANCE_S = dict(parity=150, throughput=130, metrics=40, options=80)  # CUDA; about 400 s in all
TOTAL_S = 400  # and no row starts after this many seconds of the whole section (a row may then still run)
COMPILE_NEED_S = 90  # torch.compile starts only with this much of both allowances left (compilation time)
GRID_WEIGHTS = (2.0, 3.0)
GRID_INTERVALS = ((17, 22), (15, 21))

SIZES = {
    'quick': dict(
        parity=dict(nets=[('tiny latent 8x8x4', small_net_kwargs(8, 8, 10, img_channels=4)),
                          ('tiny pixel 8x8x3', small_net_kwargs(8, 8, 10))],
                    images=12, batch=6, steps=3, cpu_images=3, fd_dim=4, sdxl_images=6),
        throughput=dict(nets=[('tiny', small_net_kwargs(8, 8, 10))], batches=[2], steps=6, interval=(2, 3),
                        grid_intervals=((2, 3), (1, 3))),
        metrics=dict(pr_num=300, pr_dim=32, pr_block=128, feature_images=4, feature_batch=2, dinov2='tiny'),
        options=dict(net=small_net_kwargs(8, 8, 10), batch=2, steps=4),
    ),
    'cuda': dict(
        parity=dict(nets=[('img512-xs', 'img512-xs'), ('img512-s', 'img512-s'),
                          ('img64-xs', 'img64-xs'), ('img64-s', 'img64-s')],
                    images=2000, batch=250, steps=4, cpu_images=8, fd_dim=256, sdxl_images=2000),
        throughput=dict(nets=[('img512-xs', 'img512-xs'), ('img512-s', 'img512-s'), ('img512-m', 'img512-m')],
                        batches=[32, 64, 128], steps=32, interval=(17, 22), grid_intervals=GRID_INTERVALS),
        metrics=dict(pr_num=50000, pr_dim=4096, pr_block=10000, feature_images=1024, feature_batch=64,
                     dinov2='vitl14'),
        options=dict(net='img512-xs', batch=64, steps=8),
    ),
}

#----------------------------------------------------------------------------
# Small pieces.

class Budget:
    """Wall-time allowance of one part (and the section's deadline, a perf_counter time): `ok(name)`
    says whether another row may start; `need_s` asks for that much time left in both."""

    def __init__(self, seconds, deadline=None):
        self.seconds, self.deadline, self.start, self.skipped = seconds, deadline, time.perf_counter(), []

    def ok(self, name, need_s=0):
        now = time.perf_counter()
        if ((self.seconds is None or now + need_s < self.start + self.seconds) and
                (self.deadline is None or now + need_s < self.deadline)):
            return True
        self.skipped.append(name)
        return False


def timed(device, fn):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def to_uint8(x):
    """EDM2's pixel rule: x * 127.5 + 128, clipped and truncated to uint8."""
    return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


def seed_noise(seeds, shape):
    """Per-seed CPU noise (the same values for every device and precision)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def one_hot(seeds, label_dim, device):
    if not label_dim:
        return None
    return torch.eye(label_dim, device=device)[torch.as_tensor(list(seeds), device=device) % label_dim]


class Float32Net:
    """An EDM2 Precond called with force_fp32=True (the float32 path on every device)."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, sigma, labels=None):
        return self.net(x, sigma, labels, force_fp32=True)


class RandomDetector(torch.nn.Module):
    """Random-weight conv feature net for uint8 images: the practical 'do the sets differ' measure."""

    def __init__(self, channels, dim, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(channels, 32, 3, 2, 1), torch.nn.Conv2d(32, 64, 3, 2, 1)])
        self.head = torch.nn.Linear(64, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(p[0].numel(), 1)))

    def forward(self, images):
        x = images.to(torch.float32) / 127.5 - 1
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.head(x.mean(dim=(2, 3)))


def feature_fd(a, b):
    """FD between two feature sets [N, D] (float64 statistics, the library's Fréchet distance)."""
    from edmguide.metrics.frechet import frechet_distance
    a, b = a.double().cpu().numpy(), b.double().cpu().numpy()
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def compare_uint8(a, b):
    diff = (a.to(torch.int16) - b.to(torch.int16)).abs()
    return dict(max_abs=int(diff.max()), share_differing=float((diff > 0).double().mean()))


def gpu_slug(device):
    if torch.device(device).type != 'cuda':
        return torch.device(device).type
    return re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(device).lower()).strip('-')


def _err(exc):
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0] if text else ""}'

#----------------------------------------------------------------------------
# 1. fp16 parity.

def _sample_set(denoiser, noise, labels, batch, device, **kw):
    """Final samples of every image, in batches, as uint8 (on the CPU)."""
    from edmguide.sampler import sampling
    out = []
    with torch.no_grad():
        for i in range(0, noise.shape[0], batch):
            lab = None if labels is None else labels[i:i + batch].to(device)
            x = sampling.sample(denoiser, noise[i:i + batch].to(device), lab, mode='edm2', **kw)
            out.append(to_uint8(x).cpu())
    return torch.cat(out)


def _features(images, detector, batch, device):
    with torch.no_grad():
        return torch.cat([detector(images[i:i + batch].to(device)).cpu() for i in range(0, images.shape[0], batch)])


def _parity_row(name, default, fp32, cpu_fp32, channels, res, label_dim, cfg, device, sampler_kwargs=None):
    """default vs float32 on the device (all images), both vs float32 on the CPU (the first images)."""
    kw = dict(num_steps=cfg['steps'], **(sampler_kwargs or {}))
    seeds = range(cfg['images'])
    noise = seed_noise(seeds, [channels, res, res])
    labels = one_hot(seeds, label_dim, 'cpu')
    imgs_default, t_default = timed(device, lambda: _sample_set(default, noise, labels, cfg['batch'], device, **kw))
    prev_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # a true float32 reference (cuDNN convs use TF32 by default)
    try:
        imgs_fp32, t_fp32 = timed(device, lambda: _sample_set(fp32, noise, labels, cfg['batch'], device, **kw))
    finally:
        torch.backends.cudnn.allow_tf32 = prev_tf32
    n_cpu = cfg['cpu_images']
    imgs_cpu = _sample_set(cpu_fp32, noise[:n_cpu], None if labels is None else labels[:n_cpu], n_cpu, 'cpu', **kw)
    detector = RandomDetector(channels, cfg['fd_dim']).to(device)
    fd = feature_fd(_features(imgs_default, detector, cfg['batch'], device),
                    _features(imgs_fp32, detector, cfg['batch'], device))
    return dict(net=name, images=cfg['images'], steps=cfg['steps'], default_s=t_default, fp32_s=t_fp32,
                default_vs_fp32=compare_uint8(imgs_default, imgs_fp32),
                default_vs_cpu=compare_uint8(imgs_default[:n_cpu], imgs_cpu),
                fp32_vs_cpu=compare_uint8(imgs_fp32[:n_cpu], imgs_cpu), cpu_images=n_cpu,
                fd_default_vs_fp32=fd, fd_detector_dim=cfg['fd_dim'])


def _tiny_sdxl_unet(seed=0):
    """A tiny random SD-XL-shaped diffusers UNet (the test suite's sizes), float32 on the CPU."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'), up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=48, attention_head_dim=(2, 4), norm_num_groups=32, addition_embed_type='text_time',
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.05)
    return unet.eval().requires_grad_(False)


def _sdxl_parity(cfg, device):
    from edmguide.models import sdxl
    unet = _tiny_sdxl_unet()
    gen = torch.Generator().manual_seed(1)
    cond = sdxl.Condition(embeds=torch.randn([1, 8, 48], generator=gen), pooled=torch.randn([1, 32], generator=gen),
                          time_ids=torch.tensor([[64.0, 64, 0, 0, 64, 64]]))

    def bound(u, dev):
        c = sdxl.Condition(**{k: getattr(cond, k).to(dev) for k in ('embeds', 'pooled', 'time_ids')})
        return sdxl.BoundDenoiser(sdxl.SDXLDenoiser(u.to(dev)), c)
    # The SD-XL mode's default numerics: fp16 UNet on CUDA, float32 elsewhere (load_sdxl's rule).
    half = torch.device(device).type == 'cuda'
    default = bound(copy.deepcopy(unet).to(torch.float16) if half else copy.deepcopy(unet), device)
    fp32 = bound(copy.deepcopy(unet), device)
    cpu = bound(unet, 'cpu')
    kw = {k: v for k, v in sdxl.DEFAULTS.items() if k != 'num_steps'}
    kw['init_noise'] = sdxl.DEFAULT_INIT_NOISE  # generative-models' start, sqrt(1 + t_0^2) * noise
    sub = dict(cfg, images=cfg['sdxl_images'], cpu_images=min(cfg['cpu_images'], cfg['sdxl_images']))
    return _parity_row('tiny SD-XL UNet (8x8x4 latents)', default, fp32, cpu, 4, 8, 0, sub, device, kw)


def bench_parity(cfg, device, log, budget):
    rows, notes = [], []
    for name, fn in (('tiny SD-XL', _sdxl_parity), ('tiny DiT', _dit_parity)):  # cheap: first
        if not budget.ok(name):
            continue
        try:
            row = fn(cfg, device)
        except ImportError as exc:
            notes.append(f'{name}: skipped ({exc})')
            continue
        except Exception as exc:  # keep the other rows
            notes.append(f'{name}: failed ({_err(exc)})')
            continue
        if isinstance(row, str):
            notes.append(f'{name}: {row}')
        else:
            rows.append(row)
    for name, spec in cfg['nets']:
        if not budget.ok(name):
            continue
        net = build_net(spec, 11, device)
        cpu_net = build_net(spec, 11, 'cpu')
        row = _parity_row(name, net, Float32Net(net), Float32Net(cpu_net), net.img_channels, net.img_resolution,
                          net.label_dim, cfg, device)
        row['use_fp16'] = bool(getattr(net, 'use_fp16', False))
        rows.append(row)
        log(f"  parity {name}: max |d| {row['default_vs_fp32']['max_abs']}, FD {row['fd_default_vs_fp32']:.3g}")
        del net, cpu_net
        if torch.device(device).type == 'cuda':
            torch.cuda.empty_cache()
    return dict(rows=rows, notes=notes, skipped=budget.skipped)


def _dit_parity(cfg, device):
    """DiT through `edmguide.models.dit.bench_denoiser(device, float32=...)`, where it exists (it is
    written in parallel; this row names what is missing otherwise)."""
    try:
        from edmguide.models import dit
    except ImportError:
        return 'skipped (edmguide.models.dit does not exist in this checkout)'
    make = getattr(dit, 'bench_denoiser', None)
    if make is None:
        return 'skipped (edmguide.models.dit has no bench_denoiser(device, float32) for a tiny random DiT)'
    default, fp32, cpu = make(device, float32=False), make(device, float32=True), make('cpu', float32=True)
    return _parity_row('tiny DiT', default, fp32, cpu, default.img_channels, default.img_resolution,
                       getattr(default, 'label_dim', 0), cfg, device)

#----------------------------------------------------------------------------
# 2. Throughput.

def upstream_loop(net, gnet, noise, labels, weights, num_steps, sigma_min=0.002, sigma_max=80, rho=7):
    """Baseline: a plain Heun loop with upstream's arithmetic (float32; EDM2's Karras schedule; both
    nets evaluated at every step and combined as guide + w * (main - guide), w = 1 outside the
    interval, as guidance-interval's sampler does). `weights[i]` is step i's w."""
    ramp = torch.arange(num_steps, dtype=torch.float32, device=noise.device) / (num_steps - 1)
    t = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros_like(t[:1])])
    x = noise.to(torch.float32) * t[0]
    for i in range(num_steps):
        def denoise(y, s, w=weights[i]):
            main = net(y, s, labels).to(torch.float32)
            return main if gnet is None else torch.lerp(gnet(y, s, labels).to(torch.float32), main, w)
        d = (x - denoise(x, t[i])) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d
        if i < num_steps - 1:
            d2 = (x_next - denoise(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def _flops_per_eval(net, device):
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.ones([1], device=device), one_hot([0], net.label_dim, device))
    return counter.get_total_flops()


def bench_throughput(cfg, device, log, budget, peak):
    from edmguide.sampler import sampling
    from edmguide.sampler.guidance import Interval
    steps, iv = cfg['steps'], tuple(cfg['interval'])
    w = GUIDANCE_WEIGHT
    rows = []
    for name, spec in cfg['nets']:
        if not budget.ok(name):
            continue
        net = build_net(spec, 21, device)
        guide_spec = spec + ':uncond' if isinstance(spec, str) else dict(spec, label_dim=0)
        gnet = build_net(guide_spec, 22, device)
        flops = _flops_per_eval(net, device)
        schedule = sampling.SamplerOptions(num_steps=steps).schedule(net, device=device)
        sigmas = schedule.sigmas
        interval = schedule.guidance(w, Interval.of_steps(*iv))
        grid = [schedule.guidance(gw, Interval.of_steps(*gi)) for gw in GRID_WEIGHTS for gi in cfg['grid_intervals']]
        all_w = [w] * steps
        iv_w = [float(x) for x in interval.step_weights(sigmas)]
        for batch in cfg['batches']:
            if not budget.ok(f'{name} batch {batch}'):
                continue
            noise = seed_noise(range(batch), [net.img_channels, net.img_resolution, net.img_resolution]).to(device)
            labels = one_hot(range(batch), net.label_dim, device)
            keys = sampling.step_keys([(gnet, g) for g in grid], schedule)
            tree_made, tree_separate = sampling.tree_evaluations(keys)
            evals_cfg, evals_iv = 2 * (2 * steps - 1), (2 * steps - 1) + sum(
                (2 if i < steps - 1 else 1) for i, x in enumerate(iv_w) if x != 1)
            runs = [('CFG, all steps', evals_cfg, 1,
                     lambda: sampling.sample(net, noise, labels, gnet=gnet, guidance=w, schedule=schedule)),
                    (f'interval {list(iv)}', evals_iv, 1,
                     lambda: sampling.sample(net, noise, labels, gnet=gnet, guidance=interval, schedule=schedule)),
                    (f'tree sweep, {len(grid)} settings', tree_made.net + tree_made.gnet, len(grid),
                     lambda: sampling.sample_tree(net, noise, labels, [(gnet, g) for g in grid], schedule)),
                    ('upstream_loop, CFG all steps', evals_cfg, 1,
                     lambda: upstream_loop(net, gnet, noise, labels, all_w, steps)),
                    (f'upstream_loop, interval {list(iv)} (guide at every step)', evals_cfg, 1,
                     lambda: upstream_loop(net, gnet, noise, labels, iv_w, steps))]
            with torch.no_grad():
                timed(device, lambda: (net(noise, sigmas[0].expand(batch), labels),
                                       gnet(noise, sigmas[0].expand(batch), labels)))  # warm-up
                for method, evals, settings, fn in runs:
                    _, secs = timed(device, fn)
                    row = dict(net=name, batch=batch, method=method, s=secs, images_per_s=batch * settings / secs,
                               evals_per_image_setting=evals / settings, evals_per_s=evals * batch / secs,
                               gflops_per_eval=flops / 1e9, tflops=evals * batch * flops / secs / 1e12)
                    if settings > 1:
                        row['separate_runs_evals'] = tree_separate.net + tree_separate.gnet
                    row['fraction_of_peak'] = row['tflops'] / peak if peak else None
                    rows.append(row)
            log(f'  throughput {name} batch {batch} done')
        del net, gnet
        if torch.device(device).type == 'cuda':
            torch.cuda.empty_cache()
    return dict(steps=steps, weight=w, interval=list(iv), grid=dict(weights=list(GRID_WEIGHTS),
                intervals=[list(g) for g in cfg['grid_intervals']]), peak_tflops=peak, rows=rows,
                skipped=budget.skipped)

#----------------------------------------------------------------------------
# 3. Metric blocks: precision/recall distances, DINOv2 feature throughput.

def _dinov2(kind, device):
    """(name, detector): the project's DINOv2 detector if torch hub has it, else a random-weight
    DINOv2-shaped ViT (transformers' Dinov2Model) behind the same preprocessing."""
    import dnnlib
    from edmguide.metrics import detectors
    hub = dnnlib.make_cache_dir_path('torch_hub')
    cached = (os.path.isdir(os.path.join(hub, 'facebookresearch_dinov2_main')) and
              os.path.isfile(os.path.join(hub, 'checkpoints', 'dinov2_vitl14_pretrain.pth')))
    if kind == 'vitl14' and cached:  # only from the cache: a download attempt could hang on an offline machine
        try:
            return 'DINOv2 ViT-L/14 (torch hub, real weights)', detectors.DINOv2Detector()
        except Exception:  # a broken cache: the same shape with random weights
            pass
    from transformers import Dinov2Config, Dinov2Model
    shape = (dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
             if kind == 'vitl14' else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64))
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(patch_size=14, image_size=224, **shape)).eval().requires_grad_(False).to(device)
    det = detectors.DINOv2Detector.__new__(detectors.DINOv2Detector)  # its preprocessing, this model
    det.resize_mode = 'torch'
    det.model = _PooledOutput(model)
    width = 'ViT-L/14' if kind == 'vitl14' else 'tiny ViT, patch 14'
    return f'random-weight DINOv2-shaped {width} (transformers Dinov2Model; the hub model was not available)', det


class _PooledOutput(torch.nn.Module):
    """transformers' Dinov2Model called like the hub model: images -> [N, hidden] (the final-norm CLS token)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).pooler_output


def bench_metrics(cfg, device, log, budget):
    from edmguide.metrics.precision_recall import precision_recall
    out = dict(notes=[])
    if budget.ok('precision/recall'):
        gen = torch.Generator().manual_seed(0)
        scale = 2.0 / math.sqrt(cfg['pr_dim'])  # squared norms about 4, far inside float16's range
        real = (torch.randn([cfg['pr_num'], cfg['pr_dim']], generator=gen) * scale).to(device, torch.float16)
        fake = (torch.randn([cfg['pr_num'], cfg['pr_dim']], generator=gen) * scale * 1.1).to(device, torch.float16)
        cuda = torch.device(device).type == 'cuda'
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        res, secs = timed(device, lambda: precision_recall(real, fake, row_block=cfg['pr_block'],
                                                           col_block=cfg['pr_block'], device=device))
        out['pr'] = dict(num=cfg['pr_num'], dim=cfg['pr_dim'], block=cfg['pr_block'], s=secs, **res,
                         peak_gib=(torch.cuda.max_memory_allocated(device) - base) / 2 ** 30 if cuda else None)
        log(f'  precision/recall {cfg["pr_num"]} x {cfg["pr_num"]}: {secs:.1f} s')
        del real, fake
    if budget.ok('DINOv2 features'):
        name, det = _dinov2(cfg['dinov2'], device)
        images = torch.randint(0, 256, [cfg['feature_images'], 3, 64, 64], generator=torch.Generator().manual_seed(1),
                               dtype=torch.uint8).to(device)
        b = cfg['feature_batch']
        with torch.no_grad():
            det(images[:b])  # warm-up
            feats, secs = timed(device, lambda: torch.cat([det(images[i:i + b]) for i in range(0, len(images), b)]))
        out['dinov2'] = dict(detector=name, images=len(images), batch=b, s=secs, images_per_s=len(images) / secs,
                             dim=int(feats.shape[1]), input='64x64 uint8, resized to 224 (bicubic, antialiased)')
    out['skipped'] = budget.skipped
    return out

#----------------------------------------------------------------------------
# 4. Speed options (opt-in candidates; the defaults are untouched).

class _ChannelsLast:
    def __init__(self, net):
        self.net = copy.deepcopy(net).to(memory_format=torch.channels_last)

    def __call__(self, x, sigma, labels=None):
        return self.net(x.contiguous(memory_format=torch.channels_last), sigma, labels)


class _CudaGraph:
    """One captured network call per input shape; sigma and labels are copied into static tensors."""

    def __init__(self, net):
        self.net, self.graphs = net, {}

    def __call__(self, x, sigma, labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        key = tuple(x.shape)
        if key not in self.graphs:
            static = dict(x=x.clone(), sigma=sigma.clone(), labels=None if labels is None else labels.clone())
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.net(static['x'], static['sigma'], static['labels'])
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static['out'] = self.net(static['x'], static['sigma'], static['labels'])
            self.graphs[key] = (graph, static)
        graph, static = self.graphs[key]
        static['x'].copy_(x)
        static['sigma'].copy_(sigma)
        if labels is not None:
            static['labels'].copy_(labels)
        graph.replay()
        return static['out'].clone()


class _TF32:
    def __init__(self, net):
        self.net = net

    def __call__(self, x, sigma, labels=None):
        prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return self.net(x, sigma, labels)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _compiled(net):
    return torch.compile(net)


OPTIONS = [('channels_last', _ChannelsLast, False), ('TF32 (matmul + cuDNN)', _TF32, False),
           ('CUDA graphs', _CudaGraph, True), ('torch.compile', _compiled, True)]  # (name, wrapper, CUDA only)


def bench_options(cfg, device, log, budget):
    from edmguide.sampler import sampling
    net = build_net(cfg['net'], 31, device)
    batch, steps = cfg['batch'], cfg['steps']
    noise = seed_noise(range(batch), [net.img_channels, net.img_resolution, net.img_resolution]).to(device)
    labels = one_hot(range(batch), net.label_dim, device)
    cuda = torch.device(device).type == 'cuda'

    def run(fn):
        with torch.no_grad():
            return to_uint8(sampling.sample(fn, noise, labels, num_steps=steps))

    run(net)  # warm-up
    reference, base_s = timed(device, lambda: run(net))
    rows = [dict(option='default (eager, the net\'s own fp16 rule)', s=base_s, speedup=1.0, equal=True, max_abs=0)]
    for name, wrap, cuda_only in OPTIONS:
        if cuda_only and not cuda:
            rows.append(dict(option=name, error='CUDA only; not run on this device'))
            continue
        if not budget.ok(name, COMPILE_NEED_S if wrap is _compiled else 0):
            continue
        try:
            fn = wrap(net)
            _, first_s = timed(device, lambda: run(fn))  # includes capture / compilation
            images, secs = timed(device, lambda: run(fn))
            cmp = compare_uint8(images, reference)
            rows.append(dict(option=name, s=secs, first_s=first_s, speedup=base_s / secs,
                             equal=bool(torch.equal(images, reference)), max_abs=cmp['max_abs'],
                             share_differing=cmp['share_differing']))
        except Exception as exc:  # one failing option must not lose the others
            rows.append(dict(option=name, error=_err(exc)))
        log(f'  option {name} done')
    return dict(net=cfg['net'] if isinstance(cfg['net'], str) else 'tiny', batch=batch, steps=steps, rows=rows,
                skipped=budget.skipped)

#----------------------------------------------------------------------------
# The runner's interface.

def run(ctx):
    """The runner's entry point: this section's result (a JSON-able dict)."""
    device = torch.device(ctx.device)
    if device.type != 'cuda' and not ctx.quick:
        return dict(skipped='no CUDA device: run `python benchmarks/bench_gpu.py` on a GPU machine '
                            '(`--device=cpu --quick` checks the code path)')
    cfg = SIZES['quick' if ctx.quick else 'cuda']
    limits = {k: (None if ctx.quick else v) for k, v in ALLOWANCE_S.items()}
    deadline = None if ctx.quick else time.perf_counter() + TOTAL_S
    from bench_precision import peak_tflops
    peak = peak_tflops(device, getattr(ctx.options, 'peak_tflops', None))
    out = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
               quick=bool(ctx.quick), allowance_s=limits, part_s={})
    parts = [('parity', lambda b: bench_parity(cfg['parity'], device, ctx.log, b)),
             ('throughput', lambda b: bench_throughput(cfg['throughput'], device, ctx.log, b, peak)),
             ('metrics', lambda b: bench_metrics(cfg['metrics'], device, ctx.log, b)),
             ('options', lambda b: bench_options(cfg['options'], device, ctx.log, b))]
    for key, fn in parts:
        t0 = time.perf_counter()
        try:
            out[key] = fn(Budget(limits[key], deadline))
        except Exception as exc:  # keep the other parts
            import traceback
            traceback.print_exc()
            out[key] = dict(error=_err(exc))
        out['part_s'][key] = time.perf_counter() - t0
    return out


def _f(value, fmt='.3g'):
    return 'n/a' if value is None else format(value, fmt)


def markdown(r):
    """This section's part of the combined markdown report."""
    out = ['## 7. GPU: fp16 parity, throughput, speed options, metric blocks', '']
    if r.get('skipped'):
        return out + [f"Skipped: {r['skipped']}.", '']
    out += [f"Device {r['gpu'] or r['device']}{' (quick sizes: checks the code path, numbers mean nothing)' if r['quick'] else ''}; "
            f"part times " + ', '.join(f'{k} {v:.0f} s' for k, v in r['part_s'].items()) + '.', '']

    def failed(part):
        return [f"**Failed:** {r[part]['error']}", ''] if 'error' in r[part] else None

    def skipped(part):
        names = r[part].get('skipped') or []
        return [f"Not run (time allowance spent): {', '.join(names)}.", ''] if names else []

    out += ['### 7.1 fp16 parity: default numerics vs float32', '']
    p = r['parity']
    if failed('parity'):
        out += failed('parity')
    else:
        out += ['Same noise; uint8 images (latent nets: latents by the pixel rule). "default" is what the '
                'library does on this device (EDM2: fp16 where `use_fp16`; SD-XL: fp16 UNet on CUDA); '
                'float32 runs with cuDNN TF32 off. CPU columns: the first images sampled in float32 on the CPU. '
                'FD: between the feature sets of a random-weight conv detector.', '',
                '| net | images x steps | default vs fp32: max abs, share differing | FD default vs fp32 '
                '| default vs CPU fp32 | fp32 vs CPU fp32 | time default / fp32 |', '|---|---|---|---|---|---|---|']
        for x in p['rows']:
            a, c, d = x['default_vs_fp32'], x['default_vs_cpu'], x['fp32_vs_cpu']
            out.append(f"| {x['net']} | {x['images']} x {x['steps']} | {a['max_abs']}, {100 * a['share_differing']:.3f}% "
                       f"| {x['fd_default_vs_fp32']:.3g} ({x['fd_detector_dim']}-d) "
                       f"| {c['max_abs']}, {100 * c['share_differing']:.3f}% ({x['cpu_images']} images) "
                       f"| {d['max_abs']}, {100 * d['share_differing']:.3f}% | {x['default_s']:.1f} / {x['fp32_s']:.1f} s |")
        out += [''] + [f'- {n}' for n in p['notes']] + ([''] if p['notes'] else []) + skipped('parity')

    out += ['### 7.2 Throughput', '']
    t = r['throughput']
    if failed('throughput'):
        out += failed('throughput')
    else:
        out += [f"{t['steps']} Heun steps, w = {t['weight']}, interval {t['interval']}; tree sweep grid: weights "
                f"{t['grid']['weights']} x intervals {t['grid']['intervals']}. `upstream_loop` is a plain per-step loop "
                f"with upstream's arithmetic written in the benchmark (both nets at every step). Dense fp16 peak: "
                f"{_f(t['peak_tflops']) if t['peak_tflops'] else 'unknown'} TFLOP/s.", '',
                '| net | batch | method | images/s | evals per image | image-evals/s | TFLOP/s | fraction of peak |',
                '|---|---|---|---|---|---|---|---|']
        for x in t['rows']:
            frac = 'unknown' if x['fraction_of_peak'] is None else f"{100 * x['fraction_of_peak']:.1f}%"
            evals = f"{x['evals_per_image_setting']:.1f}"
            if 'separate_runs_evals' in x:
                evals += f" (separate runs: {x['separate_runs_evals'] / len(t['grid']['weights']) / len(t['grid']['intervals']):.1f})"
            out.append(f"| {x['net']} | {x['batch']} | {x['method']} | {x['images_per_s']:.2f} | {evals} | "
                       f"{x['evals_per_s']:.1f} | {x['tflops']:.3g} | {frac} |")
        out += [''] + skipped('throughput')

    out += ['### 7.3 Metric blocks', '']
    m = r['metrics']
    if failed('metrics'):
        out += failed('metrics')
    else:
        if 'pr' in m:
            pr = m['pr']
            out += [f"Precision/recall, {pr['num']} x {pr['num']} float16 features of {pr['dim']} dimensions, blocks "
                    f"{pr['block']} x {pr['block']}: {pr['s']:.2f} s, peak memory above the features "
                    f"{_f(pr['peak_gib'], '.2f')} GiB (precision {pr['precision']:.3f}, recall {pr['recall']:.3f}).", '']
        if 'dinov2' in m:
            d = m['dinov2']
            out += [f"FD_DINOv2 features: {d['detector']}: {d['images_per_s']:.1f} images/s ({d['images']} images, batch "
                    f"{d['batch']}, {d['input']}, {d['dim']}-d features).", '']
        out += skipped('metrics')

    out += ['### 7.4 Speed options (opt-in candidates; defaults unchanged)', '']
    o = r['options']
    if failed('options'):
        out += failed('options')
    else:
        out += [f"{o['net']}, batch {o['batch']}, {o['steps']} steps, no guidance; images compared with the default's "
                f"(uint8).", '', '| option | s per run | speedup | first run s | images equal | max abs, share differing |',
                '|---|---|---|---|---|---|']
        for x in o['rows']:
            if 'error' in x:
                out.append(f"| {x['option']} | {x['error']} | | | | |")
                continue
            out.append(f"| {x['option']} | {x['s']:.3f} | {x['speedup']:.2f}x | {_f(x.get('first_s'), '.1f')} | "
                       f"{'yes' if x['equal'] else 'no'} | {x['max_abs']}, {100 * x.get('share_differing', 0):.3f}% |")
        out += [''] + skipped('options')
    return out

#----------------------------------------------------------------------------
# On its own: one command writing <out>/gpu-<device>.md and .json through the runner.

def main(argv=None):
    import run_benchmarks
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    parser.add_argument('--quick', action='store_true', help='tiny sizes (seconds); checks the code path')
    parser.add_argument('--out', default=None,
                        help='output folder (default: benchmarks/results; with --quick a new temporary folder)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing gpu-<device> result')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores; CPU reference)')
    parser.add_argument('--peak-tflops', type=float, default=None, help='dense fp16 peak for the fraction of peak')
    args = parser.parse_args(argv)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    name = f'gpu-{gpu_slug(device)}' + ('-quick' if args.quick else '')
    out = args.out or (tempfile.mkdtemp(prefix='edmguide-bench-gpu-') if args.quick
                       else os.path.join(ROOT, 'benchmarks', 'results'))
    existing = [p for p in (os.path.join(out, name + ext) for ext in ('.md', '.json')) if os.path.exists(p)]
    if existing and not args.overwrite:
        sys.exit(f'error: {existing[0]} exists (a finished result); pass --overwrite to replace it or --out DIR')
    forward = ['--sections', SECTION, '--device', str(device), '--name', name, '--out', out,
               '--threads', str(args.threads or os.cpu_count() or 1)]
    forward += ['--quick'] if args.quick else []
    forward += ['--peak-tflops', str(args.peak_tflops)] if args.peak_tflops else []
    return run_benchmarks.main(forward)


if __name__ == '__main__':
    main()
