"""Network weights without code: this project's `.safetensors` format and its loader.

A `.safetensors` file holds tensors and a string-to-string metadata table, and nothing that can
run. `python -m edmguide.nets.convert` writes one from a network pickle; this module reads it back by
rebuilding the network with THIS project's class, named in the metadata, and loading the tensors
into it. Nothing here unpickles: no `pickle.load`/`loads`, `torch.load` or `exec` (building a
persistent class only runs its pickle-ability self-check, a `pickle.dump` of the constructor
arguments into memory).

Layout of a file:
- tensors `net.<state_dict key>`: every parameter and buffer of the network, in its stored dtype;
- metadata key `edmguide`: a JSON object (`format`, `format_version`, `net` {class, init_args,
  init_kwargs, attributes}, `encoder` {class, init_args, init_kwargs} or null, `source`
  {file, sha256}, `code` (what `edmguide.nets.embedded_source` found of the pickle's own source),
  `weights_sha256`, `torch_version`, `fields_sha256`, `metadata_sha256`).

`weights_sha256` is the sha256 of the tensors in a canonical form (sorted names, each with dtype,
shape and raw little-endian bytes), so it does not depend on how the file lays them out.

The metadata is sealed too (format version 2): `fields_sha256` maps every field (every leaf of
the JSON object, dotted path such as `net.init_kwargs.sigma_data`; a list counts as one field) to
a digest of its path and value, and `metadata_sha256` is the sha256 of the whole object without
itself, so of every field, the weight hash and the field table. Every field is covered, not only
those that change the computed function (`net`: class, constructor arguments, sigma range, which
fix the architecture and what it computes, e.g. `sigma_data`, `logvar_channels`,
`model_channels`, `use_fp16` (float16 on CUDA), `dropout` (in training mode); `encoder`: class and settings, VAE name and latent scaling included;
`weights_sha256`), because the provenance fields (`source`, `code`, `torch_version`, `format*`)
are claims a reader relies on as well. An edited field is refused naming that field; an added or
removed one likewise. These are digests, not signatures: they catch edits, corruption and files
from other tools, not a forger who recomputes them (such a file still cannot run code: it can
only name classes in `NETWORK_CLASSES`/`ENCODER_CLASSES` and, without an explicit override, VAEs in
`KNOWN_VAE_NAMES`).
"""

import hashlib
import json
import math
import struct

import numpy as np
import torch

from edmguide.util.errors import UserError

FORMAT = 'edmguide-weights'
FORMAT_VERSION = 2
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
# Sealed metadata: a digest per field and one over the whole object.

DIGEST_KEYS = ('fields_sha256', 'metadata_sha256')

def canonical_json(value):
    """One byte string per JSON value: sorted keys, no spaces, ASCII, no NaN/inf."""
    return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=True, allow_nan=False).encode('ascii')

def metadata_fields(meta):
    """{dotted path: value} of every leaf of the metadata object except the digests, in order.

    Objects are walked into (an empty one is a leaf); lists, strings, numbers, booleans and null
    are leaves."""
    out = {}
    def walk(value, path):
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, path + [str(key)])
        else:
            out['.'.join(path)] = value
    walk({k: v for k, v in meta.items() if k not in DIGEST_KEYS}, [])
    return out

def field_digest(path, value):
    """sha256 (hex) of a field's path and value in canonical JSON."""
    return hashlib.sha256(canonical_json([path, value])).hexdigest()

def metadata_digest(meta):
    """sha256 (hex) of the whole metadata object but `metadata_sha256` itself."""
    return hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != 'metadata_sha256'})).hexdigest()

def seal(meta):
    """`meta` with `fields_sha256` and `metadata_sha256` (re)computed."""
    meta = {k: v for k, v in meta.items() if k not in DIGEST_KEYS}
    meta['fields_sha256'] = {path: field_digest(path, value) for path, value in metadata_fields(meta).items()}
    meta['metadata_sha256'] = metadata_digest(meta)
    return meta

def check_seal(meta, name):
    """Refuse metadata edited after conversion, naming the first field that changed."""
    table = meta.get('fields_sha256')
    if not (isinstance(table, dict) and all(isinstance(v, str) for v in table.values())
            and isinstance(meta.get('metadata_sha256'), str)):
        raise UserError(f'{name}: metadata lacks its digests (fields_sha256, metadata_sha256); '
                        f'convert the pickle again')
    fields = metadata_fields(meta)
    again = 'the file was modified after conversion; convert the pickle again'
    for path, value in fields.items():
        if path not in table:
            raise UserError(f'{name}: metadata field {path} was added ({again})')
        if field_digest(path, value) != table[path]:
            raise UserError(f'{name}: metadata field {path} = {json.dumps(value)[:80]} does not match its '
                            f'recorded digest ({again})')
    for path in table:
        if path not in fields:
            raise UserError(f'{name}: metadata field {path} was removed ({again})')
    if metadata_digest(meta) != meta['metadata_sha256']:
        raise UserError(f'{name}: metadata does not match its recorded sha256 (the digest table was edited; '
                        f'{again})')

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
        raise UserError(f'{name}: no edmguide metadata (write such files with python -m edmguide.nets.convert)')
    try:
        meta = json.loads(table[METADATA_KEY])
    except ValueError:
        raise UserError(f'{name}: edmguide metadata is not valid JSON') from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise UserError(f'{name}: metadata is not in the {FORMAT} format')
    if meta.get('format_version') != FORMAT_VERSION:
        hint = ('; it predates the metadata digests, convert the pickle again'
                if meta.get('format_version') == 1 else '')
        raise UserError(f'{name}: metadata format version {meta.get("format_version")!r} is not supported '
                        f'(this edmguide reads version {FORMAT_VERSION}{hint})')
    check_seal(meta, name)
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

def verified_parts(data, name):
    """`(meta, tensors)` of a `.safetensors` file's bytes after every integrity check: whole file,
    metadata format and digests, tensor names and the weight hash. Builds nothing."""
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
    return meta, tensors

# The VAEs EDM2's latent-space networks decode with (StabilityVAEEncoder's default, the one NVIDIA's
# img512 pickles and guidance-interval's loader name). A file naming another is refused unless the
# caller passes the VAE explicitly (`vae=`): diffusers would fetch and load whatever repository or
# folder the name points to, which is code and weights the file's reader never chose.
KNOWN_VAE_NAMES = ('stabilityai/sd-vae-ft-mse',)

def check_vae_name(encoder, name, vae=None):
    """Refuse an encoder whose VAE is not a known one unless `vae` (an explicit choice) is given."""
    vae_name = getattr(encoder, 'vae_name', None)
    if vae is None and vae_name is not None and vae_name not in KNOWN_VAE_NAMES:
        raise UserError(f'{name}: the encoder names the VAE {vae_name!r}, which is not one EDM2 uses '
                        f'(known: {", ".join(KNOWN_VAE_NAMES)}); pass the VAE explicitly to use it')

def load_bytes(data, name):
    """`(net, encoder)` from the bytes of a `.safetensors` file; problems are one-line UserErrors.
    The encoder's VAE name is not checked here (see `check_vae_name`, which the loader applies
    when the encoder is used)."""
    meta, tensors = verified_parts(data, name)
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
