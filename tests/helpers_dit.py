"""Tiny stand-ins for the DiT network and VAE (the interface of `edmguide.models.dit_net`), built
offline from configs: a random `diffusers.DiTTransformer2DModel` called directly, and a VAE whose
decode is a fixed per-pixel map of the latents."""

import sys
import types

import numpy as np
import torch


class TinyDiT:
    """net(x, t, y) -> (N, 2C, H, W): a random 1-layer DiTTransformer2DModel (4 latent channels,
    4x4 latents, patch 2, 1000 classes + the null row), plus, on the eps channels, the ideal eps
    sqrt(1 - abar_t) x for standard-normal data, so that 250 steps keep the latents of order 1 (a
    purely random eps lets them grow to hundreds and saturates every image)."""

    def __init__(self, seed=0, input_size=4, per_row=False, scale=0.1):
        from diffusers import DiTTransformer2DModel
        torch.manual_seed(seed)
        self.model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=1, sample_size=input_size, patch_size=2,
                                           num_embeds_ada_norm=1000).eval()
        with torch.no_grad():  # a random (not zero) output layer, so every output channel depends on the input
            for p in self.model.parameters():
                p.normal_(0, scale)
        self.in_channels, self.input_size, self.num_classes = 4, input_size, 1000
        self.calls = []  # (batch size, t list, y list) per call, for the evaluation tests
        self.per_row = per_row  # evaluate row by row: no batch coupling through kernel rounding

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], t.tolist(), y.tolist()))
        with torch.no_grad():
            if self.per_row:
                out = torch.cat([self.model(x[k:k + 1], timestep=t[k:k + 1], class_labels=y[k:k + 1]).sample
                                 for k in range(x.shape[0])])
            else:
                out = self.model(x, timestep=t, class_labels=y).sample
            abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t.cpu()]
            ideal = (1 - abar).sqrt().to(x.dtype).to(x.device).reshape(-1, 1, 1, 1) * x
            return torch.cat([out[:, :x.shape[1]] + ideal, out[:, x.shape[1]:]], dim=1)


class TinyVAE:
    """decode(latents) -> uint8 (N, 8H, 8W, 3): the first 3 latent channels, upsampled 8x, mapped to pixels."""

    def decode(self, latents):
        img = latents[:, :3].float().repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        img = (img * 40 + 128).clamp(0, 255).to(torch.uint8)
        return img.permute(0, 2, 3, 1).cpu()


def fake_dit_net_module(calls=None, input_size=4):
    """A module standing in for `edmguide.models.dit_net`: load_dit_network / load_dit_vae returning the tiny models
    (records the loader arguments in `calls` if given)."""
    module = types.ModuleType('edmguide.models.dit_net')

    def load_dit_network(source, *, embedding='dit', device='cpu', dtype=None, num_heads=None):
        if calls is not None:
            calls.append(('load_dit_network', source, embedding))
        return TinyDiT(input_size=input_size, per_row=True)

    def load_dit_vae(name_or_folder=None, *, device='cpu'):
        if calls is not None:
            calls.append(('load_dit_vae', name_or_folder))
        return TinyVAE()

    module.load_dit_network, module.load_dit_vae = load_dit_network, load_dit_vae
    module.EMBEDDINGS = ('dit', 'diffusers')
    return module


def install_fake_loaders(monkeypatch, calls=None, input_size=4):
    monkeypatch.setitem(sys.modules, 'edmguide.models.dit_net', fake_dit_net_module(calls, input_size))
    import edmguide.models
    monkeypatch.setattr(edmguide.models, 'dit_net', sys.modules['edmguide.models.dit_net'], raising=False)


__all__ = ['TinyDiT', 'TinyVAE', 'fake_dit_net_module', 'install_fake_loaders', 'np']
