"""README drift fails CI: every fenced bash block that README.md marks with `<!-- offline-test -->`
(on the line before the block) is run, command by command, in a temporary folder, and each command
must exit 0 without a traceback. Marked blocks are those that need no download: the demo assets,
`--help`, conversion of a demo pickle and small demo runs."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from cli_helpers import ROOT, script_env

MARKER = '<!-- offline-test -->'

# The demo pipeline in README measures 500 images, the size of its results table; the commands run
# here with 8 images instead, which takes every code path the same way (zip, its name, the metric of
# the zip, measuring on the fly) in seconds on one core. The values are not compared: the table's
# numbers are the demo sweep's, checked by its own tests. Only these spellings are shrunk.
SMALLER = {'--num_images=500': '--num_images=8', 'nimg500': 'nimg8', '--num=500': '--num=8'}

# What the README must keep marked, so that deleting a marker is noticed too.
REQUIRED = ['generate_images.py --preset=demo', 'generate_zip.py --cond_pkl=edmguide/demo/assets/',
            'calculate_metrics.py --gen_zip=', 'calculate_metrics.py gen --net=edmguide/demo/assets/',
            'python -m edmguide.nets.convert edmguide/demo/assets/', 'generate_images.py --help']


def marked_commands(text):
    """The commands of the bash blocks right after a marker: continuation lines joined, comments and
    blank lines dropped."""
    commands = []
    for block in re.findall(re.escape(MARKER) + r'\s*\n```bash\n(.*?)\n```', text, flags=re.S):
        for command in re.sub(r'\\\n\s*', ' ', block).splitlines():
            if command.strip() and not command.lstrip().startswith('#'):
                commands.append(command.strip())
    return commands


def readme_commands():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    assert text.count(MARKER) == len(re.findall(re.escape(MARKER) + r'\s*\n```bash\n', text)), \
        'every offline-test marker must stand right before a ```bash block'
    return marked_commands(text)


def test_marked_blocks_include_the_offline_commands_readme_promises():
    commands = readme_commands()
    for fragment in REQUIRED:
        assert any(fragment in command for command in commands), f'no marked README command has {fragment!r}'


def _argv(command):
    for long, short in SMALLER.items():
        command = command.replace(long, short)
    argv = shlex.split(command)
    assert argv[0] == 'python', f'README offline commands start with python: {command}'
    return [sys.executable] + argv[1:]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A folder where README's relative paths work (the repository's entries linked in), and whose
    out/ starts empty."""
    folder = tmp_path_factory.mktemp('readme')
    for entry in os.listdir(ROOT):
        if entry not in ('out', '.git', '.venv', 'results') and not entry.startswith('.'):
            os.symlink(os.path.join(ROOT, entry), folder / entry)
    return folder


@pytest.mark.parametrize('command', readme_commands())
def test_readme_offline_command_runs(command, workdir):
    proc = subprocess.run(_argv(command), cwd=workdir, env=script_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f'{command}\n{proc.stderr[-2000:]}'
    assert 'Traceback' not in proc.stderr, proc.stderr
