"""Assorted PyTorch helpers used by networks and training code.

``constant``/``const_like`` are called from the forward passes of upstream
networks embedded in pickles, so their signatures and caching semantics are
fixed by the compatibility spec. The rest mirror the upstream helper surface
that embedded training code imports.
"""

import contextlib
import re
import warnings

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# Cached constant tensors.

_constant_cache = {}

def constant(value, shape=None, dtype=None, device=None, memory_format=None) -> torch.Tensor:
    """Tensor holding ``value``, built once per (value, shape, dtype, device, layout).

    Networks create small constants (e.g. resampling filters) on every
    forward call; caching avoids a host-to-device copy each time. The same
    tensor object is returned on every hit, so callers must not modify it.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    device = torch.device('cpu') if device is None else torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor

def const_like(ref: torch.Tensor, value, shape=None, dtype=None, device=None, memory_format=None) -> torch.Tensor:
    """``constant`` whose dtype and device default to those of ``ref``."""
    if dtype is None:
        dtype = ref.dtype
    if device is None:
        device = ref.device
    return constant(value, shape=shape, dtype=dtype, device=device, memory_format=memory_format)

#----------------------------------------------------------------------------
# Pinned staging buffers for asynchronous host-to-device copies.

_pinned_bufs = {}

def pinned_buf(ref: torch.Tensor) -> torch.Tensor:
    """Reusable host buffer shaped like ``ref`` holding a copy of it.

    Pinned (page-locked) when CUDA is available so that a following
    ``.to(device, non_blocking=True)`` can overlap; plain memory otherwise,
    because pinning needs a CUDA runtime.
    """
    key = (tuple(ref.shape), ref.dtype)
    buf = _pinned_bufs.get(key, None)
    if buf is None:
        buf = torch.empty(ref.shape, dtype=ref.dtype)
        if torch.cuda.is_available():
            buf = buf.pin_memory()
        _pinned_bufs[key] = buf
    buf.copy_(ref)
    return buf

#----------------------------------------------------------------------------
# Numerics and seeding.

def nan_to_num(input: torch.Tensor, nan=0.0, posinf=None, neginf=None, *, out=None) -> torch.Tensor:
    """Replace NaN/inf with finite numbers (EDM v1 name; defaults to dtype limits)."""
    assert isinstance(input, torch.Tensor)
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)

def set_random_seed(*args) -> None:
    """Seed torch and numpy from any hashable arguments (e.g. (seed, rank))."""
    seed = hash(args) % (1 << 31)
    torch.manual_seed(seed)
    np.random.seed(seed)

#----------------------------------------------------------------------------
# Shape assertions that also work while tracing.

symbolic_assert = getattr(torch, '_assert', None) or getattr(torch, 'Assert')

class suppress_tracer_warnings(warnings.catch_warnings):
    """Context manager that silences ``torch.jit.TracerWarning`` (and restores filters on exit)."""

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        return self

def assert_shape(tensor: torch.Tensor, ref_shape) -> None:
    """Check ``tensor.shape`` against ``ref_shape``; ``None`` entries match any size.

    Entries may be tensors (symbolic sizes during tracing), in which case the
    check is recorded with ``symbolic_assert`` instead of evaluated eagerly.
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(torch.as_tensor(size), ref_size), f'Wrong size for dimension {idx}')
        elif isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(size, torch.as_tensor(ref_size)),
                                f'Wrong size for dimension {idx}: expected {ref_size}')
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size}')

def profiled_function(fn):
    """Decorator: label calls of ``fn`` by name in the autograd profiler."""
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    decorator.__name__ = fn.__name__
    decorator.__qualname__ = getattr(fn, '__qualname__', fn.__name__)
    decorator.__doc__ = fn.__doc__
    decorator.__wrapped__ = fn
    return decorator

#----------------------------------------------------------------------------
# Data loading.

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices, split across ranks.

    Global position ``idx`` runs over consecutive epochs; each epoch uses its
    own permutation derived from (seed, epoch), and rank r takes the positions
    with ``idx % num_replicas == r``. ``start_idx`` resumes the stream exactly
    where a previous run left off.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, start_idx=0):
        assert len(dataset) > 0
        assert num_replicas > 0
        assert 0 <= rank < num_replicas
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.start_idx = start_idx

    def __iter__(self):
        size = len(self.dataset)
        idx = self.start_idx
        epoch = None
        order = None
        while True:
            if idx // size != epoch:
                epoch = idx // size
                order = np.arange(size)
                if self.shuffle:
                    np.random.RandomState(hash((self.seed, epoch)) % (1 << 31)).shuffle(order)
            if idx % self.num_replicas == self.rank:
                yield int(order[idx % size])
            idx += 1

