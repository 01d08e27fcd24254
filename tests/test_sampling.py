"""Tests for edmguide/sampler/sampling.py: schedule values, exactness against a plain float64 loop,
evaluation counts of the guidance interval, per-seed determinism and the ideal-denoiser check."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.gmm import GaussianMixtureDenoiser
from edmguide.sampler.guidance import GuidanceSchedule
from edmguide.sampler.sampling import EvalCounter, noise_levels, sample
from edmguide.sampler.seeds import StackedRandomGenerator, draw_noise_and_labels
from helpers_sampler import schedule_of, sigmas_of, ToyNet, one_hot

#----------------------------------------------------------------------------
# Schedule: spec table (d).

EDM2_F32 = {0: 79.999985, 2: 55.73619, 12: 6.4636636, 15: 2.9015312, 17: 1.6085705, 22: 0.28304407,
            23: 0.18859945, 27: 0.027915757, 31: 0.0019999996, 32: 0.0}
GI_F64 = {0: 80.0, 1: 66.9308737763, 13: 4.99911135034, 17: 1.60857136577, 20: 0.597700423353,
          23: 0.188599519348, 30: 0.0042668308476, 31: 0.002000000000000003, 32: 0.0}


def test_edm2_float32_schedule_matches_spec_table():
    t = noise_levels(32)
    assert t.dtype == torch.float32 and t.shape == (33,)
    for i, v in EDM2_F32.items():
        assert t[i].item() == float(np.float32(v)), i


def test_gi_float64_schedule_matches_spec_table():
    t = sigmas_of(ToyNet(), 'gi', 32)
    assert t.dtype == torch.float64
    for i, v in GI_F64.items():
        assert t[i].item() == pytest.approx(v, rel=1e-11, abs=0), i


def test_gi_schedule_is_clamped_to_net_limits_and_rounded():
    net = ToyNet(sigma_min=0.01, sigma_max=50, round_sigma=lambda s: s.to(torch.float32).to(s.dtype))
    t = sigmas_of(net, 'gi', 8)
    assert t[0].item() == 50 and t[7].item() == float(np.float32(0.01)) and t[8].item() == 0
    assert torch.equal(t, t.float().double())
    assert sigmas_of(net, 'edm2', 8)[0].item() > 79.99  # EDM2 ignores the net's limits


#----------------------------------------------------------------------------
# Exactness against an independent float64 loop.

def reference_heun(net, gnet, noise, labels, *, num_steps, w, interval, clamp_and_round,
                   S_churn=0.0, S_min=0.0, S_max=math.inf, S_noise=1.0, randn_like=None,
                   sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """Karras Alg. 2 written from the paper, in float64, with guidance on steps interval[0]..interval[1]."""
    f64 = torch.float64
    if clamp_and_round:
        sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    i = np.arange(num_steps, dtype=np.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = [float(net.round_sigma(torch.tensor(v, dtype=f64))) if clamp_and_round else float(v) for v in t] + [0.0]

    def denoise(x, s, guided):
        s = torch.tensor(s, dtype=f64)
        d = net(x, s, labels).to(f64)
        if guided:
            g = gnet(x, s, labels).to(f64)
            d = g + w * (d - g)
        return d

    x = noise.to(f64) * t[0]
    for n in range(num_steps):
        guided = interval[0] <= n <= interval[1]
        t_cur, t_next = t[n], t[n + 1]
        t_hat = t_cur
        if S_churn > 0 and S_min <= t_cur <= S_max:
            t_hat = t_cur * (1 + min(S_churn / num_steps, math.sqrt(2) - 1))
            if clamp_and_round:
                t_hat = float(net.round_sigma(torch.tensor(t_hat, dtype=f64)))
            x = x + math.sqrt(t_hat ** 2 - t_cur ** 2) * S_noise * randn_like(x)
        d = (x - denoise(x, t_hat, guided)) / t_hat
        x_next = x + (t_next - t_hat) * d
        if n < num_steps - 1:
            d2 = (x_next - denoise(x_next, t_next, guided)) / t_next
            x_next = x + (t_next - t_hat) * (d + d2) / 2
        x = x_next
    return x


@pytest.mark.parametrize('mode', ['gi', 'edm2'])
def test_sampler_agrees_with_plain_float64_loop_to_1e_12(mode):
    rounding = lambda s: s.to(torch.float32).to(s.dtype)
    net = ToyNet(0, sigma_min=0.003, sigma_max=60, round_sigma=rounding)
    gnet = ToyNet(1)
    seeds = [5, 6, 7]
    steps, w, interval = 8, 2.5, (2, 5)
    churn = dict(S_churn=2.0, S_min=0.05, S_max=10.0, S_noise=1.007)
    noise, labels = draw_noise_and_labels(StackedRandomGenerator('cpu', seeds), net)
    labels = labels.double()
    sigmas = sigmas_of(net, mode, steps, dtype=torch.float64)
    guidance = GuidanceSchedule.step_indices(w, *interval, sigmas)
    got = sample(net, noise, labels, gnet=gnet, guidance=guidance, num_steps=steps, mode=mode,
                 dtype=torch.float64, out_dtype=torch.float64,
                 randn_like=StackedRandomGenerator('cpu', seeds).randn_like, **churn)
    want = reference_heun(net, gnet, noise, labels, num_steps=steps, w=w, interval=interval,
                          clamp_and_round=(mode == 'gi'), randn_like=StackedRandomGenerator('cpu', seeds).randn_like,
                          **churn)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert want.abs().max() > 0.1  # a non-trivial result


def test_output_dtype_is_float32_in_both_modes_by_default():
    net = ToyNet()
    noise = torch.randn(2, 4, 4, 4)
    assert sample(net, noise, num_steps=4, mode='edm2').dtype == torch.float32
    assert sample(net, noise, num_steps=4, mode='gi').dtype == torch.float32


def test_net_sees_working_dtype_and_zero_dim_sigma():
    seen = []
    net = ToyNet()
    def spy(x, sigma, labels=None):
        seen.append((x.dtype, sigma.dtype, sigma.ndim))
        return net(x, sigma, labels)
    spy.sigma_min, spy.sigma_max = 0.0, math.inf
    noise = torch.randn(2, 4, 4, 4)
    sample(spy, noise, num_steps=3, mode='edm2')
    sample(spy, noise, num_steps=3, mode='gi')
    assert set(seen[:5]) == {(torch.float32, torch.float32, 0)}
    assert set(seen[5:]) == {(torch.float64, torch.float64, 0)}


#----------------------------------------------------------------------------
# Evaluation counts.

def _counted(steps, guidance, **kw):
    net, gnet, counter = ToyNet(0), ToyNet(1), EvalCounter()
    sigmas = noise_levels(steps)
    if callable(guidance):
        guidance = guidance(sigmas)
    sample(net, torch.randn(2, 4, 4, 4), gnet=gnet, guidance=guidance, sigmas=sigmas, counter=counter, **kw)
    return counter, net, gnet, sigmas


def test_interval_17_22_of_32_steps_costs_63_main_and_12_guiding_evaluations():
    counter, net, gnet, t = _counted(32, lambda s: GuidanceSchedule.step_indices(2.0, 17, 22, s))
    assert (counter.net, counter.gnet) == (63, 12), 'expected 63 main + 12 guiding evaluations'
    assert len(net.calls) == 63 and len(gnet.calls) == 12
    expected = [v for i in range(17, 23) for v in (t[i].item(), t[i + 1].item())]  # Euler t_i, correction t_{i+1}
    assert [s for s, _ in gnet.calls] == expected


def test_guiding_net_not_evaluated_outside_interval_or_without_guidance():
    counter, _, gnet, _ = _counted(32, GuidanceSchedule.none())
    assert (counter.net, counter.gnet) == (63, 0) and gnet.calls == []
    counter, _, _, _ = _counted(32, GuidanceSchedule.constant(1.0))
    assert counter.gnet == 0
    counter, _, _, _ = _counted(32, GuidanceSchedule.constant(1.4))
    assert (counter.net, counter.gnet) == (63, 63)


def test_guided_last_step_costs_one_guiding_evaluation():
    counter, _, _, _ = _counted(32, lambda s: GuidanceSchedule.step_indices(2.0, 26, 31, s))
    assert (counter.net, counter.gnet) == (63, 5 * 2 + 1)


def test_main_net_called_before_guide_in_edm2_and_after_in_gi():
    order = []
    class Tagged(ToyNet):
        def __init__(self, tag, seed):
            super().__init__(seed)
            self.tag = tag
        def __call__(self, x, sigma, class_labels=None):
            order.append(self.tag)
            return super().__call__(x, sigma, class_labels)
    for mode, first in (('edm2', 'main'), ('gi', 'guide')):
        order.clear()
        sample(Tagged('main', 0), torch.randn(1, 4, 4, 4), gnet=Tagged('guide', 1), guidance=2.0,
               num_steps=3, mode=mode)
        assert order[0] == first and len(order) == 10


def test_guidance_without_guiding_net_is_a_user_error():
    with pytest.raises(UserError, match='guiding network'):
        sample(ToyNet(), torch.randn(1, 4, 4, 4), guidance=2.0, num_steps=3)


def test_churn_noise_drawn_only_on_steps_where_churn_is_active():
    draws = []
    def randn_like(x):
        draws.append(x.dtype)
        return torch.zeros_like(x)
    net = ToyNet()
    noise = torch.randn(1, 4, 4, 4)
    sample(net, noise, num_steps=8, randn_like=randn_like)
    assert draws == []
    sigmas = noise_levels(8)
    sample(net, noise, sigmas=sigmas, S_churn=1.0, S_min=0.1, S_max=10.0, randn_like=randn_like)
    active = [t for t in sigmas[:-1].tolist() if 0.1 <= t <= 10.0]
    assert len(draws) == len(active) > 0 and set(draws) == {torch.float32}


#----------------------------------------------------------------------------
# Per-seed determinism.

def _generate(net, gnet, seeds, batch_size, class_idx=None):
    out = []
    for k in range(0, len(seeds), batch_size):
        rng = StackedRandomGenerator('cpu', seeds[k:k + batch_size])
        noise, labels = draw_noise_and_labels(rng, net, class_idx=class_idx)
        sigmas = noise_levels(12)
        out.append(sample(net, noise, labels, gnet=gnet, sigmas=sigmas,
                          guidance=GuidanceSchedule.step_indices(2.0, 4, 8, sigmas),
                          S_churn=3.0, S_min=0.2, S_max=20.0, randn_like=rng.randn_like))
    return torch.cat(out)


def test_images_depend_only_on_seed_not_on_batch_size_1_3_or_8():
    net, gnet = ToyNet(0), ToyNet(1)
    seeds = [3, 17, 42, 5, 123456, 99, 7, 1000]
    images = {b: _generate(net, gnet, seeds, b) for b in (1, 3, 8)}
    assert torch.equal(images[1], images[3]) and torch.equal(images[1], images[8])
    reordered = _generate(net, gnet, seeds[::-1], 3)
    assert torch.equal(reordered, images[8].flip(0))
    assert not torch.equal(images[8][0], images[8][1])


#----------------------------------------------------------------------------
# Ideal denoiser without guidance reproduces the data distribution.

def test_ideal_denoiser_without_guidance_samples_each_class_distribution_ks_below_0_02():
    comps = [(0.3, -1.0, 0.3, 0), (0.2, 1.5, 0.5, 0), (0.5, 0.5, 0.2, 1)]  # weight, mean, std, class
    net = GaussianMixtureDenoiser([(w, mu, std ** 2, c) for w, mu, std, c in comps])
    n = 20000
    noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    for cls in (0, 1):
        kept = [(w, mu, std) for w, mu, std, c in comps if c == cls]
        total = sum(w for w, _, _ in kept)
        cdf = lambda v: sum(w / total * scipy.stats.norm.cdf(v, mu, std) for w, mu, std in kept)  # noqa: E731
        x = sample(net, noise, one_hot(n, 2, cls, torch.float32)).flatten().double()
        ks = scipy.stats.kstest(x.numpy(), cdf).statistic
        assert ks < 0.02, (cls, ks)

#----------------------------------------------------------------------------
# The sampler options are validated as a whole, by the library and the command-line parser alike.

BAD_OPTIONS = [
    (dict(num_steps=1), '--steps=1'),
    (dict(sigma_min=0.0), '--sigma_min=0.0'),
    (dict(sigma_max=float('nan')), '--sigma_max=nan'),
    (dict(sigma_max=float('inf')), '--sigma_max=inf'),
    (dict(sigma_min=5.0, sigma_max=5.0), 'need sigma_min < sigma_max'),
    (dict(rho=0.0), '--rho=0.0'),
    (dict(rho=1e-3), 'no usable'),  # 80 ** 1000 overflows: an infinite schedule
    (dict(sigma_min=1e-200, rho=7, dtype=torch.float32), 'no usable'),  # 0 in float32, fine in float64
    (dict(S_churn=-1.0), '--S_churn=-1.0'),
    (dict(S_churn=float('inf')), '--S_churn=inf'),
    (dict(S_noise=float('nan')), '--S_noise=nan'),
    (dict(S_noise=-1.0), '--S_noise=-1.0'),
    (dict(S_min=2.0, S_max=1.0), 'need S_min <= S_max'),
    (dict(S_max=float('nan')), '--S_max=nan'),
]


@pytest.mark.parametrize('options, fragment', BAD_OPTIONS)
def test_options_that_make_images_non_finite_or_meaningless_are_refused_by_the_sampler(options, fragment):
    net = ToyNet(label_dim=0)
    options = dict(options)
    dtype = options.pop('dtype', None)
    with pytest.raises(UserError, match=fragment.replace('(', r'\(').replace('+', r'\+')) as info:
        sample(net, torch.randn(1, 4, 4, 4), None, dtype=dtype, **options)
    assert '\n' not in str(info.value)
    assert net.calls == []  # refused before any evaluation


@pytest.mark.parametrize('options, fragment', [o for o in BAD_OPTIONS if 'dtype' not in o[0]])
def test_the_command_line_parser_refuses_the_same_options(tmp_path, options, fragment):
    import generate_images
    from cli_helpers import invoke
    spelling = dict(num_steps='--steps')
    args = ['--net', tmp_path / 'no-such.pkl', '--outdir', tmp_path / 'out']
    for key, value in options.items():
        args += [spelling.get(key, f'--{key}'), value]
    result = invoke(generate_images.main, args)
    assert result.exit_code == 2 and 'no-such.pkl' not in result.output, result.output  # the parser's usage error
    assert not (tmp_path / 'out').exists()


def test_good_extreme_options_pass_and_sample_finitely():
    net = ToyNet(label_dim=0)
    x = sample(net, torch.randn(2, 4, 4, 4), None, num_steps=2, sigma_min=1e-4, sigma_max=500, rho=1,
               S_churn=40, S_min=0, S_max=float('inf'), S_noise=0)
    assert torch.isfinite(x).all()


def test_non_finite_sampler_output_is_refused_before_any_image_is_made():
    from edmguide.jobs.generation import generate_batches

    class NanNet(ToyNet):
        def __call__(self, x, sigma, class_labels=None):
            return super().__call__(x, sigma, class_labels) * float('nan')

    class Encoder:
        decoded = 0
        def decode(self, latents):
            Encoder.decoded += 1
            return latents.to(torch.uint8)

    with pytest.raises(UserError, match=r'non-finite values .* for 2 of 2 images \(first seed 3\)'):
        next(generate_batches(NanNet(label_dim=0), Encoder(), [3, 4], schedule_of(ToyNet(), num_steps=2)))
    assert Encoder.decoded == 0


def test_sampler_starts_from_t0_noise_or_the_vp_scale_by_name():
    # The EDM2 paths keep their start (noise * t_0); init_noise='sgm' (SD-XL's generative-models
    # sampler) starts from sqrt(1 + t_0^2) * noise, the factor taken in float64 from t_0.
    seen = []

    def denoiser(x, sigma, labels=None):
        seen.append(x.clone())
        return torch.zeros_like(x)
    noise = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sample(denoiser, noise, num_steps=2, sigma_max=80, rho=1)  # rho = 1: t_0 is 80 exactly
    assert torch.equal(seen[0], noise * torch.tensor(80, dtype=torch.float32))
    seen.clear()
    sample(denoiser, noise, num_steps=2, sigma_max=80, rho=1, init_noise='sgm')
    assert torch.equal(seen[0], noise * math.sqrt(1 + 80.0 ** 2))
    with pytest.raises(UserError, match='starting noise'):
        sample(denoiser, noise, num_steps=2, init_noise='vp')
