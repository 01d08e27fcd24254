"""Tests for training/encoders.py (offline: the VAE is a small fake or a tiny local AutoencoderKL)."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

import dnnlib
from training import encoders

SPEC_SCALE = [0.11990407, 0.10822511, 0.13477089, 0.15243903]
SPEC_BIAS = [-0.69664264, -0.3517316, -0.016172506, 0.32774392]

#----------------------------------------------------------------------------

class FakeLatentDist:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

class FakeVAE:
    """Stands in for diffusers' AutoencoderKL: records its inputs, simple invertible maps."""

    def __init__(self):
        self.encoded, self.decoded, self.devices = [], [], []
        self.unpicklable = lambda: None

    def encode(self, x):
        self.encoded.append(x)
        mean = torch.nn.functional.avg_pool2d(x, 8)[:, :3].repeat(1, 2, 1, 1)[:, :4]
        return {'latent_dist': FakeLatentDist(mean, torch.full_like(mean, 0.1))}

    def decode(self, z):
        self.decoded.append(z)
        return {'sample': torch.sigmoid(z[:, :3]).repeat_interleave(8, 2).repeat_interleave(8, 3)}

    def to(self, device):
        self.devices.append(device)
        return self

def vae_encoder(batch_size=2):
    enc = encoders.StabilityVAEEncoder(batch_size=batch_size)
    enc._vae = FakeVAE()
    return enc

#----------------------------------------------------------------------------

def test_standard_rgb_encoder_maps_to_minus_one_one_and_back_exactly():
    enc = encoders.StandardRGBEncoder()
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(1, 3, 1, 1)
    latents = enc.encode(pixels)
    assert latents.dtype == torch.float32
    assert latents.min().item() == -1 and latents.max().item() == 1
    assert torch.equal(latents, pixels.float() / 127.5 - 1)
    assert torch.equal(enc.decode(latents), pixels)

def test_standard_rgb_decode_rounds_and_clips():
    enc = encoders.StandardRGBEncoder()
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5 / 127.5 - 0.01 / 127.5, 1.0, 7.0]).reshape(1, 1, 1, -1)
    assert enc.decode(x).flatten().tolist() == [0, 0, 128, 128, 255, 255]

def test_stability_encoder_constants_are_the_released_float32_values():
    enc = encoders.StabilityVAEEncoder()
    assert enc.scale.dtype == np.float32 and enc.bias.dtype == np.float32
    assert np.array_equal(enc.scale, np.float32(SPEC_SCALE))
    assert np.array_equal(enc.bias, np.float32(SPEC_BIAS))
    assert enc.vae_name == 'stabilityai/sd-vae-ft-mse' and enc.batch_size == 8 and enc._vae is None

def test_stability_decode_unscales_latents_in_batches():
    enc = vae_encoder(batch_size=2)
    z = torch.randn(5, 4, 4, 4)
    out = enc.decode(z)
    vae = enc._vae
    assert [t.shape[0] for t in vae.decoded] == [2, 2, 1]
    scale = torch.tensor(SPEC_SCALE).reshape(1, 4, 1, 1)
    bias = torch.tensor(SPEC_BIAS).reshape(1, 4, 1, 1)
    assert torch.allclose(torch.cat(vae.decoded), (z - bias) / scale, rtol=1e-6, atol=1e-6)
    expected = torch.sigmoid(torch.cat(vae.decoded)[:, :3]).repeat_interleave(8, 2).repeat_interleave(8, 3)
    assert out.dtype == torch.uint8 and out.shape == (5, 3, 32, 32)
    assert torch.equal(out, expected.clamp(0, 1).mul(255).to(torch.uint8))

def test_stability_encode_pixels_returns_mean_and_std_channels():
    enc = vae_encoder(batch_size=3)
    pixels = torch.randint(0, 256, [4, 3, 16, 16], dtype=torch.uint8)
    moments = enc.encode_pixels(pixels)
    assert moments.shape == (4, 8, 2, 2)
    assert torch.equal(torch.cat(enc._vae.encoded), pixels.float() / 255)
    assert [t.shape[0] for t in enc._vae.encoded] == [3, 1]
    assert torch.all(moments[:, 4:] == 0.1)

def test_stability_encode_latents_samples_and_standardizes():
    enc = encoders.StabilityVAEEncoder()
    mean, std = torch.randn(2, 4, 3, 3), torch.rand(2, 4, 3, 3)
    torch.manual_seed(5)
    out = enc.encode_latents(torch.cat([mean, std], dim=1))
    torch.manual_seed(5)
    sample = mean + torch.randn_like(mean) * std
    expected = sample * torch.tensor(SPEC_SCALE).reshape(1, 4, 1, 1) + torch.tensor(SPEC_BIAS).reshape(1, 4, 1, 1)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)

def test_stability_encoder_pickles_without_vae_and_init_moves_existing_vae():
    enc = vae_encoder()
    enc.init('cpu')
    assert enc._vae.devices == ['cpu']
    loaded = pickle.loads(pickle.dumps(enc))      # FakeVAE holds a lambda: pickling it would fail
    assert loaded._vae is None and enc._vae is not None
    assert np.array_equal(loaded.scale, enc.scale) and loaded.batch_size == 2
    assert loaded.init_kwargs == dict(batch_size=2)

#----------------------------------------------------------------------------

def test_vae_loader_finds_hub_cache_layout_under_dnnlib_cache_dir(tmp_path, monkeypatch):
    diffusers = pytest.importorskip('diffusers')
    monkeypatch.setattr(dnnlib.util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    for var in ['HF_HOME', 'HF_HUB_DISABLE_SYMLINKS_WARNING', 'HF_HUB_DISABLE_PROGRESS_BARS']:
        monkeypatch.setenv(var, 'unset-by-test')

    # A tiny AutoencoderKL saved in the Hugging Face hub cache layout.
    torch.manual_seed(0)
    tiny = diffusers.models.AutoencoderKL(block_out_channels=[8], layers_per_block=1, norm_num_groups=4,
        latent_channels=4, down_block_types=['DownEncoderBlock2D'], up_block_types=['UpDecoderBlock2D'])
    repo = tmp_path / 'diffusers' / 'models--stabilityai--sd-vae-ft-mse'
    revision = '0123456789abcdef0123456789abcdef01234567'
    tiny.save_pretrained(repo / 'snapshots' / revision)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    assert json.loads((repo / 'snapshots' / revision / 'config.json').read_text())['latent_channels'] == 4

    calls = []
    original = diffusers.models.AutoencoderKL.from_pretrained.__func__
    def recording_from_pretrained(cls, name, **kwargs):
        calls.append(kwargs)
        return original(cls, name, **kwargs)
    monkeypatch.setattr(diffusers.models.AutoencoderKL, 'from_pretrained', classmethod(recording_from_pretrained))

    vae = encoders.load_stability_vae()
    assert calls == [dict(cache_dir=str(tmp_path / 'diffusers'), local_files_only=True)]
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    assert torch.equal(vae.decoder.conv_in.weight, tiny.decoder.conv_in.weight)
    assert os.environ['HF_HOME'] == str(tmp_path / 'diffusers')

#----------------------------------------------------------------------------
