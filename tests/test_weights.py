"""edmguide/nets/weights.py: the code-free .safetensors loader refuses bad files with one line each."""

import json
import struct

import pytest
import safetensors.torch
import torch

import dnnlib
from conftest import make_tiny_net, save_network_pickle
from edmguide.nets import convert
from edmguide.nets import weights
from edmguide.util.errors import UserError
from edmguide.nets.loading import load_network

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp('weights')
    pkl = save_network_pickle(folder / 'tiny.pkl', make_tiny_net(10, 1, channels=4))
    dest = folder / 'tiny.safetensors'
    convert.convert(pkl, str(dest), verbose=False)
    return dest.read_bytes()

def _parts(data):
    """(tensors, metadata dict) of a file, read independently of the code under test."""
    size = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + size])
    return safetensors.torch.load(data), json.loads(header['__metadata__']['edmguide'])

def _write(path, tensors, meta=None, raw_meta=None):
    table = raw_meta if raw_meta is not None else {'edmguide': json.dumps(meta)}
    path.write_bytes(safetensors.torch.save(tensors, metadata=table))
    return str(path)

def _rehash(tensors):
    return weights.weights_sha256({k[len('net.'):]: v for k, v in tensors.items()})

def _forge(meta):
    """Metadata edited AND re-sealed, as a forger who recomputes the digests would write it: what the
    checks behind the digests (classes, arguments, shapes) must still refuse."""
    return weights.seal(meta)

def assert_one_line(path, *fragments):
    with pytest.raises(UserError) as info:
        load_network(path)
    message = str(info.value)
    assert '\n' not in message and message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message

#----------------------------------------------------------------------------

def test_corrupted_and_truncated_files(good, tmp_path):
    empty = tmp_path / 'empty.safetensors'
    empty.write_bytes(b'')
    assert_one_line(empty, 'empty or truncated')
    for fraction in (0.003, 0.5, 0.999):
        cut = tmp_path / f'cut{fraction}.safetensors'
        cut.write_bytes(good[:int(len(good) * fraction)])
        assert_one_line(cut, 'truncated')
    garbled = bytearray(good)
    garbled[12:20] = b'\xff' * 8   # inside the JSON header
    (tmp_path / 'garbled.safetensors').write_bytes(bytes(garbled))
    assert_one_line(tmp_path / 'garbled.safetensors', 'corrupted', 'header')
    (tmp_path / 'long.safetensors').write_bytes(good + b'\0' * 10)
    assert_one_line(tmp_path / 'long.safetensors', 'corrupted', '10 bytes after the last tensor')
    (tmp_path / 'text.safetensors').write_text('not a safetensors file at all, just text')
    assert_one_line(tmp_path / 'text.safetensors', 'truncated or not a safetensors file')

def test_changed_weights_fail_the_hash(good, tmp_path):
    tensors, meta = _parts(good)
    tensors['net.unet.out_gain'] = tensors['net.unet.out_gain'] + 1
    assert_one_line(_write(tmp_path / 'edited.safetensors', tensors, meta), 'sha256')
    # Flipping a byte of tensor data in place (header untouched) is caught the same way.
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    (tmp_path / 'flipped.safetensors').write_bytes(bytes(flipped))
    assert_one_line(tmp_path / 'flipped.safetensors', 'sha256')

@pytest.mark.parametrize('edit,fragment', [
    (lambda m: m.update(format='other'), 'not in the edmguide-weights format'),
    (lambda m: m.pop('weights_sha256'), 'lacks a valid "weights_sha256"'),
    (lambda m: m.update(net='Precond'), 'lacks a valid "net"'),
    (lambda m: m['net'].update({'class': 'training.networks.EDMPrecond'}), "network class 'training.networks.EDMPrecond' is not one this project implements"),
    (lambda m: m['net'].update({'class': 'os.system'}), "network class 'os.system' is not one this project implements"),
    (lambda m: m['encoder'].update({'class': 'builtins.eval'}), "encoder class 'builtins.eval' is not one this project implements"),
    (lambda m: m['net']['init_kwargs'].update(no_such_arg=1), 'cannot build Precond from the recorded arguments (TypeError'),
    (lambda m: m['net'].update(attributes={'forward': 1}), 'unknown network attributes'),
    (lambda m: m['net'].update(attributes={'sigma_min': 'x'}), 'sigma_min'),
])
def test_forged_metadata_is_still_one_line(good, tmp_path, edit, fragment):
    tensors, meta = _parts(good)
    edit(meta)
    assert_one_line(_write(tmp_path / 'meta.safetensors', tensors, _forge(meta)), fragment)

