"""Detectors (offline fakes in the real cache locations) and the metric registry."""

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from edmguide.util.errors import UserError
from edmguide.metrics import detectors
import helpers_metrics as hm


def test_builtin_metrics_and_labels():
    assert detectors.metric_names()[:2] == ['fid', 'fd_dinov2']
    assert detectors.metric_label('fid') == 'FID' and detectors.metric_label('fd_dinov2') == 'FD_DINOv2'
    assert detectors.parse_metric_list(' fid, fd_dinov2 ,') == ['fid', 'fd_dinov2']
    with pytest.raises(UserError, match='Invalid metric "kid"'):
        detectors.parse_metric_list('fid,kid')
    with pytest.raises(UserError, match='no metric'):
        detectors.parse_metric_list(',')

def test_inception_is_loaded_from_the_download_cache(cache):
    det = detectors.get_detector('fid')
    assert det is detectors.get_detector('fid') # built once
    images = torch.from_numpy(hm.random_images(3, size=20)).permute(0, 3, 1, 2)
    torch.testing.assert_close(det(images), hm.fake_inception_features(images))

def test_dinov2_from_hub_cache_resize_and_normalization(cache):
    images = torch.from_numpy(hm.random_images(2, size=32)).permute(0, 3, 1, 2)
    mean = torch.tensor(detectors.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(detectors.IMAGENET_STD).reshape(1, 3, 1, 1)
    det = detectors.get_detector('fd_dinov2')
    assert not det.model.training # put in eval mode
    assert torch.hub.get_dir() == dnnlib.make_cache_dir_path('torch_hub')
    x = torch.nn.functional.interpolate(images.float(), size=(224, 224), mode='bicubic', antialias=True)
    expected = ((x / 255 - mean) / std).mean(dim=(2, 3))
    torch.testing.assert_close(det(images)[:, 12:], expected)
    pil = np.stack([np.asarray(PIL.Image.fromarray(im, 'RGB').resize((224, 224), PIL.Image.BICUBIC))
                    for im in images.permute(0, 2, 3, 1).numpy()])
    expected_pil = ((torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255 - mean) / std).mean(dim=(2, 3))
    det_pil = detectors.get_detector('fd_dinov2', resize_mode='pil')
    assert det_pil is not det
    torch.testing.assert_close(det_pil(images)[:, 12:], expected_pil)

def test_missing_detectors_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    detectors.clear_detector_cache()
    monkeypatch.setattr(dnnlib.util, 'open_url', _offline_open_url)
    with pytest.raises(UserError, match='Inception-v3'):
        detectors.get_detector('fid')
    monkeypatch.setattr(torch.hub, 'load', _offline_hub_load)
    with pytest.raises(UserError, match='DINOv2'):
        detectors.get_detector('fd_dinov2')
    detectors.clear_detector_cache()

def _offline_open_url(url, **_kwargs):
    raise OSError(f'no network for {url}\nsecond line')

def _offline_hub_load(*_args, **_kwargs):
    raise OSError('no network')

def test_register_metric_api():
    class Mean(detectors.Detector):
        def __init__(self, scale=1):
            self.scale = scale
        def __call__(self, images):
            return images.float().mean(dim=(2, 3)) * self.scale
    detectors.register_metric('fd_demo_test', Mean, label='FD_demo')
    try:
        assert 'fd_demo_test' in detectors.metric_names() and detectors.metric_label('fd_demo_test') == 'FD_demo'
        assert detectors.get_detector('fd_demo_test', scale=2).scale == 2
        with pytest.raises(ValueError, match='already registered'):
            detectors.register_metric('fd_demo_test', Mean)
        detectors.register_metric('fd_demo_test', lambda: Mean(3), replace=True)
        assert detectors.get_detector('fd_demo_test').scale == 3
    finally:
        detectors.unregister_metric('fd_demo_test')
    assert 'fd_demo_test' not in detectors.metric_names()

def test_pickled_feature_net_for_other_urls(cache, tmp_path):
    path = tmp_path / 'demo-features.pkl'
    import pickle
    path.write_bytes(pickle.dumps(hm.FakeInception()))
    det = detectors.PickledFeatureNet(str(path), name='demo feature net')
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert det(images).shape == (2, 15)

def test_metric_kinds_and_the_demo_pr_features_fit_float16():
    from edmguide.demo.data import load_digits_uint8
    from edmguide.metrics import precision_recall
    assert detectors.metric_kind('fid') == 'frechet' and detectors.metric_kind('pr') == 'pr'
    assert detectors.metric_kind('pr_digits') == 'pr'
    with pytest.raises(ValueError, match='unknown metric kind'):
        detectors.register_metric('bogus_kind', lambda: None, kind='kid')
    assert 'bogus_kind' not in detectors.metric_names()
    images, _ = load_digits_uint8(16)
    features = detectors.get_detector('pr_digits')(images[:300])
    precision_recall.check_float16_range(features) # the 1/16 scale keeps |f|^2 below 65504
    assert features.shape == (300, 64)
