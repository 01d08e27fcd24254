"""benchmarks/run_benchmarks.py's combined report: every section comes out as whole lines, whether
its `markdown()` returns a list of lines or one string (sections 7-9 return strings)."""

import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runner():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import run_benchmarks
        return run_benchmarks
    finally:
        sys.path.remove(os.path.join(ROOT, 'benchmarks'))


def test_string_and_list_sections_render_as_the_same_lines():
    runner = _runner()
    as_list = types.SimpleNamespace(SECTION='a', markdown=lambda r: ['## A', '', f'| {r["x"]} |'])
    as_text = types.SimpleNamespace(SECTION='b', markdown=lambda r: f'## B\n\n| {r["x"]} |')
    machine = dict(device='cpu', date='today', torch='t', torch_threads=1, numpy='n', python='p')
    report = runner.render_markdown(dict(machine=machine, quick=True, total_s=1.0, a={'x': 1}, b={'x': 2}),
                                    [as_list, as_text])
    lines = report.splitlines()
    assert lines[-6:] == ['## A', '', '| 1 |', '## B', '', '| 2 |']
    assert not any(len(line) == 1 for line in lines)  # no line holds a single character
