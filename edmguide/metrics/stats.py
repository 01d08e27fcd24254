"""Feature statistics (mean, covariance) and the reference files that hold them.

Sums are kept in float64: with 50k images of 2048 features, float32 sums of f^T f lose several
digits of the covariance, which FID then amplifies. They are added image by image in seed order
(see `FeatureStats`), so the result does not depend on batches, ranks or the BLAS library.
File format (as upstream EDM2): a pickle of `{'num_images': n, '<metric>': {'mu', 'sigma'}}`, or an
EDM v1 `.npz` with arrays 'mu' and 'sigma' (FID only). A destination ending in `.npz` gets the same
dict flattened into NumPy arrays without pickle: `num_images` and `<metric>.<field>` for every
array field (mu, sigma, or whatever else an entry holds). `.npz` files are read with
`allow_pickle=False` in both layouts.
Precision/recall metrics store the reference features themselves instead, as
`'<metric>': {'features': float16 [N, D]}`, next to any statistics.
"""

import io
import os
import pickle

import numpy as np
import torch

import dnnlib
from edmguide.util.errors import UserError
from edmguide.util.images import atomic_write
from edmguide.nets.loading import load_pickle
from edmguide.metrics import frechet

#----------------------------------------------------------------------------
# Accumulating statistics.

class FeatureStats:
    """Running float64 sums of features and their outer products for one metric.

    The sums depend only on the sequence of feature rows, not on how it was cut into batches:
    features are taken as float32 (what every detector gives), so each product of two of them is
    exact in float64, and rows are added one after another (`addr_`, one exact product and one
    rounded addition per element, the same on any CPU or GPU, with or without FMA, for any thread
    count). A batched `f.T @ f` would leave the order of additions to the BLAS library. With the
    pipeline feeding every rank's rows in seed order (`pipeline.gather_step`), the statistics of a
    torchrun job equal those of one process bit for bit.
    """

    def __init__(self):
        self.num = 0
        self.sum = None
        self.outer = None

    def update(self, features):
        """Add a batch of features [N, D] (any float dtype, any device; rounded to float32)."""
        f = features.detach().reshape(features.shape[0], -1).to(torch.float32).to(torch.float64)
        if self.sum is not None and self.sum.device != f.device:  # e.g. sums loaded from a checkpoint
            self.sum, self.outer = self.sum.to(f.device), self.outer.to(f.device)
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        elif f.shape[1] != self.sum.shape[0]:
            raise ValueError(f'feature dimension changed from {self.sum.shape[0]} to {f.shape[1]}')
        for row in f:
            self.sum.add_(row)
            self.outer.addr_(row, row)
        self.num += f.shape[0]

    def state_dict(self):
        """The running sums as numpy arrays (float64) and the image count, e.g. for a checkpoint."""
        if self.sum is None:
            return {'num': self.num}
        return {'num': self.num, 'sum': self.sum.cpu().numpy(), 'outer': self.outer.cpu().numpy()}

    def load_state_dict(self, state, device=None):
        """Continue from `state_dict()`'s sums, put on `device` (default: the CPU, until the next
        `update` moves them to the features' device)."""
        self.num = int(state['num'])
        self.sum = torch.as_tensor(state['sum'], dtype=torch.float64, device=device) if 'sum' in state else None
        self.outer = torch.as_tensor(state['outer'], dtype=torch.float64, device=device) if 'sum' in state else None

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

    Returns the stats dict; an EDM v1 `.npz` (arrays 'mu', 'sigma') becomes {'fid': {...}}, one of
    ours is unflattened (see `flatten_stats`); `.npz` files are never unpickled.
    Every mu/sigma entry is validated here, before any feature pass (`check_frechet_entry`);
    entries of other kinds are left to the metrics that use them.
    """
    name = os.fspath(path_or_url)
    is_local = '://' not in name
    if is_local and not os.path.isfile(name):
        raise UserError(f'{name}: reference statistics file not found')
    try:
        if name.lower().endswith('.npz'):
            with dnnlib.util.open_url(name, verbose=False) as f, np.load(f, allow_pickle=False) as npz:
                ref = unflatten_stats({key: npz[key] for key in npz.files})
        else:
            ref = load_pickle(name)  # the one pickle loader (and its note that pickles run code)
    except UserError as exc:
        reason = str(exc).split(f'{name}: ', 1)[-1]
        raise UserError(f'{name}: cannot read reference statistics: {reason}') from exc
    except Exception as exc: # unreachable URL, truncated or foreign file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f'{name}: cannot read reference statistics: {msg}') from exc
    if not isinstance(ref, dict):
        raise UserError(f'{name}: not a statistics file (got {type(ref).__name__}, expected a dict)')
    for metric, entry in ref.items():
        if metric == 'num_images' or not isinstance(entry, dict):  # other top-level data: not a metric's entry
            continue
        if not is_reference_entry(entry):
            raise UserError(f'{name}: entry "{metric}" has no "mu"/"sigma" arrays (nor "features")')
        if 'mu' in entry or 'sigma' in entry:
            _read_only(entry)
            check_frechet_entry(entry, metric, name)
    return ref

def _read_only(entry):
    """Make a loaded entry's arrays read-only: nothing may change a reference, and the Fréchet
    distance keeps the factor of a read-only sigma for the whole run."""
    for key in ('mu', 'sigma'):
        if isinstance(entry.get(key), np.ndarray):
            entry[key].setflags(write=False)

def is_reference_entry(value):
    """A metric's entry: Fréchet statistics {'mu', 'sigma'} or precision/recall {'features'}."""
    return isinstance(value, dict) and (('mu' in value and 'sigma' in value) or 'features' in value)

