"""Tests for edmguide/sampler/gmm.py: the closed-form posterior mean, conditioning, shapes, dtypes and
the exact sampler of the mixture."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from edmguide.sampler.gmm import GaussianMixtureDenoiser


def _brute_force_posterior_mean(comps, x, sigma, cls=None):
    """E[x0|x] from Bayes' rule with explicit matrix inverses (numpy, float64)."""
    logs, means = [], []
    for w, mu, cov, c in comps:
        if cls is not None and c != cls:
            continue
        mu, cov = np.asarray(mu, float), np.asarray(cov, float)
        s = cov + sigma ** 2 * np.eye(len(mu))
        diff = x - mu
        logs.append(math.log(w) + scipy.stats.multivariate_normal(mu, s).logpdf(x))
        means.append(mu + cov @ np.linalg.solve(s, diff))
    r = np.exp(np.array(logs) - max(logs))
    return (r[:, None] * np.array(means)).sum(0) / r.sum()


COMPS = [(0.3, [0.0, 1.0], [[0.5, 0.2], [0.2, 0.3]], 0),
         (0.2, [1.0, -1.0], [[0.1, -0.05], [-0.05, 0.2]], 0),
         (0.5, [-1.0, 0.5], [[0.2, 0.0], [0.0, 0.05]], 1)]


@pytest.mark.parametrize('cls', [None, 0, 1])
def test_posterior_mean_matches_bayes_rule_with_full_covariances(cls):
    net = GaussianMixtureDenoiser(COMPS)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 20.0], dtype=torch.float64)
    labels = None if cls is None else torch.eye(2, dtype=torch.float64)[[cls] * 5]
    got = net(x, sigma, labels)
    for k in range(5):
        want = _brute_force_posterior_mean(COMPS, x[k].numpy(), sigma[k].item(), cls)
        np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-10, atol=1e-12)


def test_single_gaussian_denoiser_is_linear_shrinkage():
    net = GaussianMixtureDenoiser([(1.0, 0.5, 0.25, None)])
    x = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(-1, 1)
    want = 0.5 + 0.25 / (0.25 + 4.0) * (x - 0.5)
    torch.testing.assert_close(net(x, torch.tensor(2.0, dtype=torch.float64)), want, rtol=0, atol=1e-15)
    assert net.label_dim == 0 and (net.img_channels, net.img_resolution) == (1, 1)


def test_unconditional_copy_ignores_labels_and_matches_no_label_call():
    net = GaussianMixtureDenoiser(COMPS)
    unc = net.unconditional()
    x = torch.randn(4, 2, dtype=torch.float64)
    labels = torch.eye(2, dtype=torch.float64)[[0, 1, 0, 1]]
    assert unc.label_dim == 0 and net.label_dim == 2
    assert torch.equal(unc(x, 0.5, labels), net(x, 0.5))
    assert not torch.allclose(net(x, 0.5, labels), net(x, 0.5))


def test_accepts_image_shaped_inputs_and_keeps_input_dtype():
    rng = torch.Generator().manual_seed(1)
    means = torch.randn(3, 12, generator=rng, dtype=torch.float64)
    net = GaussianMixtureDenoiser([(1.0, m, 0.1 * (k + 1), k) for k, m in enumerate(means)],
                                  img_channels=3, img_resolution=2)
    x = torch.randn(4, 3, 2, 2, generator=rng)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    out = net(x, torch.tensor(0.7), labels)
    assert out.shape == x.shape and out.dtype == torch.float32
    flat = net(x.double().reshape(4, 12), torch.tensor(0.7, dtype=torch.float64), labels)
    torch.testing.assert_close(out.reshape(4, 12), flat.float())
    with pytest.raises(ValueError):
        net(torch.randn(2, 5), 1.0)


