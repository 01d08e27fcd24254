"""Fréchet distance between two Gaussians given by (mean, covariance).

Upstream evaluates the trace of sqrt(S1 S2) with `scipy.linalg.sqrtm`, a general (non-symmetric)
matrix square root that is slow, may return complex noise for rank-deficient covariances, and
changed its algorithm in SciPy 1.16. Both covariances are symmetric positive semi-definite, so the
same trace follows from two symmetric eigendecompositions, which are stable and exact in float64:
S1 S2 is similar to A = sqrt(S1) S2 sqrt(S1) (symmetric PSD), hence tr sqrt(S1 S2) = sum sqrt(eig(A)).
"""

import numpy as np

#----------------------------------------------------------------------------

def _clamp_spectrum(eigval):
    """Zero the eigenvalues that are round-off (negative, or below eps * dim * largest).

    A rank-deficient covariance (fewer images than feature dimensions) has many eigenvalues that
    should be 0 but come out as +-1e-16 * scale; their square roots (~1e-8 each) would otherwise add
    up to a visible bias, e.g. a nonzero distance between a set and itself.
    """
    if eigval.size == 0:
        return eigval
    tol = np.finfo(np.float64).eps * eigval.size * max(float(np.abs(eigval).max()), 0.0)
    return np.where(eigval > tol, eigval, 0.0)

def _sqrt_psd(matrix):
    """Symmetric square root of a PSD matrix."""
    eigval, eigvec = np.linalg.eigh(matrix)
    return (eigvec * np.sqrt(_clamp_spectrum(eigval))) @ eigvec.T

def trace_sqrt_product(sigma1, sigma2):
    """tr sqrt(sigma1 @ sigma2) for symmetric PSD matrices, computed in float64."""
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    s1 = (s1 + s1.T) / 2 # the inputs are symmetric up to round-off; make eigh's assumption exact
    s2 = (s2 + s2.T) / 2
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    eigval = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(_clamp_spectrum(eigval)).sum())

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as a Python float."""
    mu1 = np.asarray(mu1, dtype=np.float64).reshape(-1)
    mu2 = np.asarray(mu2, dtype=np.float64).reshape(-1)
    sigma1 = np.asarray(sigma1, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f'mismatched statistics: mu {mu1.shape} vs {mu2.shape}, '
                         f'sigma {sigma1.shape} vs {sigma2.shape}')
    mean_term = float(np.square(mu1 - mu2).sum())
    trace_term = float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrt_product(sigma1, sigma2)
    return mean_term + trace_term

#----------------------------------------------------------------------------
