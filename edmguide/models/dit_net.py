"""DiT networks that compute facebookresearch/DiT's function, from an official `.pt` or a diffusers folder.

Two sources give the same network:

- an official checkpoint (`DiT-XL-2-512x512.pt`, `DiT-XL-2-256x256.pt`): a plain state dict with DiT's own
  key names, opened with `torch.load(..., weights_only=True)` only (no pickled code runs). Its shape
  (depth, hidden size, patch, input size, channels, classes) is read from the tensors; the head count
  comes from DiT's model table (hidden size 384/768/1024/1152 -> 6/12/16/16 heads);
- a diffusers folder or hub id laid out as `facebook/DiT-XL-2-512` (`transformer/`, `vae/`, `scheduler/`),
  through `diffusers.DiTTransformer2DModel`.

Both end as a `DiTTransformer2DModel` inside `DiTNetwork`, so there is one forward and one place that
fixes its constants (`set_embedding`). diffusers' DiT block differs from DiT's in two constants:

- the timestep frequencies: DiT uses f_k = exp(-ln(10000) * k / 128), k = 0..127 (cos first, then sin);
  diffusers' `CombinedTimestepLabelEmbeddings` is built with `downscale_freq_shift=1`, i.e. divides by
  127. This moves the output of a random network by a third of its scale (README, DiT section);
- the LayerNorm before each block's MLP: DiT's eps is 1e-6, diffusers' `norm_eps` defaults to 1e-5 (far
  below float32 rounding in effect, but DiT's value all the same).

`embedding='dit'` (the default) sets both to DiT's values; `embedding='diffusers'` keeps diffusers'
forward exactly as it ships (to compare with `DiTPipeline`).

The VAE (`load_dit_vae`) decodes as DiT does: `latents / 0.18215` through `AutoencoderKL` in float32, then
to 8 bits as DiT's `sample_ddp.py` does (clamp(127.5 x + 128) truncated).

diffusers is imported inside functions only: the EDM2 paths never need it.
"""

import math
import os
import re

import torch

from edmguide.util.errors import UserError

# DiT's model table: hidden size -> heads (DiT-S, -B, -L, -XL).
HEADS_BY_HIDDEN = {384: 6, 768: 12, 1024: 16, 1152: 16}
EMBEDDINGS = ('dit', 'diffusers')
MLP_RATIO = 4
LATENT_SCALE = 0.18215
VAES = {'ema': 'stabilityai/sd-vae-ft-ema', 'mse': 'stabilityai/sd-vae-ft-mse'}
DEFAULT_VAE = 'ema'

# The constants in which diffusers' DiT block differs from DiT's (see the module docstring).
DIT_FREQ_SHIFT = 0          # f_k = 10000^(-k/(128 - shift)): DiT divides by 128
DIFFUSERS_FREQ_SHIFT = 1    # diffusers' CombinedTimestepLabelEmbeddings divides by 127
DIT_NORM_EPS = 1e-6         # DiT's LayerNorms; diffusers' norm3 uses the config's norm_eps (1e-5 by default)

#----------------------------------------------------------------------------
# The one place that sets DiT's constants.

def set_embedding(model, embedding='dit'):
    """Give a `DiTTransformer2DModel` DiT's constants ('dit') or diffusers' as shipped ('diffusers'):
    the timestep-frequency shift of every block's `norm1.emb.time_proj` and the eps of every block's
    `norm3`. Verifies that every block has both; returns `model`."""
    if embedding not in EMBEDDINGS:
        raise UserError(f'--dit_embedding={embedding}: must be one of {", ".join(EMBEDDINGS)}')
    blocks = list(getattr(model, 'transformer_blocks', []))
    if len(blocks) == 0:
        raise ValueError('set_embedding: the model has no transformer_blocks')
    shift = DIT_FREQ_SHIFT if embedding == 'dit' else DIFFUSERS_FREQ_SHIFT
    eps = DIT_NORM_EPS if embedding == 'dit' else model.config.norm_eps
    for i, block in enumerate(blocks):
        time_proj = getattr(getattr(getattr(block, 'norm1', None), 'emb', None), 'time_proj', None)
        norm3 = getattr(block, 'norm3', None)
        if time_proj is None or not hasattr(time_proj, 'downscale_freq_shift') or not hasattr(norm3, 'eps'):
            raise ValueError(f'set_embedding: block {i} has no norm1.emb.time_proj or norm3 (not a DiT block)')
        time_proj.downscale_freq_shift = shift
        norm3.eps = eps
    return model

