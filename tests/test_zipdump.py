"""edmguide.jobs.zipdump: parts are verified before they count, work folders never mix settings, a
finished zip of other settings is kept unless --overwrite, the work folder is locked, and what a
killed run leaves behind is cleaned up. In-process library calls on tiny nets (2 steps, 5 images),
except where a second process is the point."""

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest

from cli_helpers import ROOT, script_env
from edmguide.util.errors import UserError
from edmguide.sampler.schedule import SamplerOptions

N = 5
NAME = 'tiny-cond-s0-nimg5-g2.00-gi.zip'


def _make(tiny_pickles, zip_dir, **kwargs):
    import generate_zip as gz
    from edmguide.sampler.guidance import Interval
    from edmguide.sampler.schedule import SamplerOptions
    options = dict(zip_dir=str(zip_dir), num_images=N, batch_size=2, guidance_scale=2.0, interval=Interval.of_steps(0, 1),
                   sampler=SamplerOptions(num_steps=2, mode='gi'), device='cpu', progress=False)
    options.update(kwargs)
    return gz.generate_zip(str(tiny_pickles['cond']), str(tiny_pickles['uncond']), **options)


@pytest.fixture(scope='module')
def reference(tiny_pickles, tmp_path_factory):
    """(zip bytes, {entry: png bytes}, settings.json text) of an uninterrupted run."""
    folder = tmp_path_factory.mktemp('ref-zip')
    path = _make(tiny_pickles, folder)['path']
    with zipfile.ZipFile(path) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
        settings = json.dumps(json.loads(zf.comment.decode()), indent=1, sort_keys=True)
    with open(path, 'rb') as f:
        return f.read(), entries, settings


def _work_folder(zip_dir, reference, entries=range(N), settings=True):
    """The state a run cut off after writing `entries` leaves: parts (+ settings.json), no zip."""
    parts = zip_dir / (NAME + '.parts')
    parts.mkdir(parents=True)
    for k in entries:
        (parts / f'{k:06d}.png').write_bytes(reference[1][f'{k:06d}.png'])
    if settings:
        (parts / 'settings.json').write_text(reference[2])
    return parts


