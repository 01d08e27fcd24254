"""Error lines that name the real problem, before any work (issue 28): guidance weights beyond
float32, mistyped subcommands, click's option errors, directories given as networks, references
whose entries are of another kind, PIL's decompression-bomb warning, and the --num advice."""

import os
import pickle
import warnings

import numpy as np
import PIL.Image
import pytest

import calculate_metrics
import generate_images
import generate_zip
import helpers_metrics as hm
from cli_helpers import assert_one_line_error, invoke, run_script
from edmguide.util.errors import UserError
from edmguide.sampler.guidance import GuidanceSchedule, check_weight
from edmguide.sampler.schedule import SamplerOptions

#----------------------------------------------------------------------------
# Guidance weights.

BAD_WEIGHTS = ['1e39', '1e308', '-1e39', 'inf', 'nan']


@pytest.mark.parametrize('weight', BAD_WEIGHTS)
def test_check_weight_refuses_what_float32_cannot_hold(weight):
    with pytest.raises(UserError, match='float32 range'):
        check_weight(float(weight))
    with pytest.raises(UserError):  # every schedule (the sweep's included) is built through this check
        GuidanceSchedule.constant(float(weight))


def test_check_weight_accepts_float32_max_and_ordinary_weights():
    f32_max = float(np.finfo(np.float32).max)  # the largest finite float32, from numpy
    assert check_weight(f32_max) == f32_max and check_weight(-2.5) == -2.5 and check_weight(1) == 1.0


@pytest.mark.parametrize('weight', ['1e39', '1e308'])
def test_huge_guidance_is_one_line_before_any_work_in_every_script(tmp_path, weight):
    missing = str(tmp_path / 'no-such-net.pkl')  # the weight is refused before the network is opened
    result = invoke(generate_images.main, ['--net', missing, '--gnet', missing, '--guidance', weight,
                                           '--outdir', tmp_path / 'png'])
    assert_one_line_error(result, f'--guidance={float(weight)!r}', 'float32')
    result = invoke(calculate_metrics.edm2_cli, ['gen', '--net', missing, '--gnet', missing, '--guidance', weight,
                                                 '--ref', str(tmp_path / 'no-ref.pkl')])
    assert_one_line_error(result, '--guidance=', 'float32')
    result = invoke(generate_zip.main, ['--cond_pkl', missing, '--uncond_pkl', missing, '--guidance_scale', weight,
                                        '--zip_dir', tmp_path / 'zips', '--numerics', 'edm2'])
    assert_one_line_error(result, '--guidance_scale=', 'float32')
    assert sorted(os.listdir(tmp_path)) == []  # no --outdir, no zip folder, no .zip.parts/


def test_huge_guidance_through_the_library_is_refused_before_loading(tmp_path):
    with pytest.raises(UserError, match='float32'):
        generate_zip.generate_zip(str(tmp_path / 'none.pkl'), str(tmp_path / 'none.pkl'), zip_dir=str(tmp_path / 'z'),
                                  guidance_scale=1e39, sampler=SamplerOptions(mode='edm2'))
    with pytest.raises(UserError, match='float32'):
        generate_images.generate_seed_images(str(tmp_path / 'none.pkl'), str(tmp_path / 'o'), gnet='g.pkl',
                                             guidance=1e308)
    assert os.listdir(tmp_path) == []

#----------------------------------------------------------------------------
# Command lines.


def test_mistyped_subcommand_is_named_with_the_valid_ones():
    result = run_script('calculate_metrics.py', ['clac', '--images=x.zip', '--ref=r.pkl'], timeout=60)
    assert result.returncode != 0 and result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith('error: no such subcommand "clac"')
    for name in ('calc', 'gen', 'ref', 'sweep'):
        assert name in result.stderr


