#!/usr/bin/env python3
"""Run every benchmark module (benchmarks/bench_*.py) and write the combined table.

    python benchmarks/run_benchmarks.py                    # all sections on this machine's default device
    python benchmarks/run_benchmarks.py --quick            # tiny sizes, a few seconds (smoke test)
    python benchmarks/run_benchmarks.py --sections sampler,threads --out results/

Writes `<out>/<name>.json` and `.md` and prints the markdown. Without `--out` the files go to a new
temporary folder (its path is printed): nothing is written into the repository unless asked.

A benchmark module is any `bench_*.py` in this folder that defines `SECTION` (its key, for
`--sections` and the JSON), `TITLE`, `ORDER` (its place in the table), `run(ctx) -> dict` and
`markdown(result) -> list of lines` (see benchmarks/README.md). Modules without that interface are
skipped with a note. Every network has random weights, so no download is needed.
"""

import argparse
import datetime
import glob
import importlib
import json
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from common import *  # noqa: F401,F403,E402  (re-exported for modules written against this file)
from common import CONFIGS, ROOT, _jsonable, machine_info  # noqa: E402,F401

import dnnlib  # noqa: E402
import torch  # noqa: E402

INTERFACE = ('SECTION', 'TITLE', 'ORDER', 'run', 'markdown')


def discover(log=print):
    """The benchmark modules of this folder that expose the interface, in ORDER."""
    modules = []
    for path in sorted(glob.glob(os.path.join(HERE, 'bench_*.py'))):
        name = os.path.splitext(os.path.basename(path))[0]
        module = importlib.import_module(name)
        missing = [attr for attr in INTERFACE if not hasattr(module, attr)]
        if missing:
            log(f'note: skipping {name}.py (it lacks {", ".join(missing)})')
            continue
        modules.append(module)
    return sorted(modules, key=lambda m: (m.ORDER, m.SECTION))


def markdown_lines(part):
    """A section's markdown as lines: sections return a list of lines or one string (a string is
    split into its lines, not into characters)."""
    return part.splitlines() if isinstance(part, str) else list(part)

def render_markdown(result, modules):
    m = result['machine']
    out = [f"# edmguide benchmarks ({m['device']}, {m['date']})", '',
           f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_logical_cores', m.get('cpu_count'))} logical cores"
           f"{', GPU ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']} ({m['torch_threads']} thread(s)), "
           f"numpy {m['numpy']}, scipy {m.get('scipy', '?')}, Python {m['python']}. "
           f"Load average at start {m.get('load_average_start')}, at end {m.get('load_average_end')}. "
           f"Mode: {'quick' if result['quick'] else 'full'}; total {result['total_s']:.0f} s.", '']
    for module in modules:
        if module.SECTION in result:
            out += markdown_lines(module.markdown(result[module.SECTION]))
        elif module.SECTION + '_error' in result:
            out += [f"**Section {module.SECTION} failed:** {result[module.SECTION + '_error']}", '']
    return '\n'.join(out)

#----------------------------------------------------------------------------

def main(argv=None):
    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    modules = discover(log)
    names = [m.SECTION for m in modules]
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes (seconds); for the smoke test')
    parser.add_argument('--out', default=None, help='output folder (default: a new temporary folder, printed at the end)')
    parser.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    parser.add_argument('--threads', type=int, default=1, help='torch and BLAS threads (default 1: stable timings on shared machines)')
    parser.add_argument('--sections', default=','.join(names), help=f'comma-separated subset of {",".join(names)}')
    parser.add_argument('--precision-on-cpu', action='store_true',
                        help='run the precision section on the CPU with tiny nets (checks the code path, timings meaningless)')
    parser.add_argument('--peak-tflops', type=float, default=None, help='override the 16-bit peak used for the fraction of peak')
    parser.add_argument('--name', default=None, help='output file stem (default <device>-<date>, or quick-<device>)')
    args = parser.parse_args(argv)

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    unknown = set(sections) - set(names)
    if unknown:
        parser.error(f'unknown sections: {", ".join(sorted(unknown))}')
    cfg = CONFIGS['quick' if args.quick else device.type if device.type in CONFIGS else 'cpu']
    out_dir = args.out or tempfile.mkdtemp(prefix='edmguide-bench-results-')

    result = dict(quick=args.quick, machine=machine_info(device, args.threads), sections=sections)
    t_start = time.perf_counter()
    failed = []
    with tempfile.TemporaryDirectory(prefix='edmguide-bench-') as tmpdir:
        ctx = dnnlib.EasyDict(quick=args.quick, device=device, threads=args.threads, tmpdir=tmpdir, log=log,
                              cfg=cfg, options=args)
        for module in modules:
            if module.SECTION not in sections:
                continue
            log(module.TITLE)
            try:
                result[module.SECTION] = module.run(ctx)
            except Exception as exc:  # keep the other sections' results
                traceback.print_exc()
                result[module.SECTION + '_error'] = f'{type(exc).__name__}: {exc}'
                failed.append(module.SECTION)
    result['total_s'] = time.perf_counter() - t_start
    if hasattr(os, 'getloadavg'):
        result['machine']['load_average_end'] = [round(v, 2) for v in os.getloadavg()]

    stem = args.name or (f'quick-{device.type}' if args.quick else f'{device.type}-{datetime.date.today().isoformat()}')
    os.makedirs(out_dir, exist_ok=True)
    markdown = render_markdown(result, [m for m in modules if m.SECTION in sections])
    with open(os.path.join(out_dir, stem + '.json'), 'w') as f:
        json.dump(_jsonable(result), f, indent=1)
    with open(os.path.join(out_dir, stem + '.md'), 'w') as f:
        f.write(markdown + '\n')
    print(markdown)
    log(f'wrote {os.path.join(out_dir, stem)}.md and .json')
    if failed:
        sys.exit(f'error: sections failed: {", ".join(failed)}')
    return result


if __name__ == '__main__':
    main()