def test_parts_that_do_not_decode_or_have_the_wrong_shape_are_regenerated(tiny_pickles, tmp_path, reference, capsys):
    parts = _work_folder(tmp_path, reference)
    good = reference[1]['000000.png']
    (parts / '000000.png').write_bytes(good[:len(good) // 2])  # truncated
    (parts / '000001.png').write_bytes(np.random.default_rng(0).bytes(300))  # random bytes
    (parts / '000002.png').write_bytes(b'')  # zero bytes
    small = io.BytesIO()
    PIL.Image.new('RGB', (8, 8)).save(small, format='png')
    (parts / '000003.png').write_bytes(small.getvalue())  # a complete PNG of the wrong size
    gray = io.BytesIO()
    PIL.Image.new('L', (16, 16)).save(gray, format='png')
    (parts / '000004.png').write_bytes(gray.getvalue())  # right size, wrong mode
    stats = _make(tiny_pickles, tmp_path)
    assert 'note: 5 images' in capsys.readouterr().out
    assert (stats['generated'], stats['skipped']) == (5, 0)
    assert (tmp_path / NAME).read_bytes() == reference[0]  # byte for byte the uninterrupted zip
    assert not parts.exists()


def test_good_parts_are_kept_and_only_the_bad_one_is_regenerated(tiny_pickles, tmp_path, reference):
    parts = _work_folder(tmp_path, reference, entries=range(4))
    good = reference[1]['000002.png']
    (parts / '000002.png').write_bytes(good[:-12])  # the IEND chunk cut off: decodes, but incomplete
    stats = _make(tiny_pickles, tmp_path)
    assert (stats['generated'], stats['skipped']) == (2, 3)
    assert (tmp_path / NAME).read_bytes() == reference[0]


def test_images_without_provable_settings_are_refused_and_overwrite_starts_over(tiny_pickles, tmp_path, reference):
    parts = _work_folder(tmp_path, reference, entries=range(2), settings=False)
    with pytest.raises(UserError, match='holds 2 images but no settings.json'):
        _make(tiny_pickles, tmp_path)
    (parts / 'settings.json').write_text('{"net": ')  # cut-off JSON
    with pytest.raises(UserError, match=r'settings.json: cannot read it \(JSONDecodeError') as info:
        _make(tiny_pickles, tmp_path)
    assert '\n' not in str(info.value)
    assert sorted(os.listdir(parts)) == ['000000.png', '000001.png', 'lock', 'settings.json']  # nothing touched
    # Planted images of "another run": --overwrite discards them, the zip is the clean run's.
    (parts / '000000.png').write_bytes(reference[1]['000004.png'])
    stats = _make(tiny_pickles, tmp_path, overwrite=True)
    assert (stats['generated'], stats['skipped']) == (5, 0)
    assert (tmp_path / NAME).read_bytes() == reference[0]


def test_a_finished_zip_of_other_settings_is_kept_unless_overwrite(tiny_pickles, tmp_path, reference, capsys):
    path = tmp_path / NAME
    _make(tiny_pickles, tmp_path, sampler=SamplerOptions(num_steps=3, mode='gi'))  # same name: the name does not encode the steps
    other = path.read_bytes()
    assert other != reference[0]
    with pytest.raises(UserError, match=r'finished zip made with other settings \(.*num_steps\).*--overwrite'):
        _make(tiny_pickles, tmp_path)
    assert path.read_bytes() == other and not (tmp_path / (NAME + '.parts')).exists()
    assert _make(tiny_pickles, tmp_path, overwrite=True)['generated'] == N
    assert path.read_bytes() == reference[0]
    capsys.readouterr()
    assert _make(tiny_pickles, tmp_path)['generated'] == 0  # same settings: nothing to do
    assert 'already complete' in capsys.readouterr().out
    path.write_bytes(b'PK\x05\x06' + b'\x00' * 18)  # an empty zip of another program: no settings
    with pytest.raises(UserError, match='records no settings'):
        _make(tiny_pickles, tmp_path)


def test_what_a_run_killed_during_or_after_assembly_leaves_is_cleaned_up(tiny_pickles, tmp_path, reference, capsys):
    # Killed during assembly: a temp zip beside the final name and the whole work folder.
    _work_folder(tmp_path, reference)
    stale = tmp_path / ('.tmp-' + 'ab' * 16 + '-' + NAME)
    stale.write_bytes(reference[0][:100])
    unrelated = tmp_path / ('.tmp-' + 'cd' * 16 + '-other.zip')
    unrelated.write_bytes(b'x')
    assert _make(tiny_pickles, tmp_path)['generated'] == 0
    assert (tmp_path / NAME).read_bytes() == reference[0]
    assert sorted(os.listdir(tmp_path)) == sorted([NAME, unrelated.name])
    # Killed after the rename, before the work folder was removed.
    _work_folder(tmp_path, reference)
    capsys.readouterr()
    assert _make(tiny_pickles, tmp_path)['generated'] == 0
    assert 'already complete' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted([NAME, unrelated.name])


HOLD_LOCK = '''
import sys, time
from edmguide.util.runlock import RunLock
RunLock(sys.argv[1], 'work').acquire()
print('locked', flush=True)
time.sleep(120)
'''


def test_a_second_run_refuses_naming_the_first_and_a_dead_holder_lock_is_taken_over(tiny_pickles, tmp_path, reference):
    parts = _work_folder(tmp_path, reference, entries=range(2))
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(parts)], cwd=ROOT, env=script_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(UserError, match=rf'in use by another run \(pid {holder.pid} on '):
            _make(tiny_pickles, tmp_path)
        assert len(list(parts.glob('0*.png'))) == 2  # nothing computed
    finally:
        holder.kill()  # kill -9: the lock file stays, naming a dead process
        holder.wait()
    assert f'pid {holder.pid}' in (parts / 'lock').read_text()
    stats = _make(tiny_pickles, tmp_path)
    assert (stats['generated'], stats['skipped']) == (3, 2)
    assert (tmp_path / NAME).read_bytes() == reference[0]


def test_the_lock_refuses_a_second_holder_in_the_same_process_and_frees_on_release(tmp_path):
    from edmguide.util.runlock import RunLock
    first = RunLock(tmp_path, 'the work folder').acquire()
    with pytest.raises(UserError, match=rf'the work folder is in use by another run \(pid {os.getpid()} on '):
        RunLock(tmp_path, 'the work folder').acquire()
    first.release()
    with RunLock(tmp_path, 'the work folder'):
        pass


def test_negative_seed_and_zip_dir_that_is_a_file_are_one_line_errors_before_loading(tiny_pickles, tmp_path):
    import generate_zip as gz
    from cli_helpers import invoke
    (tmp_path / 'a-file').write_text('')
    missing_net = tmp_path / 'no-such-net.pkl'  # loading it would fail: the checks come first
    for args, fragment in [(['--seed', -3], '--seed=-3: seeds are non-negative'),
                           (['--zip_dir', tmp_path / 'a-file'], 'a-file: exists and is not a directory'),
                           (['--steps', 1], "'--steps'")]:
        result = invoke(gz.main, ['--cond_pkl', missing_net, '--guidance_scale', 1] + args)
        assert result.exit_code != 0 and 'Traceback' not in result.output, result.output
        assert fragment in result.output and 'no-such-net' not in result.output, result.output


def test_a_second_concurrent_run_refuses_at_once_naming_the_first(tiny_pickles, tmp_path):
    import time
    from cli_helpers import assert_one_line_error, run_script
    args = ['--cond_pkl', tiny_pickles['cond'], '--uncond_pkl', tiny_pickles['uncond'], '--zip_dir', tmp_path,
            '--num_images', 2000, '--batch_size', 2, '--guidance_scale', 2.0, '--guidance_interval', '[0, 1]',
            '--steps', 8, '--device', 'cpu']  # (minutes of work: the first run is still busy when the second starts)
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'generate_zip.py')] + [str(a) for a in args],
                             cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / 'tiny-cond-s0-nimg2000-g2.00-gi.zip.parts'
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not list(parts.glob('0*.png')):
            time.sleep(0.05)
        second = run_script('generate_zip.py', args)
        assert first.poll() is None  # the race really happened
        assert_one_line_error(second, 'in use by another run', f'pid {first.pid} on ')
        assert 'Resuming' not in second.stdout  # it computed nothing
    finally:
        first.kill()
        first.wait()


