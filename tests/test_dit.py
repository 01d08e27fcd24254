"""edmguide.models.dit: DiT's DDPM sampler with w(sigma), on a tiny random DiTTransformer2DModel (offline, CPU)."""

import math

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule, Interval
from edmguide.models import dit
from edmguide.sampler.seeds import StackedRandomGenerator
from helpers_dit import TinyDiT

INF = math.inf


@pytest.fixture(scope='module')
def net():
    return TinyDiT(seed=0)


@pytest.fixture(scope='module')
def row_net():
    """Evaluates every row alone, so batch composition cannot change a row's rounding."""
    return TinyDiT(seed=0, per_row=True)


def _per_seed(net, seeds, classes, guidance, counter=None, **kw):
    rng = StackedRandomGenerator('cpu', seeds)
    noise = rng.randn([len(seeds), 4, net.input_size, net.input_size])
    return dit.sample_dit(net, noise, torch.tensor(classes), guidance, noise_source=rng, counter=counter, **kw)

#----------------------------------------------------------------------------
# Independent references, written here.

def _numpy_abar():
    betas = np.linspace(0.0001, 0.02, 1000)
    return np.cumprod(1 - betas)


def _numpy_iddpm_u():
    """EDM Table 1 iDDPM: u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j-1) / abar(j), C1) - 1)."""
    M, C1, C2 = 1000, 0.001, 0.008
    abar = np.sin(np.pi / 2 * np.arange(M + 1) / (M * (C2 + 1))) ** 2
    u = [0.0]
    for j in range(M, 0, -1):
        u.append(np.sqrt((u[-1] ** 2 + 1) / max(abar[j - 1] / abar[j], C1) - 1))
    return np.array(u[::-1])


def _kept_t():
    return np.array([int(round(i * 999 / 249)) for i in range(250)])


def test_respaced_timesteps_are_round_i_999_over_249():
    t = dit.respaced_timesteps()
    assert t.tolist() == _kept_t().tolist()
    assert t[:3].tolist() == [0, 4, 8] and t[-2:].tolist() == [995, 999]


@pytest.mark.parametrize('mapping', ['model', 'paper'])
def test_step_sigmas_match_independent_numpy(mapping):
    t = _kept_t()[::-1]
    expected = np.sqrt((1 - _numpy_abar()[t]) / _numpy_abar()[t]) if mapping == 'model' else _numpy_iddpm_u()[1000 - t]
    got = dit.step_sigmas(mapping)
    # Both are float64 evaluations of the same closed forms (the u recursion in another order of
    # array ops): they agree to a few float64 ulps, far below any interval bound's resolution.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert np.all(np.diff(got) < 0) or mapping == 'paper' and np.all(np.diff(got) <= 0)
    if mapping == 'model':
        assert got[0] == pytest.approx(157.4, abs=0.05) and got[-1] == pytest.approx(0.01, abs=1e-4)
    else:
        assert got[-1] == 0  # u_M = 0 at t = 0


@pytest.mark.parametrize('lo, hi, mapping, count, t_first, t_last', [
    (0.34, 1.02, 'paper', 75, 502, 205), (0.34, 1.02, 'model', 41, 261, 100),
    (0.45, 1.23, 'paper', 74, 558, 265), (0.45, 1.23, 'model', 42, 297, 132)])
def test_paper_interval_counts_from_the_spec_table(lo, hi, mapping, count, t_first, t_last):
    steps = dit.guided_steps(GuidanceSchedule.sigma_range(2.5, lo, hi), mapping)
    t = _kept_t()[::-1]
    assert len(steps) == count and steps == list(range(steps[0], steps[-1] + 1))
    assert (t[steps[0]], t[steps[-1]]) == (t_first, t_last)


def test_default_is_the_paper_mapping_that_guides_75_of_250():
    schedule = dit.dit_guidance()
    assert dit.DEFAULT_MAPPING == 'paper' and schedule.segments == ((0.34, 1.02, 2.5),)
    assert len(dit.guided_steps(schedule)) == 75


def test_cfg_range_from_zero_guides_all_250_steps_under_both_mappings():
    for mapping in dit.MAPPINGS:
        assert dit.guided_steps(GuidanceSchedule.constant(1.5), mapping) == list(range(250))
        assert dit.guided_steps(dit.dit_guidance(1.5, Interval.of_sigma(0, INF), mapping=mapping), mapping) == list(range(250))


