"""edmguide.metrics.accumulators: Fréchet by default, other kinds by registration."""

import numpy as np
import pytest
import torch

from edmguide.metrics import accumulators, stats
from edmguide.metrics.frechet import frechet_distance


def test_default_is_frechet_and_registered_kinds_take_over(monkeypatch):
    rng = np.random.default_rng(0)
    feats, ref_feats = rng.normal(size=(30, 3)), rng.normal(size=(40, 3)) + 0.5
    acc = accumulators.new_accumulator('fid')
    assert isinstance(acc, stats.FeatureStats)
    acc.update(torch.from_numpy(feats))
    ref = {'mu': ref_feats.mean(0), 'sigma': np.cov(ref_feats, rowvar=False)}
    expected = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), ref['mu'], ref['sigma'])
    assert accumulators.results('fid', acc, ref)['fid'] == pytest.approx(expected, rel=1e-10)

    class Counting:
        def __init__(self):
            self.n = 0
        def update(self, features):
            self.n += len(features)
    monkeypatch.setattr(accumulators, '_KINDS', {})
    accumulators.register('count', Counting, lambda metric, a, ref_entry: {'seen': float(a.n), 'ref': ref_entry})
    counting = accumulators.new_accumulator('count')
    counting.update(torch.zeros(4, 2))
    assert accumulators.results('count', counting, 7) == {'seen': 4.0, 'ref': 7}

