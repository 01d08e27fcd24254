"""Tests for dnnlib: EasyDict, cache directory rules, name resolution, open_url."""

import collections
import copy
import ctypes
import hashlib
import http.server
import os
import pickle
import pickletools
import sys
import tempfile
import threading

import numpy as np
import pytest

import dnnlib
from dnnlib import util

#----------------------------------------------------------------------------
# EasyDict.

def test_easydict_attribute_access_and_missing_attribute_error():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    with pytest.raises(AttributeError):
        d.missing
    assert getattr(d, 'missing', 'default') == 'default'
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        del d.a
    assert dnnlib.EasyDict is util.EasyDict

def test_pickled_easydict_references_dnnlib_util_and_roundtrips():
    d = dnnlib.EasyDict(x=1, nested=dnnlib.EasyDict(y=[1, 2]))
    data = pickle.dumps(d)
    strings = [arg for op, arg, _ in pickletools.genops(data) if op.name.endswith('UNICODE')]
    assert 'dnnlib.util' in strings and 'EasyDict' in strings
    back = pickle.loads(data)
    assert type(back) is util.EasyDict and back.nested.y == [1, 2]
    cp = copy.deepcopy(d)
    assert cp == d and cp.nested is not d.nested

#----------------------------------------------------------------------------
# Cache directory resolution.

def test_make_cache_dir_path_resolution_order(monkeypatch, tmp_path):
    for var in ('DNNLIB_CACHE_DIR', 'HOME', 'USERPROFILE'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(util, '_dnnlib_cache_dir', None)
    assert util.make_cache_dir_path('x') == os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', 'x')
    monkeypatch.setenv('USERPROFILE', str(tmp_path / 'up'))
    assert util.make_cache_dir_path('x') == os.path.join(str(tmp_path / 'up'), '.cache', 'dnnlib', 'x')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.make_cache_dir_path() == os.path.join(str(tmp_path / 'home'), '.cache', 'dnnlib')
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'env'))
    assert dnnlib.make_cache_dir_path('diffusers') == os.path.join(str(tmp_path / 'env'), 'diffusers')
    util.set_cache_dir(str(tmp_path / 'explicit'))
    assert util.make_cache_dir_path('a', 'b') == os.path.join(str(tmp_path / 'explicit'), 'a', 'b')

#----------------------------------------------------------------------------
# Formatting and small helpers.

@pytest.mark.parametrize('seconds, text', [
    (0, '0s'), (7.4, '7s'), (59.6, '1m 00s'), (125, '2m 05s'), (3725, '1h 02m 05s'),
    (90000, '1d 01h 00m'), (3 * 86400 + 4 * 3600 + 5 * 60 + 6, '3d 04h 05m'),
])
def test_format_time_strings(seconds, text):
    assert util.format_time(seconds) == text

def test_format_time_brief_keeps_two_units():
    assert util.format_time_brief(5) == '5s'
    assert util.format_time_brief(125) == '2m 05s'
    assert util.format_time_brief(3725) == '1h 02m'
    assert util.format_time_brief(90000) == '1d 01h'

def test_tuple_product_dtype_and_pickleable():
    assert util.tuple_product((2, 3, 4)) == 24 and util.tuple_product(()) == 1
    assert util.get_dtype_and_ctype('uint8') == (np.dtype('uint8'), ctypes.c_ubyte)
    assert util.get_dtype_and_ctype(np.float32) == (np.dtype('float32'), ctypes.c_float)
    assert util.is_pickleable([1, 'a']) and not util.is_pickleable(lambda: 0)

def test_name_resolution_helpers():
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.get_obj_by_name('np.zeros') is np.zeros
    module, local = util.get_module_from_obj_name('collections.OrderedDict')
    assert module is collections and local == 'OrderedDict'
    assert util.call_func_by_name(3, func_name='numpy.zeros').shape == (3,)
    assert util.call_func_by_name(2, func_name=lambda n: n * 10) == 20
    od = util.construct_class_by_name([('a', 1)], class_name='collections.OrderedDict')
    assert isinstance(od, collections.OrderedDict) and od['a'] == 1
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_module_xyz.thing')
    with pytest.raises(ImportError):
        util.get_obj_by_name('os.path.no_such_function_xyz')
    assert util.get_module_dir_by_obj_name('dnnlib.util.EasyDict') == os.path.dirname(util.__file__)
    assert util.is_top_level_function(util.format_time)
    assert util.get_top_level_function_name(util.format_time) == 'dnnlib.util.format_time'

def test_list_dir_recursively_with_ignore_and_copy(tmp_path):
    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    (src / '__pycache__').mkdir()
    (src / 'a.py').write_text('a')
    (src / 'sub' / 'b.txt').write_text('b')
    (src / 'sub' / 'c.pyc').write_text('c')
    (src / '__pycache__' / 'd.py').write_text('d')
    files = util.list_dir_recursively_with_ignore(str(src), ignores=['__pycache__', '*.pyc'])
    assert sorted(rel for _, rel in files) == ['a.py', os.path.join('sub', 'b.txt')]
    with_base = util.list_dir_recursively_with_ignore(str(src), ignores=['*.pyc', '__pycache__'], add_base_to_relative=True)
    assert all(rel.startswith('src' + os.sep) for _, rel in with_base)
    util.copy_files_and_create_dirs([(a, str(tmp_path / 'dst' / rel)) for a, rel in files])
    assert (tmp_path / 'dst' / 'sub' / 'b.txt').read_text() == 'b'