#----------------------------------------------------------------------------
# Parameters and buffers.

def params_and_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    """All parameters followed by all buffers of ``module``."""
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())

def named_params_and_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of all parameters followed by all buffers."""
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())

@torch.no_grad()
def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module, require_all: bool = False) -> None:
    """Copy same-named tensors from ``src_module`` into ``dst_module`` in place.

    Names missing from the source are left untouched unless ``require_all``.
    """
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        assert (name in src_tensors) or (not require_all), f'{name} missing from source module'
        if name in src_tensors:
            tensor.copy_(src_tensors[name])

#----------------------------------------------------------------------------
# DistributedDataParallel helpers.

@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool):
    """Context in which DDP gradient all-reduce happens only if ``sync``.

    Lets gradient accumulation skip communication on all but the last
    micro-batch; a no-op for modules not wrapped in DDP.
    """
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield

def check_ddp_consistency(module: torch.nn.Module, ignore_regex: str | None = None) -> None:
    """Assert that every parameter and buffer equals rank 0's copy (NaNs treated as 0)."""
    assert isinstance(module, torch.nn.Module)
    for name, tensor in named_params_and_buffers(module):
        fullname = f'{type(module).__name__}.{name}'
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), fullname

#----------------------------------------------------------------------------
# Module summary table.

def print_module_summary(module: torch.nn.Module, inputs, max_nesting: int = 3, skip_redundant: bool = True):
    """Run ``module(*inputs)`` once and print a table of submodules.

    Columns: parameter count, buffer count, output shape and dtype. Tensors
    are attributed to the innermost module that owns them, so totals add up.
    Returns the module's outputs.
    """
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    entries = []
    nesting = [0]

    def pre_hook(_mod, _inputs):
        nesting[0] += 1

    def post_hook(mod, _inputs, outputs):
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            outs = [t for t in outs if isinstance(t, torch.Tensor)]
            entries.append(dnnlib.EasyDict(mod=mod, outputs=outs))

    hooks = [m.register_forward_pre_hook(pre_hook) for m in module.modules()]
    hooks += [m.register_forward_hook(post_hook) for m in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for h in hooks:
            h.remove()

    # Entries are in completion order (innermost first); each tensor is counted once, by the first entry that owns it.
    seen = set()
    for e in entries:
        e.unique_params = [t for t in e.mod.parameters() if id(t) not in seen]
        e.unique_buffers = [t for t in e.mod.buffers() if id(t) not in seen]
        e.unique_outputs = [t for t in e.outputs if id(t) not in seen]
        seen |= {id(t) for t in e.unique_params + e.unique_buffers + e.unique_outputs}
    if skip_redundant:
        entries = [e for e in entries if len(e.unique_params) or len(e.unique_buffers) or len(e.unique_outputs)]

    names = {mod: name for name, mod in module.named_modules()}
    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']]
    rows += [['---'] * len(rows[0])]
    total_params = total_buffers = 0
    for e in entries:
        name = '<top-level>' if e.mod is module else names.get(e.mod, '?')
        n_params = sum(t.numel() for t in e.unique_params)
        n_buffers = sum(t.numel() for t in e.unique_buffers)
        shapes = [str(list(t.shape)) for t in e.outputs]
        dtypes = [str(t.dtype).split('.')[-1] for t in e.outputs]
        rows.append([name + (':0' if len(e.outputs) >= 2 else ''),
                     str(n_params) if n_params else '-',
                     str(n_buffers) if n_buffers else '-',
                     (shapes + ['-'])[0],
                     (dtypes + ['-'])[0]])
        for i in range(1, len(e.outputs)):
            rows.append([f'{name}:{i}', '-', '-', shapes[i], dtypes[i]])
        total_params += n_params
        total_buffers += n_buffers
    rows += [['---'] * len(rows[0])]
    rows += [['Total', str(total_params), str(total_buffers), '-', '-']]

    widths = [max(len(cell) for cell in col) for col in zip(*rows)]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (w - len(cell)) for cell, w in zip(row, widths)).rstrip())
    print()
    return outputs

#----------------------------------------------------------------------------
# Image grids.

def tile_images(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Arrange a batch of ``w*h`` images (NCHW) into one CHW grid, row-major."""
    assert x.ndim == 4
    N, C, H, W = x.shape
    assert N == w * h, f'expected {w * h} images, got {N}'
    x = x.reshape(h, w, C, H, W)
    x = x.permute(2, 0, 3, 1, 4)        # C, h, H, w, W
    return x.reshape(C, h * H, w * W)

#----------------------------------------------------------------------------
