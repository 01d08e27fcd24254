"""Benchmark 6: CPU threads (one thread, this project's rule, torch's own default; quiet and with a
competing process) and how fast the scripts answer `--help`.

Every thread setting runs in a fresh process, because OpenMP reads its settings once at start:
- "1 thread": OMP_NUM_THREADS=1;
- "rule": what the scripts do (`edmguide.util.threads.configure()`: idle usable cores, passive OpenMP
  waits; it reads the 1-minute load average at start, so burners started just before it are
  only partly seen);
- "all usable cores, passive waits": torch's thread count with passive waits only;
- "torch default": no settings at all (torch's thread count, OpenMP's default spin-waiting).
Each process times evaluations of the demo's main network on a batch of the demo grid's size
(wall clock, median and fastest). "with a competing process" runs one CPU-bound Python loop per
usable core alongside, as other jobs on a shared machine would.
"""

import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTION = 'threads'
TITLE = '6. threads and --help time'
ORDER = 60

_CHILD = r'''
import json, os, sys, time
sys.path.insert(0, {root!r})
if {rule!r}:
    from edmguide.util import threads
    threads.configure()
import torch
from edmguide.nets import loading
from edmguide.nets import presets
net, _ = loading.load_network(presets.DEMO_FILES.cond, 'cpu', want_encoder=False)
x = torch.randn([{batch}, net.img_channels, net.img_resolution, net.img_resolution])
sigma = torch.full([{batch}], 1.0)
labels = torch.nn.functional.one_hot(torch.arange({batch}) % net.label_dim, net.label_dim).float()
times = []
with torch.no_grad():
    net(x, sigma, labels)
    for _ in range({evals}):
        t0 = time.perf_counter()
        net(x, sigma, labels)
        times.append(time.perf_counter() - t0)
print(json.dumps(dict(threads=torch.get_num_threads(), times=times)))
'''

_BURNER = 'import time\nt = time.time() + {seconds}\nwhile time.time() < t:\n    pass\n'

SETTINGS = (('1 thread', dict(OMP_NUM_THREADS='1'), False),
            ('rule (idle usable cores, passive waits)', {}, True),
            ('all usable cores, passive waits', dict(OMP_WAIT_POLICY='PASSIVE', KMP_BLOCKTIME='0'), False),
            ('torch default (no settings)', {}, False))
OMP_VARS = ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'KMP_BLOCKTIME', 'MKL_NUM_THREADS', 'GOMP_SPINCOUNT')


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _time_evals(env_extra, rule, batch, evals):
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env.update(env_extra)
    code = _CHILD.format(root=ROOT, rule=rule, batch=batch, evals=evals)
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _help_seconds(script, args, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(ROOT, script)] + args + ['--help'], cwd=ROOT,
                       capture_output=True, timeout=120, check=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
        times.append(time.perf_counter() - t0)
    return times


def run(ctx):
    batch = 15  # the demo grid's columns
    evals = 2 if ctx.quick else 30
    rows = []
    # --quick (the smoke test) checks the code path only: quiet, without torch's slow default.
    loads = ('quiet',) if ctx.quick else ('quiet', 'with a competing process')
    for load in loads:
        for name, env_extra, rule in (SETTINGS[:2] if ctx.quick else SETTINGS):
            burners = []
            if load != 'quiet':
                burners = [subprocess.Popen([sys.executable, '-c', _BURNER.format(seconds=600)])
                           for _ in range(_usable_cpus())]
            try:
                out = _time_evals(env_extra, rule, batch, evals)
            finally:
                for p in burners:
                    p.kill()
                    p.wait()
            times = out['times']
            rows.append(dict(load=load, setting=name, torch_threads=out['threads'], evals=len(times),
                             median_ms=1e3 * statistics.median(times), fastest_ms=1e3 * min(times), times_s=times))
            ctx.log(f"  threads {load}, {name}: {out['threads']} threads, median {rows[-1]['median_ms']:.1f} ms")
    help_rows = []
    for script, args in (('generate_images.py', []), ('generate_zip.py', []), ('calculate_metrics.py', []),
                         ('calculate_metrics.py', ['gen'])):
        times = _help_seconds(script, args, 1 if ctx.quick else 3)
        help_rows.append(dict(command=' '.join([script] + args + ['--help']), median_s=statistics.median(times),
                              times_s=times))
    return dict(batch=batch, usable_cpus=_usable_cpus(), rows=rows, help=help_rows,
                load_average=[round(v, 2) for v in os.getloadavg()] if hasattr(os, 'getloadavg') else None)


def markdown(t):
    """This section's part of the combined markdown report."""
    out = [f"## 6. CPU threads (demo main net, batch {t['batch']}, {t['usable_cpus']} usable cores) and `--help` time", '',
           'Wall time per network evaluation, each setting in a fresh process; "with a competing process" runs one '
           'CPU-bound loop per usable core alongside.', '',
           '| load | setting | torch threads | median ms | fastest ms | vs 1 thread (median) |', '|---|---|---|---|---|---|']
    one = {r['load']: r['median_ms'] for r in t['rows'] if r['setting'] == '1 thread'}
    for r in t['rows']:
        out.append(f"| {r['load']} | {r['setting']} | {r['torch_threads']} | {r['median_ms']:.1f} | {r['fastest_ms']:.1f} | "
                   f"{r['median_ms'] / one[r['load']]:.2f}x |")
    out += ['', '| command | wall s (median) |', '|---|---|']
    out += [f"| `{h['command']}` | {h['median_s']:.2f} |" for h in t['help']]
    out.append('')
    return out
