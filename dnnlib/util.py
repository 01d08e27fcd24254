"""General utilities with no knowledge of diffusion or of PyTorch.

Every public name here is referenced by code embedded in upstream EDM/EDM2
pickles or by their training scripts, so names and signatures follow the
compatibility spec (shared/spec/pickles-and-persistence.md, sections b and f).
"""

import ctypes
import fnmatch
import hashlib
import html
import importlib
import inspect
import io
import os
import pickle
import re
import shutil
import sys
import tempfile
import types
import urllib.parse
import uuid
from typing import Any

import numpy as np

#----------------------------------------------------------------------------
# Attribute-style dictionary.

class EasyDict(dict):
    """A dict whose items can also be read and written as attributes.

    Lives in ``dnnlib.util`` because pickles reference it by that exact path.
    A missing attribute raises AttributeError (not KeyError) so that
    ``getattr(obj, name, default)`` and pickle/copy probing of optional hooks
    such as ``__setstate__`` behave as for ordinary objects.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

#----------------------------------------------------------------------------
# Tee of stdout/stderr into a log file.

class _TeeStream:
    """Forward writes to the original stream and to the logger's file."""

    def __init__(self, logger: 'Logger', stream):
        self._logger = logger
        self._stream = stream

    def write(self, text) -> None:
        self._logger._write(text, self._stream)

    def flush(self) -> None:
        self._logger.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Logger:
    """Copy everything printed to stdout and stderr into a log file.

    Installing itself as ``sys.stdout``/``sys.stderr`` means code that merely
    prints (including embedded upstream training code) gets logged without
    changes. Each stream keeps going to its original destination.
    """

    def __init__(self, file_name: str | None = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = _TeeStream(self, self.stdout)
        sys.stderr = _TeeStream(self, self.stderr)

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def _write(self, text, stream) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        if len(text) == 0:
            return
        if self.file is not None:
            self.file.write(text)
        stream.write(text)
        if self.should_flush:
            self.flush()

    def write(self, text) -> None:
        """Write to the log file and the original stdout."""
        self._write(text, self.stdout)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()
        self.stderr.flush()

    def close(self) -> None:
        """Restore the original streams and close the file (idempotent)."""
        self.flush()
        if isinstance(sys.stdout, _TeeStream) and sys.stdout._logger is self:
            sys.stdout = self.stdout
        if isinstance(sys.stderr, _TeeStream) and sys.stderr._logger is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

#----------------------------------------------------------------------------
# Cache directory.

_dnnlib_cache_dir = None

def set_cache_dir(path: str | None) -> None:
    """Override where downloads and other cached files go (None = default rules)."""
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = path

def make_cache_dir_path(*paths: str) -> str:
    """Return a path inside the dnnlib cache directory.

    Resolution order matches upstream so that an existing cache (e.g. one
    filled by the upstream scripts) is found: explicit ``set_cache_dir``,
    ``$DNNLIB_CACHE_DIR``, ``$HOME/.cache/dnnlib``, ``%USERPROFILE%/.cache/dnnlib``,
    and finally the system temp directory.
    """
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    if 'HOME' in os.environ:
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    if 'USERPROFILE' in os.environ:
        return os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)

#----------------------------------------------------------------------------
# Small formatting and type helpers.

