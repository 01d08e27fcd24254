"""Offline stand-ins for the metric detectors, placed where the caches would hold the real ones.

`install_fake_detectors(cache_dir)` writes a fake Inception pickle to
`<cache>/downloads/<md5(url)>_inception-2015-12-05.pkl` (what `dnnlib.util.open_url` serves
offline), a fake VGG-16 pickle (precision/recall) next to it, and a fake torch-hub checkout `<cache>/torch_hub/facebookresearch_dinov2_main` whose
hubconf defines `dinov2_vitl14`. The fakes are cheap, deterministic functions of the pixels, so
tests can recompute the expected features independently.
"""

import hashlib
import io
import os
import pickle
import textwrap
import zipfile

import numpy as np
import PIL.Image
import torch

INCEPTION_URL = ('https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/'
                 'files/metrics/inception-2015-12-05.pkl')
VGG16_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pkl'

#----------------------------------------------------------------------------
# Fake detectors.

class FakeInception(torch.nn.Module):
    """Called like NVIDIA's Inception pickle: uint8 NCHW RGB of any size -> float32 [N, 15]."""

    def forward(self, x, return_features=False):
        assert return_features and x.dtype == torch.uint8 and x.shape[1] == 3
        return fake_inception_features(x)

def fake_inception_features(x):
    """The fake's features: 2x2 average pooling per channel, plus per-channel std."""
    x = torch.as_tensor(x).to(torch.float32) / 255
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
    return torch.cat([pooled, x.std(dim=(2, 3))], dim=1)

class FakeVGG16(torch.nn.Module):
    """Called like NVIDIA's VGG-16 pickle: uint8 NCHW RGB -> float32 [N, 12]."""

    def forward(self, x, return_features=False):
        assert return_features and x.dtype == torch.uint8 and x.shape[1] == 3
        return fake_vgg16_features(x)

def fake_vgg16_features(x):
    """The fake's features: 2x2 average pooling per channel, in 0..10 units (float16 range for distances)."""
    return torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(x).to(torch.float32) / 25.5, 2).flatten(1)

FAKE_HUBCONF = textwrap.dedent('''\
    """Fake DINOv2 hub entry point for offline tests (returns a tiny module)."""
    import torch
    dependencies = ['torch']

    class FakeDino(torch.nn.Module):
        def forward(self, x):
            assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, 224, 224), x.shape
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
            return torch.cat([pooled, x.mean(dim=(2, 3))], dim=1)

    def dinov2_vitl14(pretrained=True, **kwargs):
        return FakeDino().train()
    ''')

def install_fake_detectors(cache_dir):
    """Fill a dnnlib cache dir with the fake Inception pickle and the fake DINOv2 hub repo."""
    downloads = os.path.join(cache_dir, 'downloads')
    os.makedirs(downloads, exist_ok=True)
    key = hashlib.md5(INCEPTION_URL.encode('utf-8')).hexdigest()
    with open(os.path.join(downloads, f'{key}_inception-2015-12-05.pkl'), 'wb') as f:
        pickle.dump(FakeInception(), f)
    key = hashlib.md5(VGG16_URL.encode('utf-8')).hexdigest()
    with open(os.path.join(downloads, f'{key}_vgg16.pkl'), 'wb') as f:
        pickle.dump(FakeVGG16(), f)
    repo = os.path.join(cache_dir, 'torch_hub', 'facebookresearch_dinov2_main')
    os.makedirs(repo, exist_ok=True)
    with open(os.path.join(repo, 'hubconf.py'), 'w', encoding='utf-8') as f:
        f.write(FAKE_HUBCONF)
    return cache_dir

#----------------------------------------------------------------------------
# Image sets.

def random_images(num, seed=0, size=16, channels=3):
    """uint8 NHWC images with some structure (per-image brightness and colour)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=[num, 1, 1, channels])
    noise = rng.integers(-60, 61, size=[num, size, size, channels])
    return np.clip(base + noise, 0, 255).astype(np.uint8)

def png_bytes(image):
    image = np.asarray(image)
    pil = PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format='png')
    return buf.getvalue()

def write_image_dir(path, images, names=None):
    os.makedirs(path, exist_ok=True)
    names = names or [f'{i:06d}.png' for i in range(len(images))]
    for name, image in zip(names, images):
        full = os.path.join(path, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'wb') as f:
            f.write(png_bytes(image))
    return str(path)

def write_image_zip(path, images, extra=None):
    """Zip of `000000.png`, ... (stored, as guidance-interval's generate_zip), plus `extra` entries."""
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        for i, image in enumerate(images):
            z.writestr(f'{i:06d}.png', png_bytes(image))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return str(path)

def reference_fd(features1, features2):
    """Upstream formula with scipy's sqrtm (float64), as the independent reference."""
    import warnings
    import scipy.linalg
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * root)))

def fd_tolerance(features1, features2):
    """Absolute bound on how far two float64 evaluations of the FD of these feature sets may differ.

    Both sides get the same float32 features and differ only in float64 linear algebra. The
    trace terms carry ~D * eps relative to their size. The square-root term is the weak one: the
    test sets have fewer images than features, so S1 S2 is singular, and an eigenvalue that is 0
    in exact arithmetic comes out as +-delta with delta ~ D * eps * |S1| |S2|, whose square root
    is sqrt(delta), once per null eigenvalue (at most D of them). A factor 4 covers both sides.
    """
    eps = np.finfo(np.float64).eps
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    dim = s1.shape[0]
    norm = np.linalg.norm(s1, 2) * np.linalg.norm(s2, 2)
    scale = np.trace(s1) + np.trace(s2) + np.square(f1.mean(0) - f2.mean(0)).sum()
    return 4 * (dim * np.sqrt(dim * eps * norm) + dim * eps * scale)

def assert_prints_as(value, expected, tol, digits=2):
    """`value` within `tol` of `expected`, and `expected` far enough from a rounding boundary that
    any value within `tol` prints with the same `digits` decimals on every machine."""
    assert abs(value - expected) <= tol, (value, expected, tol)
    step = 10.0 ** -digits
    assert abs((expected / step) % 1 - 0.5) * step > tol, 'test data too close to a rounding boundary'

#----------------------------------------------------------------------------
