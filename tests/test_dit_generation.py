"""DiT through the scripts (edmguide.models.dit_generation, generate_images.py --dit, generate_zip.py --dit),
with the network loader replaced by tiny stand-ins (tests/helpers_dit.py)."""

import io
import os
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import generate_images
import generate_zip
from cli_helpers import assert_one_line_error, invoke
from edmguide.models import dit
from helpers_dit import TinyDiT, TinyVAE, install_fake_loaders


@pytest.fixture
def loaders(monkeypatch):
    calls = []
    install_fake_loaders(monkeypatch, calls)
    return calls


def _files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names)


def _pngs(folder):
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))}


def test_seed_pngs_default_to_the_paper_fid_interval_and_do_not_depend_on_batch(loaders, tmp_path):
    for batch in (1, 3):
        result = invoke(generate_images.main, ['--dit', 'DiT-XL-2-512x512.pt', '--seeds', '0-2', '--class', '5',
                                               '--outdir', tmp_path / f'b{batch}', '--batch', batch, '--device', 'cpu'])
        assert result.exit_code == 0, result.output
    assert 'steps [124, 198] (75 of 250' in result.output
    assert '250 conditional + 75 unconditional = 325' in result.output
    assert ('load_dit_network', 'DiT-XL-2-512x512.pt', 'dit') in loaders
    one, three = _pngs(tmp_path / 'b1'), _pngs(tmp_path / 'b3')
    assert list(one) == ['000000.png', '000001.png', '000002.png'] and one == three
    images = [np.asarray(PIL.Image.open(tmp_path / 'b1' / name)) for name in one]
    assert images[0].shape == (32, 32, 3) and not np.array_equal(images[0], images[1])


def test_options_reach_the_loader_and_sampler(loaders, tmp_path):
    result = invoke(generate_images.main, ['--dit', 'facebook/DiT-XL-2-512', '--seeds', '0', '--outdir', tmp_path,
                                           '--dit_embedding', 'diffusers', '--dit_mapping', 'model', '--guidance', '4',
                                           '--guidance_sigma', '(0.45, 1.23]', '--dit_vae', 'stabilityai/sd-vae-ft-mse'])
    assert result.exit_code == 0, result.output
    assert ('load_dit_network', 'facebook/DiT-XL-2-512', 'diffusers') in loaders
    assert ('load_dit_vae', 'stabilityai/sd-vae-ft-mse') in loaders
    assert "42 of 250" in result.output and '250 conditional + 42 unconditional' in result.output


def test_cfg_at_every_step_and_step_indices(loaders, tmp_path):
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path / 'a',
                                           '--guidance', '1.5', '--guidance_interval', 'None'])
    assert result.exit_code == 0, result.output
    assert 'all 250 steps (CFG)' in result.output and '250 unconditional' in result.output
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path / 'b',
                                           '--guidance_interval', '[124, 198]'])
    assert result.exit_code == 0, result.output
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path / 'c'])
    assert _pngs(tmp_path / 'b') == _pngs(tmp_path / 'c')  # [124, 198] is (0.34, 1.02] under the paper mapping


def test_sample_py_numerics_write_the_reference_loop_images(loaders, tmp_path):
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--numerics', 'dit', '--seed', '3', '--class', '1,999',
                                           '--guidance', '4', '--guidance_interval', 'None', '--outdir', tmp_path])
    assert result.exit_code == 0, result.output
    names = sorted(os.listdir(tmp_path))
    assert names == ['sample-s3-000-class001.png', 'sample-s3-001-class999.png']
    latents = dit.sample_dit_reference(TinyDiT(per_row=True), [1, 999], 3, 4.0)
    expected = TinyVAE().decode(latents).numpy()
    for k, name in enumerate(names):
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / name)), expected[k])


def test_comparison_grid_has_one_row_per_table_1_setting(loaders, tmp_path):
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--figs', 'comparison', '--class', '3,4',
                                           '--seeds', '0-1', '--outdir', tmp_path])
    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path) == ['dit-comparison.png']
    assert 'row 1: CFG (w = 1.5, all 250 steps): 250 guided steps' in result.output
    assert 'row 2: interval (0.34, 1.02] (w = 2.5): 75 guided steps' in result.output
    assert 'row 3: interval (0.45, 1.23] (w = 4.0): 74 guided steps' in result.output


