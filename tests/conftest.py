"""Shared fixtures: tiny EDM2 networks with random weights, saved as EDM2-style pickles.

Every parameter (the gains included, which start at zero in a fresh network) is set to a random
value, so the networks' outputs depend on every weight and on the class label.
"""

import os
import pickle
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)


def make_tiny_net(label_dim, seed, *, img_channels=3, resolution=16, channels=8):
    """A small EDM2 Precond with all parameters random (deterministic for a seed)."""
    import training.networks_edm2 as networks
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = networks.Precond(resolution, img_channels, label_dim, model_channels=channels, channel_mult=[1, 2],
                           num_blocks=1, attn_resolutions=[resolution // 2])
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if param.ndim == 0 else 1))
    return net.eval().requires_grad_(False)


def save_network_pickle(path, net, encoder=None):
    """Write an EDM2-style pickle: EasyDict(encoder=..., ema=net)."""
    import dnnlib
    from training.encoders import StandardRGBEncoder
    with open(path, 'wb') as f:
        pickle.dump(dnnlib.EasyDict(encoder=encoder or StandardRGBEncoder(), ema=net), f)
    return str(path)


@pytest.fixture(scope='session')
def tiny_pickles(tmp_path_factory):
    """Paths of tiny pickles: cond (1000 classes, as ImageNet), uncond (label_dim 0), bad (smaller, 1000 classes)."""
    folder = tmp_path_factory.mktemp('tiny-nets')
    return dict(
        cond=save_network_pickle(folder / 'tiny-cond.pkl', make_tiny_net(1000, 1)),
        uncond=save_network_pickle(folder / 'tiny-uncond.pkl', make_tiny_net(0, 2)),
        bad=save_network_pickle(folder / 'tiny-bad.pkl', make_tiny_net(1000, 3, channels=4)),
    )


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A dnnlib cache holding fake FID/DINOv2 detectors, used through DNNLIB_CACHE_DIR (no network)."""
    import dnnlib
    import helpers_metrics
    from edmguide.metrics import detectors
    cache_dir = helpers_metrics.install_fake_detectors(str(tmp_path / 'cache'))
    monkeypatch.setenv('DNNLIB_CACHE_DIR', cache_dir)
    dnnlib.util.set_cache_dir(None)
    detectors.clear_detector_cache()
    yield cache_dir
    detectors.clear_detector_cache()
