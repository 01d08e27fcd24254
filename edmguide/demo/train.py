"""EDM2 training loop for the small embedded demo networks (written for this project).

Trains an EDM2 `Precond` on the 16x16 digits of `edmguide.demo.data` on the CPU and writes an
EDM2-style network pickle: `EasyDict(encoder, dataset_kwargs, loss_fn, ema)`, where `ema` is the
exponential moving average of the weights, on the CPU, in eval mode, without gradients and converted
to float16 like the released EDM2 pickles.

Ingredients (EDM2 paper, Karras et al. 2024):
- noise levels log-normal: sigma = exp(P_mean + P_std * n), n ~ N(0, 1);
- loss with learned uncertainty: weight(sigma) / exp(u(sigma)) * mean_pixels |D(y + sigma n) - y|^2
  + u(sigma), weight = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, u = the net's logvar head;
- Adam (betas 0.9/0.99, eps 1e-8), a linear learning-rate ramp, then inverse-square-root decay;
- a power-function EMA of the weights (EDM2 section 3.1) with relative standard deviation `ema_std`
  (`edmguide.optim`, shared with the toy trainer).
Everything is deterministic given the seed (one generator for data order, one for noise).

Only light modules are imported at module level, because this file's source travels inside the
pickles (the `loss_fn` object is persistent) and is executed again when they are loaded.
"""

import copy
import json
import os
import pickle
import time

import numpy as np
import torch

import dnnlib
from torch_utils import persistence

#----------------------------------------------------------------------------
# Loss.

@persistence.persistent_class
class EDM2Loss:
    """EDM2 denoising loss with learned per-sigma uncertainty; returns the per-image loss [N]."""

    def __init__(self, P_mean=-0.8, P_std=1.6, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net, images, labels=None, generator=None):
        n = images.shape[0]
        rnd = torch.randn([n, 1, 1, 1], generator=generator, device=images.device)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noise = torch.randn(images.shape, generator=generator, device=images.device) * sigma
        denoised, logvar = net(images + noise, sigma, labels, return_logvar=True)
        err = (denoised - images).square().mean(dim=[1, 2, 3], keepdim=True)
        return (weight / logvar.exp() * err + logvar).flatten()

#----------------------------------------------------------------------------
# Demo configurations (data: one EasyDict per shipped network).

# Sizes were chosen so that each net trains in minutes on one CPU thread: 16 channels at 16x16,
# 32 at 8x8 and 64 (one attention head) at 4x4. 'bad' is the autoguidance guide: half the width
# (so no attention heads) and a quarter of the training.
_NET = dict(model_channels=16, channel_mult=[1, 2, 4], num_blocks=1, attn_resolutions=[4], dropout=0.0)
_OPT = dict(batch_size=64, lr=0.01, rampup_steps=50, decay_steps=200, P_mean=-0.8, P_std=1.6, ema_std=0.10)

DEMO_NETWORKS = {
    'cond':   dnnlib.EasyDict(file='digits-cond.pkl', label_dim=10, network=dict(_NET), total_steps=1000, **_OPT),
    'uncond': dnnlib.EasyDict(file='digits-uncond.pkl', label_dim=0, network=dict(_NET), total_steps=1000, **_OPT),
    'bad':    dnnlib.EasyDict(file='digits-bad.pkl', label_dim=10, network=dict(_NET, model_channels=8),
                              total_steps=250, **_OPT),
}

DATA_RESOLUTION = 16

#----------------------------------------------------------------------------
# Training loop.

def build_network(label_dim, network, resolution=DATA_RESOLUTION, img_channels=1):
    """A fresh EDM2 `Precond` (global torch RNG: seed it first for reproducibility)."""
    from training.networks_edm2 import Precond
    return Precond(img_resolution=resolution, img_channels=img_channels, label_dim=label_dim,
                   use_fp16=True, **network)


