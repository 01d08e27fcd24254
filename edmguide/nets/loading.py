"""The one place where network pickles are opened.

EDM2, EDM v1 and guidance-interval pickles are plain pickles whose objects carry the source code
of their classes: opening a pickle RUNS CODE FROM IT. Only load pickles from sources you trust.
`.safetensors` files written by `python -m edmguide.nets.convert` hold weights and metadata only; they
are read by `edmguide.nets.weights`, which never unpickles, and give the same `(net, encoder)`.

Every problem a user can cause (missing file, corrupt or truncated file, unreachable URL, a pickle
that holds no network) becomes a one-line `UserError` naming the file.
"""

import os
import pickle
import re
import sys

import torch

import dnnlib
from edmguide.util.errors import UserError

#----------------------------------------------------------------------------

def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0]}' if text else type(exc).__name__

def _local_path(path_or_url):
    """The filesystem path for a local path or file:// URL, None for remote URLs."""
    if not re.match('^[a-z]+://', path_or_url):
        return path_or_url
    if path_or_url.startswith('file://'):
        return dnnlib.util.open_url(path_or_url, return_filename=True)
    return None

def is_safetensors(path_or_url):
    """True for `.safetensors` names (paths or URLs): these are loaded without unpickling."""
    from edmguide.nets.weights import is_safetensors as check
    return check(path_or_url)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # edmguide/nets/ -> repository
_noted = set()  # files the code-execution note was printed for, in this process

def _inside_repo(local):
    return os.path.commonpath([os.path.realpath(local), os.path.realpath(REPO_ROOT)]) == os.path.realpath(REPO_ROOT)

def _note_code_execution(name, local):
    """Once per file and process (rank 0 under torchrun), a line on stderr that opening a pickle
    from outside this repository runs code from it; the repository's own assets are exempt."""
    from torch_utils import distributed as dist
    key = os.path.realpath(local) if local is not None else name
    if key in _noted or (local is not None and _inside_repo(local)):
        return
    _noted.add(key)
    if dist.get_rank() == 0:
        print(f'note: opening {name} runs Python code stored in it (pickles execute code); '
              f'open only files you trust', file=sys.stderr, flush=True)

def _open_download(name, *, cache=True, verbose=False):
    """Local filename of a path or URL (downloaded into the dnnlib cache); errors are one line."""
    local = _local_path(name)
    if local is not None:
        if os.path.isdir(local):
            raise UserError(f'{name}: is a directory; give the network file inside it (.pkl or .safetensors)')
        if not os.path.isfile(local):
            raise UserError(f'{name}: no such file')
        return local
    try:
        return dnnlib.util.open_url(name, cache=cache, verbose=verbose, return_filename=True)
    except KeyboardInterrupt:
        raise
    except AssertionError as exc:
        raise UserError(f'{name}: not a valid URL') from exc
    except Exception as exc:
        reason = _first_line(exc).split(f'{name}: ', 1)[-1]
        raise UserError(f'{name}: cannot download it and it is not in the download cache ({reason})') from exc

def local_file(path_or_url):
    """The local file of a path or URL (a URL is downloaded into the cache once); errors are one line."""
    return _open_download(str(path_or_url))

def load_pickle(path_or_url, *, cache=True, verbose=False, note=True):
    """Unpickle a local file or URL (downloads are cached by `dnnlib.util.open_url`).

    Unless `note` is False (the program's own detector pickles), a file from outside this
    repository gets the once-per-file note that opening it runs code from it.
    """
    name = os.fspath(path_or_url)
    path = _open_download(name, cache=cache, verbose=verbose)
    if note:
        _note_code_execution(name, _local_path(name))
    try:
        f = open(path, 'rb')
    except OSError as exc:
        raise UserError(f'{name}: cannot open ({_first_line(exc)})') from exc
    try:
        with f:
            return pickle.load(f)
    except KeyboardInterrupt:
        raise
    except EOFError as exc:
        raise UserError(f'{name}: file is empty or truncated (incomplete download?)') from exc
    except pickle.UnpicklingError as exc:
        if 'truncated' in str(exc):
            raise UserError(f'{name}: file is truncated (incomplete download?)') from exc
        raise UserError(f'{name}: not a pickle file ({_first_line(exc)})') from exc
    except ModuleNotFoundError as exc:
        raise UserError(f'{name}: the code in this pickle needs the Python module {exc.name!r}, which is not installed') from exc
    except Exception as exc:
        raise UserError(f'{name}: cannot unpickle ({_first_line(exc)})') from exc

def network_stem(path_or_url):
    """A network file's name without its folder and .pkl/.safetensors suffix (for output names)."""
    base = os.path.basename(os.fspath(path_or_url))
    return base[:-len('.safetensors')] if base.lower().endswith('.safetensors') else base.split('.pkl')[0]

def load_safetensors(path_or_url, *, verbose=False):
    """`(net, encoder)` from a `.safetensors` file or URL; never unpickles (see edmguide.nets.weights)."""
    from edmguide.nets import weights
    name = os.fspath(path_or_url)
    return weights.load_bytes(weights.read_file(_open_download(name, verbose=verbose), name), name)

#----------------------------------------------------------------------------

def _identity_round_sigma(sigma):
    """Neutral `round_sigma` for nets trained on continuous noise levels (EDM2)."""
    return torch.as_tensor(sigma)

