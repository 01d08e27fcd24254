"""Tests of the demo data, the EDM2 demo training loop, the demo feature net and the shipped assets."""

import os
import pickle

import numpy as np
import pytest
import torch

from edmguide.demo import data, features, train
from edmguide.util.images import atomic_write

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'edmguide', 'demo', 'assets')
TINY_NET = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])


@pytest.fixture(scope='module')
def digits():
    return data.load_digits_uint8(16)


def _tiny_run(images, labels, steps, seed=0):
    torch.manual_seed(seed)
    net = train.build_network(10, TINY_NET)
    return net, train.training_loop(net, images, labels, seed=seed, batch_size=32, total_steps=steps,
                                    lr=0.01, rampup_steps=5, decay_steps=20, ema_std=0.1)

#----------------------------------------------------------------------------
# Data.

def test_digits_are_uint8_16x16_grayscale_with_ten_classes(digits):
    images, labels = digits
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.uint8
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert int(images.max()) == 255 and int(images.min()) == 0
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_digits_at_native_resolution_are_rescaled_originals():
    from sklearn.datasets import load_digits
    images, _ = data.load_digits_uint8(8)
    expected = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    np.testing.assert_array_equal(images[:, 0].numpy(), expected)


def test_epoch_sampler_visits_every_item_once_per_epoch():
    sampler = data.EpochSampler(10, 4, seed=3)
    seen = torch.cat([sampler.next() for _ in range(5)])  # 20 items = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_train_test_split_is_disjoint_and_deterministic():
    a_train, a_test = data.train_test_split(100, 0.2, seed=1)
    b_train, b_test = data.train_test_split(100, 0.2, seed=1)
    assert len(a_test) == 20 and torch.equal(a_test, b_test) and torch.equal(a_train, b_train)
    assert not set(a_train.tolist()) & set(a_test.tolist())

#----------------------------------------------------------------------------
# Training loop pieces.

def test_training_loss_decreases_on_the_digits(digits):
    images, labels = digits
    _, result = _tiny_run(images, labels, steps=30)
    losses = result.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_training_is_deterministic_given_the_seed(digits):
    images, labels = digits
    net_a, run_a = _tiny_run(images[:64], labels[:64], steps=3, seed=5)
    net_b, run_b = _tiny_run(images[:64], labels[:64], steps=3, seed=5)
    assert run_a.losses == run_b.losses
    for a, b in zip(run_a.ema.state_dict().values(), run_b.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_network_pickle_has_the_edm2_layout(digits, tmp_path):
    images, labels = digits
    _, result = _tiny_run(images[:32], labels[:32], steps=1)
    path = tmp_path / 'net.pkl'
    atomic_write(str(path), train.network_pickle_bytes(result.ema, loss_fn=result.loss_fn))
    assert os.listdir(tmp_path) == ['net.pkl']  # no temporary file left behind
    with open(path, 'rb') as f:
        blob = pickle.load(f)
    assert list(blob.keys()) == ['encoder', 'dataset_kwargs', 'loss_fn', 'ema']
    ema = blob['ema']
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    assert all(t.dtype == torch.float16 for t in ema.state_dict().values())
    assert blob['dataset_kwargs'].use_labels is True and blob['loss_fn'].P_mean == -0.8
    x = blob['encoder'].encode_latents(images[:2])
    assert ema(x, torch.tensor(1.0), torch.eye(10)[:2]).shape == x.shape

#----------------------------------------------------------------------------
# Feature network (fresh, untrained) and the shipped assets.

def test_feature_net_returns_logits_or_64d_features_for_gray_or_rgb(digits):
    images, _ = digits
    torch.manual_seed(0)
    net = features.DigitFeatureNet().eval()
    assert net(images[:4]).shape == (4, 10)
    feats = net(images[:4], return_features=True)
    assert feats.shape == (4, features.FEATURE_DIM) and feats.dtype == torch.float32
    rgb = images[:4].expand(-1, 3, -1, -1)
    torch.testing.assert_close(net(rgb, return_features=True), feats)
    big = torch.nn.functional.interpolate(images[:4].float(), scale_factor=2).to(torch.uint8)
    assert net(big, return_features=True).shape == (4, features.FEATURE_DIM)


def test_augment_keeps_shape_and_dtype(digits):
    images, _ = digits
    out = features.augment(images[:8], torch.Generator().manual_seed(0))
    assert out.shape == images[:8].shape and out.dtype == torch.uint8


def _load_asset(name):
    path = os.path.join(ASSETS, name)
    assert os.path.isfile(path), f'missing shipped asset {path} (run scripts/train_demo.py)'
    with open(path, 'rb') as f:
        return pickle.load(f)


@pytest.mark.parametrize('name,label_dim', [('digits-cond.pkl', 10), ('digits-uncond.pkl', 0), ('digits-bad.pkl', 10)])
def test_shipped_demo_networks_load_with_expected_shapes(name, label_dim):
    blob = _load_asset(name)
    net = blob['ema']
    assert (net.label_dim, net.img_resolution, net.img_channels) == (label_dim, 16, 1)
    assert all(t.dtype == torch.float16 for t in net.state_dict().values())
    labels = torch.eye(10)[:2] if label_dim else None
    x = torch.zeros([2, 1, 16, 16])
    assert net(x, torch.tensor(2.0), labels).shape == x.shape


def test_shipped_feature_net_and_reference_stats(digits):
    images, labels = digits
    net = _load_asset('digits-features.pkl')
    assert net(images[:5], return_features=True).shape == (5, features.FEATURE_DIM)
    assert features.accuracy(net, images, labels) > 0.9
    ref = _load_asset('digits-ref.pkl')
    assert ref['num_images'] == 1797
    mu, sigma = ref['fd_digits']['mu'], ref['fd_digits']['sigma']
    assert mu.shape == (features.FEATURE_DIM,) and sigma.shape == (features.FEATURE_DIM,) * 2
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, sigma.T)
