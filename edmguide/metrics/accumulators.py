"""Per-metric accumulators and the functions that turn them into results.

A job that measures many image sets at once (a guidance sweep) keeps one accumulator per metric and
image set, and asks this module for both pieces, so a new kind of metric needs no change to the job:

    acc = new_accumulator('fid')       # update(features[N, D]), all_reduce(dim, device),
                                       # state_dict() / load_state_dict(state)
    results('fid', acc, ref['fid'])    # {'fid': value}: named floats

Fréchet distances (every registered detector metric by default) use `stats.FeatureStats`. Another
kind registers its factory and results function with `register` (e.g. precision/recall, which
collect features and report {'precision': p, 'recall': r}).
"""

from edmguide.errors import UserError
from edmguide.metrics import stats as stats_lib
from edmguide.metrics.frechet import frechet_distance

_KINDS = {}


def frechet_results(metric, accumulator, ref_entry):
    """{metric: Fréchet distance} between the accumulated statistics and the reference entry."""
    mu, sigma = accumulator.mean_and_cov()
    if mu.shape != (len(ref_entry['mu']),):
        raise UserError(f'"{metric}" reference has {len(ref_entry["mu"])} features, but the images gave {mu.shape[0]}')
    return {metric: frechet_distance(mu, sigma, ref_entry['mu'], ref_entry['sigma'])}


def register(metric, factory, results_fn):
    """Use `factory()` accumulators and `results_fn(metric, accumulator, ref_entry) -> {name: float}` for `metric`."""
    _KINDS[metric] = (factory, results_fn)


def new_accumulator(metric):
    """A fresh accumulator for `metric` (FeatureStats unless the metric registered another kind)."""
    return _KINDS.get(metric, (stats_lib.FeatureStats, frechet_results))[0]()


def results(metric, accumulator, ref_entry):
    """The named results of `metric` from its accumulator and the reference's entry for it."""
    return _KINDS.get(metric, (stats_lib.FeatureStats, frechet_results))[1](metric, accumulator, ref_entry)
