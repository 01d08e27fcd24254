"""Tests for edmguide/nets/loading.py: the one loader of network pickles (offline, tiny nets)."""

import math
import pickle

import pytest
import torch

import dnnlib
from edmguide.util.errors import UserError
from edmguide.nets.loading import load_network, load_pickle
from training import encoders, networks_edm2

#----------------------------------------------------------------------------

def tiny_precond(img_channels=3, label_dim=0):
    torch.manual_seed(0)
    return networks_edm2.Precond(img_resolution=8, img_channels=img_channels, label_dim=label_dim,
        model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])

def write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return str(path)

class FakeEDMv1Precond(torch.nn.Module):
    """Has its own sigma range and rounding, like EDM v1 / guidance-interval nets."""
    img_channels, img_resolution, label_dim = 3, 8, 0
    sigma_min, sigma_max = 0.002, 80.0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma).round()

    def forward(self, x, sigma, class_labels=None):
        return x

class ToyLikeModel(torch.nn.Module):
    """A bare denoiser module without image attributes, like EDM2 toy pickles."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, x, sigma):
        return self.layer(x)

def assert_user_error(path, *fragments, **kwargs):
    with pytest.raises(UserError) as info:
        load_network(path, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message

#----------------------------------------------------------------------------
# Errors.

def test_missing_file_is_a_user_error(tmp_path):
    assert_user_error(tmp_path / 'nope.pkl', 'no such file')
    assert_user_error(tmp_path, 'is a directory')  # named as what it is, not as missing

def test_non_pickle_file_is_a_user_error(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('hello, I am not a pickle\n')
    assert_user_error(str(path), 'not a pickle')

def test_empty_and_truncated_files_are_user_errors(tmp_path):
    empty = tmp_path / 'empty.pkl'
    empty.write_bytes(b'')
    assert_user_error(str(empty), 'truncated')
    data = pickle.dumps(dict(ema=tiny_precond()))
    for fraction in [0.5, 0.99]:
        cut = tmp_path / f'cut{fraction}.pkl'
        cut.write_bytes(data[:int(len(data) * fraction)])
        assert_user_error(str(cut), 'truncated')

def test_pickle_needing_a_missing_module_is_a_user_error(tmp_path):
    path = tmp_path / 'foreign.pkl'
    path.write_bytes(b'cno_such_module_for_edmguide_tests\nThing\n.')
    assert_user_error(str(path), 'no_such_module_for_edmguide_tests')

def test_unreachable_url_without_cache_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(dnnlib.util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    url = 'http://127.0.0.1:9/edm2/missing-net.pkl'
    assert_user_error(url, 'cannot download')

def test_url_is_served_from_download_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(dnnlib.util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    url = 'http://127.0.0.1:9/edm2/cached-net.pkl'
    downloads = tmp_path / 'downloads'
    downloads.mkdir()
    name = dnnlib.util.url_cache_key(url) + '_cached-net.pkl'
    write_pickle(downloads / name, dict(ema=tiny_precond()))
    net, encoder = load_network(url)
    assert isinstance(net, networks_edm2.Precond) and isinstance(encoder, encoders.StandardRGBEncoder)

def test_pickle_without_ema_is_a_user_error(tmp_path):
    path = write_pickle(tmp_path / 'noema.pkl', dnnlib.EasyDict(loss_fn=None, encoder=None))
    assert_user_error(path, 'no network', 'loss_fn')

@pytest.mark.parametrize('obj', [dict(ema=42), dict(ema=torch.zeros(3)), [1, 2, 3], 'text'])
def test_object_that_is_not_a_denoiser_is_a_user_error(tmp_path, obj):
    path = write_pickle(tmp_path / 'odd.pkl', obj)
    assert_user_error(path, 'not a denoiser')

def test_load_pickle_returns_the_object_and_reports_missing_file(tmp_path):
    path = write_pickle(tmp_path / 'plain.pkl', {'a': 1})
    assert load_pickle(path) == {'a': 1}
    with pytest.raises(UserError, match='gone.pkl'):
        load_pickle(str(tmp_path / 'gone.pkl'))

#----------------------------------------------------------------------------
# Encoder choice and attributes.

def test_encoder_defaults_to_vae_for_4_channels_and_rgb_otherwise(tmp_path):
    net4, enc4 = load_network(write_pickle(tmp_path / 'latent.pkl', dict(ema=tiny_precond(img_channels=4))))
    assert isinstance(enc4, encoders.StabilityVAEEncoder) and enc4._vae is None   # VAE loads lazily
    net3, enc3 = load_network(write_pickle(tmp_path / 'pixel.pkl', dict(ema=tiny_precond(), encoder=None)))
    assert isinstance(enc3, encoders.StandardRGBEncoder)
    assert load_network(str(tmp_path / 'pixel.pkl'), want_encoder=False)[1] is None

def test_pickled_encoder_is_used_when_present(tmp_path):
    own = encoders.StabilityVAEEncoder(batch_size=3)
    path = write_pickle(tmp_path / 'own.pkl', dnnlib.EasyDict(encoder=own, ema=tiny_precond()))
    _net, encoder = load_network(path)
    assert isinstance(encoder, encoders.StabilityVAEEncoder) and encoder.batch_size == 3

def test_edm2_net_gets_neutral_sigma_attributes_and_is_frozen(tmp_path):
    ema = tiny_precond(img_channels=4, label_dim=5).to(torch.float16)
    net, _ = load_network(write_pickle(tmp_path / 'edm2.pkl', dict(ema=ema)), device='cpu')
    assert net.sigma_min == 0 and net.sigma_max == math.inf
    sigma = torch.tensor([0.0123, 4.5])
    assert torch.equal(net.round_sigma(sigma), sigma)
    assert torch.equal(net.round_sigma(1.5), torch.tensor(1.5))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.unet.out_conv.weight.dtype == torch.float16          # released weights stay as stored
    out = net(torch.randn(2, 4, 8, 8), sigma, torch.eye(5)[:2])
    assert out.shape == (2, 4, 8, 8) and out.dtype == torch.float32

def test_existing_sigma_attributes_are_kept(tmp_path):
    net, encoder = load_network(write_pickle(tmp_path / 'v1.pkl', dict(ema=FakeEDMv1Precond(), augment_pipe=None)))
    assert net.sigma_min == 0.002 and net.sigma_max == 80.0
    assert torch.equal(net.round_sigma(torch.tensor([1.4])), torch.tensor([1.0]))
    assert isinstance(encoder, encoders.StandardRGBEncoder)

def test_bare_module_pickle_is_accepted_like_toy_models(tmp_path):
    net, encoder = load_network(write_pickle(tmp_path / 'toy.pkl', ToyLikeModel()))
    assert isinstance(net, ToyLikeModel) and encoder is None and not net.training
    assert net.sigma_max == math.inf

#----------------------------------------------------------------------------

def test_a_pickle_from_outside_the_repository_gets_a_note_once_and_the_demo_assets_none(tmp_path, capsys, monkeypatch):
    import os
    from edmguide.nets import loading
    from edmguide.nets import presets
    monkeypatch.setattr(loading, '_noted', set())
    path = write_pickle(tmp_path / 'net.pkl', tiny_precond())
    load_network(path)
    load_network(path)  # the same file again: no second note
    err = capsys.readouterr().err.splitlines()
    assert err == [f'note: opening {path} runs Python code stored in it (pickles execute code); open only files you trust']
    load_network(os.path.join(loading.REPO_ROOT, presets.DEMO_FILES.uncond))
    assert capsys.readouterr().err == ''
    load_pickle(path, note=False)
    assert capsys.readouterr().err == ''

def test_a_reference_pickle_gets_the_note_too(tmp_path, capsys, monkeypatch):
    import numpy as np
    from edmguide.nets import loading
    from edmguide.metrics import stats
    monkeypatch.setattr(loading, '_noted', set())
    path = write_pickle(tmp_path / 'ref.pkl', {'fid': {'mu': np.zeros(2), 'sigma': np.eye(2)}})
    stats.load_reference(path)
    assert capsys.readouterr().err.startswith(f'note: opening {path} runs Python code')