@pytest.mark.parametrize('mapping', ['paper', 'model'])
@pytest.mark.parametrize('start, stop', [(0, 249), (124, 198), (10, 248), (249, 249), (0, 0)])
def test_step_indices_guide_exactly_those_steps(mapping, start, stop):
    schedule = dit.dit_guidance(3.0, Interval.of_steps(start, stop), mapping=mapping)
    assert dit.guided_steps(schedule, mapping) == list(range(start, stop + 1))


def test_interval_guiding_no_step_is_one_line_naming_the_levels():
    with pytest.raises(UserError, match=r'guides none of DiT.s 250 steps .*157\.4'):
        dit.dit_guidance(2.5, Interval.of_sigma(200, 300), mapping='model')
    with pytest.raises(UserError, match='0 <= start <= stop <= 249'):
        dit.dit_guidance(2.5, Interval.of_steps(10, 250))
    with pytest.raises(UserError, match='mapping'):
        dit.step_sigmas('karras')

#----------------------------------------------------------------------------
# The DDPM step against a float64 recomputation of the posterior.

class _Recorder:
    """Noise source recording its per-step draws (from a per-seed generator)."""

    def __init__(self, seeds):
        self.rng = StackedRandomGenerator('cpu', seeds)
        self.draws = []

    def randn_like(self, x):
        self.draws.append(self.rng.randn_like(x))
        return self.draws[-1]

    def get_state(self):
        return self.rng.get_state()

    def set_state(self, state):
        self.rng.set_state(state)


def test_steps_equal_float64_posterior_mean_and_learned_range_variance(net):
    seeds, classes = [1, 2], [3, 999]
    source = _Recorder(seeds)
    noise = source.rng.randn([2, 4, 4, 4])
    states, outs = [], []

    def recording_net(x, t, y):
        out = net(x, t, y)
        states.append(x.clone())
        outs.append(out.clone())
        return out

    final = dit.sample_dit(recording_net, noise, torch.tensor(classes), None, noise_source=source)
    states.append(final)
    abar = _numpy_abar()
    t_kept = _kept_t()
    for k in (0, 1, 2, 125, 247, 248, 249):  # the first steps, one in the middle, the last three (t = 8, 4, 0)
        i = 249 - k
        t, t_prev = t_kept[i], (t_kept[i - 1] if i > 0 else None)
        a, a_prev = abar[t], (abar[t_prev] if i > 0 else 1.0)
        beta = 1 - a / a_prev
        x = states[k].double().numpy()
        eps, v = outs[k][:, :4].double().numpy(), outs[k][:, 4:].double().numpy()
        z = source.draws[k].double().numpy()
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        mean = np.sqrt(a_prev) * beta / (1 - a) * x0 + np.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
        def post_var(j):
            tj, tj_prev = t_kept[j], (t_kept[j - 1] if j > 0 else None)
            aj, aj_prev = abar[tj], (abar[tj_prev] if j > 0 else 1.0)
            return (1 - aj / aj_prev) * (1 - aj_prev) / (1 - aj)
        log_var = (v + 1) / 2 * np.log(beta) + (1 - v) / 2 * np.log(post_var(max(i, 1)))
        expected = mean + (np.exp(0.5 * log_var) * z if i > 0 else 0)
        # float32 rounding: each of the ~12 float32 operations and coefficient casts adds at most
        # 2^-24 relative to the terms it combines. The mean's terms are c1 sqrt(1/abar) |x| and
        # c1 sqrt(1/abar - 1) |eps| (sqrt(1/abar) is 157 at t = 999) and c2 |x|; the noise term's
        # error is |sigma z| times the absolute error of log var / 2, i.e. times its terms' sizes.
        # 16 ulps of their sum bounds the accumulated error.
        c1, c2 = np.sqrt(a_prev) * beta / (1 - a), np.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
        log_terms = np.abs((v + 1) / 2 * np.log(beta)) + np.abs((1 - v) / 2 * np.log(post_var(max(i, 1))))
        scale = (c1 * (np.abs(x) / np.sqrt(a) + np.sqrt(1 / a - 1) * np.abs(eps)) + c2 * np.abs(x)
                 + (np.exp(0.5 * log_var) * np.abs(z) * (1 + log_terms) if i > 0 else 0))
        err = np.abs(states[k + 1].double().numpy() - expected)
        assert np.all(err <= 16 * 2.0 ** -24 * scale), (k, err.max())
    assert len(source.draws) == 250  # z is drawn at i = 0 too, though not added


def test_network_sees_the_original_timesteps(net):
    net.calls.clear()
    _per_seed(net, [0], [1], None)
    assert [call[1][0] for call in net.calls] == _kept_t()[::-1].tolist()

