"""Tiny MLP denoisers for the 2D autoguidance toy, and their exact-score-matching training loop.

Model (`ToyDenoiser`). The MLP outputs a scalar F(u, ¼ log σ, 1) of the scaled input u = c_in·x,
c_in = 1/sqrt(σ² + σ_data²), built from magnitude-preserving layers (unit-norm weight rows,
SiLU divided by its standard deviation under a unit normal input): one input layer and four hidden
layers with SiLU, then a linear read-out with a learned gain that starts at 0. The model's log-density
is

    log p(x; σ) = -|x|² / (2 (σ² + σ_data²)) + (σ_data / σ) · F(c_in x, ¼ log σ, 1)      (+ const)

i.e. a Gaussian of the data's scale plus a learned correction. Its score is the x-gradient of that
log-density (autograd), and the denoiser is D(x; σ) = x + σ² ∇ₓ log p(x; σ), which works out to the
EDM preconditioning D = c_skip·x + c_out·∇ᵤF with c_skip = σ_data²/(σ² + σ_data²) and
c_out = σ·σ_data/sqrt(σ² + σ_data²). So the gradient of F plays the role of EDM's raw network output.

Training (`train`). Exact score matching: noisy points x = y + σ·n with y drawn from the data and σ
log-normal; the target is the ideal (closed-form) denoiser of the data at (x, σ), and the loss is
|∇ᵤF − (D_ideal − c_skip x)/c_out|² (EDM's loss weighting, ≡ |D − D_ideal|²/c_out²), averaged over
points and coordinates. Adam (β = 0.9, 0.99), learning rate 0.01 decayed as 1/sqrt(max(t/512, 1)),
forced weight normalisation after every step, and a power-function EMA with σ_rel = 0.010 whose
weights are the model that is kept (schedule and EMA from `edmguide.optim`, as the demo trainer).

At module level this file imports only torch and `torch_utils.persistence`, because pickles of
`ToyDenoiser` embed its source (persistence protocol) and re-execute it when loaded; `train` imports
the rest when it runs.
"""

import time

import torch

from torch_utils import persistence

#----------------------------------------------------------------------------
# Magnitude-preserving building blocks.

def normalize_rows(w, eps=1e-4):
    """Scale each row of `w` to unit L2 norm."""
    return w / (w.norm(dim=1, keepdim=True) + eps)


def mp_silu(x):
    """SiLU divided by 0.596, its output magnitude for a unit normal input."""
    return torch.nn.functional.silu(x) / 0.596


class MPLinear(torch.nn.Module):
    """Linear layer whose weight rows are normalised to unit norm in every forward pass."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features))

    def forward(self, x):
        return x @ normalize_rows(self.weight).t()

    @torch.no_grad()
    def renormalize_(self):
        """Forced weight normalisation: keep the raw weights on the unit sphere so that Adam's
        step size stays meaningful."""
        self.weight.copy_(normalize_rows(self.weight))

#----------------------------------------------------------------------------
# The denoiser.

@persistence.persistent_class
class ToyDenoiser(torch.nn.Module):
    """2D point denoiser D(x, sigma, class_labels=None) with a log-density MLP (see module doc).

    Points are tensors [N, 2] (any trailing singleton dims, e.g. [N, 2, 1, 1], are accepted and
    kept). The model is unconditional (`label_dim` 0): one model is trained per data subset."""

    def __init__(self, width=64, num_hidden=4, sigma_data=0.5, img_channels=2):
        super().__init__()
        self.width = width
        self.sigma_data = sigma_data
        self.img_channels = img_channels
        self.img_resolution = 1
        self.label_dim = 0
        self.layers = torch.nn.ModuleList([MPLinear(img_channels + 2, width)]
                                          + [MPLinear(width, width) for _ in range(num_hidden)])
        self.out = MPLinear(width, 1)
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

    def raw(self, u, sigma):
        """F(u, ¼ log σ, 1): the MLP's scalar output per point, u [N, C], sigma [N]."""
        x = torch.cat([u, sigma.log()[:, None] / 4, torch.ones_like(sigma)[:, None]], dim=1)
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(mp_silu(x))
        return self.out(x)[:, 0] * self.out_gain

    def _scalings(self, sigma):
        sd2 = self.sigma_data ** 2
        c_in = 1 / (sigma ** 2 + sd2).sqrt()
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data * c_in
        return c_in, c_skip, c_out

    def log_density(self, x, sigma):
        """Model log p(x; σ) up to a σ-dependent constant; x [N, C], sigma [N]."""
        c_in, _, _ = self._scalings(sigma)
        gauss = -0.5 * (x ** 2).sum(1) / (sigma ** 2 + self.sigma_data ** 2)
        return gauss + self.sigma_data / sigma * self.raw(x * c_in[:, None], sigma)

    def raw_gradient(self, x, sigma, create_graph=False):
        """∇ᵤF at u = c_in·x (the network's 'output' in EDM terms) and the scalings."""
        c_in, c_skip, c_out = self._scalings(sigma)
        with torch.enable_grad():
            u = (x * c_in[:, None]).detach().requires_grad_(True)
            f = self.raw(u, sigma)
            grad, = torch.autograd.grad(f.sum(), u, create_graph=create_graph)
        return grad, c_skip, c_out

    def forward(self, x, sigma, class_labels=None):
        shape, dtype = x.shape, x.dtype
        x = x.reshape(shape[0], self.img_channels).to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(shape[0])
        grad, c_skip, c_out = self.raw_gradient(x, sigma)
        d = c_skip[:, None] * x + c_out[:, None] * grad
        return d.detach().to(dtype).reshape(shape)

#----------------------------------------------------------------------------
# Training.

def train(net, sample_data, ideal_denoiser, *, num_iters, batch_size=4096, lr=0.01, lr_ref_iters=512,
          P_mean=-1.6, P_std=1.6, ema_sigma_rel=0.010, seed=0, log=None, log_every=64):
    """Train `net` (a ToyDenoiser) by exact score matching; return (ema_net, history).

    sample_data(n, generator) -> [n, 2] clean points; ideal_denoiser(x [N,2], sigma [N]) -> [N,2].
    history: list of (iteration, loss, seconds) every `log_every` iterations and at the end."""
    from edmguide.optim import PowerEMA, learning_rate  # not at module level: see the module docstring
    gen = torch.Generator().manual_seed(seed)
    ema = PowerEMA(net, ema_sigma_rel)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    history, start = [], time.time()
    for it in range(num_iters):
        for group in opt.param_groups:
            group['lr'] = learning_rate(it, lr, decay_steps=lr_ref_iters)
        y = sample_data(batch_size, gen)
        sigma = (torch.randn(batch_size, generator=gen) * P_std + P_mean).exp()
        x = y + sigma[:, None] * torch.randn(y.shape, generator=gen)
        with torch.no_grad():
            target_d = ideal_denoiser(x, sigma)
        grad, c_skip, c_out = net.raw_gradient(x, sigma, create_graph=True)
        target = (target_d - c_skip[:, None] * x) / c_out[:, None]
        loss = ((grad - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for m in net.modules():
            if isinstance(m, MPLinear):
                m.renormalize_()
        ema.update(net)
        if (it + 1) % log_every == 0 or it + 1 == num_iters:
            history.append((it + 1, loss.item(), time.time() - start))
            if log is not None:
                log(f'iter {it + 1:5d}/{num_iters}  loss {history[-1][1]:.4f}  {time.time() - start:6.1f}s')
    return ema.net, history

#----------------------------------------------------------------------------
