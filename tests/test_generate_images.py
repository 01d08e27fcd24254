"""generate_images.py: seed mode (EDM2 command lines), figure mode (GI command lines), errors."""

import os

import numpy as np
import PIL.Image
import pytest

import generate_images
from edmguide.jobs import figures
from cli_helpers import assert_one_line_error, invoke, run_script


def _png_bytes(folder):
    """The PNGs of a folder (not its settings.json record, which names the options that made them)."""
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))
            if name.endswith('.png')}


def test_seed_images_identical_bytes_for_batch_sizes_1_and_5(tiny_pickles, tmp_path):
    common = ['--net', tiny_pickles['cond'], '--gnet', tiny_pickles['uncond'], '--guidance', '2.5',
              '--guidance_interval', '[10, 20]', '--seeds', '3-7,11', '--steps', '24']
    for batch in (1, 5):
        result = invoke(generate_images.main, common + ['--outdir', tmp_path / f'b{batch}', '--batch', batch])
        assert result.exit_code == 0, result.output
    one, five = _png_bytes(tmp_path / 'b1'), _png_bytes(tmp_path / 'b5')
    assert list(one) == ['000003.png', '000004.png', '000005.png', '000006.png', '000007.png', '000011.png']
    assert one == five
    images = [np.asarray(PIL.Image.open(tmp_path / 'b1' / name)) for name in one]
    assert images[0].shape == (16, 16, 3)
    assert not np.array_equal(images[0], images[1])  # different seeds, different images


def test_subdirs_group_seeds_per_thousand(tiny_pickles, tmp_path):
    result = invoke(generate_images.main, ['--net', tiny_pickles['uncond'], '--outdir', tmp_path, '--subdirs',
                                           '--seeds', '999,1000', '--steps', '4'])
    assert result.exit_code == 0, result.output
    assert (tmp_path / '000000' / '000999.png').is_file()
    assert (tmp_path / '001000' / '001000.png').is_file()


def test_sigma_range_and_step_indices_give_identical_pngs(tiny_pickles, tmp_path):
    from edmguide.sampler.sampling import noise_levels
    t = noise_levels(32)  # EDM2's float32 levels, which the sampler runs on
    sigma = f'({float(t[23])!r}, {float(t[17])!r}]'
    common = ['--net', tiny_pickles['cond'], '--gnet', tiny_pickles['uncond'], '--guidance', '3', '--seeds', '0-1', '--class', '7']
    assert invoke(generate_images.main, common + ['--outdir', tmp_path / 'idx', '--guidance_interval', '[17, 22]']).exit_code == 0
    assert invoke(generate_images.main, common + ['--outdir', tmp_path / 'sig', '--guidance_sigma', sigma]).exit_code == 0
    assert invoke(generate_images.main, common + ['--outdir', tmp_path / 'cfg']).exit_code == 0
    assert _png_bytes(tmp_path / 'idx') == _png_bytes(tmp_path / 'sig')
    assert _png_bytes(tmp_path / 'idx') != _png_bytes(tmp_path / 'cfg')


def test_paper_rounded_sigma_range_gets_a_note_naming_the_intended_steps(tiny_pickles, tmp_path):
    common = ['--net', tiny_pickles['cond'], '--gnet', tiny_pickles['uncond'], '--guidance', '2', '--seeds', '0',
              '--steps', '32', '--device', 'cpu', '--verbose=True']
    result = invoke(generate_images.main, common + ['--outdir', tmp_path / 'a', '--guidance_sigma', '(0.28, 2.90]'])
    assert result.exit_code == 0, result.output
    assert ('note: the noise range (0.28, 2.9] guides steps [16, 22] of this 32-step schedule; if it is a range '
            'rounded as the paper prints them, the steps meant are --guidance_interval="[15, 21]"') in result.stdout
    assert 'gnet 14' in result.stdout  # taken literally: 7 steps, 2 guide evaluations each
    result = invoke(generate_images.main, common + ['--outdir', tmp_path / 'b', '--guidance_sigma', '(0.19, 1.61]'])
    assert result.exit_code == 0 and 'note:' not in result.stdout, result.output


