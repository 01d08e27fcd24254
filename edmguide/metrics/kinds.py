"""Metric kinds: what a metric accumulates, what its reference entry holds, and how results come out.

Every registered metric (see `detectors.register_metric(..., kind=...)`) has one of these kinds:

| kind | accumulator | reference entry | results |
|---|---|---|---|
| 'frechet' | `stats.FeatureStats` (float64 sums) | {'mu', 'sigma'} | {name: Fréchet distance} |
| 'pr' | `precision_recall.PRFeatures` (float16 features) | {'features': float16 [N, D]} | {'precision': p, 'recall': r} |

The pipeline never branches on the kind: it asks `get_kind(metric)` for these pieces. An
accumulator has `update(features)` (rows in seed order, see `pipeline.gather_step`), `state_dict()`,
`load_state_dict()` and `reference_entry()`; `results(name, acc, entry, device=...)` returns a dict of named floats.
`appends`: the accumulator's state grows with the images (`state_dict(first_batch)` gives the part
from a batch on, so a checkpoint writes only what is new); otherwise it has a fixed size.
"""

import numpy as np

import dnnlib
from edmguide.util.errors import UserError
from edmguide.metrics import detectors, precision_recall, stats as stats_lib
from edmguide.metrics.frechet import frechet_distance

#----------------------------------------------------------------------------
# Fréchet metrics (mean and covariance).

def _frechet_has_entry(entry):
    return isinstance(entry, dict) and 'mu' in entry and 'sigma' in entry

def _frechet_dim(ref, name, path):
    return stats_lib.reference_dim(ref, name, path)

def _frechet_entry(acc):
    mu, sigma = acc.mean_and_cov()
    return {'mu': mu, 'sigma': sigma}

def frechet_entry_results(name, mu, sigma, entry, path='reference'):
    """{name: Fréchet distance of (mu, sigma) to a reference entry}, after checking the dimension."""
    dim = np.asarray(entry['mu']).shape[0]
    mu = np.asarray(mu)
    if mu.shape != (dim,):
        raise UserError(f'{path}: "{name}" reference has {dim} features, but the images gave {mu.shape[0]}')
    try:
        return {name: frechet_distance(mu, sigma, entry['mu'], entry['sigma'])}
    except ValueError as exc:  # e.g. negative beyond round-off: never printed nor written as a result
        raise UserError(f'{name} against {path}: {exc}; nothing was written') from None

def _frechet_results(name, acc, entry, *, path='reference', device=None):
    del device
    return frechet_entry_results(name, *acc.mean_and_cov(), entry, path)

#----------------------------------------------------------------------------
# Precision/recall (the features themselves).

def _pr_has_entry(entry):
    return isinstance(entry, dict) and 'features' in entry

def _pr_dim(ref, name, path):
    features = np.asarray(ref[name]['features'])
    if features.ndim != 2 or features.shape[0] <= precision_recall.NHOOD_SIZE:
        raise UserError(f'{path}: "{name}" features are malformed (shape {list(features.shape)}; '
                        f'need [N, D] with N > {precision_recall.NHOOD_SIZE})')
    stats_lib.check_features_entry(ref[name], name, path)
    return features.shape[1]

def _pr_entry(acc):
    return acc.reference_entry()

def _pr_results(name, acc, entry, *, path='reference', device=None):
    del name, path
    return precision_recall.pr_results(acc, entry, device=device)

#----------------------------------------------------------------------------

KINDS = {
    'frechet': dnnlib.EasyDict(accumulator=stats_lib.FeatureStats, appends=False, has_entry=_frechet_has_entry, dim=_frechet_dim,
                               entry=_frechet_entry, results=_frechet_results, max_ref_images=None,
                               entry_help='mean/covariance statistics'),
    'pr': dnnlib.EasyDict(accumulator=precision_recall.PRFeatures, appends=True, has_entry=_pr_has_entry, dim=_pr_dim,
                          entry=_pr_entry, results=_pr_results, max_ref_images=precision_recall.MAX_REAL,
                          entry_help='reference features'),
}

def metric_list(metrics):
    """The metrics a user named, as a list: `metrics` is a comma-separated string ('fid, fd_dinov2')
    or a sequence of names (each may hold commas too). Spaces around names and empty items are
    dropped, and a name given twice counts once (first place kept): measuring a metric twice would
    count every feature twice. Unknown names are a UserError, as is an empty list.

    The one parser of metric lists: calc, gen, ref, sweep and the guidance-interval form use it.
    """
    items = [metrics] if isinstance(metrics, str) else list(metrics)
    names = []
    for item in items:
        for name in str(item).split(','):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if not names:
        raise UserError('no metric given')
    return detectors.check_metric_names(names)

def get_kind(name):
    """The kind (EasyDict of the pieces above) of registered metric `name`."""
    return KINDS[detectors.metric_kind(name)]

def result_names(name):
    """Names of the values metric `name` reports: ['fid'] for a Fréchet metric, ['precision', 'recall'] for PR."""
    return [name] if detectors.metric_kind(name) == 'frechet' else ['precision', 'recall']

#----------------------------------------------------------------------------