def test_noisy_input_near_a_mode_denoises_to_that_mode_at_low_sigma():
    net = GaussianMixtureDenoiser([(0.5, -1.0, 1e-6, 0), (0.5, 1.0, 1e-6, 1)])
    out = net(torch.tensor([[-0.9], [1.2]], dtype=torch.float64), 0.3)
    torch.testing.assert_close(out, torch.tensor([[-1.0], [1.0]], dtype=torch.float64), atol=1e-3, rtol=0)


# (weight, mean, variance, class) of a 1D mixture; variances, not standard deviations.
COMPS_1D = [(0.3, -1.0, 0.09, 0), (0.2, 1.5, 0.25, 0), (0.5, 0.5, 0.04, 1)]


def _independent_cdf(comps, x, cls=None):
    """CDF of a 1D mixture (or of one class, weights renormalised within it) from scipy.stats.norm."""
    kept = [(w, mu, var) for w, mu, var, c in comps if cls is None or c == cls]
    total = sum(w for w, _, _ in kept)
    return sum(w / total * scipy.stats.norm.cdf(x, loc=mu, scale=math.sqrt(var)) for w, mu, var in kept)


@pytest.mark.parametrize('cls', [None, 0, 1])
def test_cdf_matches_scipy_mixture_cdf(cls):
    net = GaussianMixtureDenoiser(COMPS_1D)
    grid = np.concatenate([np.linspace(-3, 3, 241), [-50.0, -6.0, 6.0, 50.0]])
    got = net.cdf(torch.as_tensor(grid), class_idx=cls).numpy()
    want = _independent_cdf(COMPS_1D, grid, cls)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    # The grid separates the classes and the variance/std reading: each alternative is far off.
    assert np.abs(want - _independent_cdf(COMPS_1D, grid, None if cls is not None else 1)).max() > 0.1
    wrong_scale = [(w, mu, var ** 2, c) for w, mu, var, c in COMPS_1D] # the variance read as a std
    assert np.abs(want - _independent_cdf(wrong_scale, grid, cls)).max() > 0.05