#----------------------------------------------------------------------------
# The network as the sampler sees it.

class DiTNetwork:
    """DiT's network as a plain callable: `net(x, t, y)` with latents x (N, C, H, W) float32, ORIGINAL
    timesteps t (N,) in 0..999 (long or float), class labels y (N,) long (`num_classes` = the null class);
    returns (N, 2C, H, W) float32: C channels of epsilon, then C variance values (learn_sigma)."""

    def __init__(self, model, embedding='dit', source=None):
        self.model = set_embedding(model, embedding).eval().requires_grad_(False)
        self.embedding = embedding
        self.source = source
        cfg = model.config
        self.in_channels = cfg.in_channels
        self.out_channels = model.out_channels
        self.input_size = cfg.sample_size
        self.patch_size = cfg.patch_size
        self.depth = cfg.num_layers
        self.num_heads = cfg.num_attention_heads
        self.hidden_size = cfg.num_attention_heads * cfg.attention_head_dim
        self.num_classes = cfg.num_embeds_ada_norm
        self.null_class = self.num_classes
        if self.out_channels != 2 * self.in_channels:
            raise UserError(f'{source}: the network has {self.out_channels} output channels for {self.in_channels} '
                            f'input channels; DiT learns its variance (learn_sigma) and has twice as many')

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None):
        """Move (and optionally cast, e.g. to float16 on CUDA) the network; returns self."""
        kwargs = {} if device is None else dict(device=device)
        if dtype is not None and dtype != self.dtype:  # diffusers warns whenever `dtype` is passed at all
            kwargs['dtype'] = dtype
        if kwargs:
            self.model.to(**kwargs)
        return self

    @torch.no_grad()
    def __call__(self, x, t, y):
        size = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, size, size):
            # (diffusers would interpolate its position table to another size; DiT has one size)
            raise ValueError(f'DiTNetwork: expected latents (N, {self.in_channels}, {size}, {size}), got {tuple(x.shape)}')
        n = x.shape[0]
        t = torch.as_tensor(t, device=self.device).reshape(-1)
        y = torch.as_tensor(y, device=self.device).reshape(-1).long()
        t = t.expand(n) if t.numel() == 1 else t
        y = y.expand(n) if y.numel() == 1 else y
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.null_class):  # not a device-side assert
            raise ValueError(f'DiTNetwork: class labels must lie in 0..{self.null_class} ({self.null_class} = null)')
        out = self.model(x.to(self.device, self.dtype), timestep=t, class_labels=y, return_dict=False)[0]
        return out.float()

    def __repr__(self):
        return (f'DiTNetwork({self.source!r}, depth={self.depth}, hidden={self.hidden_size}, '
                f'heads={self.num_heads}, patch={self.patch_size}, input={self.input_size}, embedding={self.embedding!r})')

#----------------------------------------------------------------------------
# Loading.

