"""Tests for edmguide/sampler/guidance.py: w(sigma) semantics, the two interval forms and their
conversion, the parsers, and the paper's effect measured with the ideal mixture denoiser."""

import math

import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.gmm import GaussianMixtureDenoiser
from edmguide.sampler.guidance import (GuidanceSchedule, indices_to_sigma_range, parse_interval, parse_sigma_range,
                               sigma_range_to_indices)
from edmguide.sampler.sampling import EvalCounter, noise_levels, sample
from helpers_sampler import schedule_of, sigmas_of, ToyNet, one_hot, two_mode_mixture

T32 = noise_levels(32)                          # EDM2 float32 levels
T64 = noise_levels(32, dtype=torch.float64)     # GI float64 levels

#----------------------------------------------------------------------------
# Weight semantics.

def test_weight_is_w_on_half_open_interval_and_one_elsewhere():
    g = GuidanceSchedule.sigma_range(2.0, 0.5, 3.0)
    assert g.weight(3.0) == 2.0 and g.weight(1.0) == 2.0 and g.weight(0.5000001) == 2.0
    assert g.weight(0.5) == 1.0 and g.weight(3.0000001) == 1.0 and g.weight(80) == 1.0
    assert g.weight(torch.tensor(1.0)) == 2.0
    assert g.is_active and not GuidanceSchedule.none().is_active
    assert not GuidanceSchedule.constant(1.0).is_active


def test_constant_guidance_covers_every_step():
    assert GuidanceSchedule.constant(1.4).step_weights(T32) == [1.4] * 32
    assert GuidanceSchedule.constant(1.4).to_step_indices(T32) == ((0, 31, 1.4),)


def test_multi_segment_schedule_gives_each_step_its_own_weight():
    g = GuidanceSchedule(((T32[23].item(), T32[17].item(), 2.0), (T32[13].item(), T32[5].item(), 1.5)))
    w = g.step_weights(T32)
    assert w[5:13] == [1.5] * 8 and w[17:23] == [2.0] * 6
    assert set(w[:5] + w[13:17] + w[23:]) == {1.0}
    assert g.to_step_indices(T32) == ((5, 12, 1.5), (17, 22, 2.0))


def test_overlapping_segments_are_rejected():
    with pytest.raises(UserError, match='overlap'):
        GuidanceSchedule(((0.1, 1.0, 2.0), (0.5, 2.0, 3.0)))


@pytest.mark.parametrize('lo, hi', [(1.0, 1.0), (2.0, 1.0), (-0.1, 1.0), (math.nan, 1.0)])
def test_invalid_sigma_ranges_are_user_errors(lo, hi):
    with pytest.raises(UserError):
        GuidanceSchedule.sigma_range(2.0, lo, hi)


#----------------------------------------------------------------------------
# Index form <-> sigma form.

def test_indices_17_22_convert_to_t23_t17_and_back():
    for t in (T32, T64):
        assert indices_to_sigma_range(17, 22, t) == (t[23].item(), t[17].item())
        assert sigma_range_to_indices(t[23].item(), t[17].item(), t) == (17, 22)
        g = GuidanceSchedule.step_indices(2.0, 17, 22, t)
        assert g.segments == ((t[23].item(), t[17].item(), 2.0),)
        assert g.to_step_indices(t) == ((17, 22, 2.0),)
    assert indices_to_sigma_range(13, 19, T64) == pytest.approx((0.597700423353, 4.99911135034), rel=1e-11)
    assert indices_to_sigma_range(0, 31, T32) == (0.0, T32[0].item())


def test_paper_sigma_ranges_give_paper_step_indices_once_snapped_to_the_schedule():
    # GI Table 1: (0.28, 2.90] -> [15, 21]; (0.19, 1.61] -> [17, 22]; (0.60, 5.00] -> [13, 19].
    for (lo, hi), steps in {(0.28, 2.90): (15, 21), (0.19, 1.61): (17, 22), (0.60, 5.00): (13, 19)}.items():
        for t in (T32, T64):
            g = GuidanceSchedule.sigma_range(2.0, lo, hi).snapped(t)
            assert g.to_step_indices(t) == (steps + (2.0,),)
    # Read literally, the rounded bounds are exact for two rows; 2.90 < t_15 = 2.9015 shifts the third.
    assert sigma_range_to_indices(0.19, 1.61, T64) == (17, 22)
    assert sigma_range_to_indices(0.60, 5.00, T64) == (13, 19)
    assert sigma_range_to_indices(0.28, 2.90, T64) == (16, 22)