@pytest.mark.parametrize('extra, needle', [
    (['--class', '1000'], 'class 1000 is outside 0..999'),
    (['--guidance_sigma', '(200, 300]', '--dit_mapping', 'model'], 'guides none of DiT'),
    (['--guidance_interval', '[0, 250]'], '0 <= start <= stop <= 249'),
    (['--steps', '8'], '--steps would be ignored'),
    (['--net', 'x.pkl'], '--net would be ignored'),
    (['--numerics', 'gi'], '--numerics=gi'),
    (['--seed', '4'], '--seed would be ignored'),
    (['--numerics', 'dit', '--class', '3', '--seeds', '1-2'], '--seeds would be ignored'),
])
def test_bad_dit_input_is_one_line_and_writes_nothing(loaders, tmp_path, extra, needle):
    out = tmp_path / 'out'
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', out] + extra)
    assert_one_line_error(result, needle)
    assert not out.exists() or os.listdir(out) == []
    assert not [c for c in loaders if c[0] == 'load_dit_network']  # refused before loading


def test_dit_options_refused_in_edm2_mode_and_existing_images_kept(loaders, tmp_path):
    result = invoke(generate_images.main, ['--net', 'x.pkl', '--outdir', tmp_path, '--dit_mapping', 'model'])
    assert_one_line_error(result, '--dit_mapping only apply with --dit')
    result = invoke(generate_images.main, ['--net', 'x.pkl', '--outdir', tmp_path, '--class', '1,2'])
    assert_one_line_error(result, 'class lists only apply with --dit')
    assert invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path]).exit_code == 0
    before = _pngs(tmp_path)
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path, '--guidance', '4'])
    assert_one_line_error(result, 'give --overwrite')
    assert _pngs(tmp_path) == before
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path, '--guidance', '4',
                                           '--overwrite'])
    assert result.exit_code == 0 and _pngs(tmp_path) != before


def test_zip_entries_equal_the_seed_pngs_and_rerun_is_complete(loaders, tmp_path):
    args = ['--dit', 'DiT-XL-2-512x512.pt', '--zip_dir', tmp_path, '--num_images', 4, '--batch_size', 3, '--seed', 10]
    result = invoke(generate_zip.main, args)
    assert result.exit_code == 0, result.output
    zip_path = tmp_path / 'DiT-XL-2-512x512-s10-nimg4-g2.50-gi.zip'
    with zipfile.ZipFile(zip_path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    assert sorted(entries) == [f'{k:06d}.png' for k in range(4)]
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '10-13', '--outdir', tmp_path / 'png'])
    assert result.exit_code == 0, result.output
    for k in range(4):  # entry k is seed 10 + k, with the class drawn from that seed in both
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'png' / f'{10 + k:06d}.png')),
                              np.asarray(PIL.Image.open(io.BytesIO(entries[f'{k:06d}.png']))))
    again = invoke(generate_zip.main, args)
    assert again.exit_code == 0 and 'already complete' in again.output
    other = invoke(generate_zip.main, args + ['--dit_guide_channels', 'all'])  # same name, other settings
    assert_one_line_error(other, 'other settings')
    assert set(os.listdir(tmp_path)) == {zip_path.name, 'png'}


def test_zip_refuses_edm2_options_and_names_cfg(loaders, tmp_path):
    result = invoke(generate_zip.main, ['--dit', 'm.pt', '--zip_dir', tmp_path, '--uncond_pkl', 'u.pkl'])
    assert_one_line_error(result, '--uncond_pkl would be ignored')
    result = invoke(generate_zip.main, ['--net', 'x.pkl', '--zip_dir', tmp_path, '--dit_mapping', 'model'])
    assert_one_line_error(result, 'only apply with --dit')
    result = invoke(generate_zip.main, ['--dit', 'm.pt', '--zip_dir', tmp_path, '--num_images', 1,
                                        '--guidance_scale', 1.5, '--guidance_interval', 'None'])
    assert result.exit_code == 0, result.output
    assert os.path.isfile(tmp_path / 'm-s0-nimg1-g1.50-cfg.zip')


def test_missing_loader_module_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'edmguide.models.dit_net', None)  # import fails as for a missing module
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '0', '--outdir', tmp_path])
    assert_one_line_error(result, 'edmguide.models.dit_net')
    assert os.listdir(tmp_path) == []


