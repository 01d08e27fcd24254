"""Feature statistics (float64 sums) and reference files (.pkl / .npz, errors)."""

import os
import pickle

import numpy as np
import pytest
import torch

from edmguide.errors import UserError
from edmguide.metrics import stats

def test_batched_sums_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(37, 6)).astype(np.float32) * 100 + 1000 # large offset: float32 sums would lose digits
    acc = stats.FeatureStats()
    for chunk in np.array_split(feats, 5):
        acc.update(torch.from_numpy(chunk))
    mu, sigma = acc.all_reduce(6, 'cpu').mean_and_cov()
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-9)

def test_statistics_need_two_images():
    acc = stats.FeatureStats()
    acc.update(torch.ones(1, 3))
    with pytest.raises(UserError, match='at least 2'):
        acc.mean_and_cov()

def test_pickle_and_npz_references(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    pkl = tmp_path / 'sub' / 'ref.pkl'
    stats.save_stats(stats.make_stats_dict(5, {'fid': (mu, sigma)}), pkl)
    ref = stats.load_reference(str(pkl))
    assert ref['num_images'] == 5 and stats.reference_metrics(ref) == ['fid']
    np.testing.assert_array_equal(ref['fid']['mu'], mu)
    npz = tmp_path / 'cifar10-32x32.npz'
    np.savez(npz, mu=mu, sigma=sigma)
    ref = stats.load_reference(str(npz))
    assert list(ref) == ['fid'] and stats.reference_dim(ref, 'fid') == 3
    assert stats.load_reference(npz.as_uri())['fid']['sigma'].shape == (3, 3) # file:// URL
    assert os.listdir(tmp_path / 'sub') == ['ref.pkl']

@pytest.mark.parametrize('content, match', [
    (b'\x00garbage', 'cannot read reference'),
    (pickle.dumps([1, 2]), 'not a statistics file'),
    (pickle.dumps({'fid': {'mu': np.zeros(2)}}), 'no "mu"/"sigma"'),
])
def test_bad_reference_files(tmp_path, content, match):
    path = tmp_path / 'bad.pkl'
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        stats.load_reference(str(path))

def test_missing_reference(tmp_path):
    with pytest.raises(UserError, match='not found'):
        stats.load_reference(str(tmp_path / 'nope.pkl'))

def test_malformed_reference_shapes():
    with pytest.raises(UserError, match='malformed'):
        stats.reference_dim({'fid': {'mu': np.zeros(3), 'sigma': np.eye(4)}}, 'fid')

def test_state_dict_round_trip_continues_the_same_sums():
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(20, 4)))
    whole = stats.FeatureStats()  # the same batches without a checkpoint in between
    whole.update(feats[:7])
    whole.update(feats[7:])
    first = stats.FeatureStats()
    first.update(feats[:7])
    state = pickle.loads(pickle.dumps(first.state_dict()))
    assert isinstance(state['sum'], np.ndarray) and state['num'] == 7
    resumed = stats.FeatureStats()
    resumed.load_state_dict(state)
    resumed.update(feats[7:])
    assert resumed.num == 20 and torch.equal(resumed.sum, whole.sum) and torch.equal(resumed.outer, whole.outer)
    empty = stats.FeatureStats()
    empty.load_state_dict(stats.FeatureStats().state_dict())
    assert empty.num == 0 and empty.sum is None
