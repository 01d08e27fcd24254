"""edmguide/util/outputs.py: nothing replaced silently — `calculate_metrics.py ref --dest` and the
folders of `generate_images.py` seed mode (settings record, --overwrite)."""

import json
import os
import pickle

import pytest

import calculate_metrics
import generate_images
import helpers_metrics as hm
from cli_helpers import assert_one_line_error, invoke
from edmguide.util.errors import UserError
from edmguide.util.outputs import FOLDER_RECORD, check_replaceable, claim_image_folder, same_file

#----------------------------------------------------------------------------
# Paths compared by what they are.


def test_same_file_sees_through_spellings_symlinks_and_hard_links(tmp_path):
    data = tmp_path / 'd' / 'data.zip'
    data.parent.mkdir()
    data.write_bytes(b'x')
    (tmp_path / 'link.zip').symlink_to(data)
    os.link(data, tmp_path / 'hard.zip')
    (tmp_path / 'other.zip').write_bytes(b'x')  # same bytes, another file
    assert same_file(str(tmp_path / 'd' / '..' / 'd' / 'data.zip'), str(data))
    assert same_file(str(tmp_path / 'link.zip'), str(data))
    assert same_file(str(tmp_path / 'hard.zip'), str(data))
    assert not same_file(str(tmp_path / 'other.zip'), str(data))
    assert not same_file(str(tmp_path / 'missing.zip'), str(data))


def test_check_replaceable_refuses_inputs_always_and_existing_files_without_overwrite(tmp_path):
    existing = tmp_path / 'ref.pkl'
    existing.write_bytes(b'old')
    with pytest.raises(UserError, match='use --overwrite'):
        check_replaceable(str(existing), '--dest')
    assert check_replaceable(str(existing), '--dest', overwrite=True) == str(existing)
    assert check_replaceable(str(tmp_path / 'new.pkl'), '--dest') == str(tmp_path / 'new.pkl')
    with pytest.raises(UserError, match='same file as --data'):
        check_replaceable(str(existing), '--dest', overwrite=True, inputs={'--data': str(existing)})

#----------------------------------------------------------------------------
# calculate_metrics.py ref.


@pytest.fixture
def data_zip(tmp_path):
    return hm.write_image_zip(tmp_path / 'data.zip', hm.random_images(6, seed=3))


def _ref(data, dest, *extra):
    return invoke(calculate_metrics.edm2_cli, ['ref', '--data', data, '--dest', dest, '--metrics', 'fid',
                                               '--workers', '0', *extra])


@pytest.mark.parametrize('spelling', ['dotdot', 'symlink', 'relative'])
def test_ref_never_writes_over_its_own_data(cache, tmp_path, data_zip, spelling, monkeypatch):
    before = open(data_zip, 'rb').read()
    if spelling == 'dotdot':
        dest = str(tmp_path / 'sub' / '..' / 'data.zip')
        (tmp_path / 'sub').mkdir()
    elif spelling == 'symlink':
        dest = str(tmp_path / 'link.pkl')
        os.symlink(data_zip, dest)
    else:
        monkeypatch.chdir(tmp_path)
        dest = 'data.zip'
    for extra in ([], ['--overwrite']):  # --overwrite does not allow destroying the input
        result = _ref(data_zip, dest, *extra)
        assert_one_line_error(result, 'is the same file as --data')
        assert 'Saved' not in result.stdout
        assert open(data_zip, 'rb').read() == before


def test_ref_refuses_an_existing_dest_unless_overwrite(cache, tmp_path, data_zip):
    dest = tmp_path / 'weights.safetensors'
    dest.write_bytes(b'precious')
    result = _ref(data_zip, str(dest))
    assert_one_line_error(result, str(dest), 'exists', '--overwrite')
    assert dest.read_bytes() == b'precious' and 'Saved' not in result.stdout
    result = _ref(data_zip, str(dest), '--overwrite')
    assert result.exit_code == 0, result.output
    with open(dest, 'rb') as f:
        assert pickle.load(f)['num_images'] == 6
    assert sorted(set(os.listdir(tmp_path)) - {'cache'}) == ['data.zip', 'weights.safetensors']  # no temp files

#----------------------------------------------------------------------------
# Seed-mode folders.