def test_evaluations_per_image_are_counted_per_batch(loaders):
    from edmguide.jobs import generation
    net = TinyDiT(per_row=True)
    schedule = dit.DiTOptions().schedule()
    batches = list(generation.generate_batches(dit.GenerationNet(net), dit.GenerationDecoder(TinyVAE()), [0, 1, 2],
                                               schedule, guidance=schedule.guidance(2.5, dit.DEFAULT_INTERVAL),
                                               max_batch_size=2, rank=0, world_size=1))
    assert [(b.counter.net, b.counter.gnet) for b in batches] == [(250, 75), (250, 75)]
    assert all(b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, 32, 32) for b in batches)


def test_metrics_gen_equals_calc_on_the_written_pngs(loaders, cache, tmp_path):
    import calculate_metrics
    import helpers_metrics as hm
    dest = tmp_path / 'ref.pkl'
    assert invoke(calculate_metrics.edm2_cli, ['ref', '--data', hm.write_image_dir(tmp_path / 'other', hm.random_images(8)),
                                               '--dest', str(dest), '--workers', '0']).exit_code == 0
    result = invoke(generate_images.main, ['--dit', 'm.pt', '--seeds', '3-6', '--outdir', tmp_path / 'gen'])
    assert result.exit_code == 0, result.output
    calc = invoke(calculate_metrics.edm2_cli, ['calc', '--images', tmp_path / 'gen', '--ref', str(dest), '--num', '4',
                                               '--workers', '0'])
    assert calc.exit_code == 0, calc.output
    before = _files_under(tmp_path)
    gen = invoke(calculate_metrics.edm2_cli, ['gen', '--dit', 'm.pt', '--ref', str(dest), '--num', '4', '--seed', '3',
                                              '--batch', '3'])
    assert gen.exit_code == 0, gen.output
    assert gen.stdout == calc.stdout and gen.stdout.startswith('fid = ')
    assert _files_under(tmp_path) == before  # no images written
    refused = invoke(calculate_metrics.edm2_cli, ['gen', '--dit', 'm.pt', '--ref', str(dest), '--steps', '8'])
    assert_one_line_error(refused, '--steps would be ignored')
    refused = invoke(calculate_metrics.edm2_cli, ['gen', '--net', 'x.pkl', '--ref', str(dest), '--dit_mapping', 'model'])
    assert_one_line_error(refused, '--dit_mapping only apply with --dit')


def test_embedding_choices_are_dit_nets():
    from edmguide.jobs import cli
    from edmguide.models import dit_generation, dit_net
    assert cli.DIT_EMBEDDINGS == dit_net.EMBEDDINGS == dit_generation.EMBEDDINGS


def test_real_dit_net_through_generate_images(tmp_path):
    """The real loader (`dit_net.load_dit_network`, `load_dit_vae`) on a tiny diffusers DiT folder: the
    command's PNGs are the library's `sample_dit` of each seed, decoded by the folder's VAE. One seed per
    batch: a real transformer's float32 rounding depends on the batch (1e-6 per forward here), which 250
    stochastic steps and the random VAE amplify to visible pixel differences."""
    from test_dit_net import _tiny_vae, make_dit_params, tiny_transformer
    from edmguide.models import dit_net
    from edmguide.sampler.seeds import StackedRandomGenerator
    import json
    folder = tmp_path / 'tiny-dit'
    tiny_transformer(make_dit_params(0)).save_pretrained(folder / 'transformer')
    _tiny_vae().save_pretrained(folder / 'vae')
    (folder / 'model_index.json').write_text(json.dumps(dict(_class_name='DiTPipeline')))
    result = invoke(generate_images.main, ['--dit', folder, '--dit_vae', folder, '--seeds', '0-1', '--class', '3,7',
                                           '--batch', '1', '--outdir', tmp_path / 'out'])
    assert result.exit_code == 0, result.output
    assert 'evaluations per image: 250 conditional + 75 unconditional = 325' in result.output
    net, vae = dit_net.load_dit_network(str(folder)), dit_net.load_dit_vae(str(folder))
    schedule = dit.DiTOptions().schedule()
    for seed, cls in ((0, 3), (1, 7)):
        rng = StackedRandomGenerator('cpu', [seed])
        noise = rng.randn([1, 4, net.input_size, net.input_size])
        rng.randint(1000, size=[1])  # mode 'edm2': the label is drawn (then overwritten) before the steps
        with torch.no_grad():
            latents = dit.sample_dit(net, noise, torch.tensor([cls]), schedule.guidance(2.5, dit.DEFAULT_INTERVAL),
                                     noise_source=rng)
            expected = np.asarray(vae.decode(latents))[0]
        written = np.asarray(PIL.Image.open(tmp_path / 'out' / f'{seed:06d}.png'))
        assert np.array_equal(written, expected)
