"""Smoke test of benchmarks/run_benchmarks.py: --quick on tiny sizes writes the table and JSON
with every section (the precision section through its CPU code path, torch.compile skipped), and
every benchmarks/bench_*.py module exposes the runner's interface."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'run_benchmarks.py')


def test_quick_run_writes_all_sections(tmp_path):
    out = tmp_path / 'results'
    sections = 'sampler,pipeline,frechet,features,precision,threads'  # gpu: its own test below
    proc = subprocess.run([sys.executable, SCRIPT, '--quick', '--device', 'cpu', '--out', str(out),
                           '--name', 'smoke', '--precision-on-cpu', '--sections', sections],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / 'smoke.json').read_text())
    markdown = (out / 'smoke.md').read_text()
    assert markdown.strip() in proc.stdout

    for section in ('sampler', 'pipeline', 'frechet', 'features', 'precision', 'threads'):
        assert section in result, section
    for heading in ('## 1. Sampler', '## 2. generate_zip overhead', '## 3. Fréchet distance',
                    '## 4. Feature extraction', '## 5. Precision', '## 6. CPU threads'):
        assert heading in markdown, heading
    threads = result['threads']
    assert {r['setting'] for r in threads['rows']} >= {'1 thread', 'rule (idle usable cores, passive waits)'}
    assert [r['torch_threads'] for r in threads['rows'] if r['setting'] == '1 thread'] == [1]
    assert len(threads['help']) == 4 and all(h['median_s'] > 0 for h in threads['help'])
    assert result['machine']['torch'] and 'cpu_model' in result['machine']

    # Evaluation counts follow from the schedule (8 steps = 15 evaluations; interval [3, 5] = 3 guided steps).
    counts = {row['method']: (row['evals_net'], row['evals_gnet']) for row in result['sampler']['rows']}
    assert counts['no guidance'] == (15, 0)
    assert counts['CFG'] == (15, 15)
    assert counts['CFG + interval [3, 5]'] == (15, 6)
    assert counts['autoguidance + interval [3, 5]'] == (15, 6)

    pipe = result['pipeline']['rows'][0]
    assert 0 < pipe['net_s'] < pipe['wall_s'] and pipe['net_calls'] > 0

    fd = result['frechet']
    assert fd['rel_diff'] < 1e-9 and fd['speedup'] > 0

    sampler = result['sampler']
    assert sampler['rounds'] == 2 and all(len(r['s_per_batch_all']) == 2 for r in sampler['rows'])
    assert all(v > 0 for v in sampler['eval_ms_per_batch'].values())  # hook-measured costs
    assert {'met', 'met_vs_plain_eval_ratio'} <= set(sampler['target'])

    assert fd['factorization'] == ['cholesky', 'cholesky']
    assert fd['rank_deficient']['ours_rel_err_vs_exact'] < 1e-9  # singular covariances: eigh branch, still exact
    assert fd['rank_deficient']['rank'] == 31 and fd['self_ours'] == 0.0  # null space dropped; a set against itself: 0
    assert [c['threads'] for c in fd['comparisons']][0] == 1 and all(c['peer_s_min'] > 0 for c in fd['comparisons'])
    assert pipe['stages_s']['sampling'] > 0  # dump_zip's own timing, returned by generate_zip

    features = result['features']['rows']
    assert features[0]['images_per_s'] > 0
    assert all('zip_workaround' not in row for row in features)

    rows = {row['variant']: row for row in result['precision']['rows']}
    assert not any('SDPA' in name for name in rows)  # attention is left to the network code
    assert rows['fp16 eager (upstream)']['rel_err_vs_upstream'] == 0
    assert rows['fp16 channels-last']['rel_err_vs_upstream'] < 1e-2
    assert rows['bf16 eager']['rel_err_vs_fp32'] < 5e-2


def test_runner_picks_up_every_bench_module_and_writes_to_a_temp_folder_by_default():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import run_benchmarks
        modules = run_benchmarks.discover(log=lambda msg: None)
    finally:
        sys.path.remove(os.path.join(ROOT, 'benchmarks'))
    files = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'benchmarks')) if f.startswith('bench_') and f.endswith('.py'))
    assert sorted(m.__name__ for m in modules) == files
    assert [m.ORDER for m in modules] == sorted(m.ORDER for m in modules)
    source = open(SCRIPT).read()
    assert "default=None, help='output folder (default: a new temporary folder" in source


def test_gpu_bench_quick_on_cpu_writes_every_part_and_refuses_to_replace(tmp_path):
    """benchmarks/bench_gpu.py (issue 23) on the CPU with --quick: every part runs and the numbers that
    are exact by construction hold (on the CPU the default numerics are float32, so the "fp16" run is
    the float32 run: identical images, FD 0 up to float64 round-off)."""
    out = tmp_path / 'results'
    script = os.path.join(ROOT, 'benchmarks', 'bench_gpu.py')
    cmd = [sys.executable, script, '--device=cpu', '--quick', '--threads', '1', '--out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / 'gpu-cpu-quick.json').read_text())['gpu']
    markdown = (out / 'gpu-cpu-quick.md').read_text()
    for heading in ('## 7. GPU', '### 7.1 fp16 parity', '### 7.2 Throughput', '### 7.3 Metric blocks',
                    '### 7.4 Speed options'):
        assert heading in markdown, heading
    assert not any('error' in result[part] for part in ('parity', 'throughput', 'metrics', 'options'))

    rows = {row['net']: row for row in result['parity']['rows']}
    assert {'tiny latent 8x8x4', 'tiny pixel 8x8x3', 'tiny SD-XL UNet (8x8x4 latents)'} <= set(rows)
    for row in rows.values():
        for key in ('default_vs_fp32', 'default_vs_cpu', 'fp32_vs_cpu'):
            assert row[key] == {'max_abs': 0, 'share_differing': 0.0}, (row['net'], key)
        # Identical feature sets: the FD is 0 up to the float64 round-off of the covariance square
        # root, ~1e-16 relative to the trace of the 4-d covariances (each O(1)); 1e-9 leaves room.
        assert abs(row['fd_default_vs_fp32']) < 1e-9
    if 'tiny DiT' not in rows:
        assert any(note.startswith('tiny DiT: skipped') for note in result['parity']['notes'])

    # Evaluation counts from the schedule: 6 steps = 11 main evaluations; CFG doubles them; the interval
    # [2, 3] guides 2 steps (2 evaluations each); the upstream loop evaluates the guide at every step.
    by = {(row['batch'], row['method']): row for row in result['throughput']['rows']}
    assert by[(2, 'CFG, all steps')]['evals_per_image_setting'] == 22
    assert by[(2, 'interval [2, 3]')]['evals_per_image_setting'] == 11 + 4
    assert by[(2, 'upstream_loop, interval [2, 3] (guide at every step)')]['evals_per_image_setting'] == 22
    tree = by[(2, 'tree sweep, 4 settings')]
    assert tree['evals_per_image_setting'] * 4 < tree['separate_runs_evals']
    assert all(row['images_per_s'] > 0 for row in by.values())

    pr = result['metrics']['pr']
    assert 0 <= pr['precision'] <= 1 and 0 <= pr['recall'] <= 1 and pr['num'] == 300
    assert result['metrics']['dinov2']['images_per_s'] > 0 and 'DINOv2' in result['metrics']['dinov2']['detector']
    options = {row['option']: row for row in result['options']['rows']}
    assert options['channels_last']['equal'] and 'CUDA only' in options['torch.compile']['error']

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode != 0 and again.stderr.strip().startswith('error:') and '--overwrite' in again.stderr
    assert 'Traceback' not in again.stderr


def test_gpu_bench_time_allowance_names_the_rows_it_leaves_out():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import bench_gpu
    finally:
        sys.path.remove(os.path.join(ROOT, 'benchmarks'))
    unlimited = bench_gpu.Budget(None)  # --quick: no allowance, no deadline
    assert unlimited.ok('row', need_s=1e9) and unlimited.skipped == []
    spent = bench_gpu.Budget(0)
    assert not spent.ok('row 1') and not spent.ok('row 2') and spent.skipped == ['row 1', 'row 2']
    import time
    past = bench_gpu.Budget(1e9, deadline=time.perf_counter() - 1)
    assert not past.ok('late') and past.skipped == ['late']
    roomy = bench_gpu.Budget(1e9, deadline=time.perf_counter() + 1e6)
    assert roomy.ok('fits', need_s=10) and not roomy.ok('compile', need_s=2e6) and roomy.skipped == ['compile']