def test_step_indices_are_validated_against_the_schedule():
    for start, stop in [(5, 4), (-1, 3), (0, 32), (31, 32)]:
        with pytest.raises(UserError, match=r'0 <= start <= stop <= 31'):
            GuidanceSchedule.step_indices(2.0, start, stop, T32)
    assert GuidanceSchedule.step_indices(2.0, 31, 31, T32).segments == ((0.0, T32[31].item(), 2.0),)


def _run(net, gnet, guidance, sigmas, mode, labels=None, counter=None):
    noise = torch.randn(3, net.img_channels, net.img_resolution, net.img_resolution,
                        generator=torch.Generator().manual_seed(1))
    return sample(net, noise, labels, gnet=gnet, guidance=guidance, sigmas=sigmas, mode=mode, counter=counter)


@pytest.mark.parametrize('mode', ['edm2', 'gi'])
def test_sigma_range_and_equivalent_step_indices_give_bit_identical_images(mode):
    net, gnet = ToyNet(0), ToyNet(1)
    sigmas = sigmas_of(net, mode, 32)
    by_index = _run(net, gnet, GuidanceSchedule.step_indices(2.0, 17, 22, sigmas), sigmas, mode)
    by_sigma = _run(net, gnet, GuidanceSchedule.sigma_range(2.0, sigmas[23].item(), sigmas[17].item()), sigmas, mode)
    snapped = _run(net, gnet, GuidanceSchedule.sigma_range(2.0, 0.19, 1.61).snapped(sigmas), sigmas, mode)
    unguided = _run(net, gnet, GuidanceSchedule.none(), sigmas, mode)
    assert torch.equal(by_index, by_sigma) and torch.equal(by_index, snapped)
    assert not torch.equal(by_index, unguided)


def test_autoguidance_with_interval_uses_weaker_conditional_guide_only_inside_interval():
    comps = [(0.5, [-1.0, 0.5], 0.05, 0), (0.5, [1.0, -0.5], 0.05, 1)]
    net = GaussianMixtureDenoiser(comps)
    weak = GaussianMixtureDenoiser([(w, m, v * 4, c) for w, m, v, c in comps])   # blurrier, still conditional
    calls = []
    def guide(x, sigma, class_labels=None):
        calls.append(class_labels is not None)
        return weak(x, sigma, class_labels)
    sigmas = sigmas_of(net, 'edm2', 32)
    labels = one_hot(3, 2, 1, torch.float32)
    counter = EvalCounter()
    auto = _run(net, guide, GuidanceSchedule.step_indices(2.0, 13, 19, sigmas), sigmas, 'edm2', labels, counter)
    assert (counter.net, counter.gnet) == (63, 14) and all(calls)
    same = _run(net, weak, GuidanceSchedule.sigma_range(2.0, sigmas[20].item(), sigmas[13].item()), sigmas, 'edm2', labels)
    plain = _run(net, None, None, sigmas, 'edm2', labels)
    assert torch.equal(auto, same) and not torch.equal(auto, plain)


#----------------------------------------------------------------------------
# Parsers.

@pytest.mark.parametrize('text, want', [('[17, 22]', (17, 22)), ('(13,19)', (13, 19)), ('None', None),
                                        ('none', None), ('', None), (None, None), ([2, 3], (2, 3))])
def test_parse_interval_accepts_upstream_syntax(text, want):
    assert parse_interval(text) == want


@pytest.mark.parametrize('text', ['[17, 22', '17-22', '[1, 2, 3]', '[1.5, 3]', '[22, 17]', '[-1, 3]',
                                  '[True, 3]', 'import os'])
def test_parse_interval_rejects_malformed_input_with_one_line(text):
    with pytest.raises(UserError) as info:
        parse_interval(text)
    assert '\n' not in str(info.value) and 'guidance interval' in str(info.value)


@pytest.mark.parametrize('text, want', [('0.28,2.9', (0.28, 2.9)), ('(0.28, 2.90]', (0.28, 2.9)),
                                        (' 0 , inf ', (0.0, math.inf)), ('(1e-1,5]', (0.1, 5.0))])
def test_parse_sigma_range_accepts_plain_and_bracketed_forms(text, want):
    assert parse_sigma_range(text) == want


@pytest.mark.parametrize('text', ['0.28', '[0.28, 2.9]', '(0.28, 2.9)', '(0.28, 2.9', '2.9,0.28', '-1,2',
                                  'a,b', '0.5,0.5'])
