"""edmguide.models.dit_net: a DiT network computes facebookresearch/DiT's function, from a diffusers folder
or from a `.pt` state dict with DiT's key names (tiny random networks built here; offline, CPU).

The reference is a DiT forward written out below in float64 (patchify, 2-D sin-cos position table, timestep
and class embedding, adaLN-Zero blocks, final layer, unpatchify), from the parameters in DiT's layout.

Size: depth 2, hidden 64, 4 heads, patch 2, 8x8x4 latents. Hidden 64 is not in DiT's model table, so
the `.pt` loads pass `num_heads=4` explicitly; a table size (hidden 384 at depth 1) would cost ~6x the
parameters and time for no extra coverage, and the table itself is tested by the error test and a
table-size state dict whose configuration is inferred (without running it).
"""

import json
import math
import os
import subprocess
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.models import dit_net

DEPTH, HIDDEN, HEADS, PATCH, INPUT, CH = 2, 64, 4, 2, 8, 4
NUM_CLASSES = 1000
TIMESTEPS = [0, 1, 500, 999]
LABELS = [3, 1000, 999, 0]   # 1000 = the null class

# float32 against the float64 reference (the tolerance is the 1e-5 of the output scale; why it
# holds): (a) the timestep embedding's arguments t*f_k are formed in float32, as DiT forms them, so at
# t = 999 cos/sin are off by up to ~3e-5 in the channels of mid-size f_k (see _embedding_bound); the
# timestep MLP's first layer weights each channel by ~1/sqrt(256) with random signs, which leaves
# ~1e-6..1e-5 in the O(1) conditioning; (b) ~30 further operations (2 blocks x {LayerNorm, modulation,
# q/k/v, softmax, projection, MLP}, final layer) each sum <= 256 products whose roundings (2^-24 = 6e-8)
# add like a random walk, ~sqrt(256) * 6e-8 = 1e-6 relative each, kept O(1) by LayerNorm/softmax.
# That puts the error at a few 1e-6 of the output scale: measured 3.3e-6..3.8e-6 over three input
# draws (4.3e-6 on a 12-block network of DiT-S/2's shape), a margin of ~2.5 under 1e-5. The 127-vs-128
# frequencies move the output by ~0.4 of its scale (4e4 times the tolerance). The LayerNorm eps (1e-6 vs
# 1e-5) moves it by ~3e-9, below any float32 test: its setting is pinned by
# test_set_embedding_switches_both_constants_in_every_block.
FORWARD_RTOL = 1e-5

#----------------------------------------------------------------------------
# Reference: DiT's tables and forward, written out in NumPy / float64 torch.

