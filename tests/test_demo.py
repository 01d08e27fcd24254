"""The embedded demo: the README's demo command and the whole paper pipeline on the digits models."""

import json
import zipfile

import numpy as np
import PIL.Image

import generate_images
from edmguide.jobs import figures
from edmguide.nets import presets
from cli_helpers import invoke, run_script

ROWS = len(presets.DEMO_METHODS)


def test_readme_demo_command_writes_a_labelled_grid_whose_rows_differ(tmp_path):
    result = invoke(generate_images.main, ['--preset=demo', f'--outdir={tmp_path}'])
    assert result.exit_code == 0, result.output
    grid = np.asarray(PIL.Image.open(tmp_path / 'demo-comparison.png').convert('RGB'))
    scale, label_height, res = 4, figures.LABEL_HEIGHT, 16
    classes, seeds = len(presets.DEMO_CLASSES), len(presets.DEMO_SEEDS)
    tile = res * scale
    # Two header lines (classes, seeds), then per row a caption strip and the tiles; the classes'
    # groups of columns are separated by white gaps.
    width = classes * seeds * tile + (classes - 1) * figures.GROUP_GAP
    assert grid.shape == (2 * label_height + ROWS * (label_height + tile), width, 3)
    top = 2 * label_height
    row_height = label_height + tile
    panels = [grid[top + r * row_height + label_height:top + (r + 1) * row_height] for r in range(ROWS)]
    for a in range(ROWS):
        for b in range(a + 1, ROWS):
            assert not np.array_equal(panels[a], panels[b]), (presets.DEMO_METHODS[a][0], presets.DEMO_METHODS[b][0])
    gap_x = seeds * tile
    assert (panels[0][:, gap_x:gap_x + figures.GROUP_GAP] == 255).all()  # white gap after the first class
    labels = [grid[top + r * row_height:top + r * row_height + label_height] for r in range(ROWS)]
    assert all((label < 128).any() for label in labels)  # every row carries its caption
    assert (grid[:label_height] < 128).any() and (grid[label_height:top] < 160).any()  # column headers
    # The printed row list: one row per line, captions without commas between them.
    rows = [line for line in result.output.splitlines() if line.lstrip().startswith('row ')]
    assert len(rows) == ROWS and rows[1].strip() == f'row 2: CFG (w = {presets.DEMO_WEIGHT:g}, all steps)'


def test_no_model_arguments_means_the_demo(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(generate_images, 'generate_demo', lambda outdir, device=None: calls.append(outdir))
    result = invoke(generate_images.main, [f'--outdir={tmp_path}'])
    assert result.exit_code == 0, result.output
    assert calls == [str(tmp_path)]


def test_demo_runs_through_generate_zip_and_calculate_metrics(tmp_path):
    files = presets.DEMO_FILES
    result = run_script('generate_zip.py', ['--cond_pkl', files.cond, '--uncond_pkl', files.uncond, '--zip_dir', tmp_path,
                                            '--num_images', 40, '--batch_size', 20, '--guidance_scale', 2,
                                            '--guidance_interval', '[15, 21]'])
    assert result.returncode == 0, result.stderr
    zip_path = tmp_path / 'digits-cond-s0-nimg40-g2.00-gi.zip'
    with zipfile.ZipFile(zip_path) as zf:
        assert len(zf.namelist()) == 40
        assert np.asarray(PIL.Image.open(zf.open('000000.png'))).shape == (16, 16)
    result = run_script('calculate_metrics.py', ['--gen_zip', zip_path, '--ref_path', files.ref, '--metric', 'fd_digits',
                                                 '--results_dir', tmp_path / 'results'])
    assert result.returncode == 0, result.stderr
    line = json.loads((tmp_path / 'results' / 'fd_digits.jsonl').read_text().splitlines()[0])
    assert line['gen_zip'] == 'digits-cond-s0-nimg40-g2.00-gi' and line['num_gen_images'] == 40
    assert 0 < line['fd_digits'] < 1e4
    assert f"= {line['fd_digits']:.2f}" in result.stdout
    # The EDM2 form without --metrics computes what the demo reference has, with no notes about
    # the defaults (fid, fd_dinov2) that such a reference cannot have.
    result = run_script('calculate_metrics.py', ['calc', '--images', zip_path, '--ref', files.ref, '--num', 40])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"fd_digits = {line['fd_digits']:g}"], result.stdout