def test_format_and_version_are_checked_first(good, tmp_path):
    tensors, meta = _parts(good)
    assert_one_line(_write(tmp_path / 'v99.safetensors', tensors, dict(meta, format_version=99)),
                    'format version 99 is not supported')
    # A version-1 file (before the metadata digests): refused with the way out.
    old = {k: v for k, v in meta.items() if k not in ('fields_sha256', 'metadata_sha256', 'code')}
    assert_one_line(_write(tmp_path / 'v1.safetensors', tensors, dict(old, format_version=1)),
                    'format version 1 is not supported', 'convert the pickle again')

def test_missing_or_invalid_metadata(good, tmp_path):
    tensors, _ = _parts(good)
    assert_one_line(_write(tmp_path / 'none.safetensors', tensors, raw_meta={}), 'no edmguide metadata')
    assert_one_line(_write(tmp_path / 'bad.safetensors', tensors, raw_meta={'edmguide': '{oops'}), 'not valid JSON')

def test_shape_and_name_mismatches(good, tmp_path):
    tensors, meta = _parts(good)
    wider = dict(meta, net=dict(meta['net'], init_kwargs=dict(meta['net']['init_kwargs'], model_channels=8)))
    wider['weights_sha256'] = _rehash(tensors)
    assert_one_line(_write(tmp_path / 'shape.safetensors', tensors, _forge(wider)), 'shape mismatch for net.')
    fewer = {k: v for k, v in tensors.items() if k != 'net.logvar_linear.weight'}
    assert_one_line(_write(tmp_path / 'fewer.safetensors', fewer, _forge(dict(meta, weights_sha256=_rehash(fewer)))),
                    'net.logvar_linear.weight is missing')
    more = dict(tensors, **{'net.extra': torch.zeros(2)})
    assert_one_line(_write(tmp_path / 'more.safetensors', more, _forge(dict(meta, weights_sha256=_rehash(more)))),
                    'net.extra does not belong to the architecture')

def test_url_loads_through_the_download_cache(good, tmp_path, monkeypatch):
    monkeypatch.setattr(dnnlib.util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    url = 'http://127.0.0.1:9/nets/tiny.safetensors'
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / (dnnlib.util.url_cache_key(url) + '_tiny.safetensors')).write_bytes(good)
    net, encoder = load_network(url)
    assert net.label_dim == 10 and type(encoder).__name__ == 'StandardRGBEncoder'
    assert_one_line('http://127.0.0.1:9/nets/missing.safetensors', 'cannot download')

def test_loading_does_not_draw_from_the_global_rng(good, tmp_path):
    path = tmp_path / 'g.safetensors'
    path.write_bytes(good)
    state = torch.random.get_rng_state()
    load_network(str(path))
    assert torch.equal(state, torch.random.get_rng_state())

#----------------------------------------------------------------------------
# Sealed metadata: every field is covered by a digest; an edit names the field.