#----------------------------------------------------------------------------
# Input files are recorded by content (SHA-256), not by how their path is spelled.

def _pickle_copies(tiny_pickles, folder):
    """Copies of the tiny pickles in `folder` (so that a test may replace one)."""
    import shutil
    folder.mkdir()
    return {k: str(shutil.copy(tiny_pickles[k], folder / os.path.basename(tiny_pickles[k]))) for k in ('cond', 'uncond', 'bad')}


def _make_from(pickles, zip_dir, **kwargs):
    return _make(dict(pickles), zip_dir, **kwargs)


def test_the_zip_records_each_network_by_path_and_sha256(tiny_pickles, tmp_path, reference):
    import hashlib
    with zipfile.ZipFile(io.BytesIO(reference[0])) as zf:
        recorded = json.loads(zf.comment.decode())
    for name, key in (('net', 'cond'), ('gnet', 'uncond')):
        with open(tiny_pickles[key], 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()  # the whole file at once: an independent reading
        assert recorded['inputs'][name] == {'path': str(tiny_pickles[key]), 'sha256': digest}
    assert 'net' not in recorded and 'gnet' not in recorded


def test_a_network_replaced_at_the_same_path_is_refused_naming_it(tiny_pickles, tmp_path, reference):
    pickles = _pickle_copies(tiny_pickles, tmp_path / 'nets')
    first = _make_from(pickles, tmp_path / 'first')  # finished zip with these files
    assert first['generated'] == N
    with zipfile.ZipFile(first['path']) as zf:
        settings = json.dumps(json.loads(zf.comment.decode()), indent=1, sort_keys=True)
    parts = tmp_path / 'cut' / (NAME + '.parts')  # a run of the same files cut off after two images
    parts.mkdir(parents=True)
    with zipfile.ZipFile(first['path']) as zf:
        for k in range(2):
            (parts / f'{k:06d}.png').write_bytes(zf.read(f'{k:06d}.png'))
    (parts / 'settings.json').write_text(settings)
    from conftest import make_tiny_net, save_network_pickle
    save_network_pickle(pickles['uncond'], make_tiny_net(0, 7))  # retrained in place: same kind, other weights
    with pytest.raises(UserError, match=r'different gnet file \(.*tiny-uncond.pkl: its content, SHA-256, differs\)') as info:
        _make_from(pickles, tmp_path / 'cut')
    assert '\n' not in str(info.value)
    assert sorted(os.listdir(parts)) == ['000000.png', '000001.png', 'lock', 'settings.json']  # nothing mixed
    with pytest.raises(UserError, match=r'finished zip made with a different gnet file'):
        _make_from(pickles, tmp_path / 'first')  # the finished zip is not replaced either


def test_the_same_network_under_another_spelling_of_its_path_resumes(tiny_pickles, tmp_path, reference, monkeypatch):
    pickles = _pickle_copies(tiny_pickles, tmp_path / 'nets')
    parts = _work_folder(tmp_path / 'cut', reference, entries=range(2))
    recorded = json.loads(reference[2])  # made with the fixture's paths; here the copies are used
    for name, key in (('net', 'cond'), ('gnet', 'uncond')):
        recorded['inputs'][name]['path'] = pickles[key]
    (parts / 'settings.json').write_text(json.dumps(recorded))
    os.symlink(tmp_path / 'nets', tmp_path / 'link')
    monkeypatch.chdir(tmp_path)
    spelled = {'cond': os.path.join('link', 'tiny-cond.pkl'), 'uncond': os.path.join('.', 'nets', 'tiny-uncond.pkl')}
    stats = _make_from(spelled, tmp_path / 'cut')  # relative, through a symlink: the same bytes
    assert (stats['generated'], stats['skipped']) == (N - 2, 2)
    with zipfile.ZipFile(tmp_path / 'cut' / NAME) as zf:
        assert [zf.read(i) for i in zf.infolist()] == [e for _, e in sorted(reference[1].items())]
    assert _make_from(pickles, tmp_path / 'cut')['generated'] == 0  # finished: absolute paths, nothing to do


def test_a_finished_zip_of_an_older_version_is_kept_with_a_note(tiny_pickles, tmp_path, reference, capsys):
    """Older versions recorded the paths ('net', 'gnet') but no digests: the zip cannot be proven, but
    nothing can be mixed into a finished zip, so it is kept (a note says so); --overwrite remakes it."""
    recorded = json.loads(reference[2])
    legacy = {k: v for k, v in recorded.items() if k != 'inputs'}
    legacy.update(net=recorded['inputs']['net']['path'], gnet=recorded['inputs']['gnet']['path'])
    path = tmp_path / NAME
    path.write_bytes(reference[0])
    with zipfile.ZipFile(path, 'a') as zf:
        zf.comment = json.dumps(legacy, sort_keys=True).encode()
    old = path.read_bytes()
    capsys.readouterr()
    assert _make(tiny_pickles, tmp_path)['generated'] == 0 and path.read_bytes() == old
    out = capsys.readouterr().out
    assert 'older version' in out and 'already complete' in out
    _work_folder(tmp_path, reference, entries=range(2), settings=False)
    (tmp_path / (NAME + '.parts') / 'settings.json').write_text(json.dumps(legacy))  # unfinished, older version
    path.unlink()
    with pytest.raises(UserError, match='older version of this program.*--overwrite'):
        _make(tiny_pickles, tmp_path)
    assert _make(tiny_pickles, tmp_path, overwrite=True)['generated'] == N
    assert path.read_bytes() == reference[0]
