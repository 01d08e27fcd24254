"""Network weights without code: this project's `.safetensors` format and its loader.

A `.safetensors` file holds tensors and a string-to-string metadata table, and nothing that can
run. `python -m edmguide.convert` writes one from a network pickle; this module reads it back by
rebuilding the network with THIS project's class, named in the metadata, and loading the tensors
into it. Nothing here unpickles: no `pickle.load`/`loads`, `torch.load` or `exec` (building a
persistent class only runs its pickle-ability self-check, a `pickle.dump` of the constructor
arguments into memory).

Layout of a file:
- tensors `net.<state_dict key>`: every parameter and buffer of the network, in its stored dtype;
- metadata key `edmguide`: a JSON object (`format`, `format_version`, `net` {class, init_args,
  init_kwargs, attributes}, `encoder` {class, init_args, init_kwargs} or null, `source`
  {file, sha256}, `weights_sha256`, `torch_version`).

`weights_sha256` is the sha256 of the tensors in a canonical form (sorted names, each with dtype,
shape and raw little-endian bytes), so it does not depend on how the file lays them out.
"""

import hashlib
import json
import math
import os
import struct

import numpy as np
import torch

from edmguide.errors import UserError

FORMAT = 'edmguide-weights'
FORMAT_VERSION = 1
METADATA_KEY = 'edmguide'
NET_PREFIX = 'net.'
SUFFIX = '.safetensors'

#----------------------------------------------------------------------------
# The classes a file may name: this project's own implementations, by import path.

def _import(qualname):
    module_name, _, class_name = qualname.rpartition('.')
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)

NETWORK_CLASSES = (
    'training.networks_edm2.Precond',
    'training.networks_edm2.UNet',
    'edmguide.demo.features.DigitFeatureNet',
)
ENCODER_CLASSES = (
    'training.encoders.StandardRGBEncoder',
    'training.encoders.StabilityVAEEncoder',
)

def short_name(qualname):
    return qualname.rpartition('.')[2]

def class_of(obj):
    """The class name an object was defined with (pickled persistent classes keep theirs)."""
    return getattr(type(obj), '_orig_class_name', type(obj).__name__)

def registered_name(obj, known):
    """The registered import path matching `obj`'s class name, or None."""
    name = class_of(obj)
    return next((qualname for qualname in known if short_name(qualname) == name), None)

def known_list(known):
    return ', '.join(short_name(q) for q in known)

#----------------------------------------------------------------------------
# Plain data: constructor arguments and attributes as JSON.

def to_data(value, what):
    """`value` as JSON-compatible data (tuples become lists), or a UserError naming `what`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f'{what} = {value} is not a finite number and cannot be stored')
        return value
    if isinstance(value, (list, tuple)):
        return [to_data(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: to_data(v, f'{what}.{k}') for k, v in value.items()}
    raise UserError(f'{what} is a {type(value).__name__}, which cannot be stored as data')

def describe(obj, what):
    """{class, init_args, init_kwargs} of a persistent object of a registered class."""
    if getattr(obj, '_init_kwargs', None) is None or getattr(obj, '_init_args', None) is None:
        raise UserError(f'{what} ({class_of(obj)}) did not record its constructor arguments')
    return dict(init_args=to_data(list(obj._init_args), f'{what} argument'),
                init_kwargs=to_data(dict(obj._init_kwargs), f'{what} argument'))

# EDM v1 / guidance-interval samplers read these; EDM2 nets get the neutral values at load time.
NEUTRAL_SIGMA = dict(sigma_min=0.0, sigma_max=math.inf)

def sigma_attributes(net):
    """The net's own sigma range when it is not the neutral one, as data ('inf' for infinity)."""
    out = {}
    for attr, neutral in NEUTRAL_SIGMA.items():
        value = getattr(net, attr, neutral)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f'network attribute {attr} is a {type(value).__name__}, not a number')
        if float(value) != neutral:
            out[attr] = 'inf' if value == math.inf else float(value)
    return out

#----------------------------------------------------------------------------
# Canonical weight hash.

def tensor_bytes(tensor):
    """The raw bytes of a tensor as a uint8 numpy array (a buffer; no copy for CPU tensors)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()

def weights_sha256(tensors):
    """sha256 over sorted (name, dtype, shape, bytes) of a {name: tensor} dict."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        head = json.dumps([name, str(t.dtype).replace('torch.', ''), list(t.shape)]).encode('utf-8')
        digest.update(struct.pack('<Q', len(head)) + head)
        data = tensor_bytes(t)
        digest.update(struct.pack('<Q', data.nbytes))
        digest.update(data)
    return digest.hexdigest()

#----------------------------------------------------------------------------
# Reading a file: header checks, metadata checks, rebuild.

def read_header(data, name):
    """The parsed JSON header of safetensors bytes, after checking that the file is whole."""
    if len(data) < 8:
        raise UserError(f'{name}: file is empty or truncated (incomplete download?)')
    (size,) = struct.unpack('<Q', data[:8])
    if size > len(data) - 8:
        raise UserError(f'{name}: file is truncated or not a safetensors file (header of {size} bytes, '
                        f'file of {len(data)})')
    try:
        header = json.loads(bytes(data[8:8 + size]).decode('utf-8'))
    except (UnicodeDecodeError, ValueError):
        raise UserError(f'{name}: corrupted file (the safetensors header is not valid JSON)') from None
    if not isinstance(header, dict):
        raise UserError(f'{name}: corrupted file (the safetensors header is not a JSON object)')
    end = 0
    for key, entry in header.items():
        if key == '__metadata__':
            continue
        offsets = entry.get('data_offsets') if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise UserError(f'{name}: corrupted file (tensor {key!r} has no valid data offsets)')
        end = max(end, offsets[1])
    if 8 + size + end > len(data):
        raise UserError(f'{name}: file is truncated ({len(data)} bytes, the header describes '
                        f'{8 + size + end}; incomplete download?)')
    if 8 + size + end < len(data):
        raise UserError(f'{name}: corrupted file ({len(data) - 8 - size - end} bytes after the last tensor)')
    return header

