"""Converters between uint8 RGB pixels and the space a network works in.

EDM2 pickles carry one of these objects as their `encoder`: `StandardRGBEncoder` for pixel-space
nets (values in [-1, 1]) and `StabilityVAEEncoder` for latent-space nets (Stable Diffusion VAE
latents, standardized per channel). The VAE itself is never pickled; it is loaded lazily on first
use, so `diffusers` is only needed by latent-space models. This file's source travels inside pickles,
hence the short list of module-level imports.
"""

import os
import warnings
import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc

#----------------------------------------------------------------------------

@persistence.persistent_class
class Encoder:
    """Interface: pixels (uint8 NCHW, 3 channels) -> encode_pixels -> encode_latents -> net space -> decode -> pixels."""

    def __init__(self):
        pass

    def init(self, device):
        """Prepare heavy resources on `device`; nothing to do by default."""
        pass

    def __getstate__(self):
        return self.__dict__

    def encode(self, x):
        return self.encode_latents(self.encode_pixels(x))

    def encode_pixels(self, x):
        """Deterministic, expensive part of encoding (can be cached for a dataset)."""
        raise NotImplementedError

    def encode_latents(self, x):
        """Cheap, possibly random, part of encoding that yields what the network sees."""
        raise NotImplementedError

    def decode(self, x):
        """Network space -> uint8 pixels."""
        raise NotImplementedError

#----------------------------------------------------------------------------

@persistence.persistent_class
class StandardRGBEncoder(Encoder):
    """Pixel-space nets: uint8 [0, 255] <-> float32 [-1, 1]."""

    def __init__(self):
        super().__init__()

    def encode_pixels(self, x):
        return x

    def encode_latents(self, x):
        return x.to(torch.float32) / 127.5 - 1

    def decode(self, x):
        # Adding 128 instead of 127.5 makes the truncating uint8 cast round to nearest.
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)

#----------------------------------------------------------------------------

@persistence.persistent_class
class StabilityVAEEncoder(Encoder):
    """Latent-space nets: Stable Diffusion VAE latents scaled to mean `final_mean`, std `final_std`.

    `raw_mean`/`raw_std` are the per-channel statistics of the raw VAE latents of the training set;
    the constants are kept in float32 exactly as in the released pickles.
    """

    def __init__(self, vae_name='stabilityai/sd-vae-ft-mse', raw_mean=(5.81, 3.25, 0.12, -2.15),
            raw_std=(4.17, 4.62, 3.71, 3.28), final_mean=0, final_std=0.5, batch_size=8):
        super().__init__()
        self.vae_name = vae_name
        self.scale = np.float32(final_std) / np.float32(raw_std)
        self.bias = np.float32(final_mean) - np.float32(raw_mean) * self.scale
        self.batch_size = int(batch_size)
        self._vae = None

    def __getstate__(self):
        return dict(self.__dict__, _vae=None) # The VAE is reloaded, never pickled.

    def init(self, device):
        super().init(device)
        if self._vae is None:
            self._vae = load_stability_vae(self.vae_name, device=device)
        else:
            self._vae.to(device)

    def _per_channel(self, x, values):
        return misc.const_like(x, values).reshape(1, -1, 1, 1)

    def encode_pixels(self, x):
        """uint8 pixels -> 8 channels: mean and std of the VAE posterior."""
        self.init(x.device)
        x = x.to(torch.float32) / 255
        chunks = []
        for batch in x.split(self.batch_size):
            dist = self._vae.encode(batch)['latent_dist']
            chunks.append(torch.cat([dist.mean, dist.std], dim=1))
        return torch.cat(chunks)

    def encode_latents(self, x):
        """Sample from the posterior (global torch RNG) and standardize."""
        mean, std = x.to(torch.float32).chunk(2, dim=1)
        x = mean + torch.randn_like(mean) * std
        return x * self._per_channel(x, self.scale) + self._per_channel(x, self.bias)

    def decode(self, x):
        self.init(x.device)
        x = x.to(torch.float32)
        x = (x - self._per_channel(x, self.bias)) / self._per_channel(x, self.scale)
        x = torch.cat([self._vae.decode(batch)['sample'] for batch in x.split(self.batch_size)])
        return x.clamp(0, 1).mul(255).to(torch.uint8)

#----------------------------------------------------------------------------

def load_stability_vae(vae_name='stabilityai/sd-vae-ft-mse', device=torch.device('cpu')):
    """The float32 VAE in eval mode, from the dnnlib cache if present, else downloaded into it.

    The cache is `<dnnlib cache>/diffusers` in the Hugging Face hub layout, so machines without
    network access work once the files are placed there.
    """
    import dnnlib
    cache_dir = dnnlib.make_cache_dir_path('diffusers')
    os.environ['HF_HUB_DISABLE_SYMLINKS_WARNING'] = '1'
    os.environ['HF_HUB_DISABLE_PROGRESS_BARS'] = '1'
    os.environ['HF_HOME'] = cache_dir
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError(f'decoding latents with {vae_name} needs the "diffusers" package (pip install diffusers)') from exc
    with warnings.catch_warnings():
        # Deprecation chatter between diffusers and huggingface_hub versions; not actionable by users.
        warnings.filterwarnings('ignore', message='.*(local_dir_use_symlinks|resume_download).*')
        try:
            vae = diffusers.models.AutoencoderKL.from_pretrained(vae_name, cache_dir=cache_dir, local_files_only=True)
        except Exception:
            vae = diffusers.models.AutoencoderKL.from_pretrained(vae_name, cache_dir=cache_dir)
    return vae.eval().requires_grad_(False).to(device)

#----------------------------------------------------------------------------
