"""generate_zip.py: upstream GI command lines, zip naming/entries, resumption after kill -9, torchrun."""

import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import PIL.Image
import pytest

from cli_helpers import ROOT, assert_one_line_error, run_script, script_env


def _zip_entries(path):
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _zip_args(pickles, zip_dir, n, steps=32, interval='[17, 22]'):
    return ['--cond_pkl', pickles['cond'], '--uncond_pkl', pickles['uncond'], '--zip_dir', zip_dir,
            '--num_images', n, '--batch_size', 3, '--guidance_scale', 2.0, '--guidance_interval', interval,
            '--steps', steps]


def test_zip_name_entries_and_resume_after_kill_9(tiny_pickles, tmp_path):
    n = 24
    ref = run_script('generate_zip.py', _zip_args(tiny_pickles, tmp_path / 'ref', n))
    assert ref.returncode == 0, ref.stderr
    ref_zip = tmp_path / 'ref' / 'tiny-cond-s0-nimg24-g2.00-gi.zip'
    entries = _zip_entries(ref_zip)
    assert [name for name, _ in entries] == [f'{k:06d}.png' for k in range(n)]
    assert np.asarray(PIL.Image.open(zipfile.ZipFile(ref_zip).open('000000.png'))).shape == (16, 16, 3)

    # Start the same run, kill -9 it once some images exist, rerun, compare.
    out = tmp_path / 'killed'
    cmd = [sys.executable, os.path.join(ROOT, 'generate_zip.py')] + [str(a) for a in _zip_args(tiny_pickles, out, n)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / 'tiny-cond-s0-nimg24-g2.00-gi.zip.parts'
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob('0*.png'))) < 6:
        time.sleep(0.05)  # (a run that died early fails the count below at once)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.read_bytes() for p in parts.glob('0*.png')}
    assert 6 <= len(done_before) < n
    assert not (out / 'tiny-cond-s0-nimg24-g2.00-gi.zip').exists()

    rerun = run_script('generate_zip.py', _zip_args(tiny_pickles, out, n))
    assert rerun.returncode == 0, rerun.stderr
    assert f'{len(done_before)} of {n} images already done' in rerun.stdout
    final = out / 'tiny-cond-s0-nimg24-g2.00-gi.zip'
    assert final.read_bytes() == ref_zip.read_bytes()
    assert not parts.exists()
    finished = dict(_zip_entries(final))
    assert all(finished[name] == data for name, data in done_before.items())  # images kept from before the kill


def _spy_args(net, zip_dir, n=7):
    return ['--cond_pkl', net, '--zip_dir', zip_dir, '--num_images', n, '--batch_size', 3,
            '--guidance_scale', 1, '--steps', 4]


def test_images_do_not_depend_on_process_count_even_with_batch_shape_sensitive_arithmetic(tmp_path):
    # 7 seeds, batch 3: EDM2's array_split would give 1 process (3,2,2) and 2 processes (2,2,2,1);
    # the fixed chunks (3,3,1) keep every seed in the same batch.
    from helpers_spy import save_spy_pickle
    net = save_spy_pickle(tmp_path / 'spy.pkl')
    single = run_script('generate_zip.py', _spy_args(net, tmp_path / 'one'))
    assert single.returncode == 0, single.stderr
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'generate_zip.py')] + [str(a) for a in _spy_args(net, tmp_path / 'two')]
    multi = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    name = 'spy-s0-nimg7-g1.00-gi.zip'
    one, two = (tmp_path / 'one' / name).read_bytes(), (tmp_path / 'two' / name).read_bytes()
    assert one == two
    # The spy does show batch shapes: seed 0 in one batch of 7 differs from seed 0 in a batch of 3.
    whole = run_script('generate_zip.py', _spy_args(net, tmp_path / 'whole') + ['--batch_size', 7])
    assert whole.returncode == 0, whole.stderr
    in_seven = dict(_zip_entries(tmp_path / 'whole' / name))
    assert in_seven['000000.png'] != dict(_zip_entries(tmp_path / 'one' / name))['000000.png']