def load_dit_network(source, *, embedding='dit', device='cpu', dtype=torch.float32, num_heads=None):
    """A `DiTNetwork` computing DiT's function (or diffusers' as shipped, `embedding='diffusers'`).

    `source` is an official DiT checkpoint (a `.pt`/`.pth` plain state dict with DiT's key names), a
    diffusers folder (with `transformer/`, or a transformer folder itself) or a hub id such as
    `facebook/DiT-XL-2-512` (diffusers' cache; offline when cached or with HF_HUB_OFFLINE=1).

    Why the `.pt` goes into diffusers' class rather than a module of our own: both sources then run
    the same forward, so what the tests pin for one holds for the other, and DiT's constants are set in
    one place (`set_embedding`) for both; a second implementation of the transformer would be a second
    thing to keep equal to DiT. The key mapping is plain (qkv split into q, k, v; the one timestep and
    class embedder copied into every block, as diffusers' layout has one per block).

    Why DiT's constants are set after loading: diffusers' DiT block divides the timestep frequencies by
    127 where DiT divides by 128 (module docstring), which moves the output by about a third of its
    scale; a network loaded by diffusers as it ships is therefore not DiT's. `set_embedding` puts DiT's
    values into every block ('dit', the default) or leaves diffusers' ('diffusers').

    `num_heads` overrides DiT's model table for a `.pt` (needed only for sizes outside it, e.g. tests;
    a diffusers config names its heads). `dtype` float32 is what DiT samples with; float16 on CUDA is
    an option for speed, not a reproduction.
    """
    if embedding not in EMBEDDINGS:
        raise UserError(f'--dit_embedding={embedding}: must be one of {", ".join(EMBEDDINGS)}')
    source = os.fspath(source)
    if os.path.isfile(source) or re.search(r'\.(pt|pth)$', source):
        model = _model_from_state_dict(source, num_heads, dtype)
    else:
        model = _model_from_diffusers(source, embedding, dtype)
    return DiTNetwork(model, embedding, source).to(torch.device(device))


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _dit_class():
    import diffusers
    cls = getattr(diffusers, 'DiTTransformer2DModel', None)
    if cls is None:  # split out of Transformer2DModel in diffusers 0.29
        raise UserError(f'DiT needs diffusers.DiTTransformer2DModel (diffusers 0.29 or newer); '
                        f'diffusers {diffusers.__version__} is installed')
    return cls


def _from_pretrained_kwargs(dtype):
    # Without accelerate, diffusers logs a paragraph before falling back to a plain init; ask for that directly.
    import importlib.util
    return dict(torch_dtype=dtype, low_cpu_mem_usage=importlib.util.find_spec('accelerate') is not None)


def _model_from_diffusers(source, embedding, dtype):
    DiTTransformer2DModel = _dit_class()
    subfolder = 'transformer'
    if os.path.isdir(source) and not os.path.isdir(os.path.join(source, 'transformer')):
        if not os.path.isfile(os.path.join(source, 'config.json')):
            raise UserError(f'--dit={source}: a folder with neither transformer/ (a diffusers DiT pipeline) '
                            f'nor config.json (a DiTTransformer2DModel)')
        subfolder = None
    elif not os.path.isdir(source) and not re.fullmatch(r'[\w.-]+/[\w.-]+', source):
        raise UserError(f'--dit={source}: no such file or folder (expected a DiT .pt, a diffusers folder or a hub id)')
    try:
        model = DiTTransformer2DModel.from_pretrained(source, subfolder=subfolder, **_from_pretrained_kwargs(dtype))
    except (OSError, ValueError, EnvironmentError, KeyError, TypeError) as exc:
        raise UserError(f'--dit={source}: cannot load a DiTTransformer2DModel ({_first_line(exc)})') from None
    if embedding == 'dit':
        _check_one_embedder(model, source)
    return model


def _check_one_embedder(model, source):
    """DiT has one timestep/class embedder; a diffusers DiT holds a copy per block. Copies that differ
    mean the network is not DiT's (then only embedding='diffusers' describes it)."""
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for i, block in enumerate(model.transformer_blocks[1:], start=1):
        for name, value in block.norm1.emb.state_dict().items():
            if not torch.equal(value, first[name]):
                raise UserError(f'--dit={source}: block {i} has its own timestep/class embedder ({name} differs from '
                                f'block 0), so this is not a DiT network; use --dit_embedding=diffusers to run it as diffusers does')

#----------------------------------------------------------------------------
# The official .pt: DiT's key names -> DiTTransformer2DModel.

