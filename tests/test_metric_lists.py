"""edmguide/metrics/kinds.py `metric_list`: one reading of metric lists for calc, gen, ref, sweep
and the guidance-interval form; a metric named twice is measured once."""

import json
import pickle

import numpy as np
import pytest
import torch

import calculate_metrics
import helpers_metrics as hm
from cli_helpers import assert_one_line_error, invoke
from edmguide.util.errors import UserError
from edmguide.metrics import kinds


def test_metric_list_drops_spaces_and_collapses_duplicates_in_order():
    assert kinds.metric_list('fid,fid') == ['fid']
    assert kinds.metric_list(' fd_dinov2 , fid,fd_dinov2,, fid ') == ['fd_dinov2', 'fid']
    assert kinds.metric_list(['fid', 'fid, pr']) == ['fid', 'pr']
    with pytest.raises(UserError, match='Invalid metric "nope"'):
        kinds.metric_list('fid, nope')
    with pytest.raises(UserError, match='no metric given'):
        kinds.metric_list(' , ')


@pytest.fixture
def setup(tmp_path):
    images = hm.random_images(6, seed=2)
    other = hm.random_images(9, seed=5)
    feats = hm.fake_inception_features(torch.from_numpy(other).permute(0, 3, 1, 2)).double().numpy()
    ref = tmp_path / 'ref.pkl'
    ref.write_bytes(pickle.dumps({'num_images': 9, 'fid': {'mu': feats.mean(0), 'sigma': np.cov(feats, rowvar=False)}}))
    return hm.write_image_dir(tmp_path / 'imgs', images), images, str(ref), feats


def test_calc_with_a_metric_named_twice_measures_it_once(cache, setup):
    folder, images, ref, ref_feats = setup
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', folder, '--ref', ref, '--metrics', 'fid, fid',
                                                 '--num', '6', '--workers', '0'])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('fid = ')
    feats = hm.fake_inception_features(torch.from_numpy(images).permute(0, 3, 1, 2)).double().numpy()
    expected = hm.reference_fd(feats, ref_feats)  # scipy's sqrtm, float64: independent of the pipeline
    # `:g` prints 6 significant digits, so the printed value is within 5e-6 relative of the exact one;
    # sqrtm's own round-off at 15 dimensions is ~1e-12.
    assert float(lines[0].split(' = ')[1]) == pytest.approx(expected, rel=1e-5)


def test_ref_with_a_metric_named_twice_counts_each_image_once(cache, setup, tmp_path):
    folder, images, _ref, _feats = setup
    dest = tmp_path / 'twice.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', folder, '--dest', dest, '--metrics', 'fid,fid ',
                                                 '--workers', '0'])
    assert result.exit_code == 0, result.output
    with open(dest, 'rb') as f:
        ref = pickle.load(f)
    feats = hm.fake_inception_features(torch.from_numpy(images).permute(0, 3, 1, 2)).double().numpy()
    assert ref['num_images'] == 6 and list(ref) == ['num_images', 'fid']
    # float64 sums of 6 feature vectors of magnitude <= 1: round-off far below 1e-12.
    np.testing.assert_allclose(ref['fid']['sigma'], np.cov(feats, rowvar=False), rtol=0, atol=1e-12)


def test_gen_with_a_metric_named_twice_gives_one_value(cache, setup, tiny_pickles):
    _folder, _images, ref, _feats = setup
    base = ['gen', '--net', tiny_pickles['uncond'], '--ref', ref, '--num', '2', '--steps', '2']
    once = invoke(calculate_metrics.edm2_cli, base + ['--metrics', 'fid'])
    twice = invoke(calculate_metrics.edm2_cli, base + ['--metrics', ' fid,fid'])
    assert once.exit_code == 0 and twice.exit_code == 0, twice.output
    assert twice.stdout == once.stdout and len(once.stdout.strip().splitlines()) == 1


def test_gi_form_reads_its_metric_with_the_same_rule(cache, setup, tmp_path):
    folder, _images, ref, _feats = setup
    args = ['--gen_zip', folder, '--ref_path', ref, '--results_dir', tmp_path / 'res']
    result = invoke(calculate_metrics.gi_cli, args + ['--metric', ' fid '])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith('FID = ')
    assert list(json.loads((tmp_path / 'res' / 'fid.jsonl').read_text()))[:2] == ['gen_zip', 'fid']
    assert_one_line_error(invoke(calculate_metrics.gi_cli, args + ['--metric', 'fid,fd_dinov2']), 'one metric')
