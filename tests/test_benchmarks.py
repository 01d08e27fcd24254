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
    proc = subprocess.run([sys.executable, SCRIPT, '--quick', '--device', 'cpu', '--out', str(out),
                           '--name', 'smoke', '--precision-on-cpu'],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
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
