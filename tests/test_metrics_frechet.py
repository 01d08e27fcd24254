"""Fréchet distance: eigendecomposition form vs the upstream formula with scipy's sqrtm."""

import numpy as np
import pytest

from edmguide.metrics.frechet import frechet_distance, trace_sqrt_product
import helpers_metrics as hm

def random_features(rng, n, d, scale=1.0, shift=0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) # correlated features, as real detectors give
    return rng.normal(size=(n, d)) @ mixing * scale + shift

def random_spd(rng, d, cond=100.0):
    """A random full-rank covariance with eigenvalues spread log-uniformly over [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1 / cond, 1, d)[rng.permutation(d)]) @ q.T

def eigh_trace_sqrt_product(s1, s2):
    """tr sqrt(S1 S2) for symmetric positive definite S1, S2, in float64: S1 S2 is similar to the
    symmetric sqrt(S1) S2 sqrt(S1), whose eigenvalues are real and positive; sum their roots.
    sqrt(S1) = V diag(sqrt(lambda)) V^T from numpy's eigh."""
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    lam, vec = np.linalg.eigh(s1)
    assert lam.min() > 0
    root = (vec * np.sqrt(lam)) @ vec.T
    mid = root @ s2 @ root
    eig = np.linalg.eigvalsh((mid + mid.T) / 2)
    assert eig.min() > 0
    return float(np.sqrt(eig).sum())

def eigh_fd(mu1, s1, mu2, s2):
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * eigh_trace_sqrt_product(s1, s2))

@pytest.mark.parametrize('d', [1, 3, 30, 128])
def test_trace_sqrt_product_matches_eigh_and_sqrtm_full_rank(d):
    import scipy.linalg
    rng = np.random.default_rng(100 + d)
    s1, s2 = random_spd(rng, d), 2.5 * random_spd(rng, d, cond=30.0)
    want = eigh_trace_sqrt_product(s1, s2)
    assert trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-10, abs=0)
    assert trace_sqrt_product(s2, s1) == pytest.approx(want, rel=1e-10, abs=0)
    # Third route: scipy's general matrix square root of the (non-symmetric) product.
    assert float(np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))) == pytest.approx(want, rel=1e-10, abs=0)
    if d > 1: # e.g. tr(sqrt(S1) sqrt(S2)) or sqrt(tr S1 S2) would be wrong: not a tolerance question
        root = lambda s: (lambda lam, v: (v * np.sqrt(lam)) @ v.T)(*np.linalg.eigh(s))
        assert abs(np.trace(root(s1) @ root(s2)) - want) > 1e-6 * want
        assert abs(np.sqrt(np.trace(s1 @ s2)) - want) > 1e-2 * want

@pytest.mark.parametrize('d', [3, 30, 128])
def test_frechet_distance_matches_eigh_reference_full_rank(d):
    rng = np.random.default_rng(200 + d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) * 0.1
    s1, s2 = random_spd(rng, d), random_spd(rng, d, cond=10.0)
    want = eigh_fd(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10, abs=0)
    # Same means: only the covariance term is left, still matched (it is ~1/3 of the total above).
    assert frechet_distance(mu1, s1, mu1, s2) == pytest.approx(eigh_fd(mu1, s1, mu1, s2), rel=1e-10, abs=0)

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
    assert trace_sqrt_product(np.diag(var1), np.diag(var2)) == pytest.approx(np.sqrt(var1 * var2).sum(), rel=1e-13)

def test_float32_inputs_are_computed_in_float64():
    f = random_features(np.random.default_rng(1), 300, 20)
    g = random_features(np.random.default_rng(2), 300, 20, 1.1)
    args64 = (f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False))
    args32 = [a.astype(np.float32) for a in args64]
    # Expected: the float32 values, widened exactly to float64, through the independent eigh route.
    value = frechet_distance(*args32)
    assert isinstance(value, float)
    want = eigh_fd(*[a.astype(np.float64) for a in args32])
    assert value == pytest.approx(want, rel=1e-10, abs=0)
    # The bound discriminates: the same route in float32 (or the float64 stats before rounding to
    # float32) is off by far more than 1e-10.
    s1, s2 = args32[1], args32[3]
    lam, vec = np.linalg.eigh(s1)
    root = (vec * np.sqrt(lam)) @ vec.T
    in_float32 = (np.square(args32[0] - args32[2]).sum() + np.trace(s1) + np.trace(s2)
                  - 2 * np.sqrt(np.linalg.eigvalsh(root @ s2 @ root)).sum())
    assert in_float32.dtype == np.float32 and abs(in_float32 - want) > 1e-8 * want
    assert abs(eigh_fd(*args64) - want) > 1e-9 * want

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