def test_resuming_from_a_partly_written_batch_gives_the_uninterrupted_zip(tmp_path):
    import shutil
    import zipfile as zf_module
    from helpers_spy import save_spy_pickle
    net = save_spy_pickle(tmp_path / 'spy.pkl')
    assert run_script('generate_zip.py', _spy_args(net, tmp_path / 'ref')).returncode == 0
    name = 'spy-s0-nimg7-g1.00-gi.zip'
    # Recreate the state a run cut off mid-batch leaves: the work folder with images 0-3 of 0-6
    # (batch [3, 4, 5] only partly written) and no zip.
    first = run_script('generate_zip.py', _spy_args(net, tmp_path / 'cut'))
    assert first.returncode == 0
    parts = tmp_path / 'cut' / (name + '.parts')
    parts.mkdir()
    with zf_module.ZipFile(tmp_path / 'cut' / name) as zf:
        for k in range(4):
            (parts / f'{k:06d}.png').write_bytes(zf.read(f'{k:06d}.png'))
    shutil.copy(tmp_path / 'ref' / name, tmp_path / 'ref.zip')
    settings = _settings_of(tmp_path / 'cut' / name)
    (parts / 'settings.json').write_text(settings)
    (tmp_path / 'cut' / name).unlink()
    rerun = run_script('generate_zip.py', _spy_args(net, tmp_path / 'cut'))
    assert rerun.returncode == 0, rerun.stderr
    assert 'Resuming: 4 of 7 images already done' in rerun.stdout
    assert (tmp_path / 'cut' / name).read_bytes() == (tmp_path / 'ref.zip').read_bytes()


def _settings_of(zip_path):
    """The settings.json text a run with these settings writes (the zip comment holds the same dict)."""
    import json
    with zipfile.ZipFile(zip_path) as zf:
        return json.dumps(json.loads(zf.comment.decode()), indent=1, sort_keys=True)


def test_cfg_naming_and_changed_settings_refused(tiny_pickles, tmp_path):
    args = ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond'], '--zip_dir', tmp_path,
            '--num_images', 2, '--guidance_scale', 1.2, '--guidance_interval', 'None', '--steps', 4]
    result = run_script('generate_zip.py', args)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'tiny-cond-s0-nimg2-g1.20-cfg.zip').is_file()
    parts = tmp_path / 'tiny-cond-s0-nimg3-g1.20-cfg.zip.parts'
    parts.mkdir()
    (parts / 'settings.json').write_text('{"net": "something else"}')
    (parts / '000000.png').write_bytes(b'an image of that other run')
    result = run_script('generate_zip.py', args[:7] + [3] + args[8:])
    assert_one_line_error(result, 'other settings')
    # Without finished images the folder is taken over: nothing could be mixed up.
    (parts / '000000.png').unlink()
    result = run_script('generate_zip.py', args[:7] + [3] + args[8:])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'tiny-cond-s0-nimg3-g1.20-cfg.zip').is_file() and not parts.exists()


def test_bad_interval_is_a_one_line_error(tiny_pickles, tmp_path):
    result = run_script('generate_zip.py', ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond'],
                                            '--zip_dir', tmp_path, '--num_images', 2, '--guidance_interval', '[17, 40]'])
    assert_one_line_error(result, '40')
    assert not list(tmp_path.glob('*.zip'))


def test_resuming_with_another_batch_size_is_refused(tiny_pickles, tmp_path):
    """Chunks of --batch_size seeds fix the batch shapes (and so the kernels' rounding): a work
    folder from one batch size is not finished with another."""
    args = ['--cond_pkl', tiny_pickles['cond'], '--zip_dir', tmp_path, '--num_images', 3, '--guidance_scale', 1,
            '--steps', 4]
    result = run_script('generate_zip.py', args + ['--batch_size', 2])
    assert result.returncode == 0, result.stderr
    zip_path, = tmp_path.glob('tiny-cond-s0-nimg3-*.zip')
    parts = tmp_path / (zip_path.name + '.parts')
    parts.mkdir()
    (parts / 'settings.json').write_text(_settings_of(zip_path))  # as if that run had stopped early
    (parts / '000000.png').write_bytes(dict(_zip_entries(zip_path))['000000.png'])
    zip_path.unlink()
    result = run_script('generate_zip.py', args + ['--batch_size', 3])
    assert_one_line_error(result, 'batch_size')


