"""edmguide.jobs.cli and the scripts' first answers: --help without torch, option errors in one voice."""

import subprocess
import sys

import pytest

from cli_helpers import ROOT, run_script, script_env

SCRIPTS = [('generate_images.py', []), ('generate_zip.py', []), ('calculate_metrics.py', []),
           ('calculate_metrics.py', ['gen'])]


@pytest.mark.parametrize('script,sub', SCRIPTS)
def test_help_does_not_import_torch(script, sub):
    code = (f'import runpy, sys; sys.argv = [{script!r}] + {sub!r} + ["--help"]\n'
            f'try:\n    runpy.run_path({script!r}, run_name="__main__")\n'
            f'except SystemExit as exc:\n    assert not exc.code, exc.code\n'
            f'heavy = [m for m in ("torch", "scipy", "matplotlib", "diffusers") if m in sys.modules]\n'
            f'print("HEAVY", heavy)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'HEAVY []' in proc.stdout, proc.stdout[-500:]
    assert '--threads' in proc.stdout
    assert ('--guidance_sigma' in proc.stdout) == ('"(LO, HI]"' in proc.stdout)  # one documented form


def test_option_errors_are_error_lines():
    result = run_script('generate_zip.py', ['--cond_pkl', 'x.pkl', '--num_images', '0'])
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith('error: ')] == \
        ["error: Invalid value for '--num_images': 0 is not in the range x>=1."], result.stderr
    assert 'Error:' not in result.stderr


def test_ctrl_c_says_how_to_resume_where_resuming_exists(capsys):
    import generate_zip
    from edmguide.util.errors import run_cli

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exc:
        run_cli(interrupted, resume_hint=generate_zip.RESUME_HINT)
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == 'interrupted; ' + generate_zip.RESUME_HINT
    assert 'rerun the same command' in generate_zip.RESUME_HINT
