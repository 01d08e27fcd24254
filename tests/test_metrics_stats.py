"""Feature statistics (float64 sums) and reference files (.pkl / .npz, errors)."""

import os
import pickle

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.metrics import stats

def test_batched_sums_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(37, 6)).astype(np.float32) * 100 + 1000 # large offset: float32 sums would lose digits
    acc = stats.FeatureStats()
    for chunk in np.array_split(feats, 5):
        acc.update(torch.from_numpy(chunk))
    mu, sigma = acc.mean_and_cov()
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-9)

def test_sums_are_the_row_by_row_float64_sums_whatever_the_batches():
    # float32 x float32 products are exact in float64, so a sum taken row after row has exactly
    # one rounding per addition and no other: a plain NumPy loop in the same order must agree bit
    # for bit, and so must any other cut into batches (the property torchrun equality rests on).
    rng = np.random.default_rng(1)
    feats = (rng.normal(size=(23, 5)) * rng.uniform(0.01, 100, size=5) + 3).astype(np.float32)
    want_sum, want_outer = np.zeros(5), np.zeros((5, 5))
    for row in feats.astype(np.float64):
        want_sum += row
        want_outer += np.outer(row, row)
    for cuts in ([23], [1] * 23, [7, 9, 7], [2, 21]):
        acc = stats.FeatureStats()
        for chunk in np.split(feats, np.cumsum(cuts)[:-1]):
            acc.update(torch.from_numpy(chunk))
        assert np.array_equal(acc.sum.numpy(), want_sum) and np.array_equal(acc.outer.numpy(), want_outer), cuts

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

#----------------------------------------------------------------------------
# Validation of mu/sigma entries at load time.

def _ref_file(tmp_path, mu, sigma, **other_entries):
    path = tmp_path / 'ref.pkl'
    path.write_bytes(pickle.dumps({'num_images': 10, 'fid': {'mu': mu, 'sigma': sigma}, **other_entries}))
    return str(path)

def _psd(d, seed=0):
    a = np.random.default_rng(seed).standard_normal((d, d + 2))
    return a @ a.T

@pytest.mark.parametrize('mu, sigma, match', [
    (np.array([0.0, np.nan, 1.0]), _psd(3), 'mu has 1 NaN value'),
    (np.zeros(3), np.where(np.eye(3) > 0, np.inf, 0.0), 'sigma has 3 infinite values'),
    (np.zeros(3), np.zeros((3, 2)), 'malformed'),
    (np.zeros(3), _psd(4), 'malformed'),  # square, but not of mu's size
    (np.zeros(3), _psd(3) + np.triu(np.full((3, 3), 1e-4), 1), 'not symmetric'),
    (np.zeros(3), np.diag([1.0, 0.5, -1e-3]), 'not positive semi-definite'),
    (np.zeros(3), -np.eye(3), 'not positive semi-definite'),
    (np.array(['a', 'b']), np.eye(2), 'not numbers'),
])
def test_bad_statistics_are_refused_when_loaded_naming_file_and_problem(tmp_path, mu, sigma, match):
    path = _ref_file(tmp_path, mu, sigma)
    with pytest.raises(UserError, match=match) as info:
        stats.load_reference(path)
    assert str(info.value).startswith(f'{path}: "fid" statistics') or 'malformed' in str(info.value)

def test_round_off_is_accepted_and_other_entry_kinds_are_left_alone(tmp_path):
    """Asymmetry of 1e-9 relative and eigenvalues of -1e-9 of the largest are round-off, not errors
    (a singular covariance of fewer images than features has such eigenvalues); an entry of another
    kind (a precision/recall 'features' array) is not a mu/sigma entry to validate."""
    sigma = _psd(6)[:, :] @ np.diag([1, 1, 1, 1, 1, 0]) @ _psd(6)  # some structure
    sigma = (sigma + sigma.T) / 2
    w, v = np.linalg.eigh(sigma)
    w[0] = -1e-9 * w[-1]
    sigma = (v * w) @ v.T
    sigma[0, 1] += 1e-9 * np.abs(sigma).max()
    path = _ref_file(tmp_path, np.zeros(6), sigma, pr={'features': np.zeros((4, 6))}, extra='metadata')
    ref = stats.load_reference(path)
    assert stats.reference_dim(ref, 'fid') == 6 and 'pr' in ref