@pytest.mark.parametrize('name', list(figures.FIGURES))
def test_every_figure_renders_with_expected_names_and_grid_sizes(tiny_pickles, tmp_path, name):
    fig = figures.FIGURES[name]
    result = invoke(generate_images.main, ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond'],
                                           '--figs', name, '--results_dir', tmp_path])
    assert result.exit_code == 0, result.output
    files = sorted(os.listdir(tmp_path / name))
    rows, cols = fig.grid
    tag = lambda interval: 'cfg' if interval is None else 'gi'  # upstream's names
    if fig.mode == 'G_const':
        expected = [f'p{c:03d}-s{"_".join(f"{s:03d}" for s in seeds)}-g{g:.1f}-{tag(i)}.png'
                    for c, seeds in zip(fig.classes, fig.seeds) for g, i in fig.configs]
    else:
        expected = [f'p{c:03d}-s{seeds[0]:03d}-{tag(fig.configs[-1][1])}.png'
                    for c, seeds in zip(fig.classes, fig.seeds)]
    assert files == sorted(expected)
    for file in files:
        assert PIL.Image.open(tmp_path / name / file).size == (cols * 16, rows * 16)


def test_sweep_figure_has_red_boxes_and_zoomed_insets(tiny_pickles, tmp_path):
    invoke(generate_images.main, ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond'],
                                  '--figs', 'fig8b', '--results_dir', tmp_path])
    grid = np.asarray(PIL.Image.open(tmp_path / 'fig8b' / 'p483-s017-gi.png'))
    x, y, s = (round(v * 16 / 512) for v in (150, 175, 180))
    top = grid[:16, :16]
    assert (top[y, x:x + s] == [255, 0, 0]).all()           # box on the full image
    inset = grid[16:32, :16]
    assert (inset[0, :] == [255, 0, 0]).all() and (inset[:, -1] == [255, 0, 0]).all()  # frame of the inset
    assert not np.array_equal(grid[:16, :16], grid[:16, 32:48])  # G = 1 vs G = 5 differ


@pytest.mark.parametrize('args, fragment', [
    (['--figs', 'fig5', '--numerics', 'edm2', '--steps', '8'], "figure mode renders the paper's figures with their "
                                                               "own settings; --numerics, --steps would be ignored"),
    (['--figs', 'fig5', '--guidance_sigma', '(0.1, 1]', '--net', 'x.pkl'], '--net, --guidance_sigma would be ignored'),
    (['--preset', 'demo', '--net', 'x.pkl', '--seeds', '0-3'], '--preset=demo renders the fixed comparison grid '
                                                               'of the embedded demo; --net, --seeds would be ignored'),
])
def test_options_a_mode_would_ignore_are_one_line_errors(tiny_pickles, tmp_path, args, fragment):
    if '--figs' in args:
        args = ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond']] + args
    result = run_script('generate_images.py', args + ['--results_dir', tmp_path] * ('--figs' in args) +
                        ['--outdir', tmp_path] * ('--preset' in args))
    assert_one_line_error(result, fragment)
    assert not list(tmp_path.rglob('*.png'))


def test_seed_mode_options_without_a_network_ask_for_one_instead_of_running_the_demo(tmp_path):
    result = run_script('generate_images.py', ['--guidance', '2', '--outdir', tmp_path])
    assert result.returncode == 2 and 'Please specify either --preset or --net' in result.stderr
    assert not list(tmp_path.rglob('*.png'))


def test_unknown_figure_and_missing_file_are_one_line_errors(tiny_pickles, tmp_path):
    result = run_script('generate_images.py', ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond'],
                                               '--figs', 'fig99', '--results_dir', tmp_path])
    assert_one_line_error(result, 'fig99')
    result = run_script('generate_images.py', ['--net', tmp_path / 'nope.pkl', '--outdir', tmp_path])
    assert_one_line_error(result, 'nope.pkl')
    result = run_script('generate_images.py', ['--net', tiny_pickles['cond'], '--gnet', tiny_pickles['uncond'],
                                               '--guidance', '2', '--guidance_interval', '[22, 17]', '--outdir', tmp_path])
    assert_one_line_error(result, '[22, 17]')
    assert not any(tmp_path.glob('*.png'))