def _add_neutral_sigma_attributes(net):
    """Give EDM2 nets the sigma limits/rounding that EDM v1-style samplers read; keep existing ones."""
    for attr, value in [('sigma_min', 0.0), ('sigma_max', float('inf')), ('round_sigma', _identity_round_sigma)]:
        if not hasattr(net, attr):
            setattr(net, attr, value)

def _default_encoder(img_channels):
    from training import encoders
    return encoders.StabilityVAEEncoder() if img_channels == 4 else encoders.StandardRGBEncoder()

def load_network(path_or_url, device='cpu', *, want_encoder=True, verbose=False, vae=None):
    """Load a denoiser and its pixel encoder: `(net, encoder)`.

    A `.safetensors` path or URL (see `edmguide.nets.convert`) gives the same result without unpickling.
    The net is `data['ema']` of a training pickle, or the pickle itself when it is a bare module
    (EDM2 toy pickles; these may lack `img_channels` and get no encoder). It is moved to `device`,
    put in eval mode and frozen. Released EDM2 weights stay float16 in memory; the network casts
    them itself. The encoder is the pickle's own, else the SD VAE encoder for 4-channel nets and
    plain RGB otherwise; it is returned uninitialized (heavy VAE weights load on first use, or via
    `init_encoder`). `encoder` is None when `want_encoder` is False.

    `vae` is the explicit choice of VAE (a diffusers model id or local folder) for a latent-space
    net: it replaces the name the file or pickle records. Without it, a `.safetensors` whose
    encoder names a VAE outside `edmguide.nets.weights.KNOWN_VAE_NAMES` is refused (unless
    `want_encoder` is False: a guiding net's encoder is never used).
    """
    name = os.fspath(path_or_url)
    if is_safetensors(name):
        net, encoder = load_safetensors(name, verbose=verbose)
        if want_encoder:
            from edmguide.nets.weights import check_vae_name
            check_vae_name(encoder, name, vae)
        data = dict(ema=net, encoder=encoder) if hasattr(net, 'img_channels') else net  # bare like toy pickles
    else:
        data = load_pickle(name, verbose=verbose)
    encoder = None
    if isinstance(data, dict):
        if 'ema' not in data or data['ema'] is None:
            keys = ', '.join(map(str, data.keys())) or 'none'
            raise UserError(f'{name}: pickle has no network (no "ema" entry; keys: {keys})')
        net = data['ema']
        encoder = data.get('encoder')
        bare = False
    else:
        net = data
        bare = isinstance(net, torch.nn.Module)
    if not callable(net) or not (bare or hasattr(net, 'img_channels')):
        raise UserError(f'{name}: pickle holds an object of type {type(net).__name__}, not a denoiser network')

    if isinstance(net, torch.nn.Module):
        net = net.eval().requires_grad_(False).to(device)
    _add_neutral_sigma_attributes(net)

    if not want_encoder:
        encoder = None
    elif encoder is None and hasattr(net, 'img_channels'):
        encoder = _default_encoder(net.img_channels)
    if want_encoder and vae is not None:
        if not hasattr(encoder, 'vae_name'):
            raise UserError(f'{name}: a VAE was given ({vae}), but this network\'s encoder '
                            f'({type(encoder).__name__ if encoder is not None else "none"}) uses no VAE')
        encoder.vae_name = vae
    return net, encoder

def load_networks(net_path, gnet_path, device, *, encoder_batch_size=None, verbose=False, vae=None):
    """What generation needs: `(net, encoder, gnet)`, the encoder initialized; gnet None if no path.
    `vae`: the explicit VAE choice for the main net's encoder (see `load_network`).

    Under torchrun rank 0 loads first, so that only one process downloads into the shared cache.
    """
    from torch_utils import distributed as dist
    if dist.get_rank() != 0:
        dist.barrier()
    net, encoder = load_network(net_path, device, verbose=verbose, vae=vae)
    if encoder is None:
        raise UserError(f'{os.fspath(net_path)}: network has no image encoder/decoder to produce images with')
    gnet = load_network(gnet_path, device, want_encoder=False)[0] if gnet_path else None
    if gnet is not None:
        check_guide_matches(net, gnet, gnet_path)
    init_encoder(encoder, device, batch_size=encoder_batch_size)
    if dist.get_rank() == 0:
        dist.barrier()
    return net, encoder, gnet

def check_guide_matches(net, gnet, gnet_path):
    """The guiding net must denoise the same images as the main net: refuse, before any sampling,
    one whose resolution or channels differ, or a module that is no image denoiser at all (e.g. a
    feature network), instead of failing at its first call."""
    name = os.fspath(gnet_path)
    for attr in ('img_resolution', 'img_channels'):
        if not hasattr(net, attr):
            continue
        if not hasattr(gnet, attr):
            raise UserError(f'{name}: not a denoiser network like the main one (it has no {attr})')
        if getattr(gnet, attr) != getattr(net, attr):
            raise UserError(f'{name}: guiding net has {attr} {getattr(gnet, attr)}, '
                            f'the main net {getattr(net, attr)}')


def init_encoder(encoder, device, *, batch_size=None):
    """Run `encoder.init(device)`, turning a VAE that cannot be loaded into a `UserError`."""
    if batch_size is not None and hasattr(encoder, 'batch_size'):
        encoder.batch_size = batch_size
    try:
        encoder.init(device)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        vae = getattr(encoder, 'vae_name', type(encoder).__name__)
        cache = dnnlib.make_cache_dir_path('diffusers')
        raise UserError(f'{vae}: cannot load the VAE (needs diffusers, and network access or the files in {cache}): {_first_line(exc)}') from exc
    return encoder

#----------------------------------------------------------------------------