def read_metadata(header, name):
    """This project's metadata from a parsed header, checked field by field (one line per problem)."""
    table = header.get('__metadata__')
    if not isinstance(table, dict) or METADATA_KEY not in table:
        raise UserError(f'{name}: no edmguide metadata (write such files with python -m edmguide.convert)')
    try:
        meta = json.loads(table[METADATA_KEY])
    except ValueError:
        raise UserError(f'{name}: edmguide metadata is not valid JSON') from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise UserError(f'{name}: metadata is not in the {FORMAT} format')
    if meta.get('format_version') != FORMAT_VERSION:
        raise UserError(f'{name}: metadata format version {meta.get("format_version")!r} is not supported '
                        f'(this edmguide reads version {FORMAT_VERSION})')
    for key, kind in [('net', dict), ('weights_sha256', str)]:
        if not isinstance(meta.get(key), kind):
            raise UserError(f'{name}: metadata lacks a valid "{key}" entry')
    if meta.get('encoder') is not None and not isinstance(meta['encoder'], dict):
        raise UserError(f'{name}: metadata "encoder" entry is not an object')
    return meta

def build(entry, known, what, name, *, on_meta=False):
    """Construct the registered class an entry names from its recorded arguments."""
    qualname = entry.get('class')
    if qualname not in known:
        raise UserError(f'{name}: {what} class {qualname!r} is not one this project implements '
                        f'(known: {", ".join(known)})')
    args, kwargs = entry.get('init_args', []), entry.get('init_kwargs', {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise UserError(f'{name}: metadata has malformed constructor arguments for the {what}')
    cls = _import(qualname)
    try:
        if on_meta: # no memory and no global RNG draws for the initial weights
            with torch.device('meta'):
                return cls(*args, **kwargs)
        return cls(*args, **kwargs)
    except Exception as exc:
        raise UserError(f'{name}: cannot build {short_name(qualname)} from the recorded arguments '
                        f'({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""})') from exc

def _fill(net, tensors, name):
    """Put the file's tensors into a net built on the meta device; names/shapes must match exactly."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing:
        raise UserError(f'{name}: tensor {NET_PREFIX}{missing[0]} is missing ({len(missing)} missing in all)')
    if extra:
        raise UserError(f'{name}: tensor {NET_PREFIX}{extra[0]} does not belong to the architecture '
                        f'({len(extra)} unexpected in all)')
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise UserError(f'{name}: shape mismatch for {NET_PREFIX}{key}: file {list(tensors[key].shape)}, '
                            f'architecture {list(ref.shape)}')
        if tensors[key].dtype.is_floating_point != ref.dtype.is_floating_point:
            raise UserError(f'{name}: tensor {NET_PREFIX}{key} has dtype {tensors[key].dtype}, expected a '
                            f'{"floating" if ref.dtype.is_floating_point else "non-floating"} type')
    net.load_state_dict(tensors, strict=True, assign=True)
    left = [k for k, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise UserError(f'{name}: the file does not provide {left[0]}')
    return net

def load_bytes(data, name):
    """`(net, encoder)` from the bytes of a `.safetensors` file; problems are one-line UserErrors."""
    import safetensors.torch
    header = read_header(data, name)
    meta = read_metadata(header, name)
    try:
        tensors = safetensors.torch.load(bytes(data))
    except Exception as exc:
        raise UserError(f'{name}: corrupted file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""})') from exc
    if any(not key.startswith(NET_PREFIX) for key in tensors):
        bad = next(key for key in tensors if not key.startswith(NET_PREFIX))
        raise UserError(f'{name}: tensor {bad!r} is not a network tensor ({NET_PREFIX}*)')
    tensors = {key[len(NET_PREFIX):]: t for key, t in tensors.items()}
    if weights_sha256(tensors) != meta['weights_sha256']:
        raise UserError(f'{name}: weights do not match the sha256 recorded in the metadata '
                        f'(file modified or corrupted)')
    net = build(meta['net'], NETWORK_CLASSES, 'network', name, on_meta=True)
    net = _fill(net, tensors, name).eval().requires_grad_(False)
    attributes = meta['net'].get('attributes', {})
    if not isinstance(attributes, dict) or not set(attributes) <= set(NEUTRAL_SIGMA):
        raise UserError(f'{name}: metadata has unknown network attributes {sorted(attributes)}')
    for attr, value in attributes.items():
        try:
            setattr(net, attr, float(value))
        except (TypeError, ValueError):
            raise UserError(f'{name}: metadata attribute {attr} = {value!r} is not a number') from None
    encoder = None
    if meta.get('encoder') is not None:
        encoder = build(meta['encoder'], ENCODER_CLASSES, 'encoder', name)
    return net, encoder

def read_file(local_path, name):
    """Bytes of a local file (a directory or unreadable file is a one-line error)."""
    try:
        with open(local_path, 'rb') as f:
            return f.read()
    except OSError as exc:
        raise UserError(f'{name}: cannot open ({exc.strerror or exc})') from exc

def is_safetensors(path_or_url):
    """True for names ending in .safetensors (a URL's query string is ignored)."""
    return str(path_or_url).split('?', 1)[0].lower().endswith(SUFFIX)

#----------------------------------------------------------------------------
