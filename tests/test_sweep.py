"""Tests for edmguide/sweeps/sweep.py, sweep_report.py and `calculate_metrics.py sweep` on the demo networks
(few steps, few images): parsing, bit-identity with separate runs, resume, refusal, report files."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

import calculate_metrics
from edmguide.jobs import generation
from edmguide.nets import loading
from edmguide.nets import presets
from edmguide.sweeps import sweep
from edmguide.util.errors import UserError
from edmguide.sampler.guidance import Interval
from edmguide.metrics import pipeline
from edmguide.sampler.schedule import SamplerOptions

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
    schedule = SamplerOptions(num_steps=6, mode=mode).schedule(net, device='cpu')
    branches = [(gnet, g) for g in sweep.setting_guidance(schedule, settings)]
    common = dict(max_batch_size=3, rank=0, world_size=1, sync=False, device='cpu')
    together = list(generation.generate_setting_batches(net, encoder, range(5), branches, schedule, **common))
    separate = 0
    for j, (g, guidance) in enumerate(branches):
        alone = list(generation.generate_batches(net, encoder, range(5), schedule, gnet=g, guidance=guidance, **common))
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
    for label, interval in (('none', None), ('all', None), ('[2, 3]', Interval.of_steps(2, 3))):
        r = by_label[(label, None)]
        value = pipeline.calc_metrics_for_network(
            FILES.cond, FILES.ref, ['fd_digits'], gnet_path=FILES.uncond, guidance=r['guidance'],
            interval=interval, num_images=6, max_batch_size=4, device='cpu', progress=False,
            sampler=SamplerOptions(num_steps=6))['fd_digits']
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
    cut = run_sweep_cli(tmp_path / 'cut', *args)
    assert cut.exit_code == 130 and 'interrupted; rerun the same command to continue' in cut.stderr  # as Ctrl-C
    assert os.path.exists(tmp_path / 'cut' / 'checkpoint-rank0.npz') and not os.path.exists(tmp_path / 'cut' / 'sweep.jsonl')
    monkeypatch.setattr(sweep, 'generate_setting_batches', original)
    calls = []
    monkeypatch.setattr(sweep, 'generate_setting_batches', lambda *a, **k: calls.append(k['batches']) or original(*a, **k))
    assert run_sweep_cli(tmp_path / 'cut', *args).exit_code == 0
    assert [len(b) for b in calls[0]] == [2]  # only the second chunk (6 seeds in fixed chunks of 4 and 2) was left
    assert read_jsonl(tmp_path / 'cut' / 'sweep.jsonl') == read_jsonl(tmp_path / 'whole' / 'sweep.jsonl')
    refused = run_sweep_cli(tmp_path / 'cut', '--guidance', '3', '--interval', '[1, 3]')
    assert refused.exit_code == 1 and refused.stderr.count('\n') == 1
    assert refused.stderr.startswith('error: ') and 'other settings (settings)' in refused.stderr

#----------------------------------------------------------------------------
# torchrun (two gloo processes).

def _rank_worker(rank, world_size, port, outdir, threads=1):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    from torch_utils import distributed as dist
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.distributed.init_process_group(backend='gloo', init_method='env://')
    dist.init()
    sweep.sweep_command(FILES.cond, FILES.ref, '2', ['[1, 3]'], outdir, gnet_path=FILES.uncond, num_images=6,
                        max_batch_size=2, device='cpu', progress=False, sampler=SamplerOptions(num_steps=6))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize('threads', [1, 3])
def test_two_ranks_give_the_single_process_result(tmp_path, threads):
    # Equal, not close: every rank computes the same fixed chunks of seeds (same images), and the
    # statistics are fed image by image in seed order on every rank (pipeline.gather_step), so
    # neither the number of processes nor their thread count (3 reorders BLAS sums as another CPU
    # would; this process runs 1) can change a bit of the result.
    from test_distributed import _free_port
    torch.multiprocessing.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path / 'two'), threads), nprocs=2, join=True)
    sweep.sweep_command(FILES.cond, FILES.ref, '2', ['[1, 3]'], str(tmp_path / 'one'), gnet_path=FILES.uncond,
                        num_images=6, max_batch_size=2, device='cpu', progress=False,
                        sampler=SamplerOptions(num_steps=6))
    two, one = read_jsonl(tmp_path / 'two' / 'sweep.jsonl'), read_jsonl(tmp_path / 'one' / 'sweep.jsonl')
    assert sorted(os.listdir(tmp_path / 'two')).count('checkpoint-rank1.npz') == 1
    assert len(two) == len(one) == 1 and two[0]['num_images'] == 6
    assert two[0]['fd_digits'] == one[0]['fd_digits']

#----------------------------------------------------------------------------
# Nothing lost, nothing mixed: outdirs whose work cannot be proven, changed inputs, checkpoints.

ARGS = ['--guidance', '2', '--interval', '[1, 3]']


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """An outdir of a finished sweep (ARGS) and its sweep.jsonl."""
    outdir = tmp_path_factory.mktemp('finished') / 'out'
    result = run_sweep_cli(outdir, *ARGS)
    assert result.exit_code == 0, result.output
    return outdir, read_jsonl(outdir / 'sweep.jsonl')


def _copy(outdir, dest):
    import shutil
    shutil.copytree(outdir, dest)
    return dest


def assert_one_line(result, *needles):
    assert result.exit_code == 1 and result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize('settings_text', [None, '', 'garbage{', '[1, 2]', '"a string"'])
def test_checkpoints_whose_settings_file_is_missing_or_unreadable_are_refused_until_overwrite(finished, tmp_path, settings_text):
    outdir = _copy(finished[0], tmp_path / 'out')
    if settings_text is None:
        os.remove(outdir / sweep.SETTINGS_FILE)
    else:
        (outdir / sweep.SETTINGS_FILE).write_text(settings_text)
    before = sorted(os.listdir(outdir))
    refused = run_sweep_cli(outdir, '--guidance', '3', '--interval', '[1, 3]')  # another sweep's weights
    assert_one_line(refused, 'nothing proves which sweep made', '--overwrite')
    assert sorted(os.listdir(outdir)) == before  # nothing touched
    redone = run_sweep_cli(outdir, *ARGS, '--overwrite')
    assert redone.exit_code == 0, redone.output
    assert read_jsonl(outdir / 'sweep.jsonl') == finished[1]  # computed again from scratch, not taken over


def test_checkpoints_of_another_sweep_beside_this_sweeps_settings_file_are_refused(finished, tmp_path):
    """Settings file and checkpoints disagree (copied together from two sweeps): never combined."""
    other = tmp_path / 'other'
    assert run_sweep_cli(other, '--guidance', '2,3', '--interval', '[1, 3]').exit_code == 0  # two settings
    outdir = _copy(finished[0], tmp_path / 'out')
    for name in os.listdir(other):
        if name.startswith('checkpoint-rank'):
            (outdir / name).write_bytes((other / name).read_bytes())
    refused = run_sweep_cli(outdir, *ARGS)
    assert_one_line(refused, 'checkpoint-rank0.npz: a checkpoint of a sweep made with other settings (settings)')


def test_a_network_replaced_at_the_same_path_is_refused_and_another_spelling_of_it_resumes(tmp_path, monkeypatch):
    import shutil
    nets = tmp_path / 'nets'
    nets.mkdir()
    for key in ('cond', 'uncond', 'bad', 'ref'):
        shutil.copy(FILES[key], nets)
    net, gnet, ref = (str(nets / os.path.basename(FILES[k])) for k in ('cond', 'uncond', 'ref'))

    def run(outdir, net=net, gnet=gnet, ref=ref, *extra):
        args = ['sweep', '--net', net, '--gnet', gnet, '--ref', ref, *FAST, '--outdir', str(outdir),
                '--checkpoint_every', '1', *ARGS, *extra]
        return CliRunner().invoke(calculate_metrics.edm2_cli, args, catch_exceptions=False)
    assert run(tmp_path / 'out').exit_code == 0
    expected = read_jsonl(tmp_path / 'out' / 'sweep.jsonl')
    os.symlink(nets, tmp_path / 'link')
    monkeypatch.chdir(tmp_path)
    again = run('out', os.path.join('link', 'digits-cond.safetensors'), os.path.join('.', 'nets', 'digits-uncond.safetensors'),
                os.path.join('nets', '..', 'nets', 'digits-ref.npz'))
    assert again.exit_code == 0, again.output  # relative, through a symlink: the same files
    assert read_jsonl(tmp_path / 'out' / 'sweep.jsonl') == expected
    shutil.copy(FILES.bad, gnet)  # the guide retrained in place
    assert_one_line(run('out'), 'a different gnet file', 'digits-uncond.safetensors', 'SHA-256')
    shutil.copy(FILES.uncond, gnet)
    with open(ref, 'ab') as f:
        f.write(b'\0')  # a reference file that is no longer the same bytes
    assert_one_line(run('out'), 'a different ref file')


def test_a_crafted_checkpoint_runs_no_code_and_a_wrong_structure_is_one_line(finished, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / 'pwned'), 'w'))
    outdir = _copy(finished[0], tmp_path / 'out')
    for name in ('checkpoint-rank0.pkl', 'checkpoint-rank0.pkl.prev'):  # what older versions read
        (outdir / name).write_bytes(pickle.dumps({'batches_done': 1, 'x': Payload()}))
    import numpy as np
    np.save(outdir / 'object.npy', np.array([Payload()], dtype=object), allow_pickle=True)
    (outdir / 'checkpoint-rank0.npz').write_bytes(_npz_with(outdir / 'checkpoint-rank0.npz', obj=outdir / 'object.npy'))
    result = run_sweep_cli(outdir, *ARGS)
    assert_one_line(result, 'checkpoint-rank0.npz: not a checkpoint this program can read', '--overwrite')
    assert not (tmp_path / 'pwned').exists()
    good = _copy(finished[0], tmp_path / 'wrong')
    with np.load(good / 'checkpoint-rank0.npz', allow_pickle=False) as npz:
        arrays = dict(npz)
    arrays['0.0.sum'] = arrays['0.0.sum'][:-1]  # one feature short
    with open(good / 'checkpoint-rank0.npz', 'wb') as f:
        np.savez(f, **arrays)
    assert_one_line(run_sweep_cli(good, *ARGS), 'checkpoint of the wrong structure')
    assert run_sweep_cli(good, *ARGS, '--overwrite').exit_code == 0
    assert read_jsonl(good / 'sweep.jsonl') == finished[1]


def _npz_with(path, obj):
    """The bytes of the .npz at `path` with one more member: the .npy file `obj` (a pickled object array)."""
    import io
    import zipfile
    buf = io.BytesIO(path.read_bytes())
    with zipfile.ZipFile(buf, 'a') as zf:
        zf.write(obj, 'payload.npy')
    return buf.getvalue()


def test_checkpoints_resume_every_metric_kind_on_another_device_and_append_only_what_is_new(tmp_path):
    """The meta device stands in for CUDA: states saved from one device are loaded where the next
    features come from, so the first update after a resume does not mix devices."""
    import numpy as np
    from edmguide.metrics import detectors, kinds
    metrics = [detectors.DEMO_METRIC, detectors.DEMO_PR_METRIC]
    dims = {m: 3 for m in metrics}
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn([4, 3], generator=gen, dtype=torch.float64) for _ in range(5)]
    accs = [[kinds.get_kind(m).accumulator() for m in metrics] for _ in range(2)]
    ckpt = sweep._Checkpoints(str(tmp_path), 0, 'fingerprint', metrics)
    for k, batch in enumerate(batches[:4]):
        for row in accs:
            for acc in row:
                acc.update(batch)
        if k % 2 == 1:
            ckpt.save(k + 1, accs)
    chunks = sorted(n for n in os.listdir(tmp_path) if n.count('-') == 3)
    assert chunks == ['checkpoint-rank0-000000-000002.npz', 'checkpoint-rank0-000002-000004.npz']
    with np.load(tmp_path / chunks[1], allow_pickle=False) as npz:  # the second holds batches 2 and 3 only
        assert npz['1.1.features'].shape == (8, 3) and npz['1.1.sizes'].tolist() == [4, 4]
        assert not any(k.startswith(('0.0.', '1.0.')) for k in npz.files)  # sums are not appended
    # CPU round trip: exactly the same state (the arrays are copied, not recomputed).
    resumed = [[kinds.get_kind(m).accumulator() for m in metrics] for _ in range(2)]
    assert sweep._Checkpoints(str(tmp_path), 0, 'fingerprint', metrics).load(resumed, metrics, dims, 'cpu') == 4
    for row, row_resumed in zip(accs, resumed):
        assert torch.equal(row[0].sum, row_resumed[0].sum) and torch.equal(row[0].outer, row_resumed[0].outer)
        assert row_resumed[0].num == 16 and torch.equal(row[1].features(), row_resumed[1].features())
    # On another device: loaded there, updated there.
    on_meta = [[kinds.get_kind(m).accumulator() for m in metrics] for _ in range(2)]
    ckpt = sweep._Checkpoints(str(tmp_path), 0, 'fingerprint', metrics)
    assert ckpt.load(on_meta, metrics, dims, 'meta') == 4
    for row in on_meta:
        for acc in row:
            acc.update(batches[4].to('meta'))
        assert row[0].sum.device.type == 'meta' and row[0].num == 20
        assert row[1].features().device.type == 'meta' and row[1].features().shape == (20, 3)
    with pytest.raises(UserError, match='checkpoint of a sweep made with'):
        sweep._Checkpoints(str(tmp_path), 0, '{"other": 1}', metrics).load(resumed, metrics, dims, 'cpu')

#----------------------------------------------------------------------------
# Every setting the parser accepts survives the report; what can be checked is checked first.

def test_an_infinite_noise_bound_is_reported_as_inf(tmp_path):
    result = run_sweep_cli(tmp_path / 'out', '--guidance', '2', '--interval', '(0, inf]')
    assert result.exit_code == 0, result.output
    [record] = read_jsonl(tmp_path / 'out' / 'sweep.jsonl')
    assert record['sigma'] == [0, 'inf'] and record['label'] == '(0, inf]'
    assert '(0, inf]' in (tmp_path / 'out' / 'sweep.md').read_text()


def test_the_report_is_rendered_before_the_first_image(tmp_path, monkeypatch):
    from edmguide.sweeps import sweep_report
    calls = []
    monkeypatch.setattr(sweep, 'generate_setting_batches', lambda *a, **k: calls.append(1) or iter(()))

    def broken(*args, **kwargs):
        raise ValueError('cannot draw this')
    monkeypatch.setattr(sweep_report, 'plot_weights', broken)
    with pytest.raises(ValueError, match='cannot draw this'):
        sweep.sweep_command(FILES.cond, FILES.ref, '2', ['[1, 3]'], str(tmp_path / 'out'), gnet_path=FILES.uncond,
                            num_images=6, max_batch_size=4, device='cpu', progress=False,
                            sampler=SamplerOptions(num_steps=6))
    assert calls == [] and not any(n.startswith('checkpoint') for n in os.listdir(tmp_path / 'out'))


def test_a_noise_range_between_two_levels_is_one_line_naming_the_levels(tmp_path):
    net = loading.load_network(FILES.cond, 'cpu', want_encoder=False)[0]
    levels = SamplerOptions(num_steps=6).schedule(net).sigmas.tolist()
    lo, hi = levels[3] * 1.01, levels[2] * 0.99  # strictly between t_3 and t_2: no t_i inside
    result = run_sweep_cli(tmp_path / 'out', '--guidance', '2', '--interval', f'({lo}, {hi}]')
    assert_one_line(result, 'guides no step', '6-step schedule', f'{levels[2]:.4g}', f'{levels[3]:.4g}')
    assert not os.path.exists(tmp_path / 'out' / 'sweep.jsonl')


def test_a_noise_range_holding_one_level_guides_that_step(tmp_path):
    """(0.5, 0.6] holds one level of the 32-step EDM schedule (closed form below, float64)."""
    n, smin, smax, rho = 32, 0.002, 80, 7
    closed = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)]
    [step] = [i for i, t in enumerate(closed) if 0.5 < t <= 0.6]
    net = loading.load_network(FILES.cond, 'cpu', want_encoder=False)[0]
    settings = sweep.expand_settings([2.0], sweep.parse_intervals(['(0.5, 0.6]']), ['g'])
    schedule = SamplerOptions(num_steps=n).schedule(net, device='cpu')
    schedules, sigmas = sweep.setting_guidance(schedule, settings), schedule.sigmas
    assert schedules[0].to_step_indices(sigmas) == ((step, step, 2.0),)


def test_heatmaps_of_two_grids_at_one_weight_keep_distinct_names_and_sweep_md_links_every_figure(tmp_path):
    from edmguide.sweeps import sweep_report
    import dnnlib
    records = [dict(guide='g', guidance=1.0, label='none', interval=None, sigma=None, grid=None,
                    evals_main=6, evals_guide=0, num_images=4, fid=5.0)]
    for grid, cells in (('[1..2, 3..4]', [(1, 3), (1, 4), (2, 3), (2, 4)]), ('[1..3, 4]', [(1, 4), (2, 4), (3, 4)])):
        for k, (a, b) in enumerate(cells):
            records.append(dict(guide='g', guidance=2.0, label=f'[{a}, {b}]', interval=[a, b], sigma=[0.1, 1.0],
                                grid=grid, evals_main=6, evals_guide=2, num_images=4, fid=4.0 - k))
    summary = dnnlib.EasyDict(settings=len(records), evals_sweep=dict(net=6, gnet=2),
                              evals_separate=dict(net=12, gnet=4), saving=0.5)
    written = sweep_report.write_report(str(tmp_path), records, ['fid'], summary)
    figures = sorted(n for n in os.listdir(tmp_path) if n.endswith('.png'))
    assert len(figures) == 2 and len(written) == 2 + len(figures)
    assert all(n.startswith('heatmap-fid-g-grid') for n in figures)
    text = (tmp_path / 'sweep.md').read_text()
    assert all(f']({n})' in text for n in figures)

#----------------------------------------------------------------------------
# Bad input is one line, before any work.

@pytest.mark.parametrize('weights', ['0:1:1e-999999999', '0:1e999999:1', '1e999', '1,1e999', 'inf', '-inf,2'])
def test_weights_that_overflow_or_are_not_finite_are_refused(weights, tmp_path):
    with pytest.raises(UserError, match='--guidance'):
        sweep.parse_weights(weights)
    assert_one_line(run_sweep_cli(tmp_path / 'out', '--guidance', weights), '--guidance')


def test_a_grid_too_large_is_refused_before_it_is_expanded():
    for text in ('[0..200, 0..200]', '[0..60000, 0..60000]', '[0..99999999999999999999999, 5]'):
        with pytest.raises(UserError, match='more than 10000 intervals'):
            sweep.parse_intervals([text])
    assert len(sweep.parse_intervals(['[0..99, 0..99]'])) == 5050  # within the bound
    with pytest.raises(UserError, match='settings'):
        sweep.expand_settings([2.0, 3.0], sweep.parse_intervals(['[0..99, 0..99]']), ['g'])  # 10100 settings


def test_an_older_versions_sweep_is_refused_and_overwrite_discards_it_with_its_report(finished, tmp_path):
    """Older versions pickled their checkpoints and recorded paths, not contents: not resumed, not read."""
    outdir = _copy(finished[0], tmp_path / 'out')
    recorded = json.loads((outdir / sweep.SETTINGS_FILE).read_text())
    legacy = {k: v for k, v in recorded.items() if k != 'inputs'}
    legacy.update({k: (v['path'] if v else None) for k, v in recorded['inputs'].items()})
    (outdir / sweep.SETTINGS_FILE).write_text(json.dumps(legacy))
    for name in os.listdir(outdir):
        if name.startswith('checkpoint-rank'):
            os.remove(outdir / name)
    (outdir / 'checkpoint-rank0.pkl').write_bytes(b'not read')
    (outdir / 'heatmap-fd_digits-old-w2.png').write_bytes(b'a figure of the old sweep')
    assert_one_line(run_sweep_cli(outdir, *ARGS), 'older version of this program', '--overwrite')
    assert run_sweep_cli(outdir, *ARGS, '--overwrite').exit_code == 0
    names = os.listdir(outdir)
    assert 'checkpoint-rank0.pkl' not in names and 'heatmap-fd_digits-old-w2.png' not in names
    assert read_jsonl(outdir / 'sweep.jsonl') == finished[1]
