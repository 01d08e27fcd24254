"""Tests for torch_utils.misc helpers."""

import numpy as np
import pytest
import torch

from torch_utils import misc

#----------------------------------------------------------------------------
# Cached constants.

def test_const_like_caching_returns_same_tensor():
    ref = torch.zeros(2, dtype=torch.float16)
    a = misc.const_like(ref, [1.0, 2.0, 3.0])
    b = misc.const_like(ref, np.array([1.0, 2.0, 3.0]))
    assert a is b
    assert a.dtype == torch.float16 and a.device == ref.device
    assert torch.equal(a, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16))

def test_constant_cache_key_distinguishes_value_dtype_and_shape():
    base = misc.constant([1.0, 2.0])
    assert base.dtype == torch.get_default_dtype() and base.device == torch.device('cpu')
    assert misc.constant([1.0, 2.0], device='cpu') is base
    assert misc.constant([1.0, 2.5]) is not base
    assert misc.constant([1.0, 2.0], dtype=torch.float64).dtype == torch.float64
    broadcast = misc.constant(0.5, shape=[2, 3])
    assert broadcast.shape == (2, 3) and broadcast.is_contiguous() and torch.all(broadcast == 0.5)
    assert misc.constant(0.5, shape=(2, 3)) is broadcast
    cl = misc.constant(np.ones([1, 3, 2, 2]), memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)

def test_constant_does_not_alias_caller_array():
    value = np.array([1.0, 2.0], dtype=np.float32)
    t = misc.constant(value, dtype=torch.float32)
    value[0] = 100.0
    assert t[0].item() == 1.0

#----------------------------------------------------------------------------

def test_set_random_seed_is_reproducible_for_torch_and_numpy():
    misc.set_random_seed(1, 2)
    a = (torch.rand(3), np.random.rand(3))
    misc.set_random_seed(1, 2)
    b = (torch.rand(3), np.random.rand(3))
    misc.set_random_seed(1, 3)
    c = torch.rand(3)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not torch.equal(a[0], c)

def test_infinite_sampler_splits_ranks_and_covers_each_epoch():
    dataset = list(range(10))
    take = lambda it, n: [next(it) for _ in range(n)]
    r0 = take(iter(misc.InfiniteSampler(dataset, rank=0, num_replicas=2, seed=3)), 10)
    r1 = take(iter(misc.InfiniteSampler(dataset, rank=1, num_replicas=2, seed=3)), 10)
    assert sorted(r0[:5] + r1[:5]) == dataset       # first epoch split between the ranks
    assert sorted(r0[5:] + r1[5:]) == dataset       # second epoch too
    assert r0[:5] + r1[:5] != r0[5:] + r1[5:]        # reshuffled per epoch
    full = take(iter(misc.InfiniteSampler(dataset, seed=3)), 25)
    resumed = take(iter(misc.InfiniteSampler(dataset, seed=3, start_idx=7)), 18)
    assert resumed == full[7:]
    ordered = take(iter(misc.InfiniteSampler(dataset, shuffle=False)), 12)
    assert ordered == dataset + [0, 1]

def test_copy_params_and_buffers_copies_matching_names():
    src = torch.nn.BatchNorm1d(3)
    dst = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2.0)
        src.running_mean.fill_(5.0)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    assert torch.all(dst.weight == 2.0) and torch.all(dst.running_mean == 5.0)
    assert dst.weight.requires_grad
    names = [n for n, _ in misc.named_params_and_buffers(dst)]
    assert names[:2] == ['weight', 'bias'] and 'running_mean' in names
    assert len(misc.params_and_buffers(dst)) == len(names)
    with pytest.raises(AssertionError):
        misc.copy_params_and_buffers(torch.nn.Identity(), dst, require_all=True)

def test_assert_shape_accepts_none_and_rejects_mismatch():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, None, 4])
    with pytest.raises(AssertionError, match='dimension 1'):
        misc.assert_shape(x, [2, 5, 4])
    with pytest.raises(AssertionError, match='number of dimensions'):
        misc.assert_shape(x, [2, 3])

def test_tile_images_row_major_grid():
    x = torch.arange(6).reshape(6, 1, 1, 1).expand(6, 2, 2, 2)
    grid = misc.tile_images(x, w=3, h=2)
    assert grid.shape == (2, 4, 6)
    assert grid[0, ::2, ::2].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(AssertionError):
        misc.tile_images(x, w=4, h=2)

def test_nan_to_num_replaces_non_finite_values():
    x = torch.tensor([float('nan'), float('inf'), -float('inf'), 1.0])
    y = misc.nan_to_num(x)
    assert torch.isfinite(y).all() and y[0] == 0 and y[3] == 1
    assert y[1] == torch.finfo(torch.float32).max

def test_profiled_function_keeps_name_and_result():
    @misc.profiled_function
    def double(v):
        return v * 2
    assert double.__name__ == 'double' and double(torch.tensor(3)).item() == 6

def test_ddp_sync_is_noop_for_plain_module():
    module = torch.nn.Linear(2, 2)
    with misc.ddp_sync(module, sync=False):
        module(torch.zeros(1, 2)).sum().backward()
    assert module.weight.grad is not None

def test_pinned_buf_copies_and_reuses_buffer():
    a = misc.pinned_buf(torch.ones(3))
    b = misc.pinned_buf(torch.full([3], 2.0))
    assert a is b and torch.all(b == 2.0)

def test_print_module_summary_counts_parameters(capsys):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.BatchNorm1d(4))
    out = misc.print_module_summary(net, [torch.zeros(2, 3)])
    assert out.shape == (2, 4)
    text = capsys.readouterr().out
    total = [line for line in text.splitlines() if line.startswith('Total')][0].split()
    assert total[1] == str(16 + 8) and total[2] == str(4 + 4 + 1)

def test_suppress_tracer_warnings_restores_filters():
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        before = list(warnings.filters)
        with misc.suppress_tracer_warnings():
            warnings.warn('ignored', torch.jit.TracerWarning)
        assert warnings.filters == before
        warnings.warn('shown', torch.jit.TracerWarning)
    assert [str(w.message) for w in caught] == ['shown']

#----------------------------------------------------------------------------
