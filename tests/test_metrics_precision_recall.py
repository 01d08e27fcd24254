"""Tests for edmguide.metrics.precision_recall, against a brute-force float64 NumPy implementation."""

import os
import socket

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.metrics import precision_recall as pr

#----------------------------------------------------------------------------
# Independent reference: every pairwise distance in float64 (no torch, no blocks).

def brute_force_margins(real, gen, k=3):
    """For each probe: min over manifold points j of (|probe - x_j|^2 - radius_j^2), in float64,
    where radius_j is the distance of x_j to its k-th nearest other point. <= 0 means inside."""
    def margins(manifold, probes):
        within = ((manifold[:, None, :] - manifold[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(within, np.inf) # the point itself does not count
        radii_sq = np.sort(within, axis=1)[:, k - 1]
        across = ((probes[:, None, :] - manifold[None, :, :]) ** 2).sum(-1)
        return (across - radii_sq[None, :]).min(axis=1)
    return margins(real, gen), margins(gen, real)

def assert_matches_brute_force(real, gen, result):
    """Shares agree except for probes whose margin is within the float16 error of the distances
    (the documented tie cases): the metric computes |x|^2 + |y|^2 - 2 x.y in float16, so squared
    distances carry errors up to a few units of 2^-11 times the squared feature norms."""
    real = np.asarray(real, np.float16).astype(np.float64) # the metric sees float16 features
    gen = np.asarray(gen, np.float16).astype(np.float64)
    tol = 8 * 2.0 ** -11 * max((real ** 2).sum(1).max(), (gen ** 2).sum(1).max())
    for name, margin in zip(('precision', 'recall'), brute_force_margins(real, gen)):
        sure_in = int((margin < -tol).sum())
        ties = int((np.abs(margin) <= tol).sum())
        assert sure_in / len(margin) <= result[name] <= (sure_in + ties) / len(margin), (name, result, sure_in, ties)
        assert ties <= 0.05 * len(margin), (name, ties) # the test sets are not dominated by ties

#----------------------------------------------------------------------------

@pytest.mark.parametrize('seed', [0, 1])
def test_random_sets_match_brute_force_float64(seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(120, 8))
    gen = rng.normal(size=(90, 8)) * 1.3 + 0.4
    result = pr.precision_recall(real, gen)
    assert 0.05 < result['precision'] < 0.99 and 0.05 < result['recall'] < 0.99 # a non-trivial case
    assert_matches_brute_force(real, gen, result)

def test_integer_features_match_brute_force_up_to_exact_ties():
    """Integer-valued features: float16 holds them and their squared distances exactly, so the
    only disagreements possible are exact ties (equal distances, which count as inside) and the
    float16 rounding of square roots of integers; margins of at least one squared unit are certain."""
    rng = np.random.default_rng(3)
    real = rng.integers(-6, 7, size=(60, 5)).astype(np.float64)
    gen = rng.integers(-4, 9, size=(50, 5)).astype(np.float64)
    result = pr.precision_recall(real, gen)
    for name, margin in zip(('precision', 'recall'), brute_force_margins(real, gen)):
        assert (margin <= -1).mean() <= result[name] <= (margin < 1).mean(), (name, result[name])

def test_identical_sets_give_one_and_far_apart_sets_zero():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(80, 6))
    assert pr.precision_recall(real, real) == {'precision': 1.0, 'recall': 1.0}
    assert pr.precision_recall(real, real + 20) == {'precision': 0.0, 'recall': 0.0}

def test_generated_set_covering_one_of_two_real_clusters():
    rng = np.random.default_rng(1)
    real = np.concatenate([rng.normal(size=(100, 4)) * 0.5 + 5, rng.normal(size=(100, 4)) * 0.5 - 5])
    gen = rng.normal(size=(100, 4)) * 0.5 + 5 # only the first cluster
    result = pr.precision_recall(real, gen)
    # Samples of the same distribution fall inside 3-NN balls ~90% of the time in 4 dimensions
    # (the union of balls misses the outskirts): that is the metric's "precision ~ 1".
    assert result['precision'] > 0.85
    assert 0.45 <= result['recall'] <= 0.5 # the other cluster (half of the real set) is never reached

@pytest.mark.parametrize('row_block, col_block', [(7, 11), (26, 30), (1, 1000)])
def test_blocks_smaller_than_the_sets_give_the_one_block_answer(row_block, col_block):
    rng = np.random.default_rng(2)
    real, gen = rng.normal(size=(70, 6)), rng.normal(size=(55, 6)) + 0.3
    assert pr.precision_recall(real, gen, row_block=row_block, col_block=col_block) == pr.precision_recall(real, gen)

def test_radii_are_the_kth_smallest_float16_distance_excluding_self():
    rng = np.random.default_rng(4)
    feats = torch.from_numpy(rng.normal(size=(40, 5))).to(torch.float16)
    radii = pr.manifold_radii(feats, k=3, row_block=9, col_block=13)
    full = torch.cdist(feats.unsqueeze(0), feats.unsqueeze(0), compute_mode='use_mm_for_euclid_dist')[0]
    expected = full.to(torch.float32).sort(dim=1).values[:, 3].to(torch.float16) # index 0 is the point itself
    assert radii.dtype == torch.float16 and torch.equal(radii, expected)

def test_features_beyond_float16_range_and_too_few_images_are_user_errors():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(30, 4))
    with pytest.raises(UserError, match='beyond the float16 range'):
        pr.precision_recall(real, real + 200)
    with pytest.raises(UserError, match='more than k = 3'):
        pr.precision_recall(real, real[:3])

def test_accumulator_state_dict_round_trip_and_reference_entry():
    acc = pr.PRFeatures()
    acc.update(torch.arange(6.0).reshape(3, 2))
    acc.update(torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match='dimension'):
        acc.update(torch.zeros(1, 3))
    state = acc.state_dict()
    other = pr.PRFeatures()
    other.load_state_dict(state)
    assert other.num == 5 and [b.shape[0] for b in other.batches] == [3, 2]
    assert torch.equal(other.features(), acc.features()) and acc.features().dtype == torch.float16
    entry = acc.reference_entry()
    assert entry['features'].dtype == np.float16 and entry['features'].shape == (5, 2)

#----------------------------------------------------------------------------
# Two processes over gloo: the gathered features and the shares equal a single process's.

def _worker(rank, world_size, port, result_dir, feats, gen):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group(backend='gloo', init_method='env://')
    from torch_utils import distributed as dist
    dist.init()
    from edmguide.metrics import pipeline
    acc = pr.PRFeatures()
    for chunk in pipeline.metric_chunks(len(feats), 4): # uneven: ranks get 4 and 3 chunks (one padded step)
        pipeline.feed_step({'pr': acc}, {'pr': feats[chunk]} if len(chunk) else {}, 'cpu')
    result = pr.precision_recall(acc.features(), gen, row_block=6, col_block=10)
    torch.save({'features': acc.features(), 'result': result}, os.path.join(result_dir, f'rank{rank}.pt'))
    torch.distributed.destroy_process_group()

def test_two_ranks_gather_in_order_and_give_the_single_process_result(tmp_path):
    rng = np.random.default_rng(5)
    feats = torch.from_numpy(rng.normal(size=(27, 6))).to(torch.float32)
    gen = torch.from_numpy(rng.normal(size=(19, 6)) + 0.2).to(torch.float32)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(2, port, str(tmp_path), feats, gen), nprocs=2, join=True)
    single = pr.precision_recall(feats, gen, row_block=6, col_block=10)
    for rank in range(2):
        saved = torch.load(tmp_path / f'rank{rank}.pt')
        assert torch.equal(saved['features'], feats.to(torch.float16)) # seed order restored
        assert saved['result'] == single

#----------------------------------------------------------------------------

def test_nan_features_are_named_as_nan_not_as_a_float16_range_problem():
    with pytest.raises(UserError, match=r'generated features hold 8 NaN values \(every value\)'):
        pr.check_float16_range(torch.full((4, 2), float('nan'), dtype=torch.float16), 'generated')
    features = torch.ones((4, 2), dtype=torch.float16)
    features[1, 1] = float('nan')
    with pytest.raises(UserError, match='reference features hold 1 NaN value$'):
        pr.check_float16_range(features, 'reference')
