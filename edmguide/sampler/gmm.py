"""Ideal denoiser for a Gaussian mixture, usable wherever a network is expected.

For data x0 ~ sum_k pi_k N(mu_k, S_k) and x = x0 + sigma*n, the best denoiser is the posterior mean
E[x0 | x] = sum_k r_k(x) (mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)), with responsibilities
r_k proportional to pi_k N(x; mu_k, S_k + sigma^2 I). It is exact, so sampling with it isolates the
sampler and the guidance from any training error -- what the tests and the 1D toy need -- and,
in float32, it is fast enough to give the 2D toy's MLPs exact training targets.
Each component belongs to a class: a one-hot label restricts the mixture to that class, no label
(or a net made with `unconditional()`) uses all components.
"""

import copy
import math

import torch

#----------------------------------------------------------------------------

class GaussianMixtureDenoiser(torch.nn.Module):
    """Closed-form E[x0 | x, sigma(, class)] for a mixture of (weight, mean, covariance, class).

    components: iterable of (weight, mean, cov, class_idx); mean is a scalar or a d-vector, cov a
    scalar (isotropic variance), a d-vector (diagonal) or a d x d matrix; class_idx an int or None.
    Weights are joint: the unconditional mixture uses them as given, a class renormalises its own.
    Inputs may be [N, d] or any [N, ...] with d elements per sample (e.g. [N, C, R, R]).
    dtype: the precision of all the arithmetic (float64 by default; float32 is about twice as fast).

    Each component k is handled in its own eigenbasis S_k = V_k diag(lambda_k) V_k^T: the input is
    projected onto all d*K axes at once (one matrix product, or plain differences when every
    covariance is diagonal), and everything else is elementwise along those axes -- the
    log-likelihood is a sum of per-axis terms, and the posterior shift along axis j of component k
    is lambda_kj / (lambda_kj + sigma^2) times the coordinate, mapped back with a second product.
    """

    def __init__(self, components, *, label_dim=None, img_channels=None, img_resolution=None, dtype=torch.float64):
        super().__init__()
        components = list(components)
        if not components:
            raise ValueError('a mixture needs at least one component')
        weights, means, covs, classes = [], [], [], []
        for weight, mean, cov, cls in components:
            weights.append(float(weight))
            means.append(torch.as_tensor(mean, dtype=torch.float64).reshape(-1))
            covs.append(torch.as_tensor(cov, dtype=torch.float64))
            classes.append(-1 if cls is None else int(cls))
        dim = means[0].numel()
        if any(m.numel() != dim for m in means) or any(w <= 0 for w in weights):
            raise ValueError('all means must have the same dimension and all weights must be positive')
        # The eigendecomposition is done in float64 whatever `dtype` is, then rounded once.
        full = [_full_cov(c, dim) for c in covs]
        self.diagonal = all(torch.equal(c, torch.diag(torch.diagonal(c))) for c in full)
        if self.diagonal:
            eigvals = torch.stack([torch.diagonal(c) for c in full])
            eigvecs = None
        else:
            eigvals, eigvecs = torch.linalg.eigh(torch.stack(full))
            eigvals = eigvals.clamp(min=0)
        if label_dim is None:
            label_dim = max(classes) + 1
        if any(c >= label_dim for c in classes):
            raise ValueError(f'class index out of range for label_dim={label_dim}')
        if label_dim > 0 and any(c < 0 for c in classes):
            raise ValueError('every component needs a class when label_dim > 0')
        img_channels = dim if img_channels is None else img_channels
        img_resolution = 1 if img_resolution is None else img_resolution
        if img_channels * img_resolution ** 2 != dim:
            raise ValueError(f'img_channels * img_resolution**2 must equal the dimension {dim}')

        self.dim, self.label_dim = dim, label_dim
        self.img_channels, self.img_resolution = img_channels, img_resolution
        self.sigma_min, self.sigma_max = 0.0, math.inf
        means = torch.stack(means)
        w = torch.tensor(weights, dtype=torch.float64)
        self.register_buffer('log_weights', (w / w.sum()).log().to(dtype))
        self.register_buffer('means', means.to(dtype))                    # [K, d]
        self.register_buffer('eigvals', eigvals.to(dtype))                # [K, d]
        self.register_buffer('eigvecs', None if eigvecs is None else eigvecs.to(dtype))  # [K, d, d], columns = axes
        self.register_buffer('classes', torch.tensor(classes, dtype=torch.long))
        # Axis-major flattening of the d*K axes: entry j*K + k is axis j of component k.
        self.register_buffer('axis_vars', eigvals.t().reshape(-1).to(dtype))            # [d*K]
        if eigvecs is None:
            self.register_buffer('axes', None)                                          # unit axes: no products
            self.register_buffer('axis_offsets', None)
        else:
            axes = eigvecs.permute(2, 0, 1).reshape(-1, dim)                            # [d*K, d]
            self.register_buffer('axes', axes.to(dtype))
            self.register_buffer('axis_offsets', (axes * means.repeat(dim, 1)).sum(1).to(dtype))

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def unconditional(self):
        """A copy that ignores class labels (the guiding net of classifier-free guidance)."""
        other = copy.deepcopy(self)
        other.label_dim = 0
        return other

    # Denoising -------------------------------------------------------------

    def forward(self, x, sigma, class_labels=None):
        flat = x.reshape(x.shape[0], -1).to(self.means.dtype)
        if flat.shape[1] != self.dim:
            raise ValueError(f'expected {self.dim} values per sample, got shape {tuple(x.shape)}')
        inplace = not _tracks_grad(flat, sigma, class_labels)
        shrunk, log_lik = self._axis_terms(flat, sigma, inplace)
        r = log_lik.add_(self._class_log_weights(class_labels)).softmax(dim=1)      # [N, K]
        # E[x0 | x] = sum_k r_k mu_k + sum over all axes of r_k * (shift of E[x0 | x, k] from mu_k).
        shift = shrunk.view(len(flat), self.dim, -1)
        shift = shift.mul_(r.unsqueeze(1)) if inplace else shift * r.unsqueeze(1)
        if self.axes is None:
            out = torch.addmm(shift.sum(dim=2), r, self.means)
        else:
            out = torch.addmm(shift.view(len(flat), -1) @ self.axes, r, self.means)
        return out.reshape(x.shape).to(x.dtype)

    def log_density(self, x, sigma=0.0, class_idx=None):
        """log p_sigma(x) of the noised mixture (or of one class) for x [N, d]; sigma=0 is the data."""
        flat = torch.as_tensor(x, dtype=self.means.dtype, device=self.means.device).reshape(-1, self.dim)
        log_lik = self._axis_terms(flat, sigma, not _tracks_grad(flat, sigma))[1]
        return log_lik.add_(self._class_log_weights(self._one_hot(class_idx, 1))).logsumexp(dim=1)

    def cdf(self, x, class_idx=None):
        """CDF of a one-dimensional mixture (or of one class) at the points x."""
        if self.dim != 1:
            raise ValueError('cdf is defined for one-dimensional mixtures only')
        x = torch.as_tensor(x, dtype=self.means.dtype).reshape(-1, 1)
        w = self._class_log_weights(self._one_hot(class_idx, 1)).exp()[0]
        std = self.eigvals[:, 0].sqrt()
        return (w * 0.5 * (1 + torch.erf((x - self.means[:, 0]) / (std * math.sqrt(2))))).sum(dim=1)

    # True samples ----------------------------------------------------------

    def sample_data(self, n, class_idx=None, generator=None):
        """n draws from the mixture (or one class): (x [n, d], component class [n])."""
        w = self._class_log_weights(self._one_hot(class_idx, 1)).exp()[0]
        comp = torch.multinomial(w.cpu(), n, replacement=True, generator=generator).to(self.means.device)
        noise = torch.randn([n, self.dim], dtype=self.means.dtype, generator=generator).to(self.means.device)
        scaled = noise * self.eigvals[comp].sqrt()
        if self.eigvecs is not None:
            scaled = torch.einsum('nij,nj->ni', self.eigvecs[comp], scaled)
        return self.means[comp] + scaled, self.classes[comp]

    # Internals -------------------------------------------------------------

    def _axis_terms(self, flat, sigma, inplace):
        """For x [N, d]: the shift lambda / (lambda + sigma^2) * <x - mu_k, v> of E[x0 | x, k] from mu_k
        along every axis v of every component k [N, d*K], and log N(x; mu_k, S_k + sigma^2 I) [N, K].
        The [N, d*K] arrays dominate the cost, so they are reused in place unless autograd needs them."""
        n = len(flat)
        sigma = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).reshape(-1, 1)
        if self.axes is None:
            coords = (flat.unsqueeze(2) - self.means.t()).reshape(n, -1)
        else:
            coords = torch.addmm(self.axis_offsets, flat, self.axes.t(), beta=-1)     # <x - mu_k, v>
        var = self.axis_vars + sigma ** 2                                              # [N or 1, d*K]
        scaled = coords / var
        terms = coords.mul_(scaled) if inplace else coords * scaled                    # squared Mahalanobis
        terms = terms.add_(var.log_() if inplace else var.log()).view(n, self.dim, -1)  # + log det
        # Sum over the d axes of each component (adding the slices beats a strided reduction for small d).
        log_lik = sum(terms.unbind(dim=1)) if self.dim <= 8 else terms.sum(dim=1)
        log_lik = log_lik.mul_(-0.5).sub_(0.5 * self.dim * math.log(2 * math.pi))
        return (scaled.mul_(self.axis_vars) if inplace else scaled * self.axis_vars), log_lik

    def _class_log_weights(self, class_labels):
        """Component log weights [1 or N, K], restricted to (a distribution over) classes if labels are given."""
        if class_labels is None or self.label_dim == 0:
            return self.log_weights.unsqueeze(0)
        labels = torch.as_tensor(class_labels, dtype=self.means.dtype, device=self.means.device)
        labels = labels.reshape(-1, self.label_dim)
        class_mass = torch.zeros(self.label_dim, dtype=labels.dtype, device=labels.device)
        class_mass = class_mass.index_add(0, self.classes, self.log_weights.exp())
        within = self.log_weights - class_mass[self.classes].log()
        return labels.log()[:, self.classes].add_(within)

    def _one_hot(self, class_idx, batch):
        if class_idx is None or self.label_dim == 0:
            return None
        labels = torch.zeros(batch, self.label_dim, dtype=self.means.dtype, device=self.means.device)
        labels[:, int(class_idx)] = 1
        return labels

#----------------------------------------------------------------------------

def _tracks_grad(*args):
    """Whether autograd records operations on any of these (tensors or other values)."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def _full_cov(cov, dim):
    """Scalar variance, diagonal d-vector or d x d matrix -> d x d covariance."""
    if cov.ndim == 0:
        return torch.eye(dim, dtype=cov.dtype) * cov
    if cov.ndim == 1 and cov.numel() == dim:
        return torch.diag(cov)
    if cov.shape == (dim, dim):
        return cov
    raise ValueError(f'covariance of shape {tuple(cov.shape)} does not fit dimension {dim}')

#----------------------------------------------------------------------------