def dit_timestep_embedding(t):
    """DiT's 256-channel timestep embedding in float64: [cos(t f_k), sin(t f_k)], f_k = exp(-ln(1e4) k / 128)."""
    k = np.arange(128, dtype=np.float64)
    freqs = np.exp(-math.log(10000.0) * k / 128)
    args = np.asarray(t, dtype=np.float64)[:, None] * freqs[None, :]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def sincos_position_table(dim, grid):
    """DiT's fixed position table (grid*grid tokens, row-major) in float64: the first dim/2 channels
    encode a token's column, the last dim/2 its row; each half is [sin(p w_j), cos(p w_j)] with
    w_j = 10000^(-j / (dim/4)), j = 0..dim/4-1."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing='ij')

    def half(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return np.concatenate([half(cols), half(rows)], axis=1)


def _layer_norm(h, eps=1e-6):
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    return (h - mean) / torch.sqrt(var + eps)


def _gelu_tanh(u):
    return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))


def _silu(u):
    return u / (1 + torch.exp(-u))


def dit_forward_reference(P, x, t, y, *, depth=DEPTH, heads=HEADS, patch=PATCH):
    """DiT's forward in float64 from parameters P with DiT's key names."""
    P = {k: v.double() for k, v in P.items()}
    lin = lambda h, name: h @ P[f'{name}.weight'].T + P[f'{name}.bias']
    x = x.double()
    n, c, height, _ = x.shape
    g, p = height // patch, patch
    dim = P['x_embedder.proj.bias'].shape[0]
    # Patchify: token i*g + j holds pixels [i p, (i+1) p) x [j p, (j+1) p) of every channel.
    patches = x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
    h = patches @ P['x_embedder.proj.weight'].reshape(dim, c * p * p).T + P['x_embedder.proj.bias'] + P['pos_embed']
    temb = torch.from_numpy(dit_timestep_embedding(np.asarray(t)))
    cond = lin(_silu(lin(temb, 't_embedder.mlp.0')), 't_embedder.mlp.2') + P['y_embedder.embedding_table.weight'][y]
    head_dim = dim // heads
    for i in range(depth):
        mod = lin(_silu(cond), f'blocks.{i}.adaLN_modulation.1')
        shift1, scale1, gate1, shift2, scale2, gate2 = [m[:, None, :] for m in mod.split(dim, dim=1)]
        a = _layer_norm(h) * (1 + scale1) + shift1
        qkv = lin(a, f'blocks.{i}.attn.qkv').reshape(n, g * g, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        attn = (weights @ v).permute(0, 2, 1, 3).reshape(n, g * g, dim)
        h = h + gate1 * lin(attn, f'blocks.{i}.attn.proj')
        m = _layer_norm(h) * (1 + scale2) + shift2
        h = h + gate2 * lin(_gelu_tanh(lin(m, f'blocks.{i}.mlp.fc1')), f'blocks.{i}.mlp.fc2')
    shift, scale = [m[:, None, :] for m in lin(_silu(cond), 'final_layer.adaLN_modulation.1').split(dim, dim=1)]
    out = lin(_layer_norm(h) * (1 + scale) + shift, 'final_layer.linear')   # (n, g*g, p*p*c_out)
    c_out = out.shape[-1] // (p * p)
    return out.reshape(n, g, g, p, p, c_out).permute(0, 5, 1, 3, 2, 4).reshape(n, c_out, g * p, g * p)


def make_dit_params(seed=0, *, depth=DEPTH, dim=HIDDEN, patch=PATCH, input_size=INPUT, channels=CH):
    """Random parameters with DiT's key names and shapes (the zero-initialised ones too), float32.
    Weights ~ N(0, 1/fan_in) keep activations O(1); biases ~ N(0, 0.1^2); class table ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    P = {}

    def linear(name, out, inp):
        P[f'{name}.weight'] = torch.randn(out, inp, generator=gen) / math.sqrt(inp)
        P[f'{name}.bias'] = torch.randn(out, generator=gen) * 0.1
    P['x_embedder.proj.weight'] = torch.randn(dim, channels, patch, patch, generator=gen) / math.sqrt(channels * patch ** 2)
    P['x_embedder.proj.bias'] = torch.randn(dim, generator=gen) * 0.1
    P['pos_embed'] = torch.from_numpy(sincos_position_table(dim, input_size // patch)).float()[None]
    linear('t_embedder.mlp.0', dim, 256)
    linear('t_embedder.mlp.2', dim, dim)
    P['y_embedder.embedding_table.weight'] = torch.randn(NUM_CLASSES + 1, dim, generator=gen)
    for i in range(depth):
        linear(f'blocks.{i}.attn.qkv', 3 * dim, dim)
        linear(f'blocks.{i}.attn.proj', dim, dim)
        linear(f'blocks.{i}.mlp.fc1', 4 * dim, dim)
        linear(f'blocks.{i}.mlp.fc2', dim, 4 * dim)
        linear(f'blocks.{i}.adaLN_modulation.1', 6 * dim, dim)
    linear('final_layer.adaLN_modulation.1', 2 * dim, dim)
    linear('final_layer.linear', patch * patch * 2 * channels, dim)
    return P


def diffusers_weights(P, depth=DEPTH):
    """P renamed into DiTTransformer2DModel's layout (written here independently of the module's mapping)."""
    W = {}
    for s in ('weight', 'bias'):
        W[f'pos_embed.proj.{s}'] = P[f'x_embedder.proj.{s}']
        W[f'proj_out_1.{s}'] = P[f'final_layer.adaLN_modulation.1.{s}']
        W[f'proj_out_2.{s}'] = P[f'final_layer.linear.{s}']
        for i in range(depth):
            b, o = f'transformer_blocks.{i}', f'blocks.{i}'
            W[f'{b}.norm1.emb.timestep_embedder.linear_1.{s}'] = P[f't_embedder.mlp.0.{s}']
            W[f'{b}.norm1.emb.timestep_embedder.linear_2.{s}'] = P[f't_embedder.mlp.2.{s}']
            W[f'{b}.norm1.linear.{s}'] = P[f'{o}.adaLN_modulation.1.{s}']
            qkv = P[f'{o}.attn.qkv.{s}']
            W[f'{b}.attn1.to_q.{s}'], W[f'{b}.attn1.to_k.{s}'], W[f'{b}.attn1.to_v.{s}'] = (
                qkv[:HIDDEN], qkv[HIDDEN:2 * HIDDEN], qkv[2 * HIDDEN:])
            W[f'{b}.attn1.to_out.0.{s}'] = P[f'{o}.attn.proj.{s}']
            W[f'{b}.ff.net.0.proj.{s}'] = P[f'{o}.mlp.fc1.{s}']
            W[f'{b}.ff.net.2.{s}'] = P[f'{o}.mlp.fc2.{s}']
    for i in range(depth):
        W[f'transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight'] = P['y_embedder.embedding_table.weight']
    return W


def tiny_transformer(P):
    """A DiTTransformer2DModel with every parameter set from P (asserted: none keeps its initial value)."""
    from diffusers import DiTTransformer2DModel
    model = DiTTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=HIDDEN // HEADS, in_channels=CH,
                                  out_channels=2 * CH, num_layers=DEPTH, sample_size=INPUT, patch_size=PATCH)
    W = diffusers_weights(P)
    assert set(W) == set(model.state_dict())
    model.load_state_dict({k: v.clone() for k, v in W.items()}, strict=True)
    return model.eval()


def _tiny_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2,
                         norm_num_groups=8, sample_size=16)


