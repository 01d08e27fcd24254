"""Convert a network pickle into a verified `.safetensors` file that loads without running code.

    python -m edmguide.nets.convert IN.pkl OUT.safetensors [--overwrite]

Opening IN runs the Python code embedded in the pickle, once; this is the only step that does.
The network must be of a class this project implements (`edmguide.nets.weights.NETWORK_CLASSES`: EDM2
`Precond`/`UNet`, the demo's `DigitFeatureNet`; encoders `StandardRGBEncoder`/`StabilityVAEEncoder`),
in any of the pickle layouts the loader accepts (EDM2 EasyDict, EDM v1 / guidance-interval dict
with `ema`, bare module). Before anything is written, the converted bytes are loaded back with the
code-free loader and compared with the pickle's own objects: module tree, every plain attribute,
the sigma range samplers read, the encoder's state, and the outputs on fixed random inputs (eight
noise levels, with and without class labels, and the log-variance head) to 1e-6 relative. Any
difference refuses the conversion with one line naming it. That check runs on the CPU in float32;
the pickle's embedded source is also compared with this project's (`edmguide.nets.embedded_source`),
and the verdict is printed and recorded in the metadata (`code`).

OUT is written atomically, and never replaces anything silently: an OUT that is the input itself
(a link, another spelling) is refused; an existing OUT that holds this same conversion (same pickle,
same verified content) is reported as done and left as it is; any other existing OUT is refused
(before the pickle is opened where the file shows it) unless `--overwrite` is given.
"""

import hashlib
import json
import os
import sys

import click
import numpy as np
import torch

from edmguide.nets import embedded_source
from edmguide.nets import loading
from edmguide.nets import weights
from edmguide.util.errors import UserError, run_cli
from edmguide.util.images import atomic_write
from edmguide.util.outputs import check_output_file

RTOL = 1e-6
SIGMAS = (0.002, 0.02, 0.2, 0.5, 1.0, 3.0, 20.0, 80.0)

#----------------------------------------------------------------------------
# What goes into the file.

def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()

def describe_network(net, name):
    """Metadata of the network: registered class, constructor arguments, sigma range."""
    qualname = weights.registered_name(net, weights.NETWORK_CLASSES)
    if qualname is None or not isinstance(net, torch.nn.Module):
        raise UserError(f'{name}: network class {weights.class_of(net)} is not one this project implements, so it '
                        f'cannot be rebuilt without the pickle\'s code (convertible: {weights.known_list(weights.NETWORK_CLASSES)})')
    if getattr(net, 'round_sigma', loading._identity_round_sigma) is not loading._identity_round_sigma:
        raise UserError(f'{name}: network {weights.class_of(net)} has its own round_sigma, which cannot be stored as data')
    entry = dict({'class': qualname}, **weights.describe(net, f'{name}: network'))
    entry['attributes'] = weights.sigma_attributes(net)
    return entry

def describe_encoder(encoder, name):
    if encoder is None:
        return None
    qualname = weights.registered_name(encoder, weights.ENCODER_CLASSES)
    if qualname is None:
        raise UserError(f'{name}: encoder class {weights.class_of(encoder)} is not one this project implements '
                        f'(convertible: {weights.known_list(weights.ENCODER_CLASSES)})')
    return dict({'class': qualname}, **weights.describe(encoder, f'{name}: encoder'))

def check_code(net, encoder, name):
    """What the pickle's embedded source is, against this project's modules (edmguide.nets.embedded_source)."""
    entries = []
    for obj, known in [(net, weights.NETWORK_CLASSES), (encoder, weights.ENCODER_CLASSES)]:
        if obj is None:
            continue
        qualname = weights.registered_name(obj, known)
        if qualname is None:
            continue  # describe_network / describe_encoder refuse it with their own line
        entries.append(embedded_source.check(obj, weights._import(qualname), qualname.rpartition('.')[0]))
    return entries

