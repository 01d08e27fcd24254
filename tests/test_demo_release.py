"""edmguide/demo/release.py and scripts/train_demo.py --what=convert: the files the demo loads are
made from the trained pickles by the script itself, byte for byte, and nothing is replaced
without --overwrite."""

import os
import shutil

import pytest

from cli_helpers import ROOT, assert_one_line_error, run_script
from edmguide.demo import release

ASSETS = os.path.join(ROOT, 'edmguide', 'demo', 'assets')


@pytest.fixture
def pickles(tmp_path):
    for src in release.code_free_files(ASSETS):
        shutil.copy(src, tmp_path)
    return tmp_path


def test_convert_step_refuses_existing_files_then_reproduces_the_shipped_ones_byte_for_byte(pickles):
    target = pickles / 'digits-ref.npz'
    target.write_bytes(b'finished work')
    result = run_script('scripts/train_demo.py', ['--what=convert', f'--outdir={pickles}'], timeout=300)
    assert_one_line_error(result, 'digits-ref.npz', 'exists', '--overwrite')
    assert target.read_bytes() == b'finished work'
    assert not (pickles / 'digits-cond.safetensors').exists()  # refused before the first step ran
    result = run_script('scripts/train_demo.py', ['--what=convert', f'--outdir={pickles}', '--overwrite'], timeout=300)
    assert result.returncode == 0, result.stderr
    for dest in release.code_free_files(ASSETS).values():
        with open(dest, 'rb') as shipped:
            assert (pickles / os.path.basename(dest)).read_bytes() == shipped.read(), dest
