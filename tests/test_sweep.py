"""Tests for edmguide/sweep.py, sweep_report.py and `calculate_metrics.py sweep` on the demo networks
(few steps, few images): parsing, bit-identity with separate runs, resume, refusal, report files."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

import calculate_metrics
from edmguide import generation, loading, presets, sweep
from edmguide.errors import UserError
from edmguide.metrics import pipeline

FILES = presets.DEMO_FILES
FAST = ['--steps', '6', '--num', '6', '--batch', '4', '--device', 'cpu']


def run_sweep_cli(outdir, *args):
    args = ['sweep', '--net', FILES.cond, '--gnet', FILES.uncond, '--ref', FILES.ref, *FAST,
            '--outdir', str(outdir), '--checkpoint_every', '1', *args]
    return CliRunner().invoke(calculate_metrics.edm2_cli, args, catch_exceptions=False)


def read_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]

#----------------------------------------------------------------------------
# Parsing.

def test_weight_ranges_are_decimal_and_inclusive():
    weights = sweep.parse_weights('1.0:4.0:0.1')
    assert len(weights) == 31 and [repr(w) for w in weights[:3]] == ['1.0', '1.1', '1.2'] and weights[-1] == 4.0
    assert weights == [float(f'{10 + k}e-1') for k in range(31)]
    assert sweep.parse_weights('1.5, 2,2.5,2') == [1.5, 2.0, 2.5]
    for bad in ('1:2', '2:1:0.5', '1:2:0', 'a,b', 'nan', ''):
        with pytest.raises(UserError, match='--guidance'):
            sweep.parse_weights(bad)


def test_interval_forms_and_grid_expansion():
    found = sweep.parse_intervals(['all', '[17, 22]', '(0.28, 2.90]', '[17,22]'])
    assert [i.kind for i in found] == ['all', 'steps', 'sigma'] and found[1].steps == (17, 22)
    assert found[2].sigma == (0.28, 2.9)
    grid = sweep.parse_intervals(['[10..12, 11..13]'])
    assert [i.steps for i in grid] == [(10, 11), (10, 12), (10, 13), (11, 11), (11, 12), (11, 13), (12, 12), (12, 13)]
    assert {i.grid for i in grid} == {'[10..12, 11..13]'}
    assert [i.steps for i in sweep.parse_intervals(['[3..4, 5]'])] == [(3, 5), (4, 5)]
    assert [i.steps for i in sweep.parse_intervals(['[1..5:2, 4..6:2]'])] == [(1, 4), (1, 6), (3, 4), (3, 6), (5, 6)]
    for bad in ('[5..3, 6]', '[9..9, 1..2]', 'some', '[1..2]', 'None', '[1..3:0, 4]'):
        with pytest.raises(UserError, match='--interval'):
            sweep.parse_intervals([bad])


def test_unguided_setting_appears_once():
    intervals = sweep.parse_intervals(['all', '[1, 2]'])
    settings = sweep.expand_settings([2.0, 1.0, 3.0], intervals, ['g'])
    assert settings[0] == sweep.Setting(None, 1.0) and len(settings) == 1 + 2 * 2
    assert all(s.weight != 1 for s in settings[1:])
    assert len(sweep.expand_settings([2.0, 3.0], intervals, ['g'])) == 2 * 2

#----------------------------------------------------------------------------
# Same images and values as separate runs.

@pytest.mark.parametrize('mode', ['edm2', 'gi'])
def test_setting_batches_are_bit_identical_to_separate_generation(mode):
    net, encoder, gnet = loading.load_networks(FILES.cond, FILES.bad, 'cpu')
    settings = sweep.expand_settings([1.5, 3.0], sweep.parse_intervals(['all', '[2, 3]', '(0.5, 20]']), ['bad'])
    schedules, _ = sweep.setting_schedules(net, settings, mode=mode, device='cpu', num_steps=6)
    branches = [(gnet, g) for g in schedules]
    common = dict(max_batch_size=3, rank=0, world_size=1, mode=mode, sync=False, num_steps=6, device='cpu')
    together = list(generation.generate_setting_batches(net, encoder, range(5), branches, **common))
    separate = 0
    for j, (g, schedule) in enumerate(branches):
        alone = list(generation.generate_batches(net, encoder, range(5), gnet=g, guidance=schedule, **common))
        for a, b in zip(alone, together):
            assert torch.equal(a.images, b.images[j]) and torch.equal(a.latents, b.latents[j])
            separate += a.counter.net + a.counter.gnet
    assert sum(b.counter.net + b.counter.gnet for b in together) < separate  # shared prefixes computed once


def test_sweep_values_equal_separate_gen_runs_and_report_is_written(tmp_path):
    result = run_sweep_cli(tmp_path / 'out', '--guidance', '1,2', '--interval', 'all', '--interval', '[2, 3]',
                           '--interval', '[1..2, 3..4]')
    assert result.exit_code == 0, result.output
    assert 'fd_digits = ' in result.output and 'saved' in result.output
    records = read_jsonl(tmp_path / 'out' / 'sweep.jsonl')
    assert len(records) == 1 + 1 + 1 + 4  # w = 1 once; all; [2, 3]; grid of 4 (the grid's [2, 3] is its own cell)
    by_label = {(r['label'], r['grid']): r for r in records}
    for label, interval in (('none', None), ('all', None), ('[2, 3]', (2, 3))):
        r = by_label[(label, None)]
        value = pipeline.calc_metrics_for_network(
            FILES.cond, FILES.ref, ['fd_digits'], gnet_path=FILES.uncond, guidance=r['guidance'],
            guidance_interval=interval, num_images=6, max_batch_size=4, device='cpu', progress=False,
            num_steps=6)['fd_digits']
        assert r['fd_digits'] == value and r['num_images'] == 6
    assert by_label[('[2, 3]', None)]['evals_main'] == 11 and by_label[('[2, 3]', None)]['evals_guide'] == 4
    assert by_label[('all', None)]['interval'] is None and by_label[('all', None)]['sigma'][0] == 0
    names = sorted(os.listdir(tmp_path / 'out'))
    assert 'sweep.md' in names and 'sweep-fd_digits.png' in names and 'heatmap-fd_digits-digits-uncond-grid1..2_3..4-w2.png' in names
    text = (tmp_path / 'out' / 'sweep.md').read_text()
    assert '**' in text and 'Best setting per metric' in text

#----------------------------------------------------------------------------
# Resume and refusal.

def test_interrupted_sweep_resumes_to_the_same_result_and_other_settings_are_refused(tmp_path, monkeypatch):
    args = ['--guidance', '2', '--interval', '[1, 3]']
    assert run_sweep_cli(tmp_path / 'whole', *args).exit_code == 0
    original = generation.generate_setting_batches

    def stop_after_one(*a, **k):
        for i, batch in enumerate(original(*a, **k)):
            if i == 1:
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(sweep, 'generate_setting_batches', stop_after_one)
    assert run_sweep_cli(tmp_path / 'cut', *args).exit_code == 130  # as Ctrl-C
    assert os.path.exists(tmp_path / 'cut' / 'checkpoint-rank0.npz') and not os.path.exists(tmp_path / 'cut' / 'sweep.jsonl')
    monkeypatch.setattr(sweep, 'generate_setting_batches', original)
    calls = []
    monkeypatch.setattr(sweep, 'generate_setting_batches', lambda *a, **k: calls.append(k['batches']) or original(*a, **k))
    assert run_sweep_cli(tmp_path / 'cut', *args).exit_code == 0
    assert [len(b) for b in calls[0]] == [3]  # only the second batch (6 seeds in 2 batches of 3) was left
    assert read_jsonl(tmp_path / 'cut' / 'sweep.jsonl') == read_jsonl(tmp_path / 'whole' / 'sweep.jsonl')
    refused = run_sweep_cli(tmp_path / 'cut', '--guidance', '3', '--interval', '[1, 3]')
    assert refused.exit_code == 1 and refused.stderr.count('\n') == 1
    assert refused.stderr.startswith('error: ') and 'other settings (settings)' in refused.stderr

#----------------------------------------------------------------------------
# torchrun (two gloo processes).

def _rank_worker(rank, world_size, port, outdir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    from torch_utils import distributed as dist
    torch.set_num_threads(1)
    if torch.cuda.is_available():
        torch.distributed.init_process_group(backend='gloo', init_method='env://')
    dist.init()
    sweep.sweep_command(FILES.cond, FILES.ref, '2', ['[1, 3]'], outdir, gnet_path=FILES.uncond, num_images=6,
                        max_batch_size=2, device='cpu', progress=False, num_steps=6)
    torch.distributed.destroy_process_group()


def test_two_ranks_give_the_single_process_result(tmp_path):
    from test_distributed import _free_port
    torch.multiprocessing.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path / 'two')), nprocs=2, join=True)
    sweep.sweep_command(FILES.cond, FILES.ref, '2', ['[1, 3]'], str(tmp_path / 'one'), gnet_path=FILES.uncond,
                        num_images=6, max_batch_size=2, device='cpu', progress=False, num_steps=6)
    two, one = read_jsonl(tmp_path / 'two' / 'sweep.jsonl'), read_jsonl(tmp_path / 'one' / 'sweep.jsonl')
    assert sorted(os.listdir(tmp_path / 'two')).count('checkpoint-rank1.npz') == 1
    assert len(two) == len(one) == 1 and two[0]['num_images'] == 6
    assert two[0]['fd_digits'] == pytest.approx(one[0]['fd_digits'], rel=1e-9)
