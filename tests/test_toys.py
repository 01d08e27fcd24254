"""Tests of the toy figures (edmguide/toys, scripts/toy_figures.py): data, ideal denoiser, shipped
MLPs and rendering. Everything runs on one CPU thread."""

import functools
import os
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule
from edmguide.toys import ag_2d, gi_1d
from edmguide.toys.tree import make_two_class_trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope='module')
def mixture():
    return make_two_class_trees(ag_2d.TREE_SEED)


@pytest.fixture(scope='module')
def truth(mixture):
    return ag_2d.ground_truth(mixture)


@pytest.fixture(scope='module')
def models():
    return ag_2d.load_models()

#----------------------------------------------------------------------------
# Data.

def test_tree_has_paper_component_count_and_normalisation(mixture):
    assert len(mixture.means) == 2 * 1016
    assert np.allclose([mixture.weights[mixture.classes == c].sum() for c in (0, 1)], 1)
    pts = mixture.sample(200000, np.random.default_rng(0))
    assert np.abs(pts.mean(0)).max() < 0.01
    assert abs(np.sqrt(pts.var(0).mean()) - 0.5) < 0.01


def test_float32_ideal_denoiser_matches_float64(mixture):
    """The float32 mixture (training targets, density backgrounds) agrees with the float64 one."""
    sub = mixture.select(0)
    ref, fast = ag_2d.ground_truth(sub), ag_2d.ground_truth(sub, torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=gen) * 0.7
    sigma = (torch.randn(256, generator=gen) * 1.5 - 1.5).exp()
    got = fast(x, sigma)
    assert got.dtype == torch.float32
    want = ref(x.double(), sigma.double())
    assert ((got.double() - want).abs() / sigma[:, None].double()).max() < 1e-3
    log_p = fast.log_density(x, 0.0).double()
    assert (log_p - ref.log_density(x.double(), 0.0)).abs().max() < 1e-3


#----------------------------------------------------------------------------
# Ideal-denoiser sampling.

def test_ideal_denoiser_samples_lie_on_their_tree(mixture, truth):
    """Shared sampler + exact class-A denoiser (32 Heun steps, sigma_max 5) lands on tree A."""
    class_a = ag_2d.ground_truth(mixture.select(0))
    noise = torch.randn([128, 2], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from edmguide.sampler.sampling import SamplerOptions, sample
    x = sample(class_a, noise, None, options=SamplerOptions(32, 0.002, 5.0, 7, dtype=torch.float64))
    # "Near a component": log-density above that of 95% of exact class-A samples.
    exact = torch.as_tensor(mixture.sample(1000, np.random.default_rng(1), 0))
    level = truth.log_density(exact, 0.0, 0).quantile(0.05)
    assert (truth.log_density(x, 0.0, 0) > level).double().mean() > 0.85
    assert (truth.log_density(x, 0.0, 0) > truth.log_density(x, 0.0, 1)).double().mean() > 0.9


def test_gi_1d_cfg_drops_the_overlapping_mode_and_interval_keeps_it():
    net = gi_1d.build_denoiser()
    left = {}
    for name, guidance in (('none', GuidanceSchedule.none()), ('cfg', GuidanceSchedule.constant(4)),
                           ('interval', GuidanceSchedule.sigma_range(4, *gi_1d.INTERVAL))):
        x, sigmas, traj = gi_1d.sample_class_a(net, guidance, num_samples=2000)
        assert traj.shape == (33, 2000) and np.allclose(traj[-1], x)
        left[name] = (x < 0).mean()
    assert abs(left['none'] - 0.5) < 0.05
    assert left['cfg'] > 0.9
    assert abs(left['interval'] - 0.5) < 0.1

#----------------------------------------------------------------------------
# Shipped MLPs.

# Bounds on E|D_net - D_ideal|^2 / sigma^2 for class-A points (the main net) at a few noise levels.
MAIN_ERROR_BOUNDS = {0.02: 0.25, 0.1: 0.005, 0.5: 0.001, 2.0: 0.0002}


@pytest.mark.parametrize('sigma', sorted(MAIN_ERROR_BOUNDS))
def test_shipped_main_mlp_is_close_to_ideal_denoiser(models, truth, sigma):
    err = ag_2d.denoiser_error(models['main'], truth, sigma, n=1024)
    assert err < MAIN_ERROR_BOUNDS[sigma]


def test_shipped_guide_is_worse_than_main(models, truth):
    errors = {name: ag_2d.denoiser_error(models[name], truth, 0.1, n=1024) for name in ('main', 'guide-ag')}
    assert errors['guide-ag'] > 2 * errors['main']


def test_shipped_models_are_plain_denoisers(models):
    for net in models.values():
        assert (net.img_channels, net.img_resolution, net.label_dim) == (2, 1, 0)
        x = torch.zeros(3, 2, 1, 1)
        assert net(x, torch.tensor(1.0)).shape == x.shape

#----------------------------------------------------------------------------
# Rendering.

def _import_script():
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    try:
        import toy_figures
    finally:
        sys.path.pop(0)
    return toy_figures


def test_figures_render_from_shipped_models(tmp_path, monkeypatch):
    monkeypatch.setattr(gi_1d, 'NUM_SAMPLES', 2000)
    monkeypatch.setattr(ag_2d, 'NUM_SAMPLES', 1000)
    monkeypatch.setattr(ag_2d, '_density_grid', functools.partial(ag_2d._density_grid, res=100))
    toy_figures = _import_script()
    paths = toy_figures.toy_figures(str(tmp_path), log=lambda msg: None)
    for name, size in (('gi_1d', (1300, 650)), ('ag_2d', (1800, 520))):
        with PIL.Image.open(paths[name]) as img:
            assert img.format == 'PNG' and img.size == size


def test_missing_model_pickle_is_named_to_the_user(tmp_path):
    toy_figures = _import_script()
    with pytest.raises(UserError, match='ag2d-main.pkl'):
        toy_figures.toy_figures(str(tmp_path), which=('ag_2d',), assets_dir=str(tmp_path / 'none'), log=lambda m: None)