@pytest.fixture(scope='module')
def full(tmp_path_factory):
    """A latent-space net that records every Precond setting that changes what it computes, with a
    sigma range of its own and a VAE encoder with explicit settings: every kind of field is present."""
    from training import encoders, networks_edm2
    folder = tmp_path_factory.mktemp('sealed')
    torch.manual_seed(0)
    net = networks_edm2.Precond(16, 4, 10, use_fp16=True, sigma_data=0.5, logvar_channels=16, model_channels=8,
                                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
    net.sigma_min, net.sigma_max = 0.002, 80.0
    encoder = encoders.StabilityVAEEncoder(vae_name='stabilityai/sd-vae-ft-mse', final_std=0.5, batch_size=3)
    pkl = save_network_pickle(folder / 'full.pkl', net.eval().requires_grad_(False), encoder)
    dest = folder / 'full.safetensors'
    convert.convert(pkl, str(dest), verbose=False)
    return dest.read_bytes()

def _leaves(value, path=()):
    """(dotted path, value) of every leaf: objects are walked into unless empty; lists are leaves."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, path + (key,))
    else:
        yield '.'.join(path), value

def _set(meta, path, value):
    *parents, last = path.split('.')
    target = meta
    for key in parents:
        target = target[key]
    target[last] = value

def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 10 + 1
    if isinstance(value, str):
        return value + 'x'
    if isinstance(value, list):
        return value + [value[-1] if value else 1]
    return 1 if value is None else {'x': 1}

def test_digests_are_sha256_of_canonical_json(full):
    """Independent recomputation of both digests from the format's description."""
    import hashlib
    _, meta = _parts(full)
    canon = lambda v: json.dumps(v, sort_keys=True, separators=(',', ':'), ensure_ascii=True).encode()
    body = {k: v for k, v in meta.items() if k not in ('fields_sha256', 'metadata_sha256')}
    expected = {path: hashlib.sha256(canon([path, value])).hexdigest() for path, value in _leaves(body)}
    assert meta['fields_sha256'] == expected
    assert 'net.init_kwargs.sigma_data' in expected and 'encoder.init_kwargs.vae_name' in expected
    without = {k: v for k, v in meta.items() if k != 'metadata_sha256'}
    assert meta['metadata_sha256'] == hashlib.sha256(canon(without)).hexdigest()

@pytest.mark.parametrize('path,value', [
    ('net.init_kwargs.sigma_data', 5.0),            # the case: tensors untouched, other images
    ('net.init_kwargs.dropout', 0.1),
    ('net.init_kwargs.use_fp16', False),
    ('net.init_kwargs.logvar_channels', 8),
    ('net.init_args', [16, 4, 0]),                   # img_resolution, img_channels, label_dim
    ('net.attributes.sigma_max', 20.0),
    ('encoder.init_kwargs.final_std', 0.6),
    ('encoder.init_kwargs.vae_name', 'stabilityai/sd-vae-ft-ema'),
])
def test_edited_metadata_field_is_refused_naming_it(full, tmp_path, path, value):
    tensors, meta = _parts(full)
    _set(meta, path, value)
    path_file = _write(tmp_path / 'edited.safetensors', tensors, meta)
    assert_one_line(path_file, f'metadata field {path} = {json.dumps(value)} does not match its recorded digest',
                    'convert the pickle again')

def test_every_field_is_sealed_against_edit_removal_and_addition(full, good, tmp_path):
    tensors, meta = _parts(full)
    fields = [p for p, _ in _leaves({k: v for k, v in meta.items() if k not in ('fields_sha256', 'metadata_sha256')})]
    assert {'net.class', 'net.init_args', 'net.init_kwargs.sigma_data', 'net.init_kwargs.use_fp16', 'net.init_kwargs.dropout',
            'net.init_kwargs.logvar_channels', 'net.attributes.sigma_min', 'encoder.class', 'encoder.init_kwargs.vae_name',
            'weights_sha256', 'source.sha256', 'code', 'torch_version'} <= set(fields)
    for path in fields:
        if path in ('format', 'format_version'):
            continue  # checked before the digests, with their own messages (test above)
        edited = json.loads(json.dumps(meta))
        old = dict(_leaves(edited))[path]
        _set(edited, path, _changed(old))
        assert_one_line(_write(tmp_path / 'e.safetensors', tensors, edited), f'metadata field {path}')
        removed = json.loads(json.dumps(meta))
        *parents, last = path.split('.')
        target = removed
        for key in parents:
            target = target[key]
        del target[last]
        assert_one_line(_write(tmp_path / 'r.safetensors', tensors, removed), 'metadata field', 'removed')
    # A setting the file did not record (a default) cannot be added either.
    tensors, meta = _parts(good)
    assert 'sigma_data' not in meta['net']['init_kwargs']
    meta['net']['init_kwargs']['sigma_data'] = 5.0
    assert_one_line(_write(tmp_path / 'a.safetensors', tensors, meta), 'metadata field net.init_kwargs.sigma_data was added')

def test_edited_digest_table_or_missing_digests_are_refused(full, tmp_path):
    import hashlib
    tensors, meta = _parts(full)
    meta['net']['init_kwargs']['sigma_data'] = 5.0   # and its field digest too, but not the overall one
    meta['fields_sha256']['net.init_kwargs.sigma_data'] = weights.field_digest('net.init_kwargs.sigma_data', 5.0)
    assert_one_line(_write(tmp_path / 't.safetensors', tensors, meta), 'does not match its recorded sha256',
                    'digest table was edited')
    tensors, meta = _parts(full)
    del meta['metadata_sha256']
    assert_one_line(_write(tmp_path / 'm.safetensors', tensors, meta), 'lacks its digests')

#----------------------------------------------------------------------------
# The VAE a file names: known ones only, unless the caller passes the VAE explicitly.

def test_unknown_vae_is_refused_unless_passed_explicitly(tmp_path, capsys):
    from training import encoders
    net = make_tiny_net(10, 4, img_channels=4)
    for how, encoder in [('keyword', encoders.StabilityVAEEncoder(vae_name='someone/other-vae')),
                         ('positional', encoders.StabilityVAEEncoder('someone/other-vae'))]:
        pkl = save_network_pickle(tmp_path / f'{how}.pkl', net, encoder)
        st = str(tmp_path / f'{how}.safetensors')
        convert.convert(pkl, st)
        assert "warning: the encoder names the VAE 'someone/other-vae', not one EDM2 uses" in capsys.readouterr().err
        assert_one_line(st, "encoder names the VAE 'someone/other-vae'", 'not one EDM2 uses',
                        'stabilityai/sd-vae-ft-mse', 'pass the VAE explicitly')
        assert load_network(st, vae='someone/other-vae')[1].vae_name == 'someone/other-vae'
        assert load_network(st, vae='stabilityai/sd-vae-ft-mse')[1].vae_name == 'stabilityai/sd-vae-ft-mse'
        assert load_network(st, want_encoder=False)[1] is None   # a guide's encoder is never used
    pkl = save_network_pickle(tmp_path / 'known.pkl', net, encoders.StabilityVAEEncoder())
    convert.convert(pkl, str(tmp_path / 'known.safetensors'), verbose=False)
    assert load_network(str(tmp_path / 'known.safetensors'))[1].vae_name == 'stabilityai/sd-vae-ft-mse'
    # The explicit choice also replaces a pickle's own name.
    assert load_network(pkl, vae='my/vae')[1].vae_name == 'my/vae'

def test_load_networks_passes_the_explicit_vae_to_the_main_net_only(tmp_path, monkeypatch):
    from edmguide.nets import loading
    from training import encoders
    initialized = []
    monkeypatch.setattr(loading, 'init_encoder', lambda encoder, device, batch_size=None: initialized.append(encoder))
    net = make_tiny_net(10, 4, img_channels=4)
    pkl = save_network_pickle(tmp_path / 'other.pkl', net, encoders.StabilityVAEEncoder(vae_name='someone/other-vae'))
    st = str(tmp_path / 'other.safetensors')
    convert.convert(pkl, st, verbose=False)
    with pytest.raises(UserError, match="encoder names the VAE 'someone/other-vae'"):
        loading.load_networks(st, None, 'cpu')
    _, encoder, gnet = loading.load_networks(st, st, 'cpu', vae='local/vae-folder')  # the guide's VAE is not checked
    assert encoder.vae_name == 'local/vae-folder' and initialized == [encoder] and gnet is not None

def test_vae_given_for_a_pixel_space_net_is_one_line(good, tmp_path):
    path = tmp_path / 'rgb.safetensors'
    path.write_bytes(good)
    with pytest.raises(UserError, match=r'a VAE was given \(my/vae\), but this network.s encoder \(StandardRGBEncoder\) uses no VAE'):
        load_network(str(path), vae='my/vae')

#----------------------------------------------------------------------------


def test_vae_option_of_every_script_reaches_the_loader_and_the_settings(tmp_path, monkeypatch):
    """--vae is passed to load_networks by seed mode, zips, gen and sweep, and recorded where settings are."""
    import json
    import calculate_metrics
    import generate_images
    import generate_zip
    from click.testing import CliRunner
    from edmguide.nets import loading, presets
    seen = []
    original = loading.load_networks

    def spy(*args, **kwargs):
        seen.append(kwargs.get('vae'))
        return original(*args, **{k: v for k, v in kwargs.items() if k != 'vae'})
    monkeypatch.setattr(loading, 'load_networks', spy)
    files = presets.DEMO_FILES
    common = ['--vae', 'my/vae', '--steps', '2']
    runner = CliRunner()
    result = runner.invoke(generate_images.main, ['--net', files.cond, '--outdir', str(tmp_path / 'png'), '--seeds', '0',
                                                  '--device', 'cpu', *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / 'png' / 'settings.json').read_text())['vae'] == 'my/vae'
    result = runner.invoke(generate_zip.main, ['--net', files.cond, '--zip_dir', str(tmp_path / 'zip'), '--num_images', '2',
                                               '--guidance_scale', '1', '--device', 'cpu', *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(calculate_metrics.edm2_cli, ['gen', '--net', files.cond, '--ref', files.ref, '--metrics', 'fd_digits',
                                                        '--num', '2', '--device', 'cpu', *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == ['my/vae'] * 3