def to_safetensors(net, encoder, name, source_sha256, code=None):
    """The bytes of the `.safetensors` file for a loaded `(net, encoder)` (metadata sealed)."""
    import safetensors.torch
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    meta = dict(format=weights.FORMAT, format_version=weights.FORMAT_VERSION,
                net=describe_network(net, name), encoder=describe_encoder(encoder, name),
                source=dict(file=os.path.basename(name.split('?', 1)[0]), sha256=source_sha256),
                code=check_code(net, encoder, name) if code is None else code,
                weights_sha256=weights.weights_sha256(state), torch_version=torch.__version__)
    text = json.dumps(weights.seal(meta), allow_nan=False)
    return safetensors.torch.save({weights.NET_PREFIX + k: v for k, v in state.items()},
                                  metadata={weights.METADATA_KEY: text})

#----------------------------------------------------------------------------
# Verification: the rebuilt objects must behave like the pickle's own.

def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return ('ndarray', str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    return value

_SKIPPED = {'training', 'sigma_min', 'sigma_max', 'round_sigma'}

def plain_attributes(obj):
    """Non-private attributes that are neither tensors nor modules, comparable with ==."""
    return {k: _plain(v) for k, v in vars(obj).items() if not k.startswith('_') and k not in _SKIPPED
            and not isinstance(v, (torch.Tensor, torch.nn.Module))}

def check_structure(orig, rebuilt, name):
    """Same module tree (names and classes) and the same plain attributes everywhere."""
    tree = lambda net: [(path, weights.class_of(m)) for path, m in net.named_modules()]
    a, b = tree(orig), tree(rebuilt)
    if a != b:
        first = next((x, y) for x, y in zip(a + [None] * len(b), b + [None] * len(a)) if x != y)
        raise UserError(f'{name}: verification failed: module tree differs (pickle {first[0]}, rebuilt {first[1]})')
    for (path, m1), (_, m2) in zip(orig.named_modules(), rebuilt.named_modules()):
        p1, p2 = plain_attributes(m1), plain_attributes(m2)
        for key in sorted(set(p1) | set(p2)):
            if p1.get(key, '<missing>') != p2.get(key, '<missing>'):
                where = f'{path}.{key}' if path else key
                raise UserError(f'{name}: verification failed: attribute {where} differs '
                                f'(pickle {p1.get(key, "<missing>")!r}, rebuilt {p2.get(key, "<missing>")!r})')
    if weights.sigma_attributes(orig) != weights.sigma_attributes(rebuilt):
        raise UserError(f'{name}: verification failed: sigma range differs')

def _denoiser_cases(net, generator, channels, resolution, label_dim):
    """(label, x, sigma, labels) cases: eight sigmas in one batch, with one-hot labels and without."""
    n = len(SIGMAS)
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)
    x = torch.randn([n, channels, resolution, resolution], generator=generator)
    x = x * (sigma ** 2 + 0.25).sqrt().reshape(-1, 1, 1, 1)
    labels = None
    if label_dim:
        labels = torch.nn.functional.one_hot(torch.randint(label_dim, [n], generator=generator), label_dim).float()
    cases = [('labels' if label_dim else 'unconditional', x, sigma, labels)]
    if label_dim:
        cases.append(('no labels', x, sigma, None))
    return cases