def test_reference_dim_of_an_entry_without_mu_sigma_is_a_user_error():
    with pytest.raises(UserError, match='no "mu"/"sigma"'):
        stats.reference_dim({'pr': {'features': np.zeros((2, 3))}}, 'pr')


def test_npz_destination_is_written_without_pickle_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(1)
    mu, a = rng.normal(size=4), rng.normal(size=(4, 4))
    sigma = a @ a.T  # a valid covariance: references are validated when loaded
    ref = stats.make_stats_dict(7, {'fid': (mu, sigma), 'fd_dinov2': (mu[:2], sigma[:2, :2])})
    ref['fid']['features'] = rng.normal(size=(3, 4)).astype(np.float32)   # any extra array field fits
    path = tmp_path / 'ref.npz'
    stats.save_stats(ref, path)
    with np.load(path, allow_pickle=False) as npz:                        # plain arrays, no objects
        assert sorted(npz.files) == ['fd_dinov2.mu', 'fd_dinov2.sigma', 'fid.features', 'fid.mu', 'fid.sigma', 'num_images']
        assert npz['fid.features'].dtype == np.float32 and int(npz['num_images']) == 7
    back = stats.load_reference(str(path))
    assert back['num_images'] == 7 and isinstance(back['num_images'], int)
    assert sorted(back) == ['fd_dinov2', 'fid', 'num_images']
    for name in ('fid', 'fd_dinov2'):
        for field in ref[name]:
            assert back[name][field].dtype == np.asarray(ref[name][field]).dtype
            np.testing.assert_array_equal(back[name][field], ref[name][field])
    other = stats.unflatten_stats({'num_images': np.array(3), 'pr.features': np.ones((2, 5))})
    assert list(other) == ['num_images', 'pr'] and list(other['pr']) == ['features']
    np.testing.assert_array_equal(other['pr']['features'], np.ones((2, 5)))

def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / 'objects.npz'
    np.savez(path, mu=np.array([{'a': 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(UserError, match='cannot read reference'):
        stats.load_reference(str(path))
    with pytest.raises(ValueError, match='not a numeric array'):
        stats.save_stats({'num_images': 1, 'fid': {'mu': [object()], 'sigma': np.eye(1)}}, tmp_path / 'x.npz')
    assert not (tmp_path / 'x.npz').exists()


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

@pytest.mark.parametrize('values, message', [
    ([np.nan] * 6, 'has 6 NaN values (every value)'),
    ([1, 2, np.inf, np.nan, 0, 0], 'has 1 NaN value and 1 infinite value;'),
])
def test_non_finite_precision_recall_features_are_named(values, message):
    entry = {'features': np.array(values, np.float16).reshape(3, 2)}
    with pytest.raises(UserError) as info:
        stats.check_features_entry(entry, 'pr', 'ref.pkl')
    assert str(info.value).startswith('ref.pkl: "pr" reference features') and message in str(info.value)
    stats.check_features_entry({'features': np.ones((3, 2), np.float16)}, 'pr', 'ref.pkl') # finite: accepted

def test_a_loaded_reference_is_read_only(tmp_path):
    # The Fréchet distance keeps the factor of a read-only sigma for the run: nothing may change it after.
    a = np.random.default_rng(0).standard_normal((4, 6))
    ref = stats.load_reference(_ref_file(tmp_path, np.zeros(4), a @ a.T))
    with pytest.raises(ValueError):
        ref['fid']['sigma'][0, 0] = 1.0