#----------------------------------------------------------------------------
# Guidance.

def test_w1_and_an_empty_interval_are_identical_to_no_guidance(net):
    reference = _per_seed(net, [4, 5], [7, 8], None)
    for guidance in (1.0, GuidanceSchedule.sigma_range(2.5, 1e6, 2e6), GuidanceSchedule.sigma_range(1.0, 0.34, 1.02),
                     dit.dit_guidance(1.0)):
        counter = dit.EvalCounter()
        assert torch.equal(_per_seed(net, [4, 5], [7, 8], guidance, counter=counter), reference)
        assert (counter.net, counter.gnet) == (250, 0)


def test_guided_step_uses_three_channels_by_default_and_all_on_request(net):
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([5, 6])
    out = net(torch.cat([x, x]), torch.full([4], 500), torch.tensor([5, 6, 1000, 1000]))
    cond, uncond = out[:2], out[2:]
    w = 2.5
    eps3, v3 = dit.model_output(net, x, 500, y, w, 3, dit.EvalCounter())
    assert torch.equal(eps3[:, :3], uncond[:, :3] + w * (cond[:, :3] - uncond[:, :3]))
    assert torch.equal(eps3[:, 3], cond[:, 3]) and torch.equal(v3, cond[:, 4:])
    eps4, v4 = dit.model_output(net, x, 500, y, w, 4, dit.EvalCounter())
    assert torch.equal(eps4, uncond[:, :4] + w * (cond[:, :4] - uncond[:, :4])) and torch.equal(v4, cond[:, 4:])
    assert not torch.equal(eps3[:, 3], eps4[:, 3])
    full3 = _per_seed(net, [1], [2], 4.0, guide_channels=3)
    full_all = _per_seed(net, [1], [2], 4.0, guide_channels='all')
    assert not torch.equal(full3, full_all)
    with pytest.raises(UserError, match='guide_channels'):
        _per_seed(net, [1], [2], 4.0, guide_channels='5')


def test_unconditional_evaluations_only_at_guided_steps(net):
    net.calls.clear()
    counter = dit.EvalCounter()
    _per_seed(net, [0, 1], [3, 4], dit.dit_guidance(), counter=counter)
    assert (counter.net, counter.gnet) == (250, 75)
    null_t = sorted({t for size, ts, ys in net.calls for t, y in zip(ts, ys) if y == dit.NULL_CLASS})
    assert null_t == [t for t in _kept_t().tolist() if 205 <= t <= 502]
    assert sum(size == 4 for size, _, _ in net.calls) == 75 and sum(size == 2 for size, _, _ in net.calls) == 175

#----------------------------------------------------------------------------
# DiT sample.py's numerics, against a loop written here the way sample.py runs it.