def _load_state_dict(path):
    if not os.path.isfile(path):
        raise UserError(f'--dit={path}: no such file')
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickled objects other than tensors
        raise UserError(f'{path}: not a plain state dict that torch.load(weights_only=True) opens '
                        f'({_first_line(exc)})') from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f'{path}: not a DiT state dict (found a {type(sd).__name__}, not a dict of tensors)')
    return sd


def _describe_keys(sd, count=3):
    keys = list(sd)
    return f'{len(keys)} tensors: ' + ', '.join(keys[:count]) + (', ...' if len(keys) > count else '')


def infer_dit_config(sd, path, num_heads=None):
    """DiTTransformer2DModel arguments from a DiT state dict (see `load_dit_network`)."""
    needed = ('x_embedder.proj.weight', 'pos_embed', 't_embedder.mlp.0.weight', 'y_embedder.embedding_table.weight',
              'blocks.0.attn.qkv.weight', 'final_layer.linear.weight')
    missing = [k for k in needed if k not in sd]
    if missing:
        raise UserError(f'{path}: not a DiT state dict (no {missing[0]}; found {_describe_keys(sd)})')
    hidden, in_channels, patch, patch_w = sd['x_embedder.proj.weight'].shape
    depth = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r'blocks\.(\d+)\.', k)] if m)
    tokens = sd['pos_embed'].shape[1]
    grid = math.isqrt(tokens)
    out_channels = sd['final_layer.linear.weight'].shape[0] // (patch * patch)
    found = f'depth {depth}, hidden size {hidden}, patch {patch}, {tokens} tokens'
    if patch != patch_w or grid * grid != tokens or sd['pos_embed'].shape != (1, tokens, hidden):
        raise UserError(f'{path}: not a DiT state dict (non-square patches or position table; found {found})')
    if num_heads is None:
        if hidden not in HEADS_BY_HIDDEN:
            raise UserError(f'{path}: hidden size {hidden} is not in DiT\'s model table (S 384, B 768, L 1024, '
                            f'XL 1152), so its head count is unknown (found {found})')
        num_heads = HEADS_BY_HIDDEN[hidden]
    if hidden % num_heads != 0:
        raise UserError(f'{path}: hidden size {hidden} is not divisible by {num_heads} heads')
    fc1 = sd.get('blocks.0.mlp.fc1.weight')
    if fc1 is None or tuple(fc1.shape) != (MLP_RATIO * hidden, hidden):
        raise UserError(f'{path}: not a DiT state dict (blocks.0.mlp.fc1.weight missing or not '
                        f'{MLP_RATIO * hidden}x{hidden}; found {found})')
    return dict(num_attention_heads=num_heads, attention_head_dim=hidden // num_heads, in_channels=in_channels,
                out_channels=out_channels, num_layers=depth, sample_size=grid * patch, patch_size=patch,
                num_embeds_ada_norm=sd['y_embedder.embedding_table.weight'].shape[0] - 1)


def dit_to_diffusers_keys(sd, depth):
    """DiT's state dict (keys as its models.py names them) renamed into DiTTransformer2DModel's;
    `pos_embed` (a non-persistent buffer there) is left out."""
    out = {'pos_embed.proj.weight': sd['x_embedder.proj.weight'], 'pos_embed.proj.bias': sd['x_embedder.proj.bias']}
    embedder = {'timestep_embedder.linear_1': 't_embedder.mlp.0', 'timestep_embedder.linear_2': 't_embedder.mlp.2'}
    block_layers = {'norm1.linear': 'adaLN_modulation.1', 'attn1.to_out.0': 'attn.proj',
                    'ff.net.0.proj': 'mlp.fc1', 'ff.net.2': 'mlp.fc2'}
    for i in range(depth):
        ours, theirs = f'transformer_blocks.{i}.', f'blocks.{i}.'
        for suffix in ('weight', 'bias'):
            for new, old in embedder.items():
                out[f'{ours}norm1.emb.{new}.{suffix}'] = sd[f'{old}.{suffix}']
            for new, old in block_layers.items():
                out[f'{ours}{new}.{suffix}'] = sd[f'{theirs}{old}.{suffix}']
            q, k, v = sd[f'{theirs}attn.qkv.{suffix}'].chunk(3, dim=0)  # rows: all heads' q, then k, then v
            out[f'{ours}attn1.to_q.{suffix}'], out[f'{ours}attn1.to_k.{suffix}'], out[f'{ours}attn1.to_v.{suffix}'] = q, k, v
        out[f'{ours}norm1.emb.class_embedder.embedding_table.weight'] = sd['y_embedder.embedding_table.weight']
    for suffix in ('weight', 'bias'):
        out[f'proj_out_1.{suffix}'] = sd[f'final_layer.adaLN_modulation.1.{suffix}']
        out[f'proj_out_2.{suffix}'] = sd[f'final_layer.linear.{suffix}']
    return out