def _frechet_arrays(entry, name, path):
    """(mu, sigma) of a reference entry as numpy arrays, their shapes checked."""
    if not isinstance(entry, dict) or 'mu' not in entry or 'sigma' not in entry:
        raise UserError(f'{path}: entry "{name}" has no "mu"/"sigma" arrays')
    mu, sigma = np.asarray(entry['mu']), np.asarray(entry['sigma'])
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f'{path}: "{name}" statistics are malformed (mu {list(mu.shape)}, '
                        f'sigma {list(sigma.shape)})')
    return mu, sigma

SYMMETRY_RTOL = 1e-6  # |sigma - sigma^T| relative to the largest |sigma|
PSD_RTOL = frechet.PSD_RTOL  # smallest eigenvalue relative to the largest

def _non_finite_message(label, array):
    """'<label> has 3 NaN values' / '... 2 infinite values' / both: what is wrong, by name."""
    nan = int(np.count_nonzero(np.isnan(array)))
    inf = int(np.count_nonzero(np.isinf(array)))
    parts = [f'{count} {what} value{"s" if count != 1 else ""}' for count, what in ((nan, 'NaN'), (inf, 'infinite')) if count]
    every = ' (every value)' if nan + inf == array.size else ''
    return f'{label} has {" and ".join(parts)}{every}'

def check_frechet_entry(entry, name, path='reference'):
    """Refuse mu/sigma statistics that cannot give a meaningful Fréchet distance: non-numeric,
    NaN or infinite values, sigma not square of mu's size, not symmetric (to a relative 1e-6), or not
    positive semi-definite within round-off (smallest eigenvalue >= -1e-6 of the largest).

    The positive semi-definite check is the factorisation the distance needs
    (`frechet.cached_covariance_factor`): a Cholesky factor proves it, and an eigendecomposition
    (singular covariances) gives the eigenvalues; the factor is kept for the distances of this run."""
    mu, sigma = _frechet_arrays(entry, name, path)
    where = f'{path}: "{name}" statistics'
    for label, array in (('mu', mu), ('sigma', sigma)):
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise UserError(f'{where}: {label} holds {array.dtype} values, not numbers')
        if not np.isfinite(array).all():
            raise UserError(f'{where}: {_non_finite_message(label, array)}')
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    asymmetry = float(np.abs(sigma - sigma.T).max()) if sigma.size else 0.0
    if asymmetry > SYMMETRY_RTOL * scale:
        raise UserError(f'{where}: sigma is not symmetric (largest |sigma - sigma^T| is {asymmetry:.3g}, '
                        f'{asymmetry / scale:.3g} of the largest entry)')
    try:
        frechet.cached_covariance_factor(entry['sigma'])
    except frechet.NotPositiveSemidefinite as exc:
        raise UserError(f'{where}: sigma is not a covariance matrix (not positive semi-definite: '
                        f'eigenvalues from {exc.lowest:.6g} to {exc.highest:.6g})') from None