@pytest.fixture(scope='session')
def params():
    return make_dit_params(0)


@pytest.fixture(scope='session')
def dit_folder(tmp_path_factory, params):
    """A local diffusers DiT folder (facebook/DiT-XL-2-512 layout) of the tiny network."""
    root = tmp_path_factory.mktemp('tiny-dit')
    tiny_transformer(params).save_pretrained(root / 'transformer')
    _tiny_vae().save_pretrained(root / 'vae')
    os.makedirs(root / 'scheduler')
    (root / 'scheduler' / 'scheduler_config.json').write_text(json.dumps(dict(
        _class_name='KarrasDiffusionSchedulers', beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
        num_train_timesteps=1000)))
    (root / 'model_index.json').write_text(json.dumps(dict(_class_name='DiTPipeline')))
    return str(root)


@pytest.fixture(scope='session')
def hub_layout_folder(tmp_path_factory, params):
    """The tiny network saved as facebook/DiT-XL-2-512 ships its transformer: the older generic
    `Transformer2DModel` class (config `_class_name`), with the same weight names."""
    from diffusers import Transformer2DModel
    root = tmp_path_factory.mktemp('tiny-dit-hub-layout')
    model = Transformer2DModel(num_attention_heads=HEADS, attention_head_dim=HIDDEN // HEADS, in_channels=CH,
                               out_channels=2 * CH, num_layers=DEPTH, sample_size=INPUT, patch_size=PATCH,
                               norm_type='ada_norm_zero', num_embeds_ada_norm=NUM_CLASSES,
                               activation_fn='gelu-approximate', attention_bias=True, norm_elementwise_affine=False)
    W = diffusers_weights(params)
    assert set(W) == set(model.state_dict())
    model.load_state_dict(W, strict=True)
    model.save_pretrained(root / 'transformer')
    assert json.loads((root / 'transformer' / 'config.json').read_text())['_class_name'] == 'Transformer2DModel'
    return str(root)


@pytest.fixture(scope='session')
def dit_pt(tmp_path_factory, params):
    path = tmp_path_factory.mktemp('tiny-dit-pt') / 'DiT-tiny.pt'
    torch.save(params, path)
    return str(path)


@pytest.fixture(scope='session')
def inputs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(len(TIMESTEPS), CH, INPUT, INPUT, generator=gen)
    return x, torch.tensor(TIMESTEPS), torch.tensor(LABELS)