def format_time(seconds: int | float) -> str:
    """Human-readable duration: '7s', '2m 05s', '3h 04m 05s', '2d 03h 04m'."""
    s = int(np.rint(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02}m {s % 60:02}s'
    return f'{s // 86400}d {(s // 3600) % 24:02}h {(s // 60) % 60:02}m'

def format_time_brief(seconds: int | float) -> str:
    """Shorter duration with the two most significant units: '7s', '2m 05s', '3h 04m', '2d 03h'."""
    return ' '.join(format_time(seconds).split()[:2])

def ask_yes_no(question: str) -> bool:
    """Prompt until the user answers yes or no (EDM v1 compatibility)."""
    while True:
        answer = input(f'{question} [y/n] ').strip().lower()
        if answer in ('y', 'yes'):
            return True
        if answer in ('n', 'no'):
            return False
        print('Please answer y or n.')

def tuple_product(t: tuple) -> Any:
    """Product of the elements of a tuple (1 for the empty tuple)."""
    result = 1
    for v in t:
        result *= v
    return result

_ctype_by_name = {
    'uint8': ctypes.c_ubyte, 'uint16': ctypes.c_uint16, 'uint32': ctypes.c_uint32, 'uint64': ctypes.c_uint64,
    'int8': ctypes.c_byte, 'int16': ctypes.c_int16, 'int32': ctypes.c_int32, 'int64': ctypes.c_int64,
    'float32': ctypes.c_float, 'float64': ctypes.c_double,
}

def get_dtype_and_ctype(type_obj: Any) -> tuple[np.dtype, Any]:
    """Map a type name, numpy dtype or ctypes type to the matching (numpy dtype, ctypes type)."""
    if isinstance(type_obj, str):
        name = type_obj
    elif hasattr(type_obj, '__name__') and type_obj.__name__ in _ctype_by_name:
        name = type_obj.__name__
    elif isinstance(type_obj, type) and issubclass(type_obj, ctypes._SimpleCData):
        name = {v: k for k, v in _ctype_by_name.items()}.get(type_obj)
        if name is None:
            raise ValueError(f'Unsupported ctypes type: {type_obj}')
    else:
        name = np.dtype(type_obj).name
    if name not in _ctype_by_name:
        raise ValueError(f'Unsupported type: {type_obj}')
    dtype = np.dtype(name)
    ctype = _ctype_by_name[name]
    assert dtype.itemsize == ctypes.sizeof(ctype)
    return dtype, ctype

def is_pickleable(obj: Any) -> bool:
    """True if ``pickle.dumps(obj)`` succeeds."""
    try:
        with io.BytesIO() as stream:
            pickle.dump(obj, stream)
        return True
    except Exception:
        return False

#----------------------------------------------------------------------------
# Resolving objects from dotted names (configs store callables as strings).

def _expand_shorthand(obj_name: str) -> str:
    """Accept the 'np.' and 'tf.' abbreviations that upstream configs use."""
    for short, full in (('np.', 'numpy.'), ('tf.', 'tensorflow.')):
        if obj_name.startswith(short):
            return full + obj_name[len(short):]
    return obj_name

def get_obj_from_module(module: types.ModuleType, obj_name: str) -> Any:
    """Follow a dotted attribute path inside a module ('' returns the module)."""
    if obj_name == '':
        return module
    obj = module
    for part in obj_name.split('.'):
        obj = getattr(obj, part)
    return obj

def get_module_from_obj_name(obj_name: str) -> tuple[types.ModuleType, str]:
    """Split a dotted name into (imported module, attribute path within it).

    The longest importable prefix wins. An ImportError raised from *inside*
    an existing module is propagated rather than masked, so real bugs in the
    target module are not reported as 'not found'.
    """
    obj_name = _expand_shorthand(obj_name)
    parts = obj_name.split('.')
    for i in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:i])
        local_name = '.'.join(parts[i:])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            missing = e.name or ''
            if module_name == missing or module_name.startswith(missing + '.'):
                continue
            raise
        try:
            get_obj_from_module(module, local_name)
        except AttributeError:
            continue
        return module, local_name
    raise ImportError(f'Cannot resolve object name: {obj_name!r}')

def get_obj_by_name(name: str) -> Any:
    """Return the object a dotted name such as 'numpy.random.randn' refers to."""
    module, local_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, local_name)

def call_func_by_name(*args, func_name: str | Any = None, **kwargs) -> Any:
    """Call a function given by dotted name (or directly as a callable)."""
    assert func_name is not None
    func = func_name if callable(func_name) else get_obj_by_name(func_name)
    assert callable(func)
    return func(*args, **kwargs)

