"""Ideal denoiser for a Gaussian mixture, usable wherever a network is expected.

For data x0 ~ sum_k pi_k N(mu_k, S_k) and x = x0 + sigma*n, the best denoiser is the posterior mean
E[x0 | x] = sum_k r_k(x) (mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)), with responsibilities
r_k proportional to pi_k N(x; mu_k, S_k + sigma^2 I). It is exact, so sampling with it isolates the
sampler and the guidance from any training error -- what the tests and the 1D figures need.
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
    """

    def __init__(self, components, *, label_dim=None, img_channels=None, img_resolution=None, dtype=torch.float64):
        super().__init__()
        components = list(components)
        if not components:
            raise ValueError('a mixture needs at least one component')
        weights, means, covs, classes = [], [], [], []
        for weight, mean, cov, cls in components:
            weights.append(float(weight))
            means.append(torch.as_tensor(mean, dtype=dtype).reshape(-1))
            covs.append(torch.as_tensor(cov, dtype=dtype))
            classes.append(-1 if cls is None else int(cls))
        dim = means[0].numel()
        if any(m.numel() != dim for m in means) or any(w <= 0 for w in weights):
            raise ValueError('all means must have the same dimension and all weights must be positive')
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
        w = torch.tensor(weights, dtype=dtype)
        self.register_buffer('log_weights', (w / w.sum()).log())
        self.register_buffer('means', torch.stack(means))
        self.register_buffer('eigvals', eigvals)
        self.register_buffer('eigvecs', eigvecs)
        self.register_buffer('classes', torch.tensor(classes, dtype=torch.long))

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def unconditional(self):
        """A copy that ignores class labels (the guiding net of classifier-free guidance)."""
        other = copy.deepcopy(self)
        other.label_dim = 0
        return other

    # Denoising -------------------------------------------------------------

    def forward(self, x, sigma, class_labels=None):
        dtype = self.means.dtype
        flat = x.reshape(x.shape[0], -1).to(dtype)
        if flat.shape[1] != self.dim:
            raise ValueError(f'expected {self.dim} values per sample, got shape {tuple(x.shape)}')
        sigma = torch.as_tensor(sigma, dtype=dtype, device=flat.device).reshape(-1, 1, 1).expand(flat.shape[0], 1, 1)
        z, var = self._whiten(flat, sigma)
        log_r = self._log_joint(z, var, class_labels).log_softmax(dim=1)
        shrunk = self.eigvals / var * z                          # [N, K, d] in the eigenbasis
        if self.eigvecs is not None:
            shrunk = torch.einsum('kij,nkj->nki', self.eigvecs, shrunk)
        post = self.means + shrunk                               # E[x0 | x, k]
        out = (log_r.exp().unsqueeze(-1) * post).sum(dim=1)
        return out.reshape(x.shape).to(x.dtype)

    def log_density(self, x, sigma=0.0, class_idx=None):
        """log p_sigma(x) of the noised mixture (or of one class) for x [N, d]; sigma=0 is the data."""
        dtype = self.means.dtype
        flat = torch.as_tensor(x, dtype=dtype, device=self.means.device).reshape(-1, self.dim)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=flat.device).reshape(-1, 1, 1).expand(flat.shape[0], 1, 1)
        z, var = self._whiten(flat, sigma)
        return self._log_joint(z, var, self._one_hot(class_idx, flat.shape[0])).logsumexp(dim=1)

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

    def _whiten(self, flat, sigma):
        """Offsets to every mean in the components' eigenbases, and the variances there."""
        diff = flat.unsqueeze(1) - self.means                    # [N, K, d]
        if self.eigvecs is not None:
            diff = torch.einsum('kji,nkj->nki', self.eigvecs, diff)
        return diff, self.eigvals + sigma ** 2

    def _log_joint(self, z, var, class_labels):
        """log pi_k(class) + log N(x; mu_k, S_k + sigma^2 I), shape [N, K]."""
        log_lik = -0.5 * ((z ** 2 / var) + var.log() + math.log(2 * math.pi)).sum(dim=-1)
        return self._class_log_weights(class_labels, z.shape[0]) + log_lik

    def _class_log_weights(self, class_labels, batch=1):
        """Component log weights, restricted to (a distribution over) classes if labels are given."""
        if class_labels is None or self.label_dim == 0:
            return self.log_weights.expand(batch, -1)
        labels = torch.as_tensor(class_labels, dtype=self.means.dtype, device=self.means.device)
        labels = labels.reshape(-1, self.label_dim)
        class_mass = torch.zeros(self.label_dim, dtype=labels.dtype, device=labels.device)
        class_mass = class_mass.index_add(0, self.classes, self.log_weights.exp())
        within = self.log_weights - class_mass[self.classes].log()
        return within + labels[:, self.classes].log()

    def _one_hot(self, class_idx, batch):
        if class_idx is None or self.label_dim == 0:
            return None
        labels = torch.zeros(batch, self.label_dim, dtype=self.means.dtype, device=self.means.device)
        labels[:, int(class_idx)] = 1
        return labels

#----------------------------------------------------------------------------

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
