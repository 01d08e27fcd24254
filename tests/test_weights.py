"""edmguide/weights.py: the code-free .safetensors loader refuses bad files with one line each."""

import json
import struct

import pytest
import safetensors.torch
import torch

import dnnlib
from conftest import make_tiny_net, save_network_pickle
from edmguide import convert, weights
from edmguide.errors import UserError
from edmguide.loading import load_network

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
    (lambda m: m.update(format_version=99), 'format version 99 is not supported'),
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
def test_wrong_metadata_is_one_line(good, tmp_path, edit, fragment):
    tensors, meta = _parts(good)
    edit(meta)
    assert_one_line(_write(tmp_path / 'meta.safetensors', tensors, meta), fragment)

def test_missing_or_invalid_metadata(good, tmp_path):
    tensors, _ = _parts(good)
    assert_one_line(_write(tmp_path / 'none.safetensors', tensors, raw_meta={}), 'no edmguide metadata')
    assert_one_line(_write(tmp_path / 'bad.safetensors', tensors, raw_meta={'edmguide': '{oops'}), 'not valid JSON')

def test_shape_and_name_mismatches(good, tmp_path):
    tensors, meta = _parts(good)
    wider = dict(meta, net=dict(meta['net'], init_kwargs=dict(meta['net']['init_kwargs'], model_channels=8)))
    wider['weights_sha256'] = _rehash(tensors)
    assert_one_line(_write(tmp_path / 'shape.safetensors', tensors, wider), 'shape mismatch for net.')
    fewer = {k: v for k, v in tensors.items() if k != 'net.logvar_linear.weight'}
    assert_one_line(_write(tmp_path / 'fewer.safetensors', fewer, dict(meta, weights_sha256=_rehash(fewer))),
                    'net.logvar_linear.weight is missing')
    more = dict(tensors, **{'net.extra': torch.zeros(2)})
    assert_one_line(_write(tmp_path / 'more.safetensors', more, dict(meta, weights_sha256=_rehash(more))),
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