def test_library_call_returns_the_zip_path_and_its_work(tiny_pickles, tmp_path):
    import generate_zip as gz
    from edmguide.sampler.guidance import Interval
    from edmguide.sampler.schedule import SamplerOptions
    kwargs = dict(zip_dir=str(tmp_path), num_images=3, batch_size=2, guidance_scale=2.0, interval=Interval.of_steps(1, 2),
                  sampler=SamplerOptions(num_steps=4, mode='gi'), device='cpu', progress=False)
    first = gz.generate_zip(str(tiny_pickles['cond']), str(tiny_pickles['uncond']), **kwargs)
    assert first['path'] == str(tmp_path / 'tiny-cond-s0-nimg3-g2.00-gi.zip') and os.path.isfile(first['path'])
    assert (first['generated'], first['skipped']) == (3, 0)
    assert set(first['timing']) >= {'sampling', 'decoding', 'writing', 'zip'} and first['timing']['sampling'] > 0
    again = gz.generate_zip(str(tiny_pickles['cond']), str(tiny_pickles['uncond']), **kwargs)
    assert again['path'] == first['path'] and (again['generated'], again['skipped']) == (0, 3)


def test_resuming_with_a_noise_range_that_differs_beyond_six_digits_is_refused(tiny_pickles, tmp_path):
    """The settings record the schedule exactly: str() of the two ranges is the same, the images are not."""
    import generate_zip as gz
    from edmguide.util.errors import UserError
    from edmguide.sampler.guidance import Interval
    from edmguide.sampler.schedule import SamplerOptions
    kwargs = dict(zip_dir=str(tmp_path), num_images=2, batch_size=2, guidance_scale=2.0,
                  sampler=SamplerOptions(num_steps=4, mode='gi'), device='cpu', progress=False)
    zip_path = gz.generate_zip(str(tiny_pickles['cond']), str(tiny_pickles['uncond']),
                               interval=Interval.of_sigma(0.28, 2.9), **kwargs)['path']
    parts = tmp_path / (os.path.basename(zip_path) + '.parts')
    parts.mkdir()
    (parts / 'settings.json').write_text(_settings_of(zip_path))  # as if that run had stopped early
    (parts / '000000.png').write_bytes(dict(_zip_entries(zip_path))['000000.png'])
    os.unlink(zip_path)
    with pytest.raises(UserError, match=r'other settings \(guidance\)'):
        gz.generate_zip(str(tiny_pickles['cond']), str(tiny_pickles['uncond']),
                        interval=Interval.of_sigma(0.28, 2.9000001), **kwargs)


def test_upstream_verbose_true_syntax_and_start_message(tiny_pickles, tmp_path):
    """Upstream GI declares --verbose as a bool option; its command lines write --verbose=True."""
    args = ['--cond_pkl', tiny_pickles['cond'], '--num_images', 1, '--guidance_scale', 1, '--steps', 4,
            '--device', 'cpu']
    for k, flag in enumerate((['--verbose=True'], ['--verbose', 'True'], ['--verbose'], ['--verbose=False'])):
        result = run_script('generate_zip.py', args + ['--zip_dir', tmp_path / str(k)] + flag)
        assert result.returncode == 0, (flag, result.stderr)
        assert ('Timing (s):' in result.stdout) == (flag != ['--verbose=False']), (flag, result.stdout)
    zip_path = tmp_path / '3' / 'tiny-cond-s0-nimg1-g1.00-gi.zip'
    assert result.stdout.splitlines()[0] == f'Generating 1 images and saving them to "{zip_path}..."'
    bad = run_script('generate_zip.py', args + ['--zip_dir', tmp_path, '--verbose=maybe'])
    assert bad.returncode == 2 and "Invalid value for '--verbose'" in bad.stderr  # click's usage error


def test_a_guide_of_another_kind_or_an_output_under_a_file_is_a_one_line_error(tiny_pickles, tmp_path):
    from conftest import make_tiny_net, save_network_pickle
    from edmguide.nets import presets
    wider = save_network_pickle(tmp_path / 'tiny-32px.pkl', make_tiny_net(0, 4, resolution=32))
    base = ['--cond_pkl', tiny_pickles['cond'], '--num_images', 2, '--steps', 4, '--device', 'cpu',
            '--guidance_interval', 'None']
    for guide, fragment in [(wider, 'guiding net has img_resolution 32, the main net 16'),
                            (os.path.join(ROOT, presets.DEMO_FILES.features), 'not a denoiser network like the main one')]:
        result = run_script('generate_zip.py', base + ['--uncond_pkl', guide, '--zip_dir', tmp_path / 'out'])
        assert_one_line_error(result, fragment)
        assert not (tmp_path / 'out').exists()  # refused before any work folder is made
    (tmp_path / 'a-file').write_text('')
    result = run_script('generate_zip.py', base + ['--uncond_pkl', tiny_pickles['uncond'],
                                                   '--zip_dir', tmp_path / 'a-file' / 'out'])
    assert_one_line_error(result, 'Not a directory', 'a-file')