def _model_from_state_dict(path, num_heads, dtype):
    DiTTransformer2DModel = _dit_class()
    sd = _load_state_dict(path)
    config = infer_dit_config(sd, path, num_heads)
    try:
        mapped = dit_to_diffusers_keys(sd, config['num_layers'])
    except KeyError as exc:
        raise UserError(f'{path}: not a DiT state dict (no {exc.args[0]})') from None
    used = {'pos_embed'} | {k for k in sd if k.startswith(('x_embedder.', 't_embedder.', 'y_embedder.', 'final_layer.'))}
    used |= {k for k in sd if re.match(r'blocks\.\d+\.', k)}
    extra = sorted(set(sd) - used)
    if extra:
        raise UserError(f'{path}: not a DiT state dict (unexpected {extra[0]}; found {_describe_keys(sd)})')
    with torch.device('meta'):  # no random init of weights that are replaced anyway
        model = DiTTransformer2DModel(**config)
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in mapped.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(f'{path}: tensors of the wrong shape for a DiT of {config["num_layers"]} blocks '
                        f'({_first_line(exc)})') from None
    model.pos_embed.pos_embed = sd['pos_embed'].to(dtype).clone()  # DiT's own stored position table
    if any(p.is_meta for p in list(model.parameters()) + list(model.buffers())):
        raise RuntimeError(f'{path}: internal error: a DiT tensor was left unset')
    return model

#----------------------------------------------------------------------------
# The VAE, as DiT decodes.

class DiTVAE:
    """`decode(latents)`: DiT latents (N, 4, h, w) -> uint8 images (N, 8h, 8w, 3), in float32."""

    def __init__(self, vae, source=None):
        self.vae = vae.float().eval().requires_grad_(False)
        self.source = source

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def to(self, device):
        self.vae.to(device)
        return self

    @torch.no_grad()
    def decode(self, latents):
        z = latents.to(self.device, torch.float32) / LATENT_SCALE
        images = self.vae.decode(z, return_dict=False)[0].float()
        return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def vae_source(name_or_folder=None):
    """Where the VAE comes from: 'ema'/'mse' -> stabilityai/sd-vae-ft-{ema,mse}; a diffusers DiT folder
    -> its vae/; otherwise the folder or hub id as given. None -> 'ema' (DiT's sample_ddp.py)."""
    name = DEFAULT_VAE if name_or_folder is None else os.fspath(name_or_folder)
    if name in VAES:
        return VAES[name], None
    if os.path.isdir(os.path.join(name, 'vae')):
        return name, 'vae'
    return name, None


def load_dit_vae(name_or_folder=None, *, device='cpu'):
    """The AutoencoderKL DiT decodes with (see `vae_source`), as a `DiTVAE`."""
    from diffusers import AutoencoderKL
    source, subfolder = vae_source(name_or_folder)
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder, **_from_pretrained_kwargs(torch.float32))
    except (OSError, ValueError, EnvironmentError, KeyError, TypeError) as exc:
        raise UserError(f'--vae={name_or_folder}: cannot load an AutoencoderKL from {source}'
                        f'{"/" + subfolder if subfolder else ""} ({_first_line(exc)})') from None
    return DiTVAE(vae, source).to(torch.device(device))