@pytest.mark.parametrize('script,args', [
    ('generate_images.py', ['--no_such_option']),
    ('generate_zip.py', ['--cond_pkl=x.pkl', '--num_images=zero']),
    ('calculate_metrics.py', ['calc', '--images=x', '--ref=y', '--num=1']),
    ('calculate_metrics.py', ['--gen_zip=x.zip']),  # a required option missing
    ('scripts/train_demo.py', ['--what=nothing']),
    ('scripts/toy_figures.py', ['--no_such_option']),
    ('scripts/demo_sweep.py', ['--no_such_option']),
    ('scripts/demo_precision_recall.py', ['--no_such_option']),
])
def test_option_errors_are_exactly_one_error_line(script, args):
    result = run_script(script, args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
    assert 'Usage:' not in result.stderr and "Try '" not in result.stderr


def test_num_images_is_an_alias_of_num_in_calc_and_gen(cache, tmp_path, tiny_pickles):
    folder = hm.write_image_dir(tmp_path / 'imgs', hm.random_images(5, seed=4))
    ref = tmp_path / 'ref.npz'
    assert invoke(calculate_metrics.edm2_cli, ['ref', '--data', folder, '--dest', ref, '--metrics', 'fid',
                                               '--workers', '0']).exit_code == 0
    calc = ['calc', '--images', folder, '--ref', ref, '--workers', '0']
    by_num = invoke(calculate_metrics.edm2_cli, calc + ['--num', '4'])
    by_alias = invoke(calculate_metrics.edm2_cli, calc + ['--num_images', '4'])
    assert by_num.exit_code == 0 and by_num.stdout == by_alias.stdout, by_alias.output
    sweep_help = invoke(calculate_metrics.edm2_cli, ['sweep', '--help'])  # the sweep shares gen's options
    assert "--num, --num_images" in sweep_help.output
    gen = ['gen', '--net', tiny_pickles['uncond'], '--ref', ref, '--steps', '2']
    assert invoke(calculate_metrics.edm2_cli, gen + ['--num', '2']).stdout == \
        invoke(calculate_metrics.edm2_cli, gen + ['--num_images', '2']).stdout

#----------------------------------------------------------------------------
# Messages that name the real problem.


def test_a_directory_given_as_network_is_named_as_a_directory(tmp_path):
    result = invoke(generate_images.main, ['--net', tmp_path, '--outdir', tmp_path / 'out', '--seeds', '0'])
    assert_one_line_error(result, 'is a directory')
    assert 'no such file' not in result.stderr


def test_missing_metric_lists_what_each_reference_entry_holds(cache, tmp_path):
    folder = hm.write_image_dir(tmp_path / 'imgs', hm.random_images(6, seed=4))
    feats = np.random.default_rng(0).standard_normal([8, 12])
    ref = tmp_path / 'ref.pkl'  # mu/sigma stored under the precision/recall metric's name
    ref.write_bytes(pickle.dumps({'num_images': 8, 'pr': {'mu': feats.mean(0), 'sigma': np.cov(feats, rowvar=False)}}))
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', folder, '--ref', ref, '--metrics', 'pr',
                                                 '--num', '6', '--workers', '0'])
    assert_one_line_error(result, 'no reference features for metric "pr"', '(it has: pr (mu/sigma))')


def test_edm_v1_npz_with_mu_but_no_sigma_says_so(cache, tmp_path):
    folder = hm.write_image_dir(tmp_path / 'imgs', hm.random_images(6, seed=4))
    ref = tmp_path / 'v1.npz'
    np.savez(ref, mu=np.zeros(15))
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', folder, '--ref', ref, '--num', '6',
                                                 '--workers', '0'])
    assert_one_line_error(result, 'v1.npz', '"mu" but no "sigma"')
    assert 'none' not in result.stderr


def test_calc_on_one_image_does_not_suggest_an_invalid_num(cache, tmp_path):
    folder = hm.write_image_dir(tmp_path / 'one', hm.random_images(1))
    ref = tmp_path / 'ref.pkl'
    ref.write_bytes(pickle.dumps({'fid': {'mu': np.zeros(15), 'sigma': np.eye(15)}}))
    result = invoke(calculate_metrics.edm2_cli, ['calc', '--images', folder, '--ref', ref, '--num', '20',
                                                 '--workers', '0'])
    assert_one_line_error(result, 'Found 1 images, but need at least 2')
    assert '--num=1' not in result.stderr


def test_decompression_bomb_warning_is_not_printed(tmp_path, monkeypatch):
    from edmguide.metrics.image_files import ImageFiles
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 200)  # 16x16 = 256 pixels: PIL warns (below 2 x 200)
    folder = hm.write_image_dir(tmp_path / 'big', hm.random_images(2))
    with warnings.catch_warnings(record=True) as seen:  # the premise: PIL does warn for these images
        warnings.simplefilter('always')
        PIL.Image.open(os.path.join(folder, '000000.png')).close()
    assert any(issubclass(w.category, PIL.Image.DecompressionBombWarning) for w in seen)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        dataset = ImageFiles(folder)
        image, error = dataset[1]
    assert error == '' and image.shape == (3, 16, 16)
    assert not [w for w in seen if issubclass(w.category, PIL.Image.DecompressionBombWarning)]