def _write_pngs(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(hm.png_bytes(hm.random_images(1)[0]))


def test_claim_image_folder_rules(tmp_path):
    settings, other = {'net': 'a.pkl', 'guidance': 2.0}, {'net': 'a.pkl', 'guidance': 3.0}
    fresh = tmp_path / 'fresh'
    assert claim_image_folder(str(fresh), settings) == 0  # a new folder is taken
    assert json.loads((fresh / FOLDER_RECORD).read_text()) == settings
    _write_pngs(fresh, ['000000.png'])
    assert claim_image_folder(str(fresh), settings) == 0  # the same settings go on
    with pytest.raises(UserError, match=r'other settings \(guidance\).*--overwrite'):
        claim_image_folder(str(fresh), other)
    assert json.loads((fresh / FOLDER_RECORD).read_text()) == settings and (fresh / '000000.png').is_file()

    unrecorded = tmp_path / 'upstream'
    _write_pngs(unrecorded, ['000001.png'])
    _write_pngs(unrecorded / '001000', ['001000.png'])
    (unrecorded / 'notes.txt').write_text('mine')
    with pytest.raises(UserError, match=f'holds 2 seed images but no {FOLDER_RECORD}.*--overwrite'):
        claim_image_folder(str(unrecorded), settings)
    assert claim_image_folder(str(unrecorded), settings, overwrite=True) == 2
    assert sorted(p.name for p in unrecorded.rglob('*') if p.is_file()) == ['notes.txt', FOLDER_RECORD]

    broken = tmp_path / 'broken'
    _write_pngs(broken, ['000002.png'])
    (broken / FOLDER_RECORD).write_text('{not json')
    with pytest.raises(UserError, match='cannot read it.*--overwrite'):
        claim_image_folder(str(broken), settings)

    other_files = tmp_path / 'figures'  # files that are not seed images do not block a folder
    _write_pngs(other_files, ['fig1.png'])
    assert claim_image_folder(str(other_files), settings) == 0 and (other_files / 'fig1.png').is_file()

    checker = tmp_path / 'checker'  # write=False (ranks other than 0) checks and changes nothing
    _write_pngs(checker, ['000003.png'])
    assert claim_image_folder(str(checker), settings, overwrite=True, write=False) == 0
    assert sorted(os.listdir(checker)) == ['000003.png']


def _folder_bytes(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_seed_mode_reruns_go_on_other_settings_are_refused_and_overwrite_replaces(tiny_pickles, tmp_path):
    out = tmp_path / 'out'
    common = ['--net', tiny_pickles['cond'], '--gnet', tiny_pickles['uncond'], '--seeds', '0-1', '--steps', '4',
              '--class', '3', '--outdir', out]
    assert invoke(generate_images.main, common + ['--guidance', '2']).exit_code == 0
    first = _folder_bytes(out)
    assert sorted(first) == ['000000.png', '000001.png', FOLDER_RECORD]
    assert json.loads(first[FOLDER_RECORD])['guidance'] == 2.0
    result = invoke(generate_images.main, common + ['--guidance', '2'])  # identical rerun: rewrites identically
    assert result.exit_code == 0, result.output
    assert _folder_bytes(out) == first
    result = invoke(generate_images.main, common + ['--guidance', '3'])
    assert_one_line_error(result, str(out), 'other settings (guidance)', '--overwrite')
    assert _folder_bytes(out) == first  # nothing replaced
    result = invoke(generate_images.main, common + ['--guidance', '3', '--overwrite'])
    assert result.exit_code == 0, result.output
    replaced = _folder_bytes(out)
    assert json.loads(replaced[FOLDER_RECORD])['guidance'] == 3.0
    assert replaced['000000.png'] != first['000000.png']


def test_seed_mode_refuses_a_folder_of_unrecorded_seed_images(tiny_pickles, tmp_path):
    out = tmp_path / 'upstream-out'
    _write_pngs(out, ['000000.png'])
    before = _folder_bytes(out)
    result = invoke(generate_images.main, ['--net', tiny_pickles['uncond'], '--seeds', '0', '--steps', '2',
                                           '--outdir', out])
    assert_one_line_error(result, 'no settings.json', '--overwrite')
    assert _folder_bytes(out) == before