def _rel_gap(a, ref):
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())

#----------------------------------------------------------------------------
# (1) The timestep embedding.

# |float32 - exact| of cos/sin(t f_k): f_k = exp(-ln(1e4) k/128) is computed in float32 from an exponent of
# size up to ln(1e4) = 9.21, whose rounding (<= 2 ulp: product and quotient) becomes a relative error of
# 9.21 * 2 * 2^-24 in f_k, plus <= 1 ulp from exp and 1 from the product t * f_k; the argument t f_k is
# therefore off by <= t f_k (18.4 + 2) 2^-24, and cos/sin are 1-Lipschitz and add <= 1 ulp (of 1).
def _embedding_bound(t):
    k = np.arange(128, dtype=np.float64)
    arg = np.asarray(t, dtype=np.float64)[:, None] * np.exp(-math.log(10000.0) * k / 128)[None, :]
    per_channel = arg * (18.4 + 2) * 2.0 ** -24 + 2.0 ** -24
    return np.concatenate([per_channel, per_channel], axis=1)


@pytest.mark.parametrize('source', ['folder', 'pt'])
def test_timestep_embedding_is_dits_formula(source, dit_folder, dit_pt):
    net = dit_net.load_dit_network(dit_folder if source == 'folder' else dit_pt, num_heads=HEADS)
    t = torch.tensor(TIMESTEPS)
    ref, bound = dit_timestep_embedding(TIMESTEPS), _embedding_bound(TIMESTEPS)
    for block in net.model.transformer_blocks:
        got = block.norm1.emb.time_proj(t).double().numpy()
        assert got.shape == (4, 256)
        assert np.all(np.abs(got - ref) <= bound)
    shipped = dit_net.load_dit_network(dit_folder, embedding='diffusers').model.transformer_blocks[0].norm1.emb.time_proj(t)
    off = np.abs(shipped.double().numpy() - ref) > bound
    assert not off[0].any() and off[1:].any(axis=1).all()  # t = 0 is the same in both; 1, 500, 999 are not

#----------------------------------------------------------------------------
# (2), (3) The forward, from a diffusers folder and from DiT's .pt.

@pytest.mark.parametrize('source', ['folder', 'hub-layout-folder', 'pt'])
def test_forward_equals_handwritten_dit(source, dit_folder, hub_layout_folder, dit_pt, params, inputs):
    path = {'folder': dit_folder, 'hub-layout-folder': hub_layout_folder, 'pt': dit_pt}[source]
    net = dit_net.load_dit_network(path, num_heads=HEADS)
    x, t, y = inputs
    out = net(x, t, y)
    ref = dit_forward_reference(params, x, t, y)
    assert out.dtype == torch.float32 and out.shape == (4, 2 * CH, INPUT, INPUT)
    assert _rel_gap(out, ref) <= FORWARD_RTOL


def test_loaded_network_describes_itself(dit_folder, dit_pt):
    for source in (dit_folder, dit_pt):
        net = dit_net.load_dit_network(source, num_heads=HEADS)
        assert (net.in_channels, net.input_size, net.num_classes, net.patch_size, net.depth, net.hidden_size) == \
            (CH, INPUT, NUM_CLASSES, PATCH, DEPTH, HIDDEN)
        assert net.embedding == 'dit' and net.dtype == torch.float32 and net.device.type == 'cpu'


def test_dtype_changes_the_network_not_the_interface(dit_pt, inputs):
    x, t, y = inputs
    net = dit_net.load_dit_network(dit_pt, num_heads=HEADS).to(dtype=torch.float64)
    assert net.dtype == torch.float64
    out = net(x, t.float(), y)  # float timesteps are accepted too
    assert out.dtype == torch.float32 and out.shape == (4, 2 * CH, INPUT, INPUT) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='0..1000'):
        net(x, t, torch.tensor([0, 1, 2, 1001]))
    with pytest.raises(ValueError, match='8, 8'):  # DiT has one input size (diffusers would interpolate)
        net(torch.zeros(1, CH, 2 * INPUT, 2 * INPUT), t[:1], y[:1])


