"""Learning-rate schedule and power-function EMA, shared by the demo and toy trainers.

Both follow EDM2 (Karras et al. 2024): an optional linear warm-up, then inverse-square-root decay
of the learning rate; and a power-function EMA of the weights, whose averaging window stays a fixed
fraction of the training so far (section 3.1). After update t the average moves towards the current
weights by 1 - beta_t with beta_t = (1 - 1/t)^(gamma + 1); the exponent gamma is set from the
relative standard deviation of that window, the knob the paper reports.

The trainers import this module inside their functions, not at module level: their own source
travels inside the pickles they write and must load where `edmguide` is not installed.
"""

import copy

import numpy as np
import torch

#----------------------------------------------------------------------------

def learning_rate(step, ref_lr, rampup_steps=0, decay_steps=0):
    """lr at (0-based) `step`: linear ramp over `rampup_steps`, then ref_lr / sqrt(step / decay_steps)."""
    lr = ref_lr
    if decay_steps > 0:
        lr /= np.sqrt(max(step / decay_steps, 1))
    if rampup_steps > 0:
        lr *= min((step + 1) / rampup_steps, 1)
    return float(lr)


def ema_std_to_gamma(std):
    """Exponent gamma of the power-function EMA whose relative standard deviation is `std`.

    The averaging profile of exponent gamma has relative std sqrt((g + 1) / ((g + 2)^2 (g + 3)));
    solve that cubic for the largest real root.
    """
    s2 = float(std) ** 2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.abs(roots.imag) < 1e-9].real
    gamma = float(real.max())
    if not gamma > 0:
        raise ValueError(f'EMA std {std} is too large (must be below about 0.28)')
    return gamma


class PowerEMA:
    """Power-function EMA of a module's floating-point parameters and buffers; `net` is the average."""

    def __init__(self, net, std):
        self.gamma = ema_std_to_gamma(std)
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, net):
        self.num_updates += 1
        beta = (1 - 1 / self.num_updates) ** (self.gamma + 1)
        for p_ema, p_net in zip(_float_tensors(self.net), _float_tensors(net)):
            p_ema.copy_(p_net.detach().lerp(p_ema, beta))


def _float_tensors(module):
    return [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]

#----------------------------------------------------------------------------