def test_preset_errors_match_upstream_messages(tmp_path):
    result = invoke(generate_images.main, ['--preset', 'nonsense', '--outdir', tmp_path])
    assert result.exit_code != 0 and 'Invalid configuration preset "nonsense"' in result.output
    result = invoke(generate_images.main, ['--net', 'x.pkl', '--guidance', '2', '--outdir', tmp_path])
    assert result.exit_code != 0 and 'Please specify --gnet when using guidance' in result.output


def test_unknown_device_is_a_one_line_error(tmp_path):
    result = run_script('generate_images.py', ['--preset=demo', '--outdir', tmp_path, '--device', 'bogus'])
    assert_one_line_error(result, '--device', 'bogus')
    assert not list(tmp_path.iterdir())


def test_library_call_takes_the_sampler_dtype_as_upstream(tiny_pickles, tmp_path):
    """Upstream's generate_images forwards the sampler's dtype; here it is a field of the one options object."""
    import torch
    from edmguide.sampler.guidance import Interval
    from edmguide.sampler.schedule import SamplerOptions
    paths = generate_images.generate_seed_images(tiny_pickles['cond'], str(tmp_path), gnet=tiny_pickles['uncond'],
                                                 guidance=2.0, interval=Interval.of_steps(1, 2), seeds=[0],
                                                 sampler=SamplerOptions(num_steps=4, dtype=torch.float64), device='cpu')
    assert paths == [str(tmp_path / '000000.png')] and os.path.isfile(paths[0])


def test_output_folders_are_checked_before_any_network_is_loaded(tmp_path, monkeypatch):
    from edmguide.nets import loading
    monkeypatch.setattr(loading, 'load_network', lambda *a, **k: pytest.fail('a network was loaded'))
    (tmp_path / 'a-file').write_text('')
    bad = tmp_path / 'a-file' / 'out'
    for args, option in [(['--net', 'x.pkl', '--outdir', bad, '--seeds', '0-3'], '--outdir'),
                         (['--cond_pkl', 'x.pkl', '--uncond_pkl', 'y.pkl', '--results_dir', bad], '--results_dir'),
                         (['--preset', 'demo', '--outdir', bad], '--outdir')]:
        result = invoke(generate_images.main, args)
        assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
        assert f'error: {option} {bad}: cannot create it, {tmp_path / "a-file"} is a file' in result.output
    result = invoke(generate_images.main, ['--net', 'x.pkl', '--outdir', tmp_path / 'a-file'])
    assert 'a-file: exists and is not a directory' in result.output


@pytest.mark.parametrize('device', ['cuda', 'cuda:7'])
def test_a_cuda_device_this_machine_lacks_is_one_line(tmp_path, device):
    import torch
    from edmguide.util.errors import UserError
    from edmguide.jobs.generation import pick_device
    if torch.cuda.is_available() and (device == 'cuda' or torch.cuda.device_count() > 7):
        pytest.skip('this machine has that device')
    with pytest.raises(UserError, match=f"--device '{device}': ") as info:
        pick_device(device)
    assert '\n' not in str(info.value)
    result = invoke(generate_images.main, ['--preset=demo', '--outdir', tmp_path / 'out', '--device', device])
    assert result.exit_code == 1 and f"error: --device '{device}'" in result.output and 'Traceback' not in result.output
    assert not (tmp_path / 'out').exists()


def test_figures_with_classes_the_network_lacks_fail_before_rendering(tmp_path):
    from edmguide.nets import presets
    result = invoke(generate_images.main, ['--cond_pkl', presets.DEMO_FILES.cond, '--uncond_pkl', presets.DEMO_FILES.uncond,
                                           '--figs', 'fig6,fig5', '--results_dir', tmp_path])
    assert_one_line_error(result, '10 classes', 'fig6 (class 933)', 'fig5 (class 959)', 'ImageNet-512', '--preset=demo')
    assert 'Rendering' not in result.output and not any(tmp_path.iterdir())
