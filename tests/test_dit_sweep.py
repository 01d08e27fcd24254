"""calculate_metrics.py sweep --dit: DiT's sampler over many guidance settings, with the network loader
replaced by tiny stand-ins (tests/helpers_dit.py) and fake detectors (the `cache` fixture)."""

import json
import os

import pytest

import calculate_metrics
import helpers_metrics as hm
from cli_helpers import assert_one_line_error, invoke
from edmguide.jobs import generation
from edmguide.sweeps import sweep
from edmguide.sampler.guidance import Interval
from edmguide.models import dit, dit_generation
from helpers_dit import install_fake_loaders

# w = 1 once, then w = 2.5 on: the paper's FID interval (steps [124, 198] under the paper mapping),
# steps [100, 198], and every step (CFG).
SETTINGS = ['--guidance', '1,2.5', '--interval', '(0.34, 1.02]', '--interval', '[100, 198]', '--interval', 'all']
INTERVALS = {'(0.34, 1.02]': Interval.of_sigma(0.34, 1.02), '[100, 198]': Interval.of_steps(100, 198),
             'all': Interval()}


@pytest.fixture
def ref(monkeypatch, cache, tmp_path):
    install_fake_loaders(monkeypatch)
    dest = tmp_path / 'ref.pkl'
    result = invoke(calculate_metrics.edm2_cli, ['ref', '--data', hm.write_image_dir(tmp_path / 'data', hm.random_images(8)),
                                                 '--dest', dest, '--metrics', 'fid,fd_dinov2,pr', '--workers', '0'])
    assert result.exit_code == 0, result.output
    return str(dest)


def run(ref_path, outdir, *args):
    return invoke(calculate_metrics.edm2_cli, ['sweep', '--dit', 'm.pt', '--ref', ref_path, '--num', '4', '--batch', '3',
                                               '--device', 'cpu', '--metrics', 'fid,fd_dinov2,pr', '--outdir', outdir,
                                               '--checkpoint_every', '1',
                                               *SETTINGS, *args])


def read_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def hand_count():
    """Evaluations per image, counted by hand from the guided steps (1 conditional per step, 1
    unconditional per guided step): 'none' and the two intervals run unguided up to step 99, 'none'
    and [124, 198] up to step 123; CFG guides from step 0 on."""
    separate = dict(net=4 * 250, gnet=0 + 75 + 99 + 250)
    made = dict(net=250 + 100 + (250 - 100) + 24 + 2 * (250 - 124), gnet=250 + 99 + 75)
    per_setting = {'none': (250, 0), '(0.34, 1.02]': (250, 75), '[100, 198]': (250, 99), 'all': (250, 250)}
    return made, separate, per_setting


def test_dit_sweep_equals_gen_per_setting_counts_evaluations_and_resumes(ref, tmp_path, monkeypatch):
    counters = []
    original = generation.generate_setting_batches

    def counting(*a, **k):
        for batch in original(*a, **k):
            counters.append((batch.counter.net, batch.counter.gnet))
            yield batch
    monkeypatch.setattr(sweep, 'generate_setting_batches', counting)
    result = run(ref, tmp_path / 'whole')
    assert result.exit_code == 0, result.output
    made, separate, per_setting = hand_count()
    assert made['net'] + made['gnet'] < separate['net'] + separate['gnet']
    assert (f'evaluations per image: {made["net"] + made["gnet"]} for 4 settings, '
            f'{separate["net"] + separate["gnet"]} as separate runs') in result.output
    assert counters == [(made['net'], made['gnet'])] * 2  # what was computed, per batch (chunks of 3 and 1)
    records = read_jsonl(tmp_path / 'whole' / 'sweep.jsonl')
    assert [(r['label'], r['guidance'], r['guide']) for r in records] == [
        ('none', 1.0, None), ('(0.34, 1.02]', 2.5, 'null-class'), ('[100, 198]', 2.5, 'null-class'),
        ('all', 2.5, 'null-class')]
    for r in records:
        assert (r['evals_main'], r['evals_guide']) == per_setting[r['label']]
    assert records[1]['interval'] == [124, 198] and records[2]['interval'] == [100, 198]
    assert records[3]['interval'] is None

    # Each setting's values equal `gen --dit` for it with the same seeds and batch.
    names = [k for k in records[0] if k.startswith(('fid', 'fd_dinov2', 'precision', 'recall'))]
    assert len(names) == 4, records[0]
    for r in records:
        interval = INTERVALS.get(r['label'])
        values = dit_generation.calc_metrics_for_dit('m.pt', ref, ['fid', 'fd_dinov2', 'pr'], guidance=r['guidance'],
                                                     interval=interval,
                                                     num_images=4, max_batch_size=3, device='cpu', progress=False)
        assert {k: r[k] for k in names} == {k: values[k] for k in names}, r['label']
    gen = invoke(calculate_metrics.edm2_cli, ['gen', '--dit', 'm.pt', '--ref', ref, '--num', '4', '--batch', '3',
                                              '--guidance', '2.5', '--guidance_interval', '[100, 198]'])
    assert gen.exit_code == 0, gen.output
    assert f'fid = {records[2]["fid"]:g}\n' in gen.stdout

    # Interrupted after the first batch, then resumed: the same sweep.jsonl.
    def stop_after_one(*a, **k):
        for i, batch in enumerate(original(*a, **k)):
            if i == 1:
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(sweep, 'generate_setting_batches', stop_after_one)
    cut = run(ref, tmp_path / 'cut')
    assert cut.exit_code == 130 and 'rerun the same command to continue' in cut.stderr
    assert not os.path.exists(tmp_path / 'cut' / 'sweep.jsonl')
    resumed = []
    monkeypatch.setattr(sweep, 'generate_setting_batches', lambda *a, **k: resumed.append(k['batches']) or original(*a, **k))
    assert run(ref, tmp_path / 'cut').exit_code == 0
    assert [len(b) for b in resumed[0]] == [1]  # only the second chunk was left
    assert read_jsonl(tmp_path / 'cut' / 'sweep.jsonl') == records

    # The DiT options are recorded: another mapping is another sweep.
    with open(tmp_path / 'cut' / 'sweep-settings.json', encoding='utf-8') as f:
        recorded = json.load(f)
    assert recorded['sampler'] == dit.DiTOptions().as_record() and recorded['dit_source'] == 'm.pt'
    assert recorded['dit_embedding'] == 'dit' and recorded['inputs']['ref']['sha256']
    refused = run(ref, tmp_path / 'cut', '--dit_mapping', 'model')
    assert_one_line_error(refused, 'other settings (sampler)')


