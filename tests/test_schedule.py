"""edmguide.sampler.schedule: the sampler options as one checked value, and every guidance interval resolved
on the one schedule tensor the sampler runs on."""

import json
import math

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule, Interval, method_tag
from edmguide.sampler.schedule import SamplerOptions, Schedule
from helpers_sampler import ToyNet


def karras_levels_float64(n=32, lo=0.002, hi=80.0, rho=7.0):
    """The rho-schedule written out independently, in float64 (for the choice of test ranges only)."""
    ramp = np.arange(n) / (n - 1)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def test_options_are_checked_as_a_whole_when_made():
    with pytest.raises(UserError, match='--sigma_min=.*sigma_min < sigma_max'):
        SamplerOptions(sigma_min=5, sigma_max=1)
    with pytest.raises(UserError, match='--steps'):
        SamplerOptions(num_steps=1)
    with pytest.raises(UserError, match='numerics'):
        SamplerOptions(mode='euler')
    with pytest.raises(UserError, match='--sigma_min'):
        SamplerOptions(mode='edm2').replace(sigma_min=-1)  # a copy is checked again
    options = SamplerOptions(num_steps=8, mode='gi')
    assert options.working_dtype == torch.float64 and options.result_dtype == torch.float32
    assert SamplerOptions().working_dtype == torch.float32 and SamplerOptions().result_dtype == torch.float32


def test_record_is_exact_json_and_tells_options_apart():
    a = SamplerOptions(sigma_max=80.00000000000001, dtype=torch.float64)
    record = json.loads(json.dumps(a.as_record(), allow_nan=False))
    assert record['sigma_max'] == 80.00000000000001 and record['S_max'] == 'inf' and record['dtype'] == 'float64'
    assert record != SamplerOptions(dtype=torch.float64).as_record()


def test_step_indices_become_the_levels_of_the_sampled_tensor():
    for mode, dtype in (('edm2', torch.float32), ('gi', torch.float64), ('edm2', torch.float64)):
        schedule = SamplerOptions(mode=mode, dtype=dtype if mode == 'edm2' else None).schedule(ToyNet())
        guidance = schedule.guidance(2.0, Interval.of_steps(17, 22))
        t = schedule.sigmas
        assert t.dtype == dtype
        assert guidance.segments == ((float(t[23]), float(t[17]), 2.0),)
        assert [i for i, w in enumerate(schedule.weights(guidance)) if w != 1] == list(range(17, 23))


def test_a_range_holding_one_level_guides_that_step():
    levels = karras_levels_float64()
    inside = [i for i, t in enumerate(levels) if 0.5 < t <= 0.6]
    assert len(inside) == 1  # the test's premise, from the independent formula
    schedule = SamplerOptions().schedule()
    guidance = schedule.guidance(2.0, Interval.of_sigma(0.5, 0.6))
    assert [i for i, w in enumerate(schedule.weights(guidance)) if w != 1] == inside


def test_a_range_that_guides_no_step_is_one_line_naming_the_levels():
    levels = karras_levels_float64()
    assert not any(0.61 < t <= 0.62 for t in levels)
    with pytest.raises(UserError) as info:
        SamplerOptions().schedule().guidance(2.0, Interval.of_sigma(0.61, 0.62))
    message = str(info.value)
    assert '\n' not in message and 'guides no step' in message and '(0.61, 0.62]' in message
    assert '80' in message and '0.002' in message  # the schedule's first and last levels


def test_weights_must_be_finite_in_the_working_dtype():
    for weight in (1e39, 1e308, math.inf, math.nan):
        for mode in ('edm2', 'gi'):  # float32's range in every mode: a setting never works in only one
            with pytest.raises(UserError, match='--guidance=.*finite'):
                SamplerOptions(mode=mode).check_guidance(weight, None, '--guidance')
    SamplerOptions(mode='gi').check_guidance(3e38, None, '--guidance')
    with pytest.raises(UserError, match='step indices'):
        SamplerOptions(num_steps=8).check_guidance(2.0, Interval.of_steps(3, 8))
    SamplerOptions(num_steps=8).check_guidance(1.0, Interval.of_steps(3, 8))  # w = 1: no guidance at all


def test_no_guidance_and_constant_guidance():
    schedule = SamplerOptions(num_steps=4).schedule()
    assert schedule.guidance(1.0, Interval.of_steps(0, 1)) == GuidanceSchedule.none()
    assert schedule.guidance(None) == GuidanceSchedule.none()
    assert schedule.weights(schedule.guidance(3.0)) == (3.0,) * 4
    assert schedule.weights(schedule.guidance(3.0, Interval.of_sigma(0, math.inf))) == (3.0,) * 4


def test_explicit_tensor_schedule_is_checked():
    with pytest.raises(UserError, match='end with 0'):
        Schedule(torch.tensor([2.0, 1.0]))
    with pytest.raises(UserError, match='decreasing'):
        Schedule(torch.tensor([1.0, 2.0, 0.0]))
    assert Schedule(torch.tensor([2.0, 1.0, 0.0])).num_steps == 2


def test_interval_is_the_one_parsed_value():
    assert Interval.from_options('[17, 22]', None) == Interval.of_steps(17, 22)
    assert Interval.from_options(None, '(0.28, 2.9]') == Interval.of_sigma(0.28, 2.9)
    assert Interval.from_options('None', None) == Interval() == Interval.from_options()
    with pytest.raises(UserError, match='not both'):
        Interval.from_options('[1, 2]', '(0.1, 1]')
    assert [method_tag(i) for i in (Interval(), Interval.of_steps(1, 2), Interval.of_sigma(0, 1))] == ['cfg', 'gi', 'gi']
    assert json.dumps(Interval.of_sigma(0, math.inf).as_data(), allow_nan=False) == '{"sigma": [0.0, "inf"]}'


def test_schedule_owns_its_sampler():
    """`Schedule.sample_tree` / `check_branches` are `sampling.sample_tree` / `step_keys` on the schedule:
    the generation iterator calls them on whatever schedule it is given (DiT's has its own)."""
    from edmguide.sampler import sampling
    net, gnet = ToyNet(seed=0), ToyNet(seed=1)
    schedule = SamplerOptions(num_steps=8).schedule(net)
    branches = [(None, None), (gnet, schedule.guidance(2.0, Interval.of_steps(2, 5)))]
    schedule.check_branches(branches)
    with pytest.raises(UserError, match='guiding network'):
        schedule.check_branches([(None, schedule.guidance(2.0))])
    noise = torch.randn([2, 4, 4, 4], generator=torch.Generator().manual_seed(0))
    labels = torch.eye(4)[[1, 2]]
    counter, expected_counter = sampling.EvalCounter(), sampling.EvalCounter()
    got = schedule.sample_tree(net, noise, labels, branches, randn_like=torch.randn_like, counter=counter)
    expected = sampling.sample_tree(net, noise, labels, branches, schedule, counter=expected_counter)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert (counter.net, counter.gnet) == (expected_counter.net, expected_counter.gnet)
