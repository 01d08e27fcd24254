"""Small deterministic stand-ins for networks, shared by the sampler/guidance tests."""

import torch

from edmguide.sampler.gmm import GaussianMixtureDenoiser


class ToyNet:
    """A cheap random denoiser made of correctly rounded elementwise ops only (no transcendental
    functions, no matmul, label dependence by indexing), so every row is bit-independent of the
    batch; 4x4x4 = 64 values per sample keeps all batch sizes on the same vectorised code path."""

    def __init__(self, seed=0, channels=4, resolution=4, label_dim=4, sigma_min=0.0, sigma_max=float('inf'),
                 round_sigma=None):
        g = torch.Generator().manual_seed(seed)
        shape = [channels, resolution, resolution]
        self.a = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        self.b = torch.randn(shape, generator=g, dtype=torch.float64) * 0.3
        self.m = torch.randn([max(label_dim, 1)] + shape, generator=g, dtype=torch.float64) * 0.5
        self.img_channels, self.img_resolution, self.label_dim = channels, resolution, label_dim
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._round = round_sigma
        self.calls = []  # (sigma, had_labels) per call

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        return self._round(sigma) if self._round is not None else sigma

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append((float(sigma), class_labels is not None))
        dt = x.dtype
        s = torch.as_tensor(sigma, dtype=dt).reshape(-1, 1, 1, 1)
        a = self.a.to(dt)
        extra = x * self.b.to(dt) / (1 + x * x)
        if self.label_dim and class_labels is not None:
            extra = extra + self.m.to(dt)[class_labels.argmax(dim=1)]
        out = x * (a / (a + s * s)) + extra * (s / (1 + s))
        return out


def two_mode_mixture(std=0.1, prior_b=0.9):
    """Paper Fig. 1 in miniature: class 0 = modes at -1 and +1 (equal mass), class 1 = a mode at +1
    identical to class 0's, with a larger prior, so p(class 0 | x) favours -1 at high noise."""
    prior_a = 1 - prior_b
    return GaussianMixtureDenoiser([
        (prior_a / 2, -1.0, std ** 2, 0),
        (prior_a / 2, +1.0, std ** 2, 0),
        (prior_b, +1.0, std ** 2, 1),
    ])


def one_hot(n, label_dim, cls, dtype=torch.float64):
    labels = torch.zeros(n, label_dim, dtype=dtype)
    labels[:, cls] = 1
    return labels


def schedule_of(net, mode='edm2', num_steps=32, dtype=None):
    """The sampler's Schedule for `net` with these options (the tensor and the resolved intervals)."""
    from edmguide.sampler.schedule import SamplerOptions
    return SamplerOptions(num_steps=num_steps, mode=mode, dtype=dtype).schedule(net)


def sigmas_of(net, mode='edm2', num_steps=32, dtype=None):
    """The noise-level tensor the sampler runs on for `net` with these options."""
    return schedule_of(net, mode, num_steps, dtype).sigmas
