"""Tests for training/networks_edm2.py and training/presets.py.

The numerical tests compare the network with an independent float64 re-computation of the spec's
formulas written below from the state_dict alone (it does not call the module's functions).
"""

import math
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import dnnlib
from training import networks_edm2, presets
from training.encoders import StandardRGBEncoder

#----------------------------------------------------------------------------
# Independent float64 reference of the spec (edm2-network.md), driven by the state_dict.

CHANNELS_PER_HEAD = 8

def ref_normalize(x, dims, eps=1e-4):
    count = math.prod(x.shape[d] for d in dims)
    norm = x.square().sum(dim=dims, keepdim=True).sqrt()
    return x / (eps + norm / math.sqrt(count))

def ref_weight(weight, gain=None):
    """Normalized, gain-scaled float64 weight; a tensor gain is divided in its own dtype first."""
    fan_in = math.prod(weight.shape[1:])
    w = ref_normalize(weight.double(), list(range(1, weight.ndim)))
    if gain is None:
        return w / math.sqrt(fan_in)
    return w * (gain / math.sqrt(fan_in)).double()

def ref_conv(sd, key, x, gain=None):
    w = ref_weight(sd[key + '.weight'], gain)
    if w.ndim == 2:
        return x @ w.t()
    return F.conv2d(x, w, padding=w.shape[-1] // 2)

def ref_silu(x):
    return x * torch.sigmoid(x) / 0.596

def ref_sum(a, b, t):
    return ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t ** 2)

def ref_cat(a, b, t):
    na, nb = a.shape[1], b.shape[1]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (scale * (1 - t) / math.sqrt(na)), b * (scale * t / math.sqrt(nb))], dim=1)

def ref_fourier(sd, key, x):
    freqs, phases = sd[key + '.freqs'].double(), sd[key + '.phases'].double()
    return torch.cos(x[:, None] * freqs[None, :] + phases[None, :]) * math.sqrt(2)

def ref_attention(qkv, num_heads):
    n, c3, h, w = qkv.shape
    c = c3 // 3 // num_heads
    out = torch.zeros(n, num_heads * c, h * w, dtype=qkv.dtype)
    flat = qkv.reshape(n, c3, h * w)
    for head in range(num_heads):
        # Channel layout of qkv: head * 3c + ch * 3 + s, with s = 0, 1, 2 for q, k, v.
        parts = [flat[:, head * 3 * c + torch.arange(c) * 3 + s, :] for s in range(3)]
        q, k, v = [ref_normalize(p, [1]) for p in parts]          # [n, c, hw], unit RMS over c
        logits = torch.einsum('ncq,nck->nqk', q, k) / math.sqrt(c)
        weights = torch.softmax(logits, dim=2)
        out[:, head * c:(head + 1) * c, :] = torch.einsum('nqk,nck->ncq', weights, v)
    return out.reshape(n, num_heads * c, h, w)