def check_features_entry(entry, name, path='reference'):
    """Refuse precision/recall reference features that are not a numeric [N, D] array or hold NaN or
    infinite values (checked in row blocks: the features can be gigabytes)."""
    features = np.asarray(entry['features'])
    where = f'{path}: "{name}" reference features'
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise UserError(f'{where} hold {features.dtype} values, not numbers')
    if np.issubdtype(features.dtype, np.floating):
        rows = max(1, (1 << 24) // max(int(np.prod(features.shape[1:])), 1)) # ~16M values per block
        if not all(np.isfinite(features[i:i + rows]).all() for i in range(0, len(features), rows)):
            raise UserError(f'{where}: {_non_finite_message("the array", features)}; remake the reference '
                            f'(python calculate_metrics.py ref --metrics={name})')

def reference_metrics(ref):
    """Names of the metrics a reference holds statistics for."""
    return [name for name in ref if name != 'num_images']

def reference_dim(ref, name, path='reference'):
    """Feature dimension of metric `name` in `ref`, after checking mu/sigma shapes agree."""
    return _frechet_arrays(ref[name], name, path)[0].shape[0]

def flatten_stats(stats):
    """{'num_images': n, m: {field: array}} -> flat {'num_images': n, 'm.field': array} (no objects)."""
    flat = {}
    for name, value in stats.items():
        fields = value.items() if isinstance(value, dict) else [(None, value)]
        for field, array in fields:
            key = name if field is None else f'{name}.{field}'
            array = np.asarray(array)
            if array.dtype == object:
                raise ValueError(f'statistics entry {key} is not a numeric array')
            flat[key] = array
    return flat

def unflatten_stats(arrays):
    """Inverse of `flatten_stats`; an EDM v1 file (only 'mu' and 'sigma') becomes {'fid': {...}}.
    An EDM v1 file with one of the two arrays but not the other is a UserError naming the missing one."""
    if not any('.' in key for key in arrays) and {'mu', 'sigma'} & set(arrays):
        missing = sorted({'mu', 'sigma'} - set(arrays))
        if missing:
            raise UserError(f'EDM v1-style statistics with "{({"mu", "sigma"} - set(missing)).pop()}" '
                            f'but no "{missing[0]}" array')
        return {'fid': dict(arrays)}
    stats = {}
    for key, array in arrays.items():
        name, _, field = key.rpartition('.')
        if name:
            stats.setdefault(name, {})[field] = array
        else:
            stats[key] = array.item() if array.ndim == 0 else array
    if 'num_images' in stats:
        stats['num_images'] = int(stats['num_images'])
    return stats

def save_stats(stats, dest_path):
    """Write a stats dict atomically (directories are created): NumPy `.npz` (no pickle) when
    `dest_path` ends in .npz, else a pickle as upstream."""
    if str(dest_path).lower().endswith('.npz'):
        buffer = io.BytesIO()
        np.savez(buffer, **flatten_stats(stats))
        atomic_write(dest_path, buffer.getvalue())
    else:
        atomic_write(dest_path, pickle.dumps(stats))

#----------------------------------------------------------------------------
