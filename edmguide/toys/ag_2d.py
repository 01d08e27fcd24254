"""The autoguidance paper's 2D toy (AG App. C): fractal trees, tiny MLPs, CFG vs autoguidance.

Data: `tree.make_two_class_trees()` (two classes, 1016 anisotropic Gaussians each, mean 0, σ_data
0.5). Ground truth comes from the exact mixture (`edmguide.sampler.gmm.GaussianMixtureDenoiser`).

Models (all `mlp.ToyDenoiser`, shipped as persistent pickles in `assets/`):
- `main`:      width 64, 4096 iterations, trained on class A only (the "conditional" model);
- `guide-cfg`: width 64, 4096 iterations, trained on both classes (the unconditional model of CFG);
- `guide-ag`:  width 32, 512 iterations, trained on class A only (the weaker model of autoguidance).
Training batches are 1024 points (512 for `guide-cfg`, whose targets involve both trees) instead
of the paper's 4096, so that each model trains in under 5 minutes on one CPU core (assets/TRAINING.md).

Figure: samples of class A from the ground truth, from `main` without guidance, with CFG (w = 4,
guide `guide-cfg`) and with autoguidance (w = 3, guide `guide-ag`); 32 Heun steps, σ_max 5.
"""

import json
import os
import pickle
import time

import numpy as np
import torch

from edmguide.demo.data import one_hot
from edmguide.sampler.gmm import GaussianMixtureDenoiser
from edmguide.sampler.guidance import GuidanceSchedule
from edmguide.util.images import atomic_write
from edmguide.nets.loading import load_pickle
from edmguide.sampler.sampling import SamplerOptions, sample
from edmguide.toys import mlp
from edmguide.toys.common import plt, save_figure
from edmguide.toys.tree import make_two_class_trees

#----------------------------------------------------------------------------
# Settings.

ASSETS_DIR = os.path.join(os.path.dirname(__file__), 'assets')
TREE_SEED = 0
CLASS_A = 0
SIGMA_MIN, SIGMA_MAX, RHO, NUM_STEPS = 0.002, 5.0, 7, 32
CFG_WEIGHT, AG_WEIGHT = 4.0, 3.0
NUM_SAMPLES = 4000

# name -> width, iterations, batch size, training class (None = both classes), seed
MODELS = {
    'main': dict(width=64, num_iters=4096, batch_size=1024, class_idx=CLASS_A, seed=1),
    'guide-cfg': dict(width=64, num_iters=4096, batch_size=512, class_idx=None, seed=2),
    'guide-ag': dict(width=32, num_iters=512, batch_size=1024, class_idx=CLASS_A, seed=3),
}


def model_path(name, assets_dir=ASSETS_DIR):
    return os.path.join(assets_dir, f'ag2d-{name}.pkl')

#----------------------------------------------------------------------------
# Ground truth.

def ground_truth(mixture=None, dtype=torch.float64):
    """Conditional ideal denoiser (label_dim 2) of the two trees (or of `mixture`), float64 by default;
    float32 (about twice as fast) for the training targets and the density backgrounds."""
    mixture = mixture if mixture is not None else make_two_class_trees(TREE_SEED)
    comps = zip(mixture.weights / mixture.num_classes, mixture.means, mixture.covs, mixture.classes)
    return GaussianMixtureDenoiser(comps, label_dim=mixture.num_classes, dtype=dtype)

#----------------------------------------------------------------------------
# Training.

def train_model(name, *, assets_dir=ASSETS_DIR, log=print):
    """Train one model of `MODELS` against the exact mixture; write its pickle and JSON log."""
    cfg = MODELS[name]
    mixture = make_two_class_trees(TREE_SEED)
    subset = mixture if cfg['class_idx'] is None else mixture.select(cfg['class_idx'])
    data = ground_truth(subset)
    targets = ground_truth(subset, torch.float32)            # no labels: the whole of `subset`
    sample_data = lambda n, gen: data.sample_data(n, generator=gen)[0].to(torch.float32)
    torch.manual_seed(cfg['seed'])
    net = mlp.ToyDenoiser(width=cfg['width'])
    start, cpu_start = time.time(), time.process_time()
    ema, history = mlp.train(net, sample_data, targets, num_iters=cfg['num_iters'],
                             batch_size=cfg['batch_size'], seed=cfg['seed'], log=log, log_every=256)
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    atomic_write(model_path(name, assets_dir), pickle.dumps(ema))
    record = dict(name=name, **cfg, seconds=round(seconds, 1), cpu_seconds=round(cpu_seconds, 1), threads=torch.get_num_threads(),
                  final_loss=history[-1][1], history=[dict(iter=i, loss=round(l, 5), seconds=round(s, 1))
                                                       for i, l, s in history])
    atomic_write(os.path.join(assets_dir, f'ag2d-{name}.json'), json.dumps(record, indent=1).encode())
    return ema, record


