"""Feature statistics (mean, covariance) and the reference files that hold them.

Sums are kept in float64: with 50k images of 2048 features, float32 sums of f^T f lose several
digits of the covariance, which FID then amplifies. Partial sums from several processes are added
with an all-reduce, so the result does not depend on how images were split across ranks.
File format (as upstream EDM2): a pickle of `{'num_images': n, '<metric>': {'mu', 'sigma'}}`, or an
EDM v1 `.npz` with arrays 'mu' and 'sigma' (FID only). Precision/recall metrics store the reference
features themselves instead, as `'<metric>': {'features': float16 [N, D]}`, next to any statistics.
"""

import os
import pickle

import numpy as np
import torch

import dnnlib
from edmguide.errors import UserError
from edmguide.images import atomic_write
from torch_utils import distributed as dist

#----------------------------------------------------------------------------
# Accumulating statistics.

class FeatureStats:
    """Running float64 sums of features and their outer products for one metric."""

    def __init__(self):
        self.num = 0
        self.sum = None
        self.outer = None

    def update(self, features):
        """Add a batch of features [N, D] (any float dtype, any device)."""
        f = features.detach().reshape(features.shape[0], -1).to(torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        elif f.shape[1] != self.sum.shape[0]:
            raise ValueError(f'feature dimension changed from {self.sum.shape[0]} to {f.shape[1]}')
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.num += f.shape[0]

    def all_reduce(self, dim, device):
        """Combine the sums of all ranks; ranks that saw no images contribute zeros of size `dim`."""
        if self.sum is None:
            self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        num = torch.tensor([self.num], dtype=torch.float64, device=self.sum.device)
        for tensor in (self.sum, self.outer, num):
            dist.all_reduce_sum(tensor)
        self.num = int(num.item())
        return self

    def mean_and_cov(self):
        """(mu, sigma) as float64 numpy; sigma is the unbiased (N-1) covariance."""
        if self.num < 2:
            raise UserError(f'need at least 2 images for statistics, got {self.num}')
        mu = self.sum / self.num
        sigma = (self.outer - self.num * torch.outer(mu, mu)) / (self.num - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()

def make_stats_dict(num_images, per_metric):
    """Upstream layout: {'num_images': n, metric: {'mu': ..., 'sigma': ...}, ...}."""
    stats = {'num_images': int(num_images)}
    for name, (mu, sigma) in per_metric.items():
        stats[name] = {'mu': mu, 'sigma': sigma}
    return stats

#----------------------------------------------------------------------------
# Reference files.

def load_reference(path_or_url):
    """Read reference statistics from a .pkl or .npz file or URL (through the download cache).

    Returns the stats dict; an EDM v1 `.npz` (arrays 'mu', 'sigma') becomes {'fid': {...}}.
    """
    is_local = '://' not in str(path_or_url)
    if is_local and not os.path.isfile(path_or_url):
        raise UserError(f'{path_or_url}: reference statistics file not found')
    try:
        with dnnlib.util.open_url(path_or_url, verbose=False) as f:
            if str(path_or_url).lower().endswith('.npz'):
                with np.load(f, allow_pickle=False) as npz:
                    ref = {'fid': {key: npz[key] for key in npz.files}}
            else:
                ref = pickle.load(f)
    except UserError:
        raise
    except Exception as exc: # unreachable URL, truncated or foreign file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f'{path_or_url}: cannot read reference statistics: {msg}') from exc
    if not isinstance(ref, dict):
        raise UserError(f'{path_or_url}: not a statistics file (got {type(ref).__name__}, expected a dict)')
    for name, value in ref.items():
        if name != 'num_images' and not is_reference_entry(value):
            raise UserError(f'{path_or_url}: entry "{name}" has no "mu"/"sigma" arrays (nor "features")')
    return ref

def is_reference_entry(value):
    """A metric's entry: Fréchet statistics {'mu', 'sigma'} or precision/recall {'features'}."""
    return isinstance(value, dict) and (('mu' in value and 'sigma' in value) or 'features' in value)

def reference_metrics(ref):
    """Names of the metrics a reference holds statistics for."""
    return [name for name in ref if name != 'num_images']

def reference_dim(ref, name, path='reference'):
    """Feature dimension of metric `name` in `ref`, after checking mu/sigma shapes agree."""
    mu = np.asarray(ref[name]['mu'])
    sigma = np.asarray(ref[name]['sigma'])
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f'{path}: "{name}" statistics are malformed (mu {list(mu.shape)}, '
                        f'sigma {list(sigma.shape)})')
    return mu.shape[0]

def save_stats(stats, dest_path):
    """Pickle a stats dict to `dest_path` atomically (directories are created)."""
    atomic_write(dest_path, pickle.dumps(stats))

#----------------------------------------------------------------------------