def test_position_table_of_diffusers_equals_dits(dit_folder, params):
    net = dit_net.load_dit_network(dit_folder)
    table = net.model.pos_embed.pos_embed
    # Both are float64 sin/cos in [-1, 1] rounded once to float32: the same float32 or, where the two float64
    # values straddle a rounding boundary, adjacent ones, one ulp apart (2^-24 below 1; 1.0 itself is exact).
    assert (table.double() - params['pos_embed'].double()).abs().max() <= 2.0 ** -24


def test_pt_and_folder_agree_and_keep_batch_independence(dit_folder, dit_pt, inputs):
    x, t, y = inputs
    a = dit_net.load_dit_network(dit_folder)(x, t, y)
    b = dit_net.load_dit_network(dit_pt, num_heads=HEADS)(x, t, y)
    assert _rel_gap(a, b) <= 2 * FORWARD_RTOL  # each within FORWARD_RTOL of the same reference
    single = dit_net.load_dit_network(dit_pt, num_heads=HEADS)(x[2:3], t[2], y[2])  # scalar t and y broadcast
    assert _rel_gap(single, b[2:3]) <= 2 * FORWARD_RTOL

#----------------------------------------------------------------------------
# (4) diffusers' forward as shipped, by name.

def test_diffusers_embedding_is_shipped_diffusers_exactly_and_differs_from_dit(dit_folder, dit_pt, params, inputs):
    from diffusers import DiTTransformer2DModel
    x, t, y = inputs
    shipped = DiTTransformer2DModel.from_pretrained(dit_folder, subfolder='transformer').eval()
    with torch.no_grad():
        expected = shipped(x, timestep=t, class_labels=y, return_dict=False)[0]
    as_diffusers = dit_net.load_dit_network(dit_folder, embedding='diffusers')
    assert as_diffusers.embedding == 'diffusers'
    assert torch.equal(as_diffusers(x, t, y), expected)
    ref = dit_forward_reference(params, x, t, y)
    assert _rel_gap(expected, ref) > 100 * FORWARD_RTOL  # measured 0.40: the 127 vs 128 frequencies
    pt_as_diffusers = dit_net.load_dit_network(dit_pt, embedding='diffusers', num_heads=HEADS)
    assert _rel_gap(pt_as_diffusers(x, t, y), expected) <= 2 * FORWARD_RTOL


def test_set_embedding_switches_both_constants_in_every_block(dit_folder):
    net = dit_net.load_dit_network(dit_folder)
    blocks = net.model.transformer_blocks
    assert [b.norm1.emb.time_proj.downscale_freq_shift for b in blocks] == [0] * DEPTH
    assert [b.norm3.eps for b in blocks] == [1e-6] * DEPTH
    dit_net.set_embedding(net.model, 'diffusers')
    assert [b.norm1.emb.time_proj.downscale_freq_shift for b in blocks] == [1] * DEPTH
    assert [b.norm3.eps for b in blocks] == [1e-5] * DEPTH
    with pytest.raises(UserError, match='dit_embedding'):
        dit_net.load_dit_network(dit_folder, embedding='dit2')

#----------------------------------------------------------------------------
# (5) Errors: one line that names the file and what was found.

def _one_line_error(call, *needles):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert '\n' not in message
    for needle in needles:
        assert needle in message
    return message


def test_pt_errors_name_the_file_and_what_was_found(tmp_path, params):
    not_dit = tmp_path / 'resnet.pt'
    torch.save({'conv1.weight': torch.zeros(3), 'fc.bias': torch.zeros(2)}, not_dit)
    _one_line_error(lambda: dit_net.load_dit_network(not_dit), str(not_dit), 'not a DiT state dict', 'conv1.weight')
    tiny = tmp_path / 'tiny.pt'
    torch.save(params, tiny)
    _one_line_error(lambda: dit_net.load_dit_network(tiny), str(tiny), 'hidden size 64', "model table", 'depth 2')
    text = tmp_path / 'notes.pt'
    text.write_text('hello')
    _one_line_error(lambda: dit_net.load_dit_network(text), str(text), 'weights_only')
    _one_line_error(lambda: dit_net.load_dit_network(tmp_path / 'missing.pt'), 'missing.pt', 'no such file')
    extra = tmp_path / 'extra.pt'
    torch.save({**params, 'head.weight': torch.zeros(1)}, extra)
    _one_line_error(lambda: dit_net.load_dit_network(extra, num_heads=HEADS), str(extra), 'head.weight')