def ref_block(sd, key, x, emb, flavor, mode):
    has = lambda name: f'{key}.{name}.weight' in sd
    if mode == 'down':
        x = F.avg_pool2d(x, 2)
    elif mode == 'up':
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    if flavor == 'enc':
        if has('conv_skip'):
            x = ref_conv(sd, f'{key}.conv_skip', x)
        x = ref_normalize(x, [1])
    y = ref_conv(sd, f'{key}.conv_res0', ref_silu(x))
    c = ref_conv(sd, f'{key}.emb_linear', emb, gain=sd[f'{key}.emb_gain']) + 1
    y = ref_silu(y * c[:, :, None, None])
    y = ref_conv(sd, f'{key}.conv_res1', y)
    if flavor == 'dec' and has('conv_skip'):
        x = ref_conv(sd, f'{key}.conv_skip', x)
    x = ref_sum(x, y, 0.3)
    if has('attn_qkv'):
        y = ref_attention(ref_conv(sd, f'{key}.attn_qkv', x), x.shape[1] // CHANNELS_PER_HEAD)
        x = ref_sum(x, ref_conv(sd, f'{key}.attn_proj', y), 0.3)
    return x.clamp(-256, 256)

def module_names(sd, prefix):
    names = []
    for key in sd:
        if key.startswith(prefix):
            name = key[len(prefix):].split('.')[0]
            if name not in names:
                names.append(name)
    return names

def ref_precond(sd, x, sigma, labels, sigma_data=0.5):
    x = x.double()
    sigma = sigma.double().reshape(-1, 1, 1, 1)
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / torch.sqrt(sigma ** 2 + sigma_data ** 2)
    c_in = 1 / torch.sqrt(sigma ** 2 + sigma_data ** 2)
    c_noise = torch.log(sigma.flatten()) / 4

    emb = ref_conv(sd, 'unet.emb_noise', ref_fourier(sd, 'unet.emb_fourier', c_noise))
    if 'unet.emb_label.weight' in sd:
        labels = labels.double()
        emb = ref_sum(emb, ref_conv(sd, 'unet.emb_label', labels * math.sqrt(labels.shape[1])), 0.5)
    emb = ref_silu(emb)

    h = c_in * x
    h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
    skips = []
    for name in module_names(sd, 'unet.enc.'):
        if name.endswith('_conv'):
            h = ref_conv(sd, f'unet.enc.{name}', h)
        else:
            h = ref_block(sd, f'unet.enc.{name}', h, emb, 'enc', 'down' if name.endswith('_down') else 'keep')
        skips.append(h)
    for name in module_names(sd, 'unet.dec.'):
        if '_block' in name:
            h = ref_cat(h, skips.pop(), 0.5)
        h = ref_block(sd, f'unet.dec.{name}', h, emb, 'dec', 'up' if name.endswith('_up') else 'keep')
    out = ref_conv(sd, 'unet.out_conv', h, gain=sd['unet.out_gain'])
    denoised = c_skip * x + c_out * out
    logvar = ref_conv(sd, 'logvar_linear', ref_fourier(sd, 'logvar_fourier', c_noise)).reshape(-1, 1, 1, 1)
    return denoised, logvar

#----------------------------------------------------------------------------
# Fixtures.

def make_tiny_net(label_dim=3, seed=0):
    """Small Precond with every parameter random (the gains start at zero otherwise)."""
    torch.manual_seed(seed)
    net = networks_edm2.Precond(img_resolution=8, img_channels=3, label_dim=label_dim, model_channels=16,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], channels_per_head=CHANNELS_PER_HEAD)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if param.ndim == 0:
                param.copy_(torch.rand([]) * 1.5 + 0.25)
            else:
                param.copy_(torch.randn_like(param))
    return net.eval().requires_grad_(False)

def make_inputs(label_dim, batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=gen) * 2
    sigma = torch.tensor([0.05, 1.3, 40.0])[:batch]
    labels = torch.softmax(torch.randn(batch, label_dim, generator=gen), dim=1) if label_dim else None
    return x, sigma, labels

def assert_close_relative(actual, expected, rtol=1e-5):
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f'max error {err:.3g} vs scale {scale:.3g}'

#----------------------------------------------------------------------------
# Numerical agreement with the spec.

@pytest.mark.parametrize('label_dim', [3, 0])
def test_precond_matches_float64_reference(label_dim):
    net = make_tiny_net(label_dim)
    x, sigma, labels = make_inputs(label_dim)
    denoised, logvar = net(x, sigma, labels, return_logvar=True)
    assert denoised.dtype == torch.float32 and denoised.shape == x.shape
    sd = net.state_dict()
    ref_denoised, ref_logvar = ref_precond(sd, x, sigma, labels)
    assert_close_relative(denoised, ref_denoised)
    assert_close_relative(logvar, ref_logvar)
    # The U-Net branch must matter, otherwise the comparison would only test c_skip * x.
    c_skip = 0.25 / (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25)
    assert (denoised - c_skip * x).abs().max() > 0.1

def test_reference_exercises_attention_resampling_and_skips():
    keys = make_tiny_net().state_dict().keys()
    assert 'unet.enc.4x4_block0.attn_qkv.weight' in keys
    assert 'unet.dec.4x4_in0.attn_qkv.weight' in keys
    assert 'unet.enc.4x4_down.emb_gain' in keys and 'unet.dec.8x8_up.emb_gain' in keys
    assert 'unet.enc.4x4_block0.conv_skip.weight' in keys

def test_fp16_weights_as_in_released_pickles_match_reference():
    net = make_tiny_net(3).to(torch.float16)
    assert all(t.dtype == torch.float16 for t in net.state_dict().values())
    x, sigma, labels = make_inputs(3)
    out = net(x, sigma, labels)
    assert out.dtype == torch.float32
    ref, _ = ref_precond(net.state_dict(), x, sigma, labels)
    assert_close_relative(out, ref)

def test_scalar_sigma_and_missing_labels_mean_zero_label():
    net = make_tiny_net(3)
    x, _, _ = make_inputs(3, batch=2)
    sigma = torch.tensor(2.5)
    out = net(x, sigma)
    ref, _ = ref_precond(net.state_dict(), x, sigma.repeat(2), torch.zeros(2, 3))
    assert_close_relative(out, ref)

