"""edmguide/nets/convert.py: pickle -> verified .safetensors, round trips, refusals, and bit-identical use."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import dnnlib
import generate_images
from cli_helpers import ROOT, assert_one_line_error, invoke, script_env
from conftest import make_tiny_net, save_network_pickle
from edmguide.nets import convert
from edmguide.nets import loading
from edmguide.nets import presets
from edmguide.nets import weights
from edmguide.util.errors import UserError
from training import encoders, networks_edm2

#----------------------------------------------------------------------------

def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)

def _convert(src, dest):
    convert.convert(str(src), str(dest), verbose=False)
    return str(dest)

@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """Tiny random nets (gains non-zero), fp16 as released, as pickles and as .safetensors."""
    folder = tmp_path_factory.mktemp('convert')
    out = {}
    for name, net in [('cond', make_tiny_net(10, 1).to(torch.float16)), ('uncond', make_tiny_net(0, 2).to(torch.float16))]:
        pkl = save_network_pickle(folder / f'tiny-{name}.pkl', net)
        out[name] = (pkl, _convert(pkl, folder / f'tiny-{name}.safetensors'))
    return out

#----------------------------------------------------------------------------
# Round trips.

@pytest.mark.parametrize('name', ['cond', 'uncond'])
def test_round_trip_gives_the_same_weights_class_encoder_and_outputs(converted, name):
    pkl, st = converted[name]
    net_p, enc_p = loading.load_network(pkl)
    net_s, enc_s = loading.load_network(st)
    assert type(net_s) is networks_edm2.Precond and isinstance(enc_s, encoders.StandardRGBEncoder)
    assert _state_equal(net_p, net_s) and net_s.unet.out_conv.weight.dtype == torch.float16
    assert float(net_s.unet.out_gain) != 0 and float(net_s.unet.enc['16x16_block0'].emb_gain) != 0
    assert not net_s.training and not any(p.requires_grad for p in net_s.parameters())
    assert net_s.sigma_min == 0 and net_s.sigma_max == float('inf')
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.05, 1.0, 30.0])
    labels = torch.eye(10)[:3] if name == 'cond' else None
    assert torch.equal(net_p(x, sigma, labels), net_s(x, sigma, labels))

def test_metadata_records_architecture_source_hash_and_weight_hash(converted):
    pkl, st = converted['cond']
    data = open(st, 'rb').read()
    meta = weights.read_metadata(weights.read_header(data, st), st)
    assert meta['format_version'] == weights.FORMAT_VERSION
    assert meta['net']['class'] == 'training.networks_edm2.Precond'
    assert meta['net']['init_args'] == [16, 3, 10] and meta['net']['init_kwargs']['channel_mult'] == [1, 2]
    assert meta['encoder'] == {'class': 'training.encoders.StandardRGBEncoder', 'init_args': [], 'init_kwargs': {}}
    import hashlib
    assert meta['source'] == {'file': 'tiny-cond.pkl', 'sha256': hashlib.sha256(open(pkl, 'rb').read()).hexdigest()}
    # Independent recomputation of the weight hash: sorted names, [name, dtype, shape] JSON, raw bytes.
    import json, struct
    net = pickle.load(open(pkl, 'rb'))['ema']
    digest = hashlib.sha256()
    for key in sorted(net.state_dict()):
        t = net.state_dict()[key]
        head = json.dumps([key, str(t.dtype)[6:], list(t.shape)]).encode()
        raw = t.numpy().tobytes()
        digest.update(struct.pack('<Q', len(head)) + head + struct.pack('<Q', len(raw)) + raw)
    assert meta['weights_sha256'] == digest.hexdigest()

def test_demo_nets_round_trip(tmp_path):
    for name in ('bad', 'features'):
        pkl = os.path.join(presets.DEMO_DIR, f'digits-{name}.pkl')
        st = _convert(pkl, tmp_path / f'{name}.safetensors')
        net_p, enc_p = loading.load_network(pkl)
        net_s, enc_s = loading.load_network(st)
        assert _state_equal(net_p, net_s) and type(enc_p).__name__ == type(enc_s).__name__
    images = torch.randint(0, 256, [5, 1, 16, 16], dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net_p(images, return_features=True), net_s(images, return_features=True))

def test_shipped_demo_safetensors_match_the_shipped_pickles():
    for name in ('cond', 'uncond', 'bad', 'features'):
        assert presets.DEMO_FILES[name].endswith(f'digits-{name}.safetensors')
        net_p, _ = loading.load_network(os.path.join(presets.DEMO_DIR, f'digits-{name}.pkl'))
        net_s, _ = loading.load_network(presets.DEMO_FILES[name])
        assert _state_equal(net_p, net_s)
        convert.check_structure(net_p, net_s, name)   # every plain attribute too (sigma_data, use_fp16, ...)

def test_edm_v1_style_wrapper_keeps_its_sigma_range_and_vae_encoder(tmp_path):
    """EDM v1 / guidance-interval layout: plain dict, augment_pipe None, a net with its own sigma range."""
    net = make_tiny_net(10, 4, img_channels=4)
    net.sigma_min, net.sigma_max = 0.002, 80.0
    data = dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs=dict(path='x'),
                encoder=encoders.StabilityVAEEncoder(batch_size=3, final_std=0.6))
    pkl = tmp_path / 'v1.pkl'
    pkl.write_bytes(pickle.dumps(data))
    net_s, enc_s = loading.load_network(_convert(pkl, tmp_path / 'v1.safetensors'))
    assert net_s.sigma_min == 0.002 and net_s.sigma_max == 80.0
    assert isinstance(enc_s, encoders.StabilityVAEEncoder) and enc_s.batch_size == 3 and enc_s._vae is None
    np.testing.assert_array_equal(enc_s.scale, np.float32(0.6) / np.float32([4.17, 4.62, 3.71, 3.28]))
    assert _state_equal(net, net_s)

def test_bare_unet_round_trips(tmp_path):
    unet = make_tiny_net(10, 8).unet
    pkl = tmp_path / 'unet.pkl'
    pkl.write_bytes(pickle.dumps(unet))
    net_s, encoder = loading.load_network(_convert(pkl, tmp_path / 'unet.safetensors'))
    assert type(net_s) is networks_edm2.UNet and encoder is None and _state_equal(unet, net_s)

#----------------------------------------------------------------------------
# Refusals of the converter.

class NotOurs(torch.nn.Module):
    img_channels, img_resolution = 3, 8

    def forward(self, x, sigma, class_labels=None):
        return x

def test_unknown_class_is_refused_in_one_line(tmp_path):
    pkl = tmp_path / 'other.pkl'
    pkl.write_bytes(pickle.dumps(dict(ema=NotOurs())))
    with pytest.raises(UserError, match='network class NotOurs is not one this project implements') as info:
        convert.convert(str(pkl), str(tmp_path / 'o.safetensors'), verbose=False)
    assert '\n' not in str(info.value) and not (tmp_path / 'o.safetensors').exists()

def test_a_net_that_differs_from_its_rebuild_is_refused_naming_the_difference(tmp_path):
    net = make_tiny_net(10, 5)
    net.unet.enc['16x16_block0'].clip_act = 0.01   # attribute not implied by the constructor arguments
    pkl = save_network_pickle(tmp_path / 'odd.pkl', net)
    with pytest.raises(UserError, match=r'attribute unet\.enc\.16x16_block0\.clip_act differs'):
        convert.convert(pkl, str(tmp_path / 'odd.safetensors'), verbose=False)
    assert not (tmp_path / 'odd.safetensors').exists()

def test_output_mismatch_above_1e6_relative_is_refused(tmp_path):
    net = make_tiny_net(0, 6)
    expected = convert.probe(net, 'x.Precond')
    off = {k: v * (1 + 1e-5) for k, v in expected.items()}
    with pytest.raises(UserError, match=r'verification failed: D \(unconditional\) at sigma [0-9.]+ differs by [0-9.e-]+ relative \(limit 1e-06\)'):
        convert.compare_outputs(expected, off, 'n.pkl')
    assert convert.compare_outputs(expected, {k: v * (1 + 1e-7) for k, v in expected.items()}, 'n.pkl') < 1e-6

def test_pickle_with_code_converts_only_on_request_and_its_safetensors_never_runs_it(tmp_path):
    """The embedded code writes a marker file whenever the pickle is opened."""
    from torch_utils import persistence
    marker = tmp_path / 'ran.txt'
    src = networks_edm2.Precond._orig_module_src + f'\nopen({str(marker)!r}, "a").write("ran\\n")\n'
    module = persistence._src_to_module(src)   # runs it here once, to build the pickle
    net = module.Precond(16, 3, 0, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    net.load_state_dict(make_tiny_net(0, 7).state_dict())
    pkl = tmp_path / 'evil.pkl'
    pkl.write_bytes(pickle.dumps(dict(ema=net.eval(), encoder=encoders.StandardRGBEncoder())))
    marker.unlink()
    st = tmp_path / 'evil.safetensors'
    code = _child_forbidding_pickle(f'''
        from edmguide.nets import convert
        convert.convert({str(pkl)!r}, {str(st)!r})
    ''', forbid=False)
    assert code.returncode == 0, code.stderr
    assert 'runs the Python code inside it' in code.stderr and marker.read_text() == 'ran\n'
    marker.unlink()
    result = _child_forbidding_pickle(f'''
        net, _ = loading.load_network({str(st)!r})
        print(type(net).__module__)
    ''')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'training.networks_edm2' and not marker.exists()

#----------------------------------------------------------------------------
# An existing output is never replaced silently (issue 28).

def test_existing_output_is_kept_refused_or_replaced_only_with_overwrite(converted, tmp_path, monkeypatch):
    a, b = converted['cond'][0], converted['uncond'][0]
    out = tmp_path / 'out.safetensors'
    _convert(a, out)
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    # The same conversion again: reported as done, the file untouched.
    summary = convert.convert(a, str(out), verbose=False)
    assert summary['unchanged'] and out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    # Another pickle: refused before that pickle is opened (its code never runs), also when the
    # existing file is named by another spelling of its path.
    real_load = loading.load_network
    def must_not_open(*args, **kwargs):
        raise AssertionError('the pickle was opened')
    monkeypatch.setattr(loading, 'load_network', must_not_open)
    (tmp_path / 'sub').mkdir()
    for spelling in (out, tmp_path / 'sub' / '..' / 'out.safetensors', os.path.relpath(out)):
        with pytest.raises(UserError) as info:
            convert.convert(b, str(spelling), verbose=False)
        message = str(info.value)
        assert 'exists, converted from another file' in message and 'tiny-cond.pkl' in message, message
        assert 'use --overwrite to replace it' in message and '\n' not in message
    # A file that is not a verified conversion (someone's other file) is not replaced either.
    mine = tmp_path / 'mine.safetensors'
    mine.write_text('my notes')
    with pytest.raises(UserError, match='exists and is not a verified conversion .*; use --overwrite to replace it'):
        convert.convert(b, str(mine), verbose=False)
    assert mine.read_text() == 'my notes' and out.read_bytes() == before
    monkeypatch.setattr(loading, 'load_network', real_load)
    # Converted from this very pickle, but with other content (here: another record of its code).
    net, encoder = loading.load_network(a)
    out.write_bytes(convert.to_safetensors(net, encoder, a, convert.sha256_file(a), code=[]))
    with pytest.raises(UserError, match=r'exists, converted from this pickle but with other content \(metadata field code\)'):
        convert.convert(a, str(out), verbose=False)
    # --overwrite replaces.
    summary = convert.convert(b, str(out), overwrite=True, verbose=False)
    assert not summary['unchanged'] and _state_equal(loading.load_network(str(out))[0], loading.load_network(b)[0])

def test_output_that_is_the_input_is_refused_even_with_overwrite(converted, tmp_path):
    pkl = converted['cond'][0]
    original = open(pkl, 'rb').read()
    (tmp_path / 'sym.safetensors').symlink_to(pkl)
    os.link(pkl, tmp_path / 'hard.safetensors')
    for name in ('sym.safetensors', 'hard.safetensors'):
        for overwrite in (False, True):
            with pytest.raises(UserError, match='is the input file itself'):
                convert.convert(pkl, str(tmp_path / name), overwrite=overwrite, verbose=False)
    assert open(pkl, 'rb').read() == original

def test_converter_cli_refuses_then_overwrites(converted, tmp_path):
    out = tmp_path / 'x.safetensors'
    assert invoke(convert.main, [converted['cond'][0], out]).exit_code == 0
    result = invoke(convert.main, [converted['cond'][0], out])
    assert result.exit_code == 0 and 'already holds this conversion' in result.output
    assert_one_line_error(invoke(convert.main, [converted['uncond'][0], out]), 'x.safetensors', '--overwrite')
    result = invoke(convert.main, [converted['uncond'][0], out, '--overwrite'])
    assert result.exit_code == 0, result.output
    assert loading.load_network(str(out))[0].label_dim == 0

#----------------------------------------------------------------------------
# The pickle's embedded source against this project's (issue 21).

def _pickle_with_source(path, edit):
    """A pickle whose Precond (and its submodules) come from this project's networks_edm2.py source
    changed by `edit(src)`; weights from a tiny random net."""
    from torch_utils import persistence
    module = persistence._src_to_module(edit(networks_edm2.Precond._orig_module_src))
    net = module.Precond(16, 3, 0, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    net.load_state_dict(make_tiny_net(0, 7).state_dict())
    path.write_bytes(pickle.dumps(dict(ema=net.eval().requires_grad_(False), encoder=encoders.StandardRGBEncoder())))
    return str(path)

def _code(path):
    data = open(path, 'rb').read()
    return weights.read_metadata(weights.read_header(data, path), path)['code']

def test_metadata_records_that_our_own_pickles_embed_our_source(converted):
    import hashlib
    with open(os.path.join(ROOT, 'training', 'networks_edm2.py'), encoding='utf-8') as f:
        ours = hashlib.sha256(f.read().encode('utf-8')).hexdigest()
    code = _code(converted['cond'][1])
    assert code[0] == dict(module='training.networks_edm2', classes=['Block', 'MPConv', 'MPFourier', 'Precond', 'UNet'],
                           sha256=ours, match='identical', difference=None, upstream=None)
    assert code[1]['module'] == 'training.encoders' and code[1]['match'] == 'identical'

@pytest.mark.parametrize('edit,match,difference', [
    # Text differs, interface equal: comments, and helpers the network never uses.
    (lambda s: '# another copy\n' + s + '\ndef unused_helper(a, b=2):\n    return a\n', 'same-interface', None),
    # Differences that the CPU float32 check cannot see: a default that only matters on CUDA, and a
    # signature change of a function the network calls.
    (lambda s: s.replace('force_fp32=False, return_logvar=False', 'force_fp32=True, return_logvar=False'), 'different',
     'Precond.forward has other default values (pickle: [None, True, False]; this project: [None, False, False])'),
    (lambda s: s.replace('def mp_silu(x):', 'def mp_silu(x, scale=0.596):'), 'different',
     'function mp_silu has other arguments (pickle: [x, scale]; this project: [x])'),
])
def test_embedded_source_is_compared_recorded_and_reported(tmp_path, capsys, edit, match, difference):
    pkl = _pickle_with_source(tmp_path / 'net.pkl', edit)
    st = str(tmp_path / 'net.safetensors')
    convert.convert(pkl, st)   # the outputs still verify: these differences do not show on the CPU
    entry = _code(st)[0]
    assert entry['module'] == 'training.networks_edm2' and entry['match'] == match
    printed = capsys.readouterr()
    if difference is None:
        assert entry['difference'] is None and 'differs in text from this project\'s but has the same classes' in printed.out
        assert 'not on CUDA' in printed.out
    else:
        assert entry['difference'] == difference
        err = printed.err
        assert "warning: the pickle's training.networks_edm2 source is not the one this project re-implements" in err
        assert entry['difference'] in err and 'on CUDA (float16 with use_fp16) they may differ' in err

def test_known_upstream_text_is_recognised_by_its_normalised_digest(tmp_path, capsys, monkeypatch):
    """NVIDIA's files are not part of this project, so a stand-in text plays the released file: its
    digest after normalisation (line endings, trailing spaces, final newlines) is registered."""
    import hashlib
    from edmguide.nets import embedded_source
    released = '# released\n' + networks_edm2.Precond._orig_module_src
    normal = '\n'.join(line.rstrip() for line in released.split('\n')).rstrip('\n') + '\n'
    monkeypatch.setitem(embedded_source.KNOWN_UPSTREAM, hashlib.sha256(normal.encode()).hexdigest(), 'the release')
    # The same text with CRLF line ends, trailing spaces and extra final newlines is still the release.
    spelled = released.replace('\n', '  \r\n') + '\r\n\r\n'
    pkl = _pickle_with_source(tmp_path / 'release.pkl', lambda s: spelled)
    convert.convert(pkl, str(tmp_path / 'release.safetensors'))
    entry = _code(str(tmp_path / 'release.safetensors'))[0]
    assert entry['match'] == 'upstream' and entry['upstream'] == 'the release' and entry['difference'] is None
    assert "code: the pickle's training.networks_edm2 source is the release, the code this project re-implements" \
        in capsys.readouterr().out
    assert embedded_source.compare_source(released.replace('0.596', '0.597'), networks_edm2.Precond._orig_module_src,
                                          ['Precond']) == ('same-interface', None)   # one character off: not the release

def test_source_comparison_treats_defaults_as_values():
    from edmguide.nets import embedded_source
    ours = 'class A:\n    def __init__(self, f=(1, 1), eps=1e-4):\n        pass\n'
    assert embedded_source.compare_source('class A:\n    def __init__(self, f=[1,1], eps=0.0001): x = 1\n', ours, ['A']) \
        == ('same-interface', None)
    assert embedded_source.compare_source('class A:\n    def __init__(self, f=[1,2], eps=1e-4): pass\n', ours, ['A'])[0] \
        == 'different'
    assert embedded_source.compare_source('class B: pass\n', ours, ['A']) == ('different', 'it does not define A at module level')

#----------------------------------------------------------------------------
# Loading never unpickles: a child process where pickle, torch.load and exec raise.

def _child_forbidding_pickle(body, forbid=True):
    prelude = '''
        import builtins, pickle, sys, torch
        sys.path.insert(0, 'tests')
        from edmguide.nets import loading
        from edmguide.jobs import generation
        from edmguide.sampler import sampling
        from edmguide.nets import weights
        from edmguide.metrics import detectors
        import safetensors.torch, training.networks_edm2, training.encoders, edmguide.demo.features
        with torch.device('meta'):  # warm-up: torch imports sympy lazily here, whose import-time code uses exec
            training.networks_edm2.MPFourier(2)
        def forbidden(*args, **kwargs):
            raise RuntimeError('forbidden call')
        real_exec = builtins.exec
        def exec_for_imports_only(*args, **kwargs):  # importlib runs installed modules' code with exec
            if sys._getframe(1).f_globals.get('__name__', '').startswith('importlib.'):
                return real_exec(*args, **kwargs)
            raise RuntimeError('forbidden call')
    '''
    if forbid:
        prelude += '''
        pickle.load = pickle.loads = torch.load = forbidden
        builtins.exec = exec_for_imports_only
    '''
    return subprocess.run([sys.executable, '-c', textwrap.dedent(prelude) + textwrap.dedent(body)], cwd=ROOT,
                          env=script_env(), capture_output=True, text=True, timeout=300)

def test_loading_and_sampling_never_call_pickle_torch_load_or_exec(converted, tmp_path):
    out = tmp_path / 'x.bin'
    body = f'''
        from edmguide.sampler.seeds import StackedRandomGenerator
        net, encoder, gnet = loading.load_networks({converted['cond'][1]!r}, {converted['uncond'][1]!r}, 'cpu')
        feats = detectors.demo_digits_features()
        noise = torch.randn([2, 3, 16, 16], generator=torch.Generator().manual_seed(0))
        x = sampling.sample(net, noise, torch.eye(10)[:2], gnet=gnet, guidance=2.0, num_steps=4)
        images = encoder.decode(x)
        f = feats(torch.zeros([1, 1, 16, 16], dtype=torch.uint8))
        open({str(out)!r}, 'wb').write(x.numpy().tobytes())
        for call in (lambda: pickle.loads(b''), lambda: exec('1'), lambda: torch.load('x')):
            try:
                call()
            except RuntimeError as exc:
                print('guard works:', exc)
    '''
    result = _child_forbidding_pickle(body)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('guard works: forbidden call') == 3
    net, _ = loading.load_network(converted['cond'][0])
    gnet, _ = loading.load_network(converted['uncond'][0])
    noise = torch.randn([2, 3, 16, 16], generator=torch.Generator().manual_seed(0))
    from edmguide.sampler import sampling
    x = sampling.sample(net, noise, torch.eye(10)[:2], gnet=gnet, guidance=2.0, num_steps=4)
    assert out.read_bytes() == x.numpy().tobytes()

#----------------------------------------------------------------------------
# CLI.

def _pngs(folder):  # the images, not the folder's settings.json record (it names the net files)
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))
            if name.endswith('.png')}

def test_cli_with_safetensors_gives_bit_identical_pngs(converted, tmp_path):
    for kind, index in [('pkl', 0), ('st', 1)]:
        args = ['--net', converted['cond'][index], '--gnet', converted['uncond'][index], '--guidance', '2',
                '--guidance_interval', '[3, 6]', '--seeds', '0-2', '--steps', '8', '--outdir', tmp_path / kind]
        result = invoke(generate_images.main, args)
        assert result.exit_code == 0, result.output
    assert _pngs(tmp_path / 'pkl') == _pngs(tmp_path / 'st') and len(_pngs(tmp_path / 'st')) == 3

def test_converter_cli_errors_are_one_line(tmp_path):
    result = invoke(convert.main, [tmp_path / 'none.pkl', tmp_path / 'x.safetensors'])
    assert_one_line_error(result, 'none.pkl', 'no such file')
    assert_one_line_error(invoke(convert.main, ['a.pkl', tmp_path / 'x.bin']), 'must end in .safetensors')
    (tmp_path / 'file').write_text('')
    assert_one_line_error(invoke(convert.main, [presets.DEMO_DIR + '/digits-bad.pkl', tmp_path / 'file' / 'x.safetensors']),
                          'is not a directory')
    os.unlink(tmp_path / 'file')
    assert not os.listdir(tmp_path)

def test_zip_names_have_the_same_stem_for_pkl_and_safetensors():
    from edmguide.jobs.zipdump import zip_file_name
    assert zip_file_name('dir/net-a.safetensors', 0, 10, 2.0, 'gi') == zip_file_name('net-a.pkl', 0, 10, 2.0, 'gi') \
        == 'net-a-s0-nimg10-g2.00-gi.zip'

#----------------------------------------------------------------------------
