"""Running the command-line scripts from tests, in-process (click) or as subprocesses."""

import os
import subprocess
import sys

from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def invoke(command, args):
    """Run a click command in-process; returns the click Result (exit_code, output, stderr)."""
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def script_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, **extra)
    return env


def run_script(name, args, *, timeout=300, **kwargs):
    """Run a top-level script as a subprocess with the test Python; returns CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, name)] + [str(a) for a in args], cwd=ROOT,
                          env=script_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_one_line_error(result, *fragments):
    """A user error: non-zero exit, no traceback, one 'error:' line naming the problem."""
    stderr = result.stderr if hasattr(result, 'stderr') else result.output
    assert result.returncode != 0 if hasattr(result, 'returncode') else result.exit_code != 0
    assert 'Traceback' not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
