"""The guidance-interval paper's 1D illustration (GI Figs. 1-2), with the ideal denoiser.

Data: two classes on the real line. Class A (the one we sample) has two modes; class B sits on top
of A's right mode, so there p(A | x) is low. Sampling class A with the exact denoiser of
`edmguide.sampler.gmm` and the shared Heun sampler, three ways:

- no guidance: reproduces p(x | A) (both modes, right widths);
- CFG over all noise levels (guide = the unconditional mixture): at high σ the guide pushes every
  sample away from class B, so the right mode loses most of its mass, and the surviving mass is
  squeezed towards the class-specific extreme;
- CFG only on an interval of middle noise levels: the high-σ steps that decide which mode a sample
  goes to are unguided, so both modes keep their true mass; guidance still acts in the middle.

The figure shows, per method, sample trajectories (x against σ, σ log-scale, high noise on the left)
and a histogram of the final samples against the true class densities.
"""

import matplotlib.lines
import matplotlib.patches
import numpy as np
import torch

from edmguide.demo.data import one_hot
from edmguide.sampler.gmm import GaussianMixtureDenoiser
from edmguide.sampler.guidance import GuidanceSchedule
from edmguide.sampler.sampling import SamplerOptions, sample
from edmguide.toys.common import plt, save_figure, trajectory_recorder

#----------------------------------------------------------------------------
# Settings.

# (weight, mean, variance, class): class 0 = A (two modes), class 1 = B (overlaps A's right mode).
COMPONENTS = (
    (0.25, -1.0, 0.15 ** 2, 0),
    (0.25, 1.0, 0.15 ** 2, 0),
    (0.50, 1.6, 0.35 ** 2, 1),
)
SIGMA_MIN, SIGMA_MAX, RHO, NUM_STEPS = 0.002, 10.0, 7, 32
GUIDANCE_WEIGHT = 4.0
INTERVAL = (0.05, 0.6)         # guided for σ in (0.05, 0.6]
NUM_SAMPLES = 20000
NUM_TRAJECTORIES = 60


def methods():
    """(title, GuidanceSchedule) of the three panels."""
    w = GUIDANCE_WEIGHT
    return (('No guidance', GuidanceSchedule.none()),
            (f'CFG, w = {w:g}, all σ', GuidanceSchedule.constant(w)),
            (f'CFG, w = {w:g}, σ ∈ ({INTERVAL[0]:g}, {INTERVAL[1]:g}]', GuidanceSchedule.sigma_range(w, *INTERVAL)))

#----------------------------------------------------------------------------
# Sampling.

def build_denoiser():
    """Conditional ideal denoiser of the two-class mixture (label_dim 2)."""
    return GaussianMixtureDenoiser(COMPONENTS, label_dim=2)


def sample_class_a(net, guidance, *, num_samples=NUM_SAMPLES, seed=0):
    """Samples of class A and their trajectories: (x [n], sigmas [S+1], traj [S+1, n])."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn([num_samples, 1], generator=gen, dtype=torch.float64)
    labels = one_hot(torch.zeros([num_samples], dtype=torch.int64), 2).to(torch.float64)  # all class A
    schedule = SamplerOptions(NUM_STEPS, SIGMA_MIN, SIGMA_MAX, RHO, dtype=torch.float64).schedule()
    sigmas = schedule.sigmas
    steps = []
    x = sample(net, noise, labels, gnet=net.unconditional(), guidance=guidance, schedule=schedule,
               progress=trajectory_recorder(steps))
    traj = torch.stack([noise[:, 0] * sigmas[0]] + [s[1][:, 0] for s in steps])
    return x[:, 0].numpy(), sigmas.numpy(), traj.numpy()

#----------------------------------------------------------------------------
# Figure.

def _class_density(net, grid, class_idx):
    return net.log_density(torch.as_tensor(grid)[:, None], 0.0, class_idx).exp().numpy()


def render(path, *, num_samples=None, seed=0):
    """Write the three-method figure to `path`; return {title: samples} for inspection."""
    num_samples = num_samples or NUM_SAMPLES
    net = build_denoiser()
    grid = np.linspace(-2.5, 3.0, 600)
    dens_a, dens_b = _class_density(net, grid, 0), _class_density(net, grid, 1)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex='col', gridspec_kw=dict(height_ratios=[1.3, 1]))
    results = {}
    for col, (title, guidance) in enumerate(methods()):
        x, sigmas, traj = sample_class_a(net, guidance, num_samples=num_samples, seed=seed)
        results[title] = x
        _plot_trajectories(axes[0, col], sigmas, traj[:, :NUM_TRAJECTORIES], guidance, title)
        ax = axes[1, col]
        ax.fill_between(grid, dens_b, color='0.8', label='class B density')
        ax.plot(grid, dens_a, color='tab:orange', lw=1.5, label='class A density')
        counts, _, _ = ax.hist(x, bins=np.linspace(-2.5, 3.0, 111), density=True, histtype='step',
                               color='tab:blue', lw=1.2, label='samples (class A)')
        left = (x < 0).mean()
        ax.set_title(f'left mode {left:.0%}, right mode {1 - left:.0%} (true 50% / 50%)', fontsize=9)
        ax.set_xlabel('x')
        ax.set_ylim(0, max(dens_a.max() * 1.6, counts.max() * 1.05))
        if col == 0:
            ax.legend(fontsize=8, loc='upper left')
    fig.suptitle('Guidance interval, 1D toy with the ideal denoiser: sampling class A (two modes) next to class B '
                 '(grey, overlapping A\'s right mode)\ntop: sample paths, from high noise (bottom of each panel) to the '
                 'final sample (top); bottom: final samples against the true class A density', fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return results


def _plot_trajectories(ax, sigmas, traj, guidance, title):
    """x against σ (log-scale, decreasing to the right); the last level σ = 0 is drawn at σ_min/2."""
    s = sigmas.copy()
    s[-1] = SIGMA_MIN / 2
    ends_left = traj[-1] < 0
    for j in range(traj.shape[1]):
        ax.plot(traj[:, j], s, color='tab:purple' if ends_left[j] else 'tab:green', lw=0.6, alpha=0.7)
    handles = [matplotlib.lines.Line2D([], [], color='tab:purple', lw=1.5,
                                       label=f'path ending in the left mode ({ends_left.mean():.0%} of {len(ends_left)})'),
               matplotlib.lines.Line2D([], [], color='tab:green', lw=1.5,
                                       label=f'path ending in the right mode ({1 - ends_left.mean():.0%} of {len(ends_left)})')]
    for lo, hi, w in guidance.segments:
        ax.axhspan(max(lo, s[-1]), min(hi, SIGMA_MAX), color='tab:red', alpha=0.08, lw=0)
    if guidance.segments:
        handles.append(matplotlib.patches.Patch(color='tab:red', alpha=0.15, label=f'guided noise levels (w = {guidance.segments[0][2]:g})'))
    ax.legend(handles=handles, fontsize=7, loc='upper center', framealpha=0.9)
    ax.set_yscale('log')
    ax.invert_yaxis()
    ax.set_xlim(-2.5, 3.0)
    ax.set_title(title)
    ax.set_ylabel('noise level σ (log scale)')

#----------------------------------------------------------------------------
