"""The EDM2 denoiser network (magnitude-preserving U-Net and its preconditioning wrapper).

Written from the compatibility spec so that state_dicts of released EDM2 pickles load strictly
and give the same numbers: every operation, its order and its dtype follow the spec. This file's
source is embedded in the pickles we write, so its module-level imports are kept to numpy, torch
and the two `torch_utils` modules that every loader provides.
"""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc

#----------------------------------------------------------------------------
# Magnitude-preserving primitives.

def normalize(x, dim=None, eps=1e-4):
    """Scale `x` to unit RMS over `dim` (default: all axes but the first); the norm is taken in float32."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=float(np.sqrt(norm.numel() / x.numel())))
    return x / norm.to(x.dtype)

def resample(x, f=(1, 1), mode='keep'):
    """Depthwise 2x down- or upsampling with the separable filter `f` ('keep' returns `x`)."""
    if mode == 'keep':
        return x
    f = np.asarray(f, dtype=np.float32)
    assert f.ndim == 1 and len(f) % 2 == 0
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    kernel = misc.const_like(x, np.outer(f, f)[np.newaxis, np.newaxis, :, :])
    channels = x.shape[1]
    if mode == 'down':
        return torch.nn.functional.conv2d(x, kernel.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=(pad,))
    assert mode == 'up'
    return torch.nn.functional.conv_transpose2d(x, kernel.mul(4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=(pad,))

def mp_silu(x):
    """SiLU rescaled so that a unit-variance Gaussian input keeps unit magnitude."""
    return torch.nn.functional.silu(x) / 0.596

def mp_sum(a, b, t=0.5):
    """Blend `a` towards `b` by `t`, rescaled so that independent unit inputs give a unit output."""
    return a.lerp(b, t) / float(np.sqrt((1 - t) ** 2 + t ** 2))

def mp_cat(a, b, dim=1, t=0.5):
    """Concatenate along `dim` with weights that keep unit magnitude and give `b` the share `t`."""
    na, nb = a.shape[dim], b.shape[dim]
    c = np.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    wa = float(c / np.sqrt(na) * (1 - t))
    wb = float(c / np.sqrt(nb) * t)
    return torch.cat([wa * a, wb * b], dim=dim)

#----------------------------------------------------------------------------
# Fourier embedding of the noise level.

@persistence.persistent_class
class MPFourier(torch.nn.Module):
    """Random Fourier features with unit-RMS output; frequencies and phases are fixed buffers."""

    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        self.register_buffer('freqs', 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer('phases', 2 * np.pi * torch.rand(num_channels))

    def forward(self, x):
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        y = y.cos() * np.sqrt(2)
        return y.to(x.dtype)

#----------------------------------------------------------------------------
# Weight-normalized convolution / fully connected layer.

@persistence.persistent_class
class MPConv(torch.nn.Module):
    """Convolution (kernel [k, k]) or linear layer (kernel []) whose weight is normalized on every use."""

    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1):
        # For float32 weights `.to` returns the parameter itself, so the in-place renormalization
        # during training also changes `w`; this aliasing is part of the reference behaviour.
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w)
        w = w * (gain / np.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))

#----------------------------------------------------------------------------
# Residual block of the U-Net, optionally with self-attention.

@persistence.persistent_class
class Block(torch.nn.Module):
    """Encoder ('enc') or decoder ('dec') residual block with noise-embedding modulation."""

    def __init__(self, in_channels, out_channels, emb_channels, flavor='enc', resample_mode='keep',
            resample_filter=(1, 1), attention=False, channels_per_head=64, dropout=0,
            res_balance=0.3, attn_balance=0.3, clip_act=256):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # Registration order fixes the state_dict order; keep it as in the spec.
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == 'enc' else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads != 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads != 0 else None

    def forward(self, x, emb):
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == 'enc':
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)

        # Residual branch, modulated by the embedding.
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == 'dec' and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        # Self-attention with cosine-similarity keys/queries (normalized per head channel vector).
        if self.num_heads != 0:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum('nhcq,nhck->nhqk', q, k / np.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum('nhqk,nhck->nhcq', w, v)
            y = self.attn_proj(y.reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x

#----------------------------------------------------------------------------
# The U-Net.

@persistence.persistent_class
class UNet(torch.nn.Module):
    """Magnitude-preserving U-Net mapping (scaled noisy image, noise label, class label) to an output image."""

    def __init__(self, img_resolution, img_channels, label_dim, model_channels=192,
            channel_mult=(1, 2, 3, 4), channel_mult_noise=None, channel_mult_emb=None, num_blocks=3,
            attn_resolutions=(16, 8), label_balance=0.5, concat_balance=0.5, **block_kwargs):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        # Embedding of noise level and class label.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        # Encoder; the extra input channel is a constant one (gives the convolutions a bias).
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f'{res}x{res}_conv'] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f'{res}x{res}_down'] = Block(cout, cout, cemb, flavor='enc', resample_mode='down', **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='enc', attention=(res in attn_resolutions), **block_kwargs)

        # Decoder; each 'block' entry consumes one skip connection, last in first out.
        self.dec = torch.nn.ModuleDict()
        skips = [module.out_channels for module in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f'{res}x{res}_in0'] = Block(cout, cout, cemb, flavor='dec', attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = Block(cout, cout, cemb, flavor='dec', **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = Block(cout, cout, cemb, flavor='dec', resample_mode='up', **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='dec', attention=(res in attn_resolutions), **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels):
        # The embedding stays in float32 whatever the dtype of x.
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * np.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, module in self.enc.items():
            x = module(x) if 'conv' in name else module(x, emb)
            skips.append(x)
        for name, module in self.dec.items():
            if 'block' in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = module(x, emb)
        return self.out_conv(x, gain=self.out_gain)

#----------------------------------------------------------------------------
# Preconditioning: the denoiser D(x, sigma, class_labels) built around the U-Net.

@persistence.persistent_class
class Precond(torch.nn.Module):
    """EDM preconditioning around `UNet`, plus a small head predicting the loss log-variance.

    Deliberately has no sigma_min/sigma_max/round_sigma (unlike EDM v1); the loader adds
    neutral ones where a sampler needs them.
    """

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16=True, sigma_data=0.5,
            logvar_channels=128, **unet_kwargs):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False, **unet_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == 'cuda'
        dtype = torch.float16 if use_half else torch.float32

        s = self.sigma_data
        c_skip = s ** 2 / (sigma ** 2 + s ** 2)
        c_out = sigma * s / (sigma ** 2 + s ** 2).sqrt()
        c_in = 1 / (s ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4

        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if return_logvar:
            logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
            return D_x, logvar
        return D_x

#----------------------------------------------------------------------------