def load_models(assets_dir=ASSETS_DIR):
    """{name: ToyDenoiser} of the shipped (or retrained) pickles."""
    return {name: load_pickle(model_path(name, assets_dir)).eval() for name in MODELS}


def denoiser_error(net, truth, sigma, *, class_idx=CLASS_A, n=2048, seed=0):
    """E|D_net − D_ideal|² / σ² (per point, summed over the 2 coordinates) at noise level `sigma`,
    for x drawn from class `class_idx` (None = both classes) noised to `sigma`."""
    gen = torch.Generator().manual_seed(seed)
    y = truth.sample_data(n, class_idx, generator=gen)[0]
    x = y + sigma * torch.randn(y.shape, generator=gen, dtype=y.dtype)
    labels = None if class_idx is None else one_hot(torch.full([n], class_idx), truth.label_dim).to(torch.float64)
    ref = truth(x, torch.tensor(sigma, dtype=torch.float64), labels)
    out = net(x.to(torch.float32), torch.tensor(sigma)).to(torch.float64)
    return float(((out - ref) ** 2).sum(1).mean() / sigma ** 2)

#----------------------------------------------------------------------------
# Sampling and figure.

def methods(models):
    """(title, net, gnet, GuidanceSchedule) of the three model panels."""
    return (('No guidance', models['main'], None, GuidanceSchedule.none()),
            (f'CFG, w = {CFG_WEIGHT:g} (guide: unconditional)', models['main'], models['guide-cfg'],
             GuidanceSchedule.constant(CFG_WEIGHT)),
            (f'Autoguidance, w = {AG_WEIGHT:g} (guide: small, short-trained)', models['main'], models['guide-ag'],
             GuidanceSchedule.constant(AG_WEIGHT)))


def sample_points(net, gnet, guidance, *, num_samples=NUM_SAMPLES, seed=0):
    """Class-A samples [n, 2] from the shared sampler (32 Heun steps, σ_max 5)."""
    noise = torch.randn([num_samples, 2], generator=torch.Generator().manual_seed(seed))
    schedule = SamplerOptions(NUM_STEPS, SIGMA_MIN, SIGMA_MAX, RHO).schedule()
    with torch.no_grad():
        return sample(net, noise, None, gnet=gnet, guidance=guidance, schedule=schedule).numpy()


def render(path, models=None, *, num_samples=None, seed=0):
    """Write the four-panel figure to `path`; return {title: samples [n, 2]}."""
    num_samples = num_samples or NUM_SAMPLES
    models = models if models is not None else load_models()
    mixture = make_two_class_trees(TREE_SEED)
    gen = np.random.default_rng(seed)
    panels = [('Ground truth (class A)', mixture.sample(num_samples, gen, CLASS_A))]
    for title, net, gnet, guidance in methods(models):
        panels.append((title, sample_points(net, gnet, guidance, num_samples=num_samples, seed=seed)))

    xs, ys, dens = _density_grid(mixture)
    background = _background_image(dens)
    fig, axes = plt.subplots(1, 4, figsize=(18, 5.2))
    for ax, (title, pts) in zip(axes, panels):
        ax.imshow(background, extent=(xs[0], xs[-1], ys[0], ys[-1]), origin='lower', interpolation='bilinear')
        ax.scatter(pts[:, 0], pts[:, 1], s=1.2, c='k', alpha=0.6, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(ys[0], ys[-1])
        ax.set_aspect('equal')
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle('Autoguidance 2D toy: samples of class A (black) over the true densities of class A (orange) '
                 'and class B (grey)', fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)
    return dict(panels)


def _density_grid(mixture, res=300):
    """Grid axes and the exact data density of each class on it (float32)."""
    xs = np.linspace(-1.35, 1.6, res)
    ys = np.linspace(-1.2, 1.1, int(res * 2.3 / 2.95))
    gx, gy = np.meshgrid(xs, ys)
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    dens = []
    for c in range(mixture.num_classes):
        density = ground_truth(mixture.select(c), torch.float32)
        log_p = torch.cat([density.log_density(chunk) for chunk in pts.split(16384)])
        dens.append(log_p.exp().numpy().reshape(gx.shape))
    return xs, ys, dens


def _background_image(dens):
    """RGB image: white, tinted orange by class A's density and grey by class B's (square-root scale)."""
    rgb = np.ones(dens[0].shape + (3,))
    for d, color in ((dens[1 - CLASS_A], (0.55, 0.55, 0.55)), (dens[CLASS_A], (1.0, 0.5, 0.05))):
        a = np.sqrt(d / np.percentile(d, 99.5)).clip(0, 1)[..., None] * 0.55
        rgb = rgb * (1 - a) + np.asarray(color) * a
    return rgb.clip(0, 1)

#----------------------------------------------------------------------------
