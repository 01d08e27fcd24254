"""Fréchet distance between two Gaussians given by (mean, covariance).

Upstream evaluates the trace of sqrt(S1 S2) with `scipy.linalg.sqrtm`, a general (non-symmetric)
matrix square root that is slow, may return complex noise for rank-deficient covariances, and
changed its algorithm in SciPy 1.16. Both covariances are symmetric positive semi-definite, so with
factors S1 = L1 L1^T and S2 = L2 L2^T the eigenvalues of S1 S2 are the squared singular values of
A = L2^T L1, and tr sqrt(S1 S2) is the sum of those singular values (the nuclear norm of A).

How the sum is computed, and why it is exact:

- Factors. A Cholesky factor when it exists (a positive definite matrix; its success also proves
  the matrix positive semi-definite, so a reference needs no separate check). Otherwise an
  eigendecomposition S = V diag(lambda) V^T, keeping only the eigenvalues above the round-off level
  (`null_threshold`): the null space of a rank-deficient covariance (fewer images than features)
  is dropped, so the factor has rank(S) columns and every later step works at that size.
- Singular values without a full SVD. An SVD of A costs several times a symmetric eigendecomposition,
  and the square roots of the eigenvalues of A^T A are not exact (an eigenvalue near zero comes out
  with an absolute error ~eps |A|^2, which its square root magnifies to ~sqrt(eps) |A|). Instead,
  V = the eigenvectors of A^T A give sum_i |A v_i|: for any orthonormal V this is >= the nuclear norm,
  and equal to it for the right singular vectors. Where the eigenvalues are well above round-off
  (>= sqrt(eps) times the largest) round-off mixes only eigenvectors of nearly equal singular values,
  which changes the sum to second order. Below that, round-off mixes the eigenvectors freely, so that
  block's singular values come from an SVD of A V_small (only those columns; few for real spectra).
  Each term then has the SVD's absolute accuracy, ~eps |A|, not ~sqrt(eps) |A|.
- The reference's factor depends only on the reference: `cached_covariance_factor` computes it once
  per run for a read-only array (what `stats.load_reference` returns), and the reference check
  (`stats.check_frechet_entry`) uses the same factorisation.

A distance is never negative. The computed value carries round-off bounded by
`round_off_bound`; a value within that bound of zero is reported as exactly 0 (an image set against
its own statistics gives 0, not -4.5e-13), and a value below minus the bound is an error.
"""

import weakref

import numpy as np
import scipy.linalg

EPS = float(np.finfo(np.float64).eps)
PSD_RTOL = 1e-6 # smallest eigenvalue >= -PSD_RTOL * largest: positive semi-definite up to round-off

#----------------------------------------------------------------------------
# Factors S = L L^T.

class NotPositiveSemidefinite(ValueError):
    """A covariance whose smallest eigenvalue is below -PSD_RTOL times its largest."""

    def __init__(self, lowest, highest):
        super().__init__(f'not positive semi-definite: eigenvalues from {lowest:.6g} to {highest:.6g}')
        self.lowest, self.highest = lowest, highest

class CovarianceFactor:
    """`factor` [d, r] with S ~ factor @ factor.T; `method` 'cholesky' or 'eigh'; `trace` tr(S);
    `discarded` the sum of |lambda| of the eigenvalues left out of the factor (0 for Cholesky);
    `eigenvalues` (ascending, eigh only) for messages."""

    def __init__(self, factor, method, trace, discarded=0.0, eigenvalues=None):
        self.factor, self.method, self.trace = factor, method, float(trace)
        self.discarded, self.eigenvalues = float(discarded), eigenvalues

    @property
    def rank(self):
        return self.factor.shape[1]

def symmetric_float64(sigma):
    """`sigma` as a float64 array made exactly symmetric (the inputs are symmetric up to round-off,
    the factorisations assume it exactly)."""
    s = np.asarray(sigma, dtype=np.float64)
    return (s + s.T) / 2

def null_threshold(eigenvalues):
    """Eigenvalues at or below this are round-off of zero: a backward-stable eigensolver returns the
    exact eigenvalues of S + E with |E|_2 <= p(d) eps |S|_2; with p(d) = d (a safe, common choice)
    an eigenvalue below d * eps * max|lambda| cannot be told from 0."""
    d = len(eigenvalues)
    return d * EPS * float(np.abs(eigenvalues).max()) if d else 0.0

def covariance_factor(sigma):
    """CovarianceFactor of a symmetric positive semi-definite matrix (float64); raises
    NotPositiveSemidefinite if it is not, ValueError if it is not finite or not square."""
    s = symmetric_float64(sigma)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f'a covariance must be a square matrix, got shape {list(s.shape)}')
    if not np.isfinite(s).all():
        raise ValueError('covariance has non-finite values')
    trace = float(np.trace(s))
    if s.shape[0] == 0:
        return CovarianceFactor(np.zeros((0, 0)), 'cholesky', 0.0)
    try:
        return CovarianceFactor(scipy.linalg.cholesky(s, lower=True, check_finite=False), 'cholesky', trace)
    except np.linalg.LinAlgError:
        pass
    lam, vec = scipy.linalg.eigh(s, check_finite=False, overwrite_a=True, driver='evd')
    lowest, highest = float(lam[0]), float(lam[-1])
    if lowest < -PSD_RTOL * max(highest, 0.0) or highest < 0:
        raise NotPositiveSemidefinite(lowest, highest)
    keep = lam > null_threshold(lam)
    factor = vec[:, keep] * np.sqrt(lam[keep])
    return CovarianceFactor(factor, 'eigh', trace, np.abs(lam[~keep]).sum(), lam)

_FACTORS = {} # id(array) -> (weak reference to the array, its CovarianceFactor)