def probe(net, qualname):
    """{case: output} on fixed random inputs (no global RNG draws)."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        if qualname.endswith('.Precond'):
            for label, x, sigma, labels in _denoiser_cases(net, generator, net.img_channels, net.img_resolution, net.label_dim):
                out[f'D ({label})'], out[f'logvar ({label})'] = net(x, sigma, labels, return_logvar=True)
        elif qualname.endswith('.UNet'):  # shape from its layers: out_conv channels, '<res>x<res>_conv'
            label_dim = 0 if net.emb_label is None else net.emb_label.weight.shape[1]
            resolution = int(next(iter(net.enc)).split('x')[0])
            for label, x, sigma, labels in _denoiser_cases(net, generator, net.out_conv.weight.shape[0], resolution, label_dim):
                if labels is None and label_dim:
                    labels = torch.zeros([len(SIGMAS), label_dim])
                out[f'UNet output ({label})'] = net(x, sigma.log() / 4, labels)
        else:  # feature network: uint8 images, gray at its resolution and RGB at twice it
            r = net.img_resolution
            for label, shape in [('gray', [8, 1, r, r]), ('rgb', [4, 3, 2 * r, 2 * r])]:
                images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
                out[f'features ({label})'] = net(images, return_features=True)
                out[f'logits ({label})'] = net(images)
    return out

def compare_outputs(expected, actual, name, rtol=RTOL):
    """Largest relative difference over all cases; refuse above `rtol`, naming the case and sigma."""
    worst = 0.0
    for key, a in expected.items():
        b = actual[key]
        if a.shape != b.shape:
            raise UserError(f'{name}: verification failed: {key} has shape {list(b.shape)}, the pickle gives {list(a.shape)}')
        a64, b64 = a.double(), b.double()
        if not torch.isfinite(a64).all():
            raise UserError(f'{name}: verification failed: the pickle\'s own {key} is not finite')
        diff = (a64 - b64).abs().reshape(len(a64), -1).amax(dim=1)
        scale = a64.abs().max().clamp(min=1e-30)
        rel = diff / scale
        if not torch.isfinite(rel).all() or rel.max() > rtol:
            i = int(torch.nan_to_num(rel, nan=np.inf).argmax())
            at = f' at sigma {SIGMAS[i]}' if key.startswith(('D ', 'logvar', 'UNet')) else f' for image {i}'
            raise UserError(f'{name}: verification failed: {key}{at} differs by {float(rel[i]):.3g} relative '
                            f'(limit {rtol:g})')
        worst = max(worst, float(rel.max()))
    return worst

def check_encoder(orig, rebuilt, name):
    if (orig is None) != (rebuilt is None) or weights.class_of(orig) != weights.class_of(rebuilt):
        raise UserError(f'{name}: verification failed: encoder differs ({weights.class_of(orig)} vs {weights.class_of(rebuilt)})')
    if orig is None:
        return
    if plain_attributes(orig) != plain_attributes(rebuilt):
        keys = sorted(k for k in set(plain_attributes(orig)) | set(plain_attributes(rebuilt))
                      if plain_attributes(orig).get(k) != plain_attributes(rebuilt).get(k))
        raise UserError(f'{name}: verification failed: encoder attribute {keys[0]} differs')
    if weights.class_of(orig) == 'StandardRGBEncoder':  # cheap to run; the VAE one needs the VAE itself
        g = torch.Generator().manual_seed(0)
        x = torch.randn([2, 3, 8, 8], generator=g) * 1.5
        pixels = torch.randint(0, 256, [2, 3, 8, 8], generator=g, dtype=torch.uint8)
        for what, a, b in [('decode', orig.decode(x), rebuilt.decode(x)),
                           ('encode', orig.encode(pixels), rebuilt.encode(pixels))]:
            if not torch.equal(a, b):
                raise UserError(f'{name}: verification failed: encoder {what} differs')

#----------------------------------------------------------------------------

# Fields that do not make two conversions different: the torch version that wrote the file, and
# the digests (which follow from the rest).
_NOT_CONTENT = ('torch_version',) + weights.DIGEST_KEYS

def content_fields(meta):
    return {k: v for k, v in weights.metadata_fields(meta).items() if k.split('.')[0] not in _NOT_CONTENT}

def existing_output(dest, source_sha256):
    """The verified metadata of an existing `dest` converted from the same pickle, else a UserError
    saying why it will not be replaced without --overwrite. Reads the file, runs nothing."""
    again = 'use --overwrite to replace it'
    try:
        meta, _ = weights.verified_parts(weights.read_file(dest, dest), dest)
    except UserError as exc:
        reason = str(exc)[len(dest) + 2:] if str(exc).startswith(dest + ': ') else str(exc)
        raise UserError(f'{dest}: exists and is not a verified conversion ({reason}); {again}') from None
    source = meta.get('source') if isinstance(meta.get('source'), dict) else {}
    if source.get('sha256') != source_sha256:
        raise UserError(f'{dest}: exists, converted from another file ({source.get("file")!r}, sha256 '
                        f'{str(source.get("sha256"))[:12]}...); {again}')
    return meta

def convert(src, dest, *, overwrite=False, verbose=True):
    """Convert pickle `src` (path or URL) to `dest` (.safetensors); returns a summary dict.

    An existing `dest` is replaced only with `overwrite`; without it, one holding this very
    conversion (same pickle, same verified content) is left as it is and reported as done
    (`summary['unchanged']`), anything else is refused before the pickle is opened where the
    difference shows without opening it (another source pickle, not a verified file), else after.
    """
    src, dest = os.fspath(src), os.fspath(dest)
    if not weights.is_safetensors(dest):
        raise UserError(f'{dest}: the output name must end in {weights.SUFFIX}')
    if weights.is_safetensors(src):
        raise UserError(f'{src}: is already a {weights.SUFFIX} file')
    check_output_file(dest, 'OUT')
    local = loading._open_download(src, verbose=verbose)
    if os.path.exists(dest) and os.path.samefile(local, dest):  # what the paths are: links, other spellings
        raise UserError(f'{dest}: is the input file itself ({src}); choose another output name')
    source_sha256 = sha256_file(local)
    old = None
    if os.path.lexists(dest) and not overwrite:
        old = existing_output(dest, source_sha256)
    if verbose:
        print(f'{src}: opening a pickle runs the Python code inside it; this happens once, here', file=sys.stderr)
    net, encoder = loading.load_network(src, 'cpu')
    qualname = describe_network(net, src)['class']
    code = check_code(net, encoder, src)
    data = to_safetensors(net, encoder, src, source_sha256, code)
    rebuilt, rebuilt_encoder = weights.load_bytes(data, dest)
    check_structure(net, rebuilt, src)
    check_encoder(encoder, rebuilt_encoder, src)
    worst = compare_outputs(probe(net, qualname), probe(rebuilt, qualname), src)
    summary = dict(dest=dest, net=qualname, tensors=len(net.state_dict()), bytes=len(data),
                   max_rel_diff=worst, source_sha256=source_sha256, code=code, unchanged=False)
    if old is not None:
        new, before = content_fields(weights.verified_parts(data, dest)[0]), content_fields(old)
        changed = next((k for k in list(new) + list(before) if new.get(k, '<absent>') != before.get(k, '<absent>')), None)
        if changed is not None:
            raise UserError(f'{dest}: exists, converted from this pickle but with other content (metadata field '
                            f'{changed}); use --overwrite to replace it')
        summary['unchanged'] = True
        if verbose:
            print(f'{dest}: already holds this conversion (same pickle, same verified content); left unchanged')
            _report_code(code, encoder)
        return summary
    atomic_write(dest, data)
    if verbose:
        print(f'{dest}: {weights.short_name(qualname)}, {summary["tensors"]} tensors, {len(data):,} bytes; '
              f'verified against the pickle (largest relative difference {worst:.3g})')
        _report_code(code, encoder)
    return summary

def _report_code(code, encoder):
    """The code check's lines (stdout; a `warning:` on stderr) and a warning for an unknown VAE."""
    for entry in code:
        line = embedded_source.describe(entry)
        print(line, file=sys.stderr if line.startswith('warning:') else sys.stdout)
    vae_name = getattr(encoder, 'vae_name', None)
    if vae_name is not None and vae_name not in weights.KNOWN_VAE_NAMES:
        print(f'warning: the encoder names the VAE {vae_name!r}, not one EDM2 uses; loading the file will '
              f'need that VAE passed explicitly', file=sys.stderr)

@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.argument('src', metavar='IN.pkl')
@click.argument('dest', metavar='OUT.safetensors')
@click.option('--overwrite', is_flag=True, help='Replace an existing OUT that holds something else')
def main(src, dest, overwrite):
    """Convert a network pickle (path or URL) to a verified .safetensors file that loads without code.

    Opening IN runs the code inside the pickle (once); loading OUT never does. An existing OUT is
    left alone: one holding this same conversion is reported as done, anything else needs
    --overwrite.
    """
    run_cli(convert, src, dest, overwrite=overwrite)

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
