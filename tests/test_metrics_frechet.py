"""Fréchet distance: eigendecomposition form vs the upstream formula with scipy's sqrtm."""

import numpy as np
import pytest

from edmguide.metrics.frechet import frechet_distance, trace_sqrt_product
import helpers_metrics as hm

def random_features(rng, n, d, scale=1.0, shift=0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) # correlated features, as real detectors give
    return rng.normal(size=(n, d)) @ mixing * scale + shift

@pytest.mark.parametrize('d, n1, n2', [(2, 50, 60), (16, 200, 100), (64, 1000, 900), (200, 500, 400)])
def test_matches_scipy_sqrtm_full_rank(d, n1, n2):
    rng = np.random.default_rng(d)
    f1, f2 = random_features(rng, n1, d), random_features(rng, n2, d, 1.3, 0.2)
    value = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert isinstance(value, float)
    assert value == pytest.approx(hm.reference_fd(f1, f2), rel=1e-9)

@pytest.mark.parametrize('d, n1, n2', [(64, 20, 30), (128, 40, 200), (32, 3, 5)])
def test_matches_scipy_sqrtm_rank_deficient(d, n1, n2):
    rng = np.random.default_rng(d + n1)
    f1, f2 = random_features(rng, n1, d), random_features(rng, n2, d, 0.7, -0.1)
    value = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert value == pytest.approx(hm.reference_fd(f1, f2), rel=1e-6)

@pytest.mark.parametrize('n', [10, 500])
def test_distance_of_a_set_to_itself_is_zero(n):
    f = random_features(np.random.default_rng(n), n, 48)
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)

def test_symmetric_and_exact_for_commuting_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(var1) - np.sqrt(var2)).sum()
    value = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert value == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu2, np.diag(var2), mu1, np.diag(var1)) == pytest.approx(value, rel=1e-12)
    assert trace_sqrt_product(np.diag(var1), np.diag(var2)) == pytest.approx(np.sqrt(var1 * var2).sum())

def test_float32_inputs_are_computed_in_float64():
    f = random_features(np.random.default_rng(1), 300, 20)
    g = random_features(np.random.default_rng(2), 300, 20, 1.1)
    args64 = (f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False))
    args32 = [a.astype(np.float32) for a in args64]
    assert frechet_distance(*args32) == pytest.approx(frechet_distance(*[a.astype(np.float64) for a in args32]), rel=1e-12)

def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match='mismatched'):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))

def test_trace_is_exact_for_commuting_covariances_with_decaying_spectra():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T  =>  tr sqrt(S1 S2) = sum sqrt(a b) exactly.
    # Spectra spanning 1e-9 .. 1 (as Inception features do) defeat square roots of computed eigenvalues.
    from edmguide.metrics.frechet import trace_sqrt_product
    rng = np.random.default_rng(3)
    d = 512
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.exp(-np.arange(d) / 25.0) * rng.uniform(0.5, 1.5, d)
    b = np.exp(-np.arange(d) / 20.0) * rng.uniform(0.5, 1.5, d)
    exact = np.sqrt(a * b).sum()
    value = trace_sqrt_product((q * a) @ q.T, (q * b) @ q.T)
    assert abs(value - exact) / exact < 1e-12
