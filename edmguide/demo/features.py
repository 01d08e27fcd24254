"""The demo feature network: a small CNN digit classifier used like NVIDIA's Inception pickle.

`DigitFeatureNet` is called as `net(x, return_features=False)` with x uint8 NCHW (1 channel; 3
channels are averaged to gray; other sizes are resized to the training resolution) and returns
logits [N, 10], or the 64-dimensional penultimate features [N, 64] (float32) when
`return_features=True`. Fréchet distances between generated and real digits in this feature space
("FD_digits") let the demo measure what guidance does in seconds on a CPU.

This file's source travels inside `digits-features.pkl` (the class is persistent), so only light
modules are imported at module level; the training function imports the data lazily.
"""

import copy
import time

import numpy as np
import torch

from torch_utils import persistence

#----------------------------------------------------------------------------
# Network.

FEATURE_DIM = 64


@persistence.persistent_class
class DigitFeatureNet(torch.nn.Module):
    """conv(32) x2, pool, conv(64) x2, pool, linear -> 64 features, ReLU, linear -> 10 logits."""

    def __init__(self, img_resolution=16, num_classes=10, feature_dim=FEATURE_DIM, dropout=0.2):
        super().__init__()
        self.img_resolution = img_resolution
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        conv = lambda cin, cout: torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.trunk = torch.nn.Sequential(
            conv(1, 32), torch.nn.ReLU(), conv(32, 32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            conv(32, 64), torch.nn.ReLU(), conv(64, 64), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten())
        self.embed = torch.nn.Linear(64 * (img_resolution // 4) ** 2, feature_dim)
        self.dropout = torch.nn.Dropout(dropout)
        self.classify = torch.nn.Linear(feature_dim, num_classes)

    def preprocess(self, x):
        """uint8 NCHW (1 or 3 channels, any size) -> float32 [N, 1, R, R] in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f'expected NCHW images with 1 or 3 channels, got shape {tuple(x.shape)}')
        x = x.to(torch.float32)
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[2:] != (self.img_resolution, self.img_resolution):
            x = torch.nn.functional.interpolate(x, size=(self.img_resolution, self.img_resolution),
                                                mode='bilinear', align_corners=False, antialias=True)
        return x / 127.5 - 1

    def forward(self, x, return_features=False):
        features = self.embed(self.trunk(self.preprocess(x)))
        if return_features:
            return features
        return self.classify(self.dropout(torch.relu(features)))

#----------------------------------------------------------------------------
# Training (light augmentation: random shifts of up to one pixel and a random contrast gain).

def augment(images, generator):
    """Randomly shifted (by -1..1 pixels, zero fill) and brightness-scaled (0.8..1.2) uint8 images."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, [1, 1, 1, 1])
    dy = torch.randint(0, 3, [n], generator=generator)
    dx = torch.randint(0, 3, [n], generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    gain = 0.8 + 0.4 * torch.rand([n, 1, 1, 1], generator=generator)
    return (out.to(torch.float32) * gain).round().clamp(0, 255).to(torch.uint8)


def train_feature_net(images, labels, *, seed=0, steps=1000, batch_size=128, lr=2e-3,
                      verbose=True):
    """Train a `DigitFeatureNet` on uint8 images / int64 labels; returns (net in eval mode, log dict)."""
    from edmguide.demo.data import EpochSampler
    torch.manual_seed(seed)
    net = DigitFeatureNet(img_resolution=images.shape[-1])
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    sampler = EpochSampler(len(images), batch_size, seed=seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    losses = []
    start = time.time()
    net.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group['lr'] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))  # cosine decay to zero
        idx = sampler.next()
        logits = net(augment(images[idx], gen))
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if verbose and (step + 1) % 100 == 0:
            print(f'features: step {step + 1:5d}/{steps}  loss {np.mean(losses[-100:]):.4f}  '
                  f'{time.time() - start:6.1f}s', flush=True)
    net.eval().requires_grad_(False)
    log = dict(steps=steps, batch_size=batch_size, lr=lr, seconds=round(time.time() - start, 1),
               final_loss=float(np.mean(losses[-100:])))
    return net, log


@torch.no_grad()
def accuracy(net, images, labels, batch_size=512):
    """Fraction of `images` the classifier labels correctly."""
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((net(images[i:i + batch_size]).argmax(dim=1) == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)

#----------------------------------------------------------------------------
# Reference statistics (EDM2 format).

@torch.no_grad()
def feature_statistics(net, images, batch_size=512):
    """Float64 mean and covariance (N - 1 normalisation) of the features of uint8 `images`."""
    from edmguide.metrics.stats import FeatureStats
    acc = FeatureStats()
    for i in range(0, len(images), batch_size):
        acc.update(net(images[i:i + batch_size], return_features=True))
    return acc.mean_and_cov()


def reference_stats(net, images, metric='fd_digits', pr_metric=None):
    """`{'num_images': N, metric: {'mu', 'sigma'}}` for uint8 `images` under the feature net, plus
    `pr_metric: {'features': float16 [N, D]}` (the features themselves, for precision/recall) if given."""
    from edmguide.metrics.stats import make_stats_dict
    stats = make_stats_dict(len(images), {metric: feature_statistics(net, images)})
    if pr_metric is not None:
        with torch.no_grad():
            features = torch.cat([net(images[i:i + 512], return_features=True) for i in range(0, len(images), 512)])
        stats[pr_metric] = {'features': (features * PR_FEATURE_SCALE).to(torch.float16).numpy()}
    return stats


def release_copy(net):
    """CPU, eval, no-grad, float32 deep copy (the state the pickle stores)."""
    return copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float32)

#----------------------------------------------------------------------------
# Shipped files: digits-features.pkl (+ log) and digits-ref.pkl.

FEATURES_FILE = 'digits-features.pkl'
REF_FILE = 'digits-ref.pkl'
METRIC = 'fd_digits'
PR_METRIC = 'pr_digits' # precision/recall in the same feature space
PR_FEATURE_SCALE = 1 / 16 # |features|^2 reach ~7e4; precision/recall's float16 distances need < 65504


def train_demo_features(outdir, *, seed=0, steps=1000, verbose=True):
    """Train the feature net on 80% of the digits, report held-out accuracy, write the pickle + log."""
    import json
    import os
    import pickle
    from edmguide.demo.data import load_digits_uint8, train_test_split
    from edmguide.util.images import atomic_write
    images, labels = load_digits_uint8()
    train_idx, test_idx = train_test_split(len(images), test_fraction=0.2, seed=seed)
    net, log = train_feature_net(images[train_idx], labels[train_idx], seed=seed, steps=steps, verbose=verbose)
    log.update(file=FEATURES_FILE, seed=seed, torch_version=torch.__version__,
               num_threads=torch.get_num_threads(), num_train=len(train_idx), num_test=len(test_idx),
               train_accuracy=accuracy(net, images[train_idx], labels[train_idx]),
               test_accuracy=accuracy(net, images[test_idx], labels[test_idx]),
               num_params=sum(p.numel() for p in net.parameters()))
    blob = pickle.dumps(release_copy(net))
    log['file_bytes'] = len(blob)
    atomic_write(os.path.join(outdir, FEATURES_FILE), blob)
    atomic_write(os.path.join(outdir, FEATURES_FILE.replace('.pkl', '.log.json')),
                 (json.dumps(log, indent=2) + '\n').encode('utf-8'))
    if verbose:
        print(f'features: held-out accuracy {log["test_accuracy"]:.4f} ({len(test_idx)} images), '
              f'{log["seconds"]:.0f}s', flush=True)
    return log


def compute_demo_reference(outdir, *, verbose=True):
    """Reference statistics and features of all 1797 digits under `<outdir>/digits-features.pkl` -> digits-ref.pkl."""
    import os
    from edmguide.demo.data import load_digits_uint8
    from edmguide.nets.loading import load_pickle
    from edmguide.metrics.stats import save_stats
    net = load_pickle(os.path.join(outdir, FEATURES_FILE))
    images, _ = load_digits_uint8(net.img_resolution)
    stats = reference_stats(net, images, METRIC, PR_METRIC)
    save_stats(stats, os.path.join(outdir, REF_FILE))
    if verbose:
        print(f'ref: wrote {REF_FILE} ({stats["num_images"]} images, {METRIC} dim {len(stats[METRIC]["mu"])}, '
              f'{PR_METRIC} features)')
    return stats

#----------------------------------------------------------------------------