def training_loop(net, images, labels=None, *, seed=0, batch_size=128, total_steps=500, lr=0.01,
                  rampup_steps=50, decay_steps=200, P_mean=-0.8, P_std=1.6, sigma_data=0.5,
                  ema_std=0.10, log_every=50, progress=None):
    """Train `net` in place on uint8 `images` [N,C,R,R] (and int64 `labels` [N] or None).

    Returns EasyDict(ema=float32 EMA copy, losses=list of per-step mean losses, loss_fn,
    seconds). `progress(step, loss)` is called every `log_every` steps if given.
    """
    from training.encoders import StandardRGBEncoder
    from edmguide.demo.data import EpochSampler, one_hot
    from edmguide.optim import PowerEMA, learning_rate

    encoder = StandardRGBEncoder()
    data = encoder.encode_latents(images)  # uint8 -> float32 in [-1, 1]
    cond = None if labels is None or net.label_dim == 0 else one_hot(labels, net.label_dim)
    loss_fn = EDM2Loss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)
    sampler = EpochSampler(len(data), batch_size, seed=seed)
    noise_gen = torch.Generator().manual_seed(int(seed) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-8)
    ema = PowerEMA(net, ema_std)
    losses = []
    start = time.time()
    net.train().requires_grad_(True)
    for step in range(total_steps):
        idx = sampler.next()
        loss = loss_fn(net, data[idx], None if cond is None else cond[idx], generator=noise_gen).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(step, lr, rampup_steps, decay_steps)
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
        optimizer.step()
        ema.update(net)
        losses.append(loss.item())
        if progress is not None and ((step + 1) % log_every == 0 or step + 1 == total_steps):
            progress(step + 1, float(np.mean(losses[-log_every:])))
    net.eval().requires_grad_(False)
    return dnnlib.EasyDict(ema=ema.net, losses=losses, loss_fn=loss_fn, seconds=time.time() - start)

#----------------------------------------------------------------------------
# Pickles and logs.

def release_copy(net):
    """Deep copy in the state of released EDM2 pickles: CPU, eval, no grad, float16 tensors."""
    return copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)


def network_pickle_bytes(ema, *, loss_fn=None, use_labels=True, resolution=DATA_RESOLUTION):
    """Bytes of an EDM2-style network pickle holding `release_copy(ema)`."""
    from training.encoders import StandardRGBEncoder
    data = dnnlib.EasyDict(
        encoder=StandardRGBEncoder(),
        dataset_kwargs=dnnlib.EasyDict(class_name='edmguide.demo.data.load_digits_uint8',
                                       resolution=resolution, use_labels=bool(use_labels)),
        loss_fn=loss_fn,
        ema=release_copy(ema),
    )
    return pickle.dumps(data)


def train_demo_network(what, outdir, *, seed=0, verbose=True, **overrides):
    """Train the demo network `what` ('cond', 'uncond', 'bad') and write `<outdir>/<file>` + a JSON log.

    Returns the log dict. `overrides` replace fields of the configuration (for experiments; the
    shipped files use none); a dict given for `network` updates the network kwargs.
    """
    from edmguide.demo.data import load_digits_uint8
    from edmguide.util.images import atomic_write
    cfg = copy.deepcopy(DEMO_NETWORKS[what])
    for key, value in overrides.items():
        if key not in cfg:
            raise KeyError(f'unknown demo training option {key!r}')
        cfg[key] = {**cfg[key], **value} if key == 'network' else value
    images, labels = load_digits_uint8(DATA_RESOLUTION)
    torch.manual_seed(seed)
    net = build_network(cfg.label_dim, cfg.network)
    num_params = sum(p.numel() for p in net.parameters())
    if verbose:
        print(f'{what}: {num_params} parameters, {cfg.total_steps} steps of batch {cfg.batch_size}', flush=True)

    def progress(step, loss):
        if verbose:
            print(f'{what}: step {step:5d}/{cfg.total_steps}  loss {loss:+.4f}  {time.time() - t0:6.1f}s', flush=True)
    t0 = time.time()
    result = training_loop(net, images, labels if cfg.label_dim else None, seed=seed,
                           batch_size=cfg.batch_size, total_steps=cfg.total_steps, lr=cfg.lr,
                           rampup_steps=cfg.rampup_steps, decay_steps=cfg.decay_steps,
                           P_mean=cfg.P_mean, P_std=cfg.P_std, ema_std=cfg.ema_std, progress=progress)
    blob = network_pickle_bytes(result.ema, loss_fn=result.loss_fn, use_labels=cfg.label_dim > 0)
    path = os.path.join(outdir, cfg.file)
    atomic_write(path, blob)
    window = max(1, min(100, len(result.losses)))
    log = dict(file=cfg.file, what=what, seed=seed, torch_version=torch.__version__,
               num_threads=torch.get_num_threads(), num_params=num_params, file_bytes=len(blob),
               config=dict(cfg), seconds=round(result.seconds, 1),
               final_loss=float(np.mean(result.losses[-window:])), final_loss_window=window,
               loss_every_50=[round(float(np.mean(result.losses[i:i + 50])), 5)
                              for i in range(0, len(result.losses), 50)])
    atomic_write(os.path.join(outdir, cfg.file.replace('.pkl', '.log.json')),
                 (json.dumps(log, indent=2) + '\n').encode('utf-8'))
    if verbose:
        print(f'{what}: wrote {path} ({len(blob)} bytes), final loss {log["final_loss"]:+.4f}, '
              f'{result.seconds:.0f}s', flush=True)
    return log

#----------------------------------------------------------------------------