def _sample_py_loop(net, classes, seed, cfg_scale):
    """DiT sample.py + p_sample_loop + forward_with_cfg, written out: global RNG, doubled batch throughout."""
    betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float64)
    abar_full = np.cumprod(1.0 - betas)
    use = set(_kept_t().tolist())
    new_betas, last = [], 1.0
    for i, a in enumerate(abar_full):
        if i in use:
            new_betas.append(1 - a / last)
            last = a
    b = np.array(new_betas)
    ac = np.cumprod(1.0 - b)
    ac_prev = np.append(1.0, ac[:-1])
    pv = b * (1.0 - ac_prev) / (1.0 - ac)
    arrays = dict(lv=np.log(np.append(pv[1], pv[1:])), lb=np.log(b), r=np.sqrt(1.0 / ac), rm1=np.sqrt(1.0 / ac - 1),
                  c1=b * np.sqrt(ac_prev) / (1.0 - ac), c2=(1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac))
    t_map = torch.tensor(_kept_t())

    def ex(name, ts, shape):
        res = torch.from_numpy(arrays[name])[ts].float()
        return res.reshape(-1, 1, 1, 1).expand(shape)

    def forward_with_cfg(x, t, y):
        half = x[: len(x) // 2]
        out = net(torch.cat([half, half]), t, y)
        e, rest = out[:, :3], out[:, 3:]
        c, u = torch.split(e, len(e) // 2, dim=0)
        h = u + cfg_scale * (c - u)
        return torch.cat([torch.cat([h, h], dim=0), rest], dim=1)

    torch.manual_seed(seed)
    n = len(classes)
    z = torch.randn(n, 4, net.input_size, net.input_size)
    img = torch.cat([z, z], 0)
    y = torch.cat([torch.tensor(classes), torch.tensor([1000] * n)])
    for i in range(249, -1, -1):
        ts = torch.tensor([i] * img.shape[0])
        out = forward_with_cfg(img, t_map[ts], y)
        eps, var = torch.split(out, 4, dim=1)
        frac = (var + 1) / 2
        log_var = frac * ex('lb', ts, img.shape) + (1 - frac) * ex('lv', ts, img.shape)
        x0 = ex('r', ts, img.shape) * img - ex('rm1', ts, img.shape) * eps
        mean = ex('c1', ts, img.shape) * x0 + ex('c2', ts, img.shape) * img
        noise = torch.randn_like(img)
        mask = (ts != 0).float().view(-1, 1, 1, 1)
        img = mean + mask * torch.exp(0.5 * log_var) * noise
    return img[:n]


def test_dit_numerics_reproduce_sample_py_bit_for_bit(net):
    classes, seed = [207, 360, 0], 11
    expected = _sample_py_loop(net, classes, seed, 4.0)
    for guidance in (4.0, GuidanceSchedule.constant(4.0), dit.dit_guidance(4.0, Interval.of_sigma(0, INF)),
                     dit.dit_guidance(4.0, Interval.of_steps(0, 249))):
        got = dit.sample_dit_reference(net, classes, seed, guidance)
        assert torch.equal(got, expected)
    # An interval keeps the same stream (2n draws per step) but guides fewer steps.
    assert not torch.equal(dit.sample_dit_reference(net, classes, seed, dit.dit_guidance(4.0)), expected)


def test_dit_stream_is_one_generator_with_doubled_per_step_draws():
    stream = dit.DiTStream('cpu', 5)
    reference = torch.Generator().manual_seed(5)  # what torch.manual_seed(5) gives the global CPU generator
    assert torch.equal(stream.initial([3, 4, 4, 4], 'cpu'), torch.randn(3, 4, 4, 4, generator=reference))
    assert torch.equal(stream.randn_like(torch.zeros(3, 4, 4, 4)), torch.randn(6, 4, 4, 4, generator=reference)[:3])


def test_class_outside_0_999_is_refused(net):
    for bad in ([1000], [-1], [3, 1001]):
        with pytest.raises(UserError, match='outside 0..999'):
            dit.sample_dit_reference(net, bad, 0)

#----------------------------------------------------------------------------
# Per-seed determinism and the shared-prefix tree.

def test_per_seed_images_do_not_depend_on_batch_size_or_position(row_net):
    seeds, classes = [3, 17, 42], [1, 2, 3]
    together = _per_seed(row_net, seeds, classes, dit.dit_guidance())
    alone = torch.cat([_per_seed(row_net, [s], [c], dit.dit_guidance()) for s, c in zip(seeds, classes)])
    reordered = _per_seed(row_net, seeds[::-1], classes[::-1], dit.dit_guidance())
    assert torch.equal(together, alone) and torch.equal(reordered, together.flip(0))
    assert not torch.equal(together[0], together[1])


def test_tree_equals_separate_runs_bit_for_bit(net):
    settings = [None, dit.dit_guidance(), dit.dit_guidance(4.0), dit.dit_guidance(4.0, Interval.of_sigma(*dit.FD_SIGMA_RANGE)),
                1.5, dit.dit_guidance(2.5, mapping='model')]
    seeds, classes = [8, 9], [10, 11]
    for mapping in dit.MAPPINGS:
        counter = dit.EvalCounter()
        rng = StackedRandomGenerator('cpu', seeds)
        noise = rng.randn([2, 4, 4, 4])
        tree = dit.sample_dit_tree(net, noise, torch.tensor(classes), settings, noise_source=rng, mapping=mapping,
                                   counter=counter)
        for guidance, out in zip(settings, tree):
            assert torch.equal(out, _per_seed(net, seeds, classes, guidance, mapping=mapping))
        made, separate = dit.tree_evaluations(settings, mapping)
        assert (counter.net, counter.gnet) == (made.net, made.gnet)
        assert made.net < separate.net == 250 * len(settings)
    # The sample.py stream replays too.
    stream = dit.DiTStream('cpu', 3)
    noise = stream.initial([2, 4, 4, 4], 'cpu')
    tree = dit.sample_dit_tree(net, noise, torch.tensor(classes), settings[:3], noise_source=stream)
    for guidance, out in zip(settings[:3], tree):
        assert torch.equal(out, dit.sample_dit_reference(net, classes, 3, guidance))


def test_tree_evaluation_counts_by_hand():
    # No guidance and the FID interval share steps 0..123 (t = 999..506); the interval then runs on alone.
    made, separate = dit.tree_evaluations([None, dit.dit_guidance()])
    assert (separate.net, separate.gnet) == (500, 75)
    assert (made.net, made.gnet) == (124 + 2 * 126, 75)

#----------------------------------------------------------------------------
# The options object and the schedule the generation iterator runs (DiTOptions, DiTSchedule).

def test_dit_options_are_checked_and_recorded():
    import json
    options = dit.DiTOptions()
    assert (options.mapping, options.guide_channels, options.num_steps, options.numerics, options.mode) == \
        ('paper', 3, 250, 'per-seed', 'edm2')
    assert dit.DiTOptions(guide_channels='all').guide_channels == 'all'
    assert dit.DiTOptions(guide_channels='3') == options
    record = options.as_record()
    assert json.loads(json.dumps(record)) == record
    assert record != dit.DiTOptions(mapping='model').as_record()
    for bad, match in ((dict(mapping='vp'), '--dit_mapping'), (dict(guide_channels=2), '--dit_guide_channels'),
                       (dict(numerics='gi'), '--numerics'), (dict(num_steps=0), 'steps'), (dict(mode='gi'), 'mode')):
        with pytest.raises(UserError, match=match):
            dit.DiTOptions(**bad)
    with pytest.raises(UserError, match='--dit_mapping'):
        options.replace(mapping='nope')


def test_dit_schedule_resolves_intervals_as_dit_guidance():
    from edmguide.sampler.guidance import Interval
    for mapping in dit.MAPPINGS:
        schedule = dit.DiTOptions(mapping=mapping).schedule(device='cpu')
        assert schedule.num_steps == 250 and schedule.options.mapping == mapping
        assert schedule.levels == tuple(dit.step_sigmas(mapping).tolist())
        assert schedule.weights(schedule.guidance(2.5, dit.DEFAULT_INTERVAL)) == \
            dit.step_weights(dit.dit_guidance(2.5, mapping=mapping), mapping)
        assert schedule.guided_step_list(schedule.guidance(1.5, Interval())) == list(range(250))
        assert schedule.guided_step_list(schedule.guidance(1.5)) == list(range(250))
        assert schedule.guided_step_list(schedule.guidance(3.0, Interval.of_steps(10, 20))) == list(range(10, 21))
        assert schedule.weights(schedule.guidance(1, dit.DEFAULT_INTERVAL)) == (1.0,) * 250
    schedule = dit.DiTOptions().schedule()
    assert len(schedule.guided_step_list(schedule.guidance(2.5, dit.DEFAULT_INTERVAL))) == 75
    assert schedule.guided_steps(schedule.guidance(2.5, dit.DEFAULT_INTERVAL)) == (124, 198)
    assert schedule.guided_steps(None) is None
    with pytest.raises(UserError, match='guides none') as exc:
        dit.DiTOptions(mapping='model').schedule().guidance(2.5, Interval.of_sigma(200, 300))
    assert '\n' not in str(exc.value)
    with pytest.raises(UserError, match='0 <= start <= stop <= 249'):
        schedule.guidance(2.5, Interval.of_steps(10, 250))
    with pytest.raises(UserError, match='--guidance'):
        schedule.guidance(float('inf'))


def test_dit_schedule_samples_like_sample_dit_tree(row_net):
    from edmguide.sampler import sampling
    seeds, classes = [5, 6], [3, 4]
    schedule = dit.DiTOptions().schedule()
    branches = [(None, None), (None, schedule.guidance(2.5, dit.DEFAULT_INTERVAL)),
                (None, schedule.guidance(4.0, dit.DEFAULT_INTERVAL))]
    assert schedule.check_branches(branches)[0] == (1.0,) * 250
    rng = StackedRandomGenerator('cpu', seeds)
    noise = rng.randn([2, 4, row_net.input_size, row_net.input_size])
    labels = torch.nn.functional.one_hot(torch.tensor(classes), 1000).float()
    counter = sampling.EvalCounter()
    got = schedule.sample_tree(row_net, noise, labels, branches, randn_like=rng.randn_like, counter=counter)
    for (_, guidance), image in zip(branches, got):
        assert torch.equal(image, _per_seed(row_net, seeds, classes, guidance))
    made, _ = dit.tree_evaluations([g for _, g in branches])
    assert (counter.net, counter.gnet) == (made.net, made.gnet)
    with pytest.raises(UserError, match='numerics'):
        dit.DiTOptions(numerics='dit').schedule().sample_tree(row_net, noise, labels, branches,
                                                                randn_like=rng.randn_like, counter=None)