def test_parse_sigma_range_rejects_malformed_input_with_one_line(text):
    with pytest.raises(UserError) as info:
        parse_sigma_range(text)
    assert '\n' not in str(info.value) and 'sigma range' in str(info.value)


#----------------------------------------------------------------------------
# The paper's effect (GI Fig. 1): guidance at high noise drops a mode, the interval keeps it.

def _mode_masses(guidance, n=4000):
    net = two_mode_mixture()
    noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sample(net, noise, one_hot(n, 2, 0), gnet=net.unconditional(), guidance=guidance, mode='gi',
               out_dtype=torch.float64).flatten()
    return (x < 0).double().mean().item(), (x > 0).double().mean().item()   # true: 0.5, 0.5


def test_cfg_over_all_sigmas_at_w3_leaves_a_mode_with_under_a_quarter_of_its_mass():
    low, high = _mode_masses(GuidanceSchedule.constant(3.0))
    assert min(low, high) < 0.25 * 0.5, (low, high)


def test_same_weight_only_at_low_and_middle_sigma_keeps_both_modes_within_20_percent():
    low, high = _mode_masses(GuidanceSchedule.sigma_range(3.0, 0.05, 0.6))
    assert abs(low - 0.5) < 0.2 * 0.5 and abs(high - 0.5) < 0.2 * 0.5, (low, high)
    low, high = _mode_masses(GuidanceSchedule.none())
    assert abs(high - 0.5) < 0.03


def test_schedule_data_is_exact_and_json_safe_where_its_text_is_rounded():
    import json
    a = GuidanceSchedule.sigma_range(2.0, 0.28, 2.9)
    b = GuidanceSchedule.sigma_range(2.0, 0.28, 2.9000001)
    assert str(a) == str(b)  # 6 significant digits, for people
    assert a.as_data() == [[0.28, 2.9, 2.0]] and b.as_data() == [[0.28, 2.9000001, 2.0]]
    assert json.loads(json.dumps(b.as_data(), allow_nan=False)) == b.as_data()
    assert GuidanceSchedule.constant(1.5).as_data() == [[0.0, 'inf', 1.5]]
    assert GuidanceSchedule.none().as_data() == []


def test_paper_rounded_bounds_get_a_hint_only_when_they_select_other_steps():
    # Literal (0.28, 2.90]: t_15 = 2.9015 > 2.90 drops step 15, t_22 = 0.28304 > 0.28 adds step 22.
    paper = GuidanceSchedule.sigma_range(2.1, 0.28, 2.90)
    assert paper.to_step_indices(T32) == ((16, 22, 2.1),)
    assert paper.rounded_bounds_hint(T32) == ((15, 21, 2.1),)
    # Roundings that select the intended steps anyway, exact levels, and arbitrary bounds: no hint.
    assert GuidanceSchedule.sigma_range(2.0, 0.19, 1.61).rounded_bounds_hint(T32) is None
    assert GuidanceSchedule.sigma_range(2.0, 0.60, 5.00).rounded_bounds_hint(T32) is None
    assert GuidanceSchedule.step_indices(2.0, 15, 21, T32).rounded_bounds_hint(T32) is None
    assert GuidanceSchedule.sigma_range(2.0, 0.5, 3.3).rounded_bounds_hint(T32) is None
    assert GuidanceSchedule.constant(2.0).rounded_bounds_hint(T32) is None


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_step_interval_is_converted_on_the_schedule_of_the_sampling_dtype(dtype):
    """edm2 numerics in float64 (upstream's `dtype` sampler option): the bounds come from the float64
    levels, so steps [start, stop] are exactly the guided ones for every interval."""
    from edmguide.sampler.guidance import Interval
    net = ToyNet(0)
    levels = T32 if dtype == torch.float32 else T64
    assert not torch.equal(T32.double(), T64)  # the two schedules do differ
    for start, stop in [(17, 22), (15, 21), (13, 19), (0, 30), (4, 4)]:
        guidance = schedule_of(net, 'edm2', 32, dtype).guidance(2.0, Interval.of_steps(start, stop))
        assert guidance.segments == ((float(levels[stop + 1]), float(levels[start]), 2.0),)
        counter = EvalCounter()
        sample(net, torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)), gnet=ToyNet(1),
               guidance=guidance, mode='edm2', dtype=dtype, counter=counter)
        guided = stop - start + 1
        assert counter.gnet == 2 * guided - (stop == 31), (start, stop)