def test_cli_wrapper_prints_one_error_line(tmp_path, capsys):
    from edmguide.util.errors import run_cli
    bad = tmp_path / 'model.pt'
    torch.save({'weight': torch.zeros(2)}, bad)
    with pytest.raises(SystemExit) as info:
        run_cli(dit_net.load_dit_network, bad)
    err = capsys.readouterr().err
    assert info.value.code != 0 and err.count('\n') == 1 and err.startswith('error: ') and str(bad) in err


def test_head_count_comes_from_dits_table():
    sd = make_dit_params(0, depth=1, dim=384, input_size=4)
    config = dit_net.infer_dit_config(sd, 'DiT-S.pt')
    assert (config['num_attention_heads'], config['attention_head_dim'], config['num_layers'],
            config['sample_size'], config['patch_size'], config['in_channels'], config['out_channels'],
            config['num_embeds_ada_norm']) == (6, 64, 1, 4, 2, 4, 8, 1000)
    assert [dit_net.HEADS_BY_HIDDEN[h] for h in (384, 768, 1024, 1152)] == [6, 12, 16, 16]


def test_folder_with_per_block_embedders_is_not_dit(tmp_path, params, inputs):
    model = tiny_transformer(params)
    with torch.no_grad():
        model.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(0.5)
    model.save_pretrained(tmp_path / 'transformer')
    _one_line_error(lambda: dit_net.load_dit_network(str(tmp_path)), str(tmp_path), 'block 1', 'dit_embedding=diffusers')
    x, t, y = inputs
    assert torch.isfinite(dit_net.load_dit_network(str(tmp_path), embedding='diffusers')(x, t, y)).all()


def test_folder_errors(tmp_path):
    _one_line_error(lambda: dit_net.load_dit_network(str(tmp_path)), str(tmp_path), 'transformer/')
    _one_line_error(lambda: dit_net.load_dit_network('no-such-owner/no-such-dit'), 'no-such-owner/no-such-dit')
    _one_line_error(lambda: dit_net.load_dit_network('nothing-here'), 'nothing-here', 'no such file')

#----------------------------------------------------------------------------
# The VAE.

def test_vae_decodes_latents_over_0_18215_to_uint8(dit_folder):
    from diffusers import AutoencoderKL
    vae = dit_net.load_dit_vae(dit_folder)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    images = vae.decode(latents)
    assert images.dtype == torch.uint8 and images.shape == (2, 16, 16, 3)
    plain = AutoencoderKL.from_pretrained(dit_folder, subfolder='vae').eval()
    with torch.no_grad():
        decoded = plain.decode(latents * (1 / 0.18215), return_dict=False)[0].double().numpy()
    # x -> floor(clip(127.5 x + 128, 0, 255)), as DiT's sample_ddp.py; 1/0.18215 vs / 0.18215 and
    # float32 vs float64 in the affine map may move a value across an integer: at most 1 LSB.
    expected = np.floor(np.clip(127.5 * decoded + 128, 0, 255)).transpose(0, 2, 3, 1)
    assert np.abs(images.numpy().astype(np.float64) - expected).max() <= 1
    assert len(np.unique(images.numpy())) > 10  # a random decoder: the images are not constant


def test_vae_names():
    assert dit_net.vae_source(None) == ('stabilityai/sd-vae-ft-ema', None)
    assert dit_net.vae_source('mse') == ('stabilityai/sd-vae-ft-mse', None)
    assert dit_net.vae_source('someone/vae') == ('someone/vae', None)
    _one_line_error(lambda: dit_net.load_dit_vae('no-such-owner/no-such-vae'), 'no-such-owner/no-such-vae')

#----------------------------------------------------------------------------
# (6) Lazy imports.

def test_module_does_not_import_diffusers():
    code = ('import sys, generate_images; from edmguide.sampler import sampling; from edmguide.jobs import generation; from edmguide.nets import loading; '
            'from edmguide.models import dit_net; print([m for m in ("diffusers", "transformers") if m in sys.modules])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == '[]'