def cached_covariance_factor(sigma):
    """`covariance_factor(sigma)`, computed once for a read-only numpy array (a loaded reference's
    sigma, see `stats.load_reference`), so every distance to the same reference reuses it."""
    if not isinstance(sigma, np.ndarray) or sigma.flags.writeable:
        return covariance_factor(sigma)
    key = id(sigma)
    hit = _FACTORS.get(key)
    if hit is not None and hit[0]() is sigma:
        return hit[1]
    factor = covariance_factor(sigma)
    _FACTORS[key] = (weakref.ref(sigma, lambda _ref, key=key: _FACTORS.pop(key, None)), factor)
    return factor

def clear_factor_cache():
    """Forget every cached factor (e.g. to time a run from scratch)."""
    _FACTORS.clear()

#----------------------------------------------------------------------------
# tr sqrt(S1 S2) and the distance.

SPLIT = EPS ** 0.5 # Gram eigenvalues below SPLIT * the largest: singular values from an SVD of their block

def nuclear_norm_of_product(l1, l2):
    """(sum of the singular values of l2^T l1, a bound on its round-off); the sum is
    tr sqrt(S1 S2) for S = L L^T. See the module notes and `round_off_bound`."""
    a = l2.T @ l1
    if a.shape[0] < a.shape[1]: # the smaller Gram matrix: same nonzero singular values
        a = a.T
    if a.size == 0:
        return 0.0, 0.0
    # Lower triangle of a^T a (syrk on the Fortran-ordered transpose: no copy), then its eigenvectors.
    gram = scipy.linalg.blas.dsyrk(1.0, np.asfortranarray(a.T), lower=1)
    mu, vec = scipy.linalg.eigh(gram, lower=True, check_finite=False, overwrite_a=True, driver='evd')
    rank, top = a.shape[1], max(float(mu[-1]), 0.0)
    small = int(np.searchsorted(mu, SPLIT * top)) # eigenvectors of eigenvalues below the split: mixed by round-off
    total = float(np.sqrt(np.square(a @ vec[:, small:]).sum(axis=0)).sum())
    if small:
        total += float(scipy.linalg.svd(a @ vec[:, :small], compute_uv=False, check_finite=False).sum())
    # Error bound: r terms of <= r u |A| each (as an SVD's), and for each of the `small` columns its
    # coupling to the resolved block: eigh's residual (<= r eps |A|^2) over the smallest resolved
    # singular value (>= SPLIT^(1/2) |A|), i.e. <= r eps |A| / SPLIT^(1/2).
    norm = top ** 0.5 # |a|_2
    return total, (rank * rank * EPS / 2 + small * rank * EPS / SPLIT ** 0.5) * norm

def trace_sqrt_product(sigma1, sigma2):
    """tr sqrt(sigma1 @ sigma2) for symmetric PSD matrices, computed in float64."""
    return nuclear_norm_of_product(cached_covariance_factor(sigma1).factor, cached_covariance_factor(sigma2).factor)[0]

def round_off_bound(dim, mean_term, f1, f2):
    """How far the computed |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2) can be below the exact
    Fréchet distance of the factored matrices (which is >= 0, as L L^T is PSD exactly).

    With u = eps / 2 and the usual gamma_n = n u bounds, T = tr S1 + tr S2, r <= d the factor rank:
    the mean term and the traces are sums of d and 2d nonnegative terms (relative error <= d u, 2d u);
    the factors are exact for S + Delta with |tr Delta| <= (d+1) u T (Cholesky) or <= d * d u |S|
    (eigh, p(d) = d) plus the eigenvalues left out (`discarded`); forming A = L2^T L1 errs by
    <= sqrt(r) d u |L1|_F |L2|_F <= sqrt(r) d u T / 2 in nuclear norm, twice that in the distance
    (it has -2 tr sqrt). Summed: <= (2 d^2 + d^1.5 + 3 d) u (m + T) + discarded, which
    2 (d + 2)^2 eps (m + T) + discarded covers for every d >= 1. The error of the singular values of
    the computed A (`nuclear_norm_of_product`'s second value) is added, doubled, by the caller."""
    traces = f1.trace + f2.trace
    return 2 * (dim + 2) ** 2 * EPS * (abs(mean_term) + abs(traces)) + f1.discarded + f2.discarded

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as a Python float >= 0.

    NaN if an input is not finite (the caller reports it); a value within `round_off_bound` of 0 is
    0.0; ValueError for mismatched shapes, a covariance that is not positive semi-definite, or a
    value below zero by more than the bound."""
    mu1 = np.asarray(mu1, dtype=np.float64).reshape(-1)
    mu2 = np.asarray(mu2, dtype=np.float64).reshape(-1)
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or np.shape(sigma1) != (dim, dim) or np.shape(sigma2) != (dim, dim):
        raise ValueError(f'mismatched statistics: mu {mu1.shape} vs {mu2.shape}, '
                         f'sigma {np.shape(sigma1)} vs {np.shape(sigma2)}')
    if not all(np.isfinite(np.asarray(x, dtype=np.float64)).all() for x in (mu1, sigma1, mu2, sigma2)):
        return float('nan')
    f1, f2 = cached_covariance_factor(sigma1), cached_covariance_factor(sigma2)
    mean_term = float(np.square(mu1 - mu2).sum())
    root, root_error = nuclear_norm_of_product(f1.factor, f2.factor)
    value = mean_term + (f1.trace + f2.trace) - 2 * root
    bound = round_off_bound(dim, mean_term, f1, f2) + 2 * root_error
    if value < -bound:
        raise ValueError(f'the Fréchet distance came out at {value:.6g}, below zero by more than its '
                         f'round-off bound {bound:.3g}: the statistics are not valid covariances')
    return 0.0 if value <= bound else value

#----------------------------------------------------------------------------