def test_unconditional_net_ignores_class_labels():
    net = make_tiny_net(0)
    x, sigma, _ = make_inputs(0)
    assert torch.equal(net(x, sigma), net(x, sigma, torch.ones(3, 5)))

def test_mp_primitives_preserve_unit_magnitude():
    torch.manual_seed(0)
    a, b = torch.randn(4, 64, 16, 16), torch.randn(4, 32, 16, 16)
    assert networks_edm2.mp_sum(a, torch.randn_like(a), t=0.3).square().mean().item() == pytest.approx(1, rel=0.05)
    assert networks_edm2.mp_cat(a, b, t=0.5).square().mean().item() == pytest.approx(1, rel=0.05)
    assert networks_edm2.normalize(a).square().mean(dim=[1, 2, 3]).sub(1).abs().max() < 1e-3
    up = networks_edm2.resample(a, mode='up')
    assert torch.equal(up[:, :, ::2, ::2], a) and torch.equal(up[:, :, 1::2, 1::2], a)
    assert torch.allclose(networks_edm2.resample(a, mode='down'), F.avg_pool2d(a, 2))
    assert networks_edm2.resample(a) is a

def test_training_mode_normalizes_weights_in_place_and_eval_does_not():
    net = make_tiny_net(3)
    x, sigma, labels = make_inputs(3)
    weight = net.unet.out_conv.weight
    before = weight.clone()
    net(x, sigma, labels)
    assert torch.equal(weight, before)
    net.train()
    net(x, sigma, labels)
    rms = weight.square().mean(dim=[1, 2, 3])
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)

#----------------------------------------------------------------------------
# Pickles.

def released_style_pickle(net):
    ema = net.eval().requires_grad_(False).to(torch.float16)
    return pickle.dumps(dnnlib.EasyDict(ema=ema, encoder=StandardRGBEncoder()))

def test_pickle_round_trip_keeps_weights_and_outputs():
    x, sigma, labels = make_inputs(3)
    for ema in [make_tiny_net(3), make_tiny_net(3).to(torch.float16)]:
        data = pickle.loads(pickle.dumps(dnnlib.EasyDict(ema=ema, encoder=StandardRGBEncoder())))
        assert isinstance(data, dnnlib.EasyDict) and list(data.keys()) == ['ema', 'encoder']
        loaded = data.ema
        assert loaded is not ema
        assert loaded.state_dict().keys() == ema.state_dict().keys()
        for key, value in ema.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value) and loaded.state_dict()[key].dtype == value.dtype
        assert torch.equal(loaded(x, sigma, labels), ema(x, sigma, labels))
        assert loaded.init_kwargs == ema.init_kwargs
    assert ema.unet.out_gain.dtype == torch.float16 and loaded.unet.out_gain.dtype == torch.float16