def construct_class_by_name(*args, class_name: str | Any = None, **kwargs) -> Any:
    """Instantiate a class given by dotted name (or directly as a class)."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)

def get_module_dir_by_obj_name(obj_name: str) -> str:
    """Directory of the source file of the module that defines ``obj_name``."""
    module, _ = get_module_from_obj_name(obj_name)
    return os.path.dirname(inspect.getfile(module))

def is_top_level_function(obj: Any) -> bool:
    """True if ``obj`` is a function reachable by name at the top of its module."""
    module = sys.modules.get(getattr(obj, '__module__', None))
    return callable(obj) and module is not None and module.__dict__.get(getattr(obj, '__name__', None)) is obj

def get_top_level_function_name(obj: Any) -> str:
    """Dotted name under which ``obj`` can be re-imported (for storing in configs)."""
    assert is_top_level_function(obj)
    module = obj.__module__
    if module == '__main__':
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return f'{module}.{obj.__name__}'

#----------------------------------------------------------------------------
# File system helpers.

def list_dir_recursively_with_ignore(dir_path: str, ignores: list[str] | None = None,
                                     add_base_to_relative: bool = False) -> list[tuple[str, str]]:
    """List files under ``dir_path`` as (absolute, relative) pairs.

    ``ignores`` are fnmatch patterns applied to file and directory names;
    an ignored directory is not descended into.
    """
    assert os.path.isdir(dir_path)
    ignores = list(ignores or [])
    base_name = os.path.basename(os.path.normpath(dir_path))
    result = []
    for root, dirs, files in os.walk(dir_path, topdown=True):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, pat) for pat in ignores)]
        for f in files:
            if any(fnmatch.fnmatch(f, pat) for pat in ignores):
                continue
            abs_path = os.path.join(root, f)
            rel_path = os.path.relpath(abs_path, dir_path)
            if add_base_to_relative:
                rel_path = os.path.join(base_name, rel_path)
            result.append((abs_path, rel_path))
    return result

def copy_files_and_create_dirs(files: list[tuple[str, str]]) -> None:
    """Copy (source, destination) pairs, creating destination directories as needed."""
    for src, dst in files:
        parent = os.path.dirname(dst)
        if parent:
            os.makedirs(parent, exist_ok=True)
        shutil.copyfile(src, dst)

#----------------------------------------------------------------------------
# URLs and downloads.

class DownloadError(IOError):
    """A URL could not be fetched and no cached copy exists.

    The message is a single line naming the URL, suitable for showing to users.
    """

def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """True if ``obj`` looks like a network URL (scheme and dotted host)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        for candidate in (obj, urllib.parse.urljoin(obj, '/')):
            res = urllib.parse.urlparse(candidate)
            if not res.scheme or not res.netloc or '.' not in res.netloc:
                return False
    except Exception:
        return False
    return True

def url_cache_key(url: str) -> str:
    """Cache key of a URL: hex md5 of its UTF-8 bytes (upstream layout)."""
    return hashlib.md5(url.encode('utf-8')).hexdigest()

def safe_cache_name(url_name: str) -> str:
    """File-system-safe, length-limited name used after the key in cache files."""
    return re.sub(r'[^0-9a-zA-Z-._]', '_', url_name)[:128]

def _failure_reason(e: BaseException) -> str:
    """Short one-line reason for a failed download attempt.

    requests wraps socket errors in several layers whose text repeats the
    URL; the '[Errno N] ...' part is what users need.
    """
    text = ' '.join(str(e).split())
    match = re.search(r'\[Errno -?\d+\] [^"\')]+', text)
    if match:
        return match[0].strip()
    if len(text) > 200:
        text = text[:197] + '...'
    return text or type(e).__name__

class _RetryWith(IOError):
    """Internal: the attempt failed but the server pointed at another URL."""

    def __init__(self, new_url: str):
        super().__init__('Google Drive virus-scan confirmation page')
        self.new_url = new_url