def test_logger_tees_stdout_and_stderr_to_file(tmp_path, capsys):
    log = tmp_path / 'log.txt'
    logger = util.Logger(str(log))
    print('hello out')
    print('hello err', file=sys.stderr)
    logger.close()
    print('after close')
    text = log.read_text()
    assert 'hello out' in text and 'hello err' in text and 'after close' not in text
    captured = capsys.readouterr()
    assert 'hello out' in captured.out and 'hello err' in captured.err

def test_is_url():
    assert util.is_url('https://nvlabs-fi-cdn.nvidia.com/edm2/x.pkl')
    assert util.is_url('http://127.0.0.1:9/x.pkl')
    assert not util.is_url('/local/path.pkl')
    assert not util.is_url('http://localhost/x.pkl')
    assert not util.is_url('file:///tmp/x.pkl') and util.is_url('file:///tmp/x.pkl', allow_file_urls=True)
    assert not util.is_url(None)

#----------------------------------------------------------------------------
# open_url.

SPEC_URL = 'https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img512.pkl'

def test_cache_name_matches_upstream_example():
    name = f'{util.url_cache_key(SPEC_URL)}_{util.safe_cache_name(SPEC_URL)}'
    assert name == '6efa8bba1f7bc1e6779367dfaf0f0c52_https___nvlabs-fi-cdn.nvidia.com_edm2_dataset-refs_img512.pkl'
    assert len(util.safe_cache_name('x' * 500)) == 128

def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(b'local bytes')
    with util.open_url(str(path)) as f:
        assert f.read() == b'local bytes'
    assert util.open_url(str(path), return_filename=True) == str(path)
    url = path.as_uri()
    assert url.startswith('file://')
    with util.open_url(url) as f:
        assert f.read() == b'local bytes'
    assert util.open_url(url, return_filename=True) == str(path)

def test_open_url_serves_https_from_pre_placed_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(util, '_dnnlib_cache_dir', None)
    downloads = tmp_path / 'downloads'
    downloads.mkdir()
    cached = downloads / f'{hashlib.md5(SPEC_URL.encode()).hexdigest()}_whatever-name.pkl'
    cached.write_bytes(b'cached payload')
    with util.open_url(SPEC_URL, num_attempts=1, verbose=False) as f:
        assert f.read() == b'cached payload'
    assert util.open_url(SPEC_URL, return_filename=True, verbose=False) == str(cached)

def test_open_url_unreachable_without_cache_raises_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv('NO_PROXY', '*')
    url = 'http://127.0.0.1:9/x.pkl'
    with pytest.raises(OSError) as excinfo:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=1, verbose=False)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, util.DownloadError)
    assert url in message and '\n' not in message
    assert os.listdir(tmp_path) == []

def test_open_url_rejects_return_filename_without_cache():
    with pytest.raises(AssertionError):
        util.open_url('http://127.0.0.1:9/x.pkl', return_filename=True, cache=False)

class _Handler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 64  # 16 KiB binary: larger than the HTML sniffing threshold
    hits = []

    def do_GET(self):
        _Handler.hits.append(self.path)
        if self.path.endswith('/missing.pkl'):
            self.send_error(404)
            return
        self.send_response(200)
        if self.path.endswith('/named'):
            self.send_header('Content-Disposition', 'attachment; filename="weights v2.pkl"')
        self.send_header('Content-Length', str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass

@pytest.fixture
def local_server(monkeypatch):
    monkeypatch.setenv('NO_PROXY', '*')
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.hits.clear()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()

def test_open_url_download_is_cached_atomically_under_upstream_name(tmp_path, local_server):
    url = f'{local_server}/edm2/dataset-refs/img512.pkl'
    with util.open_url(url, cache_dir=str(tmp_path), num_attempts=1, verbose=False) as f:
        assert f.read() == _Handler.payload
    expected_name = f'{hashlib.md5(url.encode()).hexdigest()}_{util.safe_cache_name(url)}'
    assert os.listdir(tmp_path) == [expected_name]  # no tmp_* leftovers
    assert (tmp_path / expected_name).read_bytes() == _Handler.payload

    # Second call is served from the cache: no new request reaches the server.
    assert util.open_url(url, cache_dir=str(tmp_path), return_filename=True) == str(tmp_path / expected_name)
    assert len(_Handler.hits) == 1

def test_open_url_uses_content_disposition_name_and_cache_false(tmp_path, local_server):
    url = f'{local_server}/named'
    path = util.open_url(url, cache_dir=str(tmp_path), return_filename=True, verbose=False)
    assert os.path.basename(path) == f'{hashlib.md5(url.encode()).hexdigest()}_weights_v2.pkl'
    other = tmp_path / 'nocache'
    with util.open_url(f'{local_server}/plain.pkl', cache_dir=str(other), cache=False, verbose=False) as f:
        assert f.read() == _Handler.payload
    assert not other.exists()

def test_open_url_http_error_leaves_no_cache_file(tmp_path, local_server, capsys):
    url = f'{local_server}/missing.pkl'
    with pytest.raises(util.DownloadError, match='missing.pkl'):
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=2, verbose=True)
    assert len(_Handler.hits) == 2
    assert not tmp_path.exists() or os.listdir(tmp_path) == []
    assert f'Downloading {url} ...' in capsys.readouterr().out

#----------------------------------------------------------------------------