def test_sample_data_matches_exact_cdf_per_class():
    net = GaussianMixtureDenoiser(COMPS_1D)
    g = torch.Generator().manual_seed(0)
    n = 20000
    for cls in (None, 0, 1):
        x, c = net.sample_data(n, class_idx=cls, generator=g)
        assert x.shape == (n, 1) and c.shape == (n,)
        # Kolmogorov-Smirnov against the CDF built here from the component list (not net.cdf):
        # 0.02 is above the 0.1% critical value (1.95 / sqrt(n) = 0.0138) and far below the
        # distance to a mixture with the wrong scales or class weights (both checked).
        sample = x[:, 0].numpy()
        ks = scipy.stats.kstest(sample, lambda v, cls=cls: _independent_cdf(COMPS_1D, v, cls))
        assert ks.statistic < 0.02 and ks.pvalue > 1e-3, (cls, ks)
        wrong_scale = [(w, mu, var ** 2, k) for w, mu, var, k in COMPS_1D]
        assert scipy.stats.kstest(sample, lambda v, cls=cls: _independent_cdf(wrong_scale, v, cls)).statistic > 0.1
        if cls is None:   # the classes come out in proportion to their weights (0.5 : 0.5)
            assert abs((c == 1).double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
        else:
            assert (c == cls).all()
            other = scipy.stats.kstest(sample, lambda v: _independent_cdf(COMPS_1D, v, None))
            assert other.statistic > 0.2, cls
    assert net.cdf(torch.tensor([-50.0, 50.0])).tolist() == pytest.approx([0.0, 1.0])


def test_log_density_integrates_to_one_and_widens_with_noise():
    net = GaussianMixtureDenoiser([(0.3, -1.0, 0.09, 0), (0.7, 1.5, 0.25, 1)])
    grid = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    for sigma, cls in [(0.0, None), (2.0, None), (0.5, 1)]:
        p = net.log_density(grid[:, None], sigma, class_idx=cls).exp()
        assert torch.trapezoid(p, grid).item() == pytest.approx(1.0, abs=1e-6)


def test_module_behaves_like_a_network():
    net = GaussianMixtureDenoiser(COMPS).to('cpu').eval()
    assert (net.sigma_min, net.sigma_max) == (0.0, math.inf)
    assert torch.equal(net.round_sigma(torch.tensor(0.3)), torch.tensor(0.3))
    sigma_batch = net(torch.zeros(2, 2), torch.tensor([1.0, 1.0]))
    assert torch.equal(sigma_batch, net(torch.zeros(2, 2), torch.tensor(1.0)))


def _numpy_posterior_mean(weights, means, covs, classes, x, sigma, cls=None):
    """E[x0|x] written out independently: per component, an explicit solve with S_k + sigma^2 I,
    log N from slogdet, responsibilities normalised in numpy (float64)."""
    d = means.shape[1]
    keep = np.ones(len(weights), bool) if cls is None else classes == cls
    w = weights * keep
    w = w / w.sum()
    log_r, post = [], []
    for k in np.flatnonzero(keep):
        s = covs[k] + sigma ** 2 * np.eye(d)
        sol = np.linalg.solve(s, x - means[k])
        log_r.append(np.log(w[k]) - 0.5 * ((x - means[k]) @ sol + np.linalg.slogdet(s)[1] + d * np.log(2 * np.pi)))
        post.append(means[k] + covs[k] @ sol)
    log_r = np.array(log_r)
    r = np.exp(log_r - log_r.max())
    return (r / r.sum()) @ np.array(post)


@pytest.mark.parametrize('cls', [None, 0, 1, 2])
def test_eigenbasis_forward_matches_explicit_solves_for_random_3d_full_covariances(cls):
    rng = np.random.default_rng(3)
    k, d = 7, 3
    weights = rng.uniform(0.2, 1.0, k)
    means = rng.normal(size=(k, d)) * 1.5
    a = rng.normal(size=(k, d, d)) * rng.uniform(0.05, 0.8, (k, 1, 1))
    covs = a @ a.transpose(0, 2, 1) + 1e-3 * np.eye(d)                     # full, well-conditioned
    classes = np.array([0, 1, 2, 0, 1, 2, 0])
    net = GaussianMixtureDenoiser(zip(weights, means, covs, classes))
    assert not net.diagonal and net.label_dim == 3
    x = rng.normal(size=(6, d)) * 2
    sigma = np.array([0.01, 0.1, 0.5, 1.0, 3.0, 30.0])
    labels = None if cls is None else torch.eye(3, dtype=torch.float64)[[cls] * 6]
    got = net(torch.as_tensor(x), torch.as_tensor(sigma), labels).numpy()
    for n in range(6):
        want = _numpy_posterior_mean(weights, means, covs, classes, x[n], sigma[n], cls)
        np.testing.assert_allclose(got[n], want, rtol=1e-10, atol=1e-10)
    if cls is None:   # an unconditional copy given labels is the same as no labels
        unc = net.unconditional()(torch.as_tensor(x), torch.as_tensor(sigma), torch.eye(3, dtype=torch.float64)[[1] * 6])
        np.testing.assert_allclose(unc.numpy(), got, rtol=1e-10, atol=1e-10)


def test_float32_option_and_gradients():
    net64 = GaussianMixtureDenoiser(COMPS)
    net32 = GaussianMixtureDenoiser(COMPS, dtype=torch.float32)
    assert net32.means.dtype == net32.axes.dtype == torch.float32
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = torch.linspace(0.1, 3.0, 8, dtype=torch.float64)
    labels = torch.eye(2, dtype=torch.float64)[[0, 1] * 4]
    torch.testing.assert_close(net32(x.float(), sigma.float(), labels.float()).double(), net64(x, sigma, labels),
                               rtol=0, atol=1e-5)
    # Still differentiable (the in-place shortcuts are only taken when autograd is not recording).
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: net64(x, sigma, labels), (x,))
    assert torch.autograd.gradcheck(lambda x: net64.log_density(x, 0.4), (x,))
