"""Tests for edmguide.sampler.sampling.sample_tree: every branch equals its own `sample` run, bit for bit,
while shared trajectory prefixes are computed once (evaluation counts checked by hand)."""

import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule
from edmguide.sampler.sampling import EvalCounter, sample, sample_tree, step_keys, tree_evaluations
from edmguide.sampler.seeds import StackedRandomGenerator, draw_noise_and_labels
from helpers_sampler import schedule_of, sigmas_of, ToyNet


def _branches(net, guide_a, guide_b, mode, num_steps):
    sigmas = sigmas_of(net, mode, num_steps)
    steps = GuidanceSchedule.step_indices
    return [
        (None, None),
        (guide_a, 2.0),
        (guide_a, steps(2.0, 3, 5, sigmas)),
        (guide_a, steps(3.0, 3, 5, sigmas)),
        (guide_a, steps(2.0, 4, 6, sigmas)),
        (guide_b, steps(2.0, 3, 5, sigmas)),  # same weights as branch 2, other guide
        (guide_a, steps(2.0, 3, 5, sigmas)),  # duplicate of branch 2
    ]


@pytest.mark.parametrize('mode', ['edm2', 'gi'])
def test_every_branch_is_bit_identical_to_its_own_sample_run(mode):
    net, guide_a, guide_b = ToyNet(0), ToyNet(1, label_dim=0), ToyNet(2)
    rng = StackedRandomGenerator('cpu', [3, 7, 11])
    noise, labels = draw_noise_and_labels(rng, net)
    branches = _branches(net, guide_a, guide_b, mode, 8)
    counter = EvalCounter()
    outputs = sample_tree(net, noise, labels, branches, mode=mode, num_steps=8, counter=counter)
    separate = EvalCounter()
    for (gnet, guidance), out in zip(branches, outputs):
        expected = sample(net, noise, labels, gnet=gnet, guidance=guidance, mode=mode, num_steps=8, counter=separate)
        assert out.dtype == expected.dtype and torch.equal(out, expected)
    made, counted_separate = tree_evaluations(step_keys(branches, schedule_of(net, mode, 8)))
    assert counter == made and separate == counted_separate
    assert made.net < separate.net and made.gnet < separate.gnet


def test_issue_example_needs_210_instead_of_304_evaluations_per_image():
    net, gnet = ToyNet(0), ToyNet(1, label_dim=0)
    schedule = schedule_of(net, 'edm2', 32)
    branches = [(gnet, GuidanceSchedule.step_indices(w, a, b, schedule.sigmas)) for w in (1.5, 2.5) for a, b in ((15, 21), (17, 22))]
    made, separate = tree_evaluations(step_keys(branches, schedule))
    # By hand: separate runs cost 63 main + 14 guide ([15, 21]) or 12 ([17, 22]), twice each.
    assert separate.net + separate.gnet == 2 * (63 + 14) + 2 * (63 + 12) == 304
    # Tree: steps 0-14 once (30); [17, 22] pair shares 15-16 (4); [15, 21] leaves 15-31 (33 + 14 each);
    # [17, 22] leaves 17-31 (29 + 12 each).
    assert made.net + made.gnet == 30 + 4 + 2 * 47 + 2 * 41 == 210
    counter = EvalCounter()
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sample_tree(net, noise, None, branches, counter=counter)
    assert counter == made


def test_churn_in_a_tree_replays_the_per_seed_generators():
    net, gnet = ToyNet(0), ToyNet(1, label_dim=0)
    sigmas = sigmas_of(net, 'edm2', 6)
    branches = [(None, None), (gnet, GuidanceSchedule.step_indices(2.0, 1, 3, sigmas)), (gnet, 3.0)]
    churn = dict(num_steps=6, S_churn=2.0, S_min=0.05, S_max=50)
    rng = StackedRandomGenerator('cpu', [5, 6])
    noise, labels = draw_noise_and_labels(rng, net)
    outputs = sample_tree(net, noise, labels, branches, randn_like=rng.randn_like, **churn)
    for (g, guidance), out in zip(branches, outputs):
        fresh = StackedRandomGenerator('cpu', [5, 6])
        draw_noise_and_labels(fresh, net)  # the same draws as before sampling
        assert torch.equal(out, sample(net, noise, labels, gnet=g, guidance=guidance, randn_like=fresh.randn_like, **churn))
    with pytest.raises(UserError, match='churn'):
        sample_tree(net, noise, labels, branches, randn_like=torch.randn_like, **churn)


def test_guided_branch_without_guiding_net_is_refused():
    net = ToyNet(0)
    with pytest.raises(UserError, match='guiding network'):
        sample_tree(net, torch.zeros(1, 4, 4, 4), None, [(None, None), (None, 2.0)], num_steps=4)
