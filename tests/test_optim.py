"""Tests of the learning-rate schedule and power-function EMA shared by the demo and toy trainers."""

import numpy as np
import pytest
import torch

from edmguide import optim

#----------------------------------------------------------------------------

def test_ema_gamma_matches_the_requested_relative_std():
    for std in [0.01, 0.05, 0.1, 0.2]:
        g = optim.ema_std_to_gamma(std)
        assert np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(std, rel=1e-9)
    assert optim.ema_std_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)


def test_learning_rate_ramps_up_then_decays_as_inverse_sqrt():
    lr = lambda step: optim.learning_rate(step, 0.01, rampup_steps=10, decay_steps=100)
    assert lr(0) == pytest.approx(0.001) and lr(9) == pytest.approx(0.01) and lr(100) == pytest.approx(0.01)
    assert lr(400) == pytest.approx(0.005)


def test_power_ema_first_update_copies_then_averages():
    net = torch.nn.Linear(2, 1, bias=False)
    ema = optim.PowerEMA(net, 0.1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert torch.equal(ema.net.weight, net.weight)  # beta_1 = 0: the average starts at the net
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)
    beta = 0.5 ** (6.937204 + 1)  # gamma for std 0.1: (g+1) / ((g+2)^2 (g+3)) = 0.01 at g = 6.937204
    assert float(ema.net.weight[0, 0]) == pytest.approx(beta * 1 + (1 - beta) * 3, rel=1e-6)


def test_power_ema_averages_float_buffers_and_leaves_integer_ones():
    net = torch.nn.BatchNorm1d(2)
    ema = optim.PowerEMA(net, 0.1)
    net.running_mean.fill_(2.0)
    net.num_batches_tracked.fill_(7)
    ema.update(net)
    assert torch.equal(ema.net.running_mean, net.running_mean)
    net.running_mean.fill_(4.0)
    ema.update(net)
    beta = 0.5 ** (6.937204 + 1)
    assert float(ema.net.running_mean[0]) == pytest.approx(beta * 2 + (1 - beta) * 4, rel=1e-6)
    assert int(ema.net.num_batches_tracked) == 0


def test_too_wide_ema_is_refused():
    with pytest.raises(ValueError, match='too large'):
        optim.ema_std_to_gamma(0.3)

#----------------------------------------------------------------------------