def test_pickle_loads_in_fresh_process_from_embedded_source(tmp_path):
    net = make_tiny_net(3)
    x, sigma, labels = make_inputs(3)
    path = tmp_path / 'net.pkl'
    path.write_bytes(released_style_pickle(net))
    torch.save(dict(x=x, sigma=sigma, labels=labels, out=net(x, sigma, labels)), tmp_path / 'io.pt')
    script = textwrap.dedent(f'''
        import pickle, sys, torch
        data = pickle.load(open({str(path)!r}, 'rb'))
        assert 'training.networks_edm2' not in sys.modules   # classes come from the pickle's source
        io = torch.load({str(tmp_path / 'io.pt')!r})
        assert torch.equal(data['ema'](io['x'], io['sigma'], io['labels']), io['out'])
        print('ok', type(data['ema']).__module__)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('ok _imported_module_')

#----------------------------------------------------------------------------
# Presets: sizes and state_dict layout.

@pytest.mark.parametrize('name, label_dim, expected', [
    ('img512-xs', 1000, 124_713_253),
    ('img512-s', 1000, 280_212_837),
    ('img512-m', 1000, 497_807_781),
    ('img512-l', 1000, 777_498_085),
    ('img512-xl', 1000, 1_119_283_749),
    ('img512-xxl', 1000, 1_523_164_773),
    ('img512-xxs', 0, 31_053_029),
    ('img512-s', 0, 279_444_837),
    ('img64-s', 1000, 280_209_381),
    ('img64-xl', 0, 1_117_740_837),
])
def test_preset_parameter_counts_match_spec(name, label_dim, expected):
    with torch.device('meta'):
        net = presets.build_edm2_network(name, label_dim=label_dim)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert sum(b.numel() for b in net.buffers()) == 2 * (presets.get_preset(name)['channels'] + 128)

def test_preset_records_init_kwargs_like_trained_pickles():
    with torch.device('meta'):
        net = presets.build_edm2_network('edm2-img64-m', label_dim=1000)
    assert net.init_args == ()
    assert dict(net.init_kwargs) == dict(model_channels=256, dropout=0.1, use_fp16=True, img_resolution=64,
        img_channels=3, label_dim=1000)
    assert net.unet.enc['64x64_block0'].dropout == 0.1
    assert presets.get_preset('img512-xxl')['duration'] == 896 * 2 ** 20
    with pytest.raises(KeyError):
        presets.get_preset('img512-huge')

def test_img512_s_state_dict_layout_matches_worked_example():
    with torch.device('meta'):
        net = presets.build_edm2_network('img512-s', label_dim=1000)
    sd = net.state_dict()
    keys = list(sd.keys())
    assert keys[:6] == ['unet.out_gain', 'unet.emb_fourier.freqs', 'unet.emb_fourier.phases',
        'unet.emb_noise.weight', 'unet.emb_label.weight', 'unet.enc.64x64_conv.weight']
    assert keys[-4:] == ['unet.out_conv.weight', 'logvar_fourier.freqs', 'logvar_fourier.phases', 'logvar_linear.weight']

    enc = [f'{r}x{r}_{s}' for r, first in [(64, 'conv'), (32, 'down'), (16, 'down'), (8, 'down')]
        for s in [first, 'block0', 'block1', 'block2']]
    dec = ['8x8_in0', '8x8_in1'] + [f'8x8_block{i}' for i in range(4)] + [f'{r}x{r}_{s}'
        for r in [16, 32, 64] for s in ['up', 'block0', 'block1', 'block2', 'block3']]
    assert module_names(sd, 'unet.enc.') == enc
    assert module_names(sd, 'unet.dec.') == dec
    p = 'unet.dec.16x16_block0'
    assert [k for k in keys if k.startswith(p + '.')] == [f'{p}.{n}' for n in ['emb_gain', 'conv_res0.weight',
        'emb_linear.weight', 'conv_res1.weight', 'conv_skip.weight', 'attn_qkv.weight', 'attn_proj.weight']]

    shapes = {
        'unet.out_gain': [],
        'unet.emb_fourier.freqs': [192],
        'unet.emb_noise.weight': [768, 192],
        'unet.emb_label.weight': [768, 1000],
        'unet.enc.64x64_conv.weight': [192, 5, 3, 3],
        'unet.enc.64x64_block1.conv_res0.weight': [192, 192, 3, 3],
        'unet.enc.32x32_block0.conv_res0.weight': [384, 384, 3, 3],
        'unet.enc.32x32_block0.conv_skip.weight': [384, 192, 1, 1],
        'unet.enc.16x16_block0.attn_qkv.weight': [1728, 576, 1, 1],
        'unet.enc.8x8_block2.attn_proj.weight': [768, 768, 1, 1],
        'unet.dec.8x8_in0.attn_qkv.weight': [2304, 768, 1, 1],
        'unet.dec.8x8_block0.conv_res0.weight': [768, 1536, 3, 3],
        'unet.dec.8x8_block3.conv_res0.weight': [768, 1344, 3, 3],
        'unet.dec.16x16_block0.conv_res0.weight': [576, 1344, 3, 3],
        'unet.dec.16x16_block3.conv_skip.weight': [576, 960, 1, 1],
        'unet.dec.32x32_block0.conv_res0.weight': [384, 960, 3, 3],
        'unet.dec.64x64_block0.conv_skip.weight': [192, 576, 1, 1],
        'unet.dec.64x64_block3.emb_linear.weight': [192, 768],
        'unet.out_conv.weight': [4, 192, 3, 3],
        'logvar_linear.weight': [1, 128],
    }
    for key, shape in shapes.items():
        assert list(sd[key].shape) == shape, key
    for absent in ['unet.dec.8x8_in1.attn_qkv.weight', 'unet.enc.32x32_block1.attn_qkv.weight',
            'unet.enc.64x64_block0.conv_skip.weight', 'unet.enc.16x16_down.conv_skip.weight']:
        assert absent not in sd
    assert net.unet.enc['16x16_block0'].num_heads == 9 and net.unet.dec['8x8_in0'].num_heads == 12
    assert all(block.conv_skip is not None for name, block in net.unet.dec.items() if 'block' in name)
    assert not hasattr(net, 'sigma_min') and not hasattr(net, 'round_sigma')

#----------------------------------------------------------------------------
