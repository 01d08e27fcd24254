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

#----------------------------------------------------------------------------
# Exactness on singular covariances, the cost of a reference, and the sign of the distance.

def test_low_rank_covariances_match_the_closed_form_and_drop_their_null_space():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute, so tr sqrt(S1 S2) = sum sqrt(a b) exactly; a and b
    # have zeros in different places (rank 150 and 120 of 256, 70 directions shared), as covariances of
    # fewer images than features have. Both are singular, so neither has a Cholesky factor.
    from edmguide.metrics.frechet import covariance_factor
    rng = np.random.default_rng(5)
    d = 256
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.where(np.arange(d) < 150, rng.uniform(0.1, 2, d), 0.0)
    b = np.where(np.arange(d) >= 80, rng.uniform(0.1, 2, d), 0.0) * (np.arange(d) < 200)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    f1, f2 = covariance_factor(s1), covariance_factor(s2)
    assert (f1.method, f1.rank, f2.method, f2.rank) == ('eigh', 150, 'eigh', 120)
    exact_root = np.sqrt(a * b).sum()
    exact = np.square(mu1 - mu2).sum() + a.sum() + b.sum() - 2 * exact_root
    # Forming S = Q diag Q^T rounds each entry (~d eps |S|), which moves the exact answer by about as
    # much relative to the traces (d eps = 6e-14); 1e-12 of the trace sum is that with a margin of ~20.
    scale = a.sum() + b.sum()
    assert abs(trace_sqrt_product(s1, s2) - exact_root) < 1e-12 * scale
    assert abs(frechet_distance(mu1, s1, mu2, s2) - exact) < 1e-12 * scale
    # Keeping the round-off eigenvalues instead (clipped at 0, as a plain eigendecomposition would) adds
    # ~sqrt(eps |S|) per null direction: the error the reduced factor avoids, far beyond that bound.
    lam, vec = np.linalg.eigh(s1)
    full = vec * np.sqrt(np.clip(lam, 0, None))
    lam2, vec2 = np.linalg.eigh(s2)
    kept = np.sqrt(np.clip(np.linalg.eigvalsh((full.T @ s2 @ full + (full.T @ s2 @ full).T) / 2), 0, None)).sum()
    assert abs(kept - exact_root) > 1e-9 * scale

@pytest.mark.parametrize('d, n1, n2', [(300, 40, 60), (200, 150, 150)])
def test_fewer_samples_than_dimensions_match_the_small_sample_form(d, n1, n2):
    # S = X^T X / (n - 1) for centred features X (n x d): tr sqrt(S1 S2) = nuclear norm of X2 X1^T / sqrt((n1-1)(n2-1)),
    # an n2 x n1 SVD that never forms S (independent of the factorisations under test).
    rng = np.random.default_rng(d + n1)
    f1 = random_features(rng, n1, d)
    f2 = 0.8 * random_features(rng, n2, d) + 0.1
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    s1, s2 = x1.T @ x1 / (n1 - 1), x2.T @ x2 / (n2 - 1)
    root = np.linalg.svd(x2 @ x1.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    exact = np.square(f1.mean(0) - f2.mean(0)).sum() + np.trace(s1) + np.trace(s2) - 2 * root
    # Same round-off argument as above (d eps ~ 7e-14 of the traces), margin ~15.
    assert abs(frechet_distance(f1.mean(0), s1, f2.mean(0), s2) - exact) < 1e-12 * (np.trace(s1) + np.trace(s2))

@pytest.mark.parametrize('d', [48, 300])
def test_a_set_against_its_own_statistics_is_exactly_zero(d):
    # Identical arrays, and the same features summed in another order (the reference and the measured
    # set batch differently): the covariances then differ by round-off only, and the distance is 0.0,
    # never -4.5e-13 nor +1e-13.
    rng = np.random.default_rng(d)
    f = random_features(rng, 4 * d, d)
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0
    g = f[::-1]
    mu_b = g.sum(0) / len(g)
    sigma_b = (sum(x.T @ x for x in np.split(g, 8)) - len(g) * np.outer(mu_b, mu_b)) / (len(g) - 1)
    assert not np.array_equal(sigma, sigma_b) # the round-off is really there
    assert frechet_distance(mu, sigma, mu_b, sigma_b) == 0.0

def test_a_value_below_zero_beyond_the_round_off_bound_is_an_error(monkeypatch):
    from edmguide.metrics import frechet
    sigma = random_spd(np.random.default_rng(0), 8)
    true_root = trace_sqrt_product(sigma, sigma)
    bound = frechet.round_off_bound(8, 0.0, frechet.covariance_factor(sigma), frechet.covariance_factor(sigma))
    # A root too large by 10x the bound (as a wrong factorisation would give): refused, not clamped.
    monkeypatch.setattr(frechet, 'nuclear_norm_of_product', lambda l1, l2: (true_root + 5 * bound, 0.0))
    with pytest.raises(ValueError, match='below zero by more than its round-off bound'):
        frechet_distance(np.zeros(8), sigma, np.zeros(8), sigma)
    # Within the bound: 0.
    monkeypatch.setattr(frechet, 'nuclear_norm_of_product', lambda l1, l2: (true_root + 0.25 * bound, 0.0))
    assert frechet_distance(np.zeros(8), sigma, np.zeros(8), sigma) == 0.0

def test_non_finite_statistics_give_nan_and_an_indefinite_covariance_is_refused():
    from edmguide.metrics.frechet import NotPositiveSemidefinite
    sigma = np.eye(3)
    assert np.isnan(frechet_distance(np.array([0, np.nan, 0]), sigma, np.zeros(3), sigma))
    with pytest.raises(NotPositiveSemidefinite, match='eigenvalues from -1 to 1'):
        frechet_distance(np.zeros(3), np.diag([1.0, 0.5, -1.0]), np.zeros(3), sigma)

def test_a_loaded_reference_is_factorised_once_and_checked_without_another_eigendecomposition(tmp_path, monkeypatch):
    import pickle
    from edmguide.metrics import frechet, stats
    rng = np.random.default_rng(9)
    d = 40
    ref_f = random_features(rng, 400, d)
    path = tmp_path / 'ref.pkl'
    path.write_bytes(pickle.dumps({'num_images': 400, 'fid': {'mu': ref_f.mean(0), 'sigma': np.cov(ref_f, rowvar=False)}}))
    calls = []
    factor = frechet.covariance_factor
    monkeypatch.setattr(frechet, 'covariance_factor', lambda s: calls.append(s.shape) or factor(s))
    def no_eig(*args, **kwargs):
        raise AssertionError('the reference check repeated an eigendecomposition')
    monkeypatch.setattr(np.linalg, 'eigvalsh', no_eig)
    ref = stats.load_reference(str(path))
    assert len(calls) == 1 # the check's factorisation
    values = []
    for seed in (1, 2):
        f = random_features(np.random.default_rng(seed), 300, d)
        values.append(frechet_distance(f.mean(0), np.cov(f, rowvar=False), ref['fid']['mu'], ref['fid']['sigma']))
    assert len(calls) == 3 # one per generated set, none more for the reference
    monkeypatch.undo()
    for value, seed in zip(values, (1, 2)):
        f = random_features(np.random.default_rng(seed), 300, d)
        assert value == pytest.approx(hm.reference_fd(f, ref_f), rel=1e-9)