def test_tree_evaluations_of_both_schedules_agree_with_their_samplers():
    from edmguide.sampler.schedule import Schedule
    schedule = dit.DiTOptions().schedule()
    branches = [(None, schedule.guidance(w, i)) for w, i in ((1, None), (2.5, INTERVALS['(0.34, 1.02]']),
                                                              (2.5, INTERVALS['[100, 198]']), (2.5, Interval()))]
    made, separate, _ = hand_count()
    got_made, got_separate = schedule.tree_evaluations(branches)
    assert (got_made.net, got_made.gnet, got_separate.net, got_separate.gnet) == (
        made['net'], made['gnet'], separate['net'], separate['gnet'])
    assert schedule.rounded_bounds_note(branches[1][1], INTERVALS['(0.34, 1.02]']) is None
    edm = Schedule([4.0, 2.0, 1.0, 0.0])
    gnet = object()
    edm_made, edm_separate = edm.tree_evaluations([(None, edm.guidance(None)), (gnet, edm.guidance(2.0, Interval.of_steps(2, 2)))])
    # Heun: 2 evaluations per step but the last; the branches share steps 0 and 1 (4 evaluations).
    assert (edm_made.net, edm_made.gnet, edm_separate.net, edm_separate.gnet) == (4 + 1 + 1, 1, 10, 1)


@pytest.mark.parametrize('args, needle', [
    (['--steps', '8'], '--steps would be ignored'),
    (['--gnet', 'g.pkl'], '--gnet would be ignored'),
    (['--numerics', 'gi'], '--numerics would be ignored'),
    (['--interval', '(5000, 6000]'], 'guides none of DiT'),
    (['--interval', '[100, 250]'], '0 <= start <= stop <= 249'),
    (['--class', '1000'], 'class 1000 is outside 0..999'),
])
def test_bad_dit_sweep_input_is_one_line_and_writes_nothing(ref, tmp_path, args, needle):
    result = run(ref, tmp_path / 'out', *args)
    assert_one_line_error(result, needle)
    assert not os.path.exists(tmp_path / 'out') or os.listdir(tmp_path / 'out') == []


def test_dit_options_without_dit_are_refused(ref, tmp_path):
    result = invoke(calculate_metrics.edm2_cli, ['sweep', '--net', 'x.pkl', '--ref', ref, '--guidance', '2',
                                                 '--outdir', tmp_path / 'out', '--dit_mapping', 'model'])
    assert_one_line_error(result, '--dit_mapping only apply with --dit')


def test_a_dit_checkpoint_replaced_at_the_same_path_is_refused(ref, tmp_path):
    model = tmp_path / 'DiT-XL-2-512x512.pt'
    model.write_bytes(b'weights 1')  # the stand-in loader ignores the contents; the sweep records their digest

    def run_one(outdir):
        return invoke(calculate_metrics.edm2_cli, ['sweep', '--dit', model, '--ref', ref, '--num', '2', '--batch', '2',
                                                   '--device', 'cpu', '--outdir', outdir, '--guidance', '2.5',
                                                   '--interval', '[240, 249]'])
    assert run_one(tmp_path / 'out').exit_code == 0
    with open(tmp_path / 'out' / 'sweep-settings.json', encoding='utf-8') as f:
        assert json.load(f)['inputs']['dit']['sha256']
    assert run_one(tmp_path / 'out').exit_code == 0  # the same inputs: finished, nothing to redo
    model.write_bytes(b'weights 2')
    assert_one_line_error(run_one(tmp_path / 'out'), 'a different dit file')