def _fetch_once(session, url: str) -> tuple[bytes, str]:
    """One download attempt: returns (data, url_name).

    Raises IOError on failure, or _RetryWith when a Google Drive confirmation
    page tells us which URL to use on the next attempt.
    """
    with session.get(url, timeout=60) as res:
        res.raise_for_status()
        data = res.content
        if len(data) == 0:
            raise IOError('empty response body')
        if len(data) < 8192:
            # Small bodies may be HTML error pages from Google Drive rather than the file.
            text = data.decode('utf-8')
            if 'download_warning' in res.headers.get('Set-Cookie', ''):
                links = [html.unescape(s) for s in text.split('"') if 'export=download' in s]
                if len(links) == 1:
                    raise _RetryWith(urllib.parse.urljoin(url, links[0]))
            if 'Google Drive - Quota exceeded' in text:
                raise IOError('Google Drive download quota exceeded, try again later')
        match = re.search(r'filename="([^"]*)"', res.headers.get('Content-Disposition', ''))
        url_name = match[1] if match else url
    return data, url_name

def open_url(url: str, cache_dir: str | None = None, num_attempts: int = 10, verbose: bool = True,
             return_filename: bool = False, cache: bool = True) -> Any:
    """Open a local path, ``file://`` URL or http(s) URL as a binary file object.

    Downloads are cached as ``<cache_dir>/<md5(url)>_<safe name>`` exactly as
    upstream does, so a cache filled elsewhere is served offline. Cache writes
    go through a temporary file and ``os.replace`` so an interrupted download
    never leaves a file that would later be mistaken for a complete one.
    On failure with no cached copy, raises DownloadError naming the URL.
    With ``return_filename`` the path of the (cached) file is returned instead.
    """
    assert num_attempts >= 1
    assert not (return_filename and not cache)

    # Local paths and file:// URLs are opened directly.
    if not re.match('^[a-z]+://', url):
        return url if return_filename else open(url, 'rb')
    if url.startswith('file://'):
        path = urllib.parse.urlparse(url).path
        if re.match(r'^/[a-zA-Z]:', path):
            path = path[1:]
        return path if return_filename else open(path, 'rb')

    assert is_url(url), f'Not a valid URL: {url}'

    # Serve from the cache when exactly one matching file exists.
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    key = url_cache_key(url)
    if cache:
        hits = _glob_prefix(cache_dir, key + '_')
        if len(hits) == 1:
            return hits[0] if return_filename else open(hits[0], 'rb')

    # Download.
    import requests
    data = url_name = None
    fetch_url = url
    if verbose:
        print(f'Downloading {url} ...', end='', flush=True)
    with requests.Session() as session:
        for attempt in range(num_attempts):
            try:
                data, url_name = _fetch_once(session, fetch_url)
                if verbose:
                    print(' done')
                break
            except KeyboardInterrupt:
                raise
            except Exception as e:
                if isinstance(e, _RetryWith):
                    fetch_url = e.new_url
                if attempt == num_attempts - 1:
                    if verbose:
                        print(' failed')
                    raise DownloadError(f'Cannot download {url}: {_failure_reason(e)}') from e
                if verbose:
                    print('.', end='', flush=True)

    # Store atomically in the cache.
    if cache:
        final_path = os.path.join(cache_dir, f'{key}_{safe_cache_name(url_name)}')
        tmp_path = os.path.join(cache_dir, f'tmp_{uuid.uuid4().hex}_{key}_{safe_cache_name(url_name)}')
        os.makedirs(cache_dir, exist_ok=True)
        try:
            with open(tmp_path, 'wb') as f:
                f.write(data)
            os.replace(tmp_path, final_path)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
        if return_filename:
            return final_path

    return io.BytesIO(data)

def _glob_prefix(directory: str, prefix: str) -> list[str]:
    """Files in ``directory`` whose names start with ``prefix`` (literal, no glob syntax)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if n.startswith(prefix) and os.path.isfile(os.path.join(directory, n)))

#----------------------------------------------------------------------------
