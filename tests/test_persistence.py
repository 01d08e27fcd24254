"""Tests for torch_utils.persistence: the version-6 source-embedding pickle protocol."""

import importlib
import os
import pickle
import pickletools
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch

import dnnlib
from torch_utils import persistence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#----------------------------------------------------------------------------
# Helpers.

def _import_temp_module(tmp_path, monkeypatch, source: str):
    """Write ``source`` as a uniquely named module under tmp_path and import it."""
    name = f'persist_tmp_{uuid.uuid4().hex[:12]}'
    path = tmp_path / f'{name}.py'
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    module = importlib.import_module(name)
    return name, path, module

def _global_refs(data: bytes) -> set[str]:
    """'module.name' strings referenced by GLOBAL/STACK_GLOBAL opcodes of a pickle."""
    refs = set()
    strings = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE'):
            strings.append(arg)
        elif op.name == 'STACK_GLOBAL':
            refs.add(f'{strings[-2]}.{strings[-1]}')
        elif op.name == 'GLOBAL':
            refs.add(arg.replace(' ', '.'))
    return refs

NET_SOURCE = textwrap.dedent('''
    import torch
    from torch_utils import persistence
    from torch_utils import misc

    @persistence.persistent_class
    class TinyNet(torch.nn.Module):
        def __init__(self, channels, gain=2.0):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
            self.gain = gain

        def forward(self, x):
            return self.conv(x) * misc.const_like(x, self.gain) + misc.const_like(x, [1.0, -1.0]).sum()
''')

#----------------------------------------------------------------------------

def test_pickle_loads_in_fresh_process_after_defining_module_is_deleted(tmp_path, monkeypatch):
    name, path, module = _import_temp_module(tmp_path, monkeypatch, NET_SOURCE)
    torch.manual_seed(0)
    net = module.TinyNet(2, gain=3.0)
    x = torch.randn(1, 2, 5, 5)
    expected = net(x).detach()
    with open(tmp_path / 'net.pkl', 'wb') as f:
        pickle.dump(net, f)
    torch.save({'x': x, 'expected': expected}, tmp_path / 'io.pt')

    # Make the defining module unavailable.
    path.unlink()
    del sys.modules[name]
    del module, net

    script = textwrap.dedent(f'''
        import pickle, sys, torch
        try:
            import {name}
            sys.exit('defining module should not be importable')
        except ImportError:
            pass
        with open({str(tmp_path / 'net.pkl')!r}, 'rb') as f:
            net = pickle.load(f)
        data = torch.load({str(tmp_path / 'io.pt')!r})
        assert type(net).__name__ == 'TinyNet', type(net)
        assert type(net).__module__.startswith('_imported_module_'), type(net).__module__
        assert net.init_args == (2,) and net.init_kwargs.gain == 3.0
        y = net(data['x'])
        assert torch.allclose(y, data['expected']), (y - data['expected']).abs().max()
        print('OK')
    ''')
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    res = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith('OK')

#----------------------------------------------------------------------------

HANDWRITTEN_SOURCE = textwrap.dedent('''
    import numpy as np
    import torch
    import dnnlib
    from torch_utils import persistence
    from torch_utils import misc

    CONFIG = dnnlib.EasyDict(offset=0.5)

    @persistence.persistent_class
    class Scaler(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.register_buffer('weight', torch.ones(channels))

        def forward(self, x):
            kernel = misc.const_like(x, np.array([1, 2, 1], dtype=np.float32)) / 4
            return x * self.weight.reshape(1, -1, 1, 1) * kernel.sum() + CONFIG.offset

    if __name__ == '__main__':
        raise SystemExit('the __main__ block of an embedded module must not run')
''')

class _UpstreamStyleWriter:
    """Reduces to the protocol's tuple directly, as an upstream writer would emit it."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,), None)

def _handwritten_pickle(source: str, weight: torch.Tensor) -> bytes:
    """Build an upstream-style pickle of a Scaler from a hand-made meta dict."""
    template = torch.nn.Module()
    template.register_buffer('weight', weight)
    state = dict(template.__dict__)
    state['_init_args'] = (weight.numel(),)
    state['_init_kwargs'] = {}
    meta = {'type': 'class', 'version': 6, 'module_src': source, 'class_name': 'Scaler', 'state': state}
    return pickle.dumps(_UpstreamStyleWriter(meta))

def test_handwritten_upstream_style_pickle_loads_and_runs():
    source = HANDWRITTEN_SOURCE + f'# {uuid.uuid4().hex}\n'
    data = _handwritten_pickle(source, torch.tensor([1.0, 2.0, 3.0]))
    assert 'torch_utils.persistence._reconstruct_persistent_obj' in _global_refs(data)

    obj = pickle.loads(data)
    assert type(obj).__name__ == 'Scaler'
    assert type(obj).__module__.startswith('_imported_module_')
    assert persistence.is_persistent(obj)
    assert obj.init_args == (3,)
    x = torch.ones(2, 3, 4, 4)
    y = obj(x)
    expected = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1) * 1.0 + 0.5
    assert torch.allclose(y, expected.expand_as(y))

    # A second pickle with identical source reuses the same module and class.
    other = pickle.loads(data)
    assert type(other) is type(obj)

def test_repickled_handwritten_object_keeps_embedded_source_and_meta_layout():
    source = HANDWRITTEN_SOURCE + f'# {uuid.uuid4().hex}\n'
    obj = pickle.loads(_handwritten_pickle(source, torch.tensor([2.0])))
    func, args, state = obj.__reduce__()[:3]
    assert func is persistence._reconstruct_persistent_obj
    assert state is None
    meta = args[0]
    assert list(meta.keys()) == ['type', 'version', 'module_src', 'class_name', 'state']
    assert meta['type'] == 'class' and meta['version'] == 6
    assert meta['module_src'] == source
    assert meta['class_name'] == 'Scaler'
    assert torch.equal(meta['state']['_buffers']['weight'], torch.tensor([2.0]))
    again = pickle.loads(pickle.dumps(obj))
    assert torch.equal(again(torch.zeros(1, 1, 1, 1)), obj(torch.zeros(1, 1, 1, 1)))

def test_import_hook_can_patch_embedded_source(monkeypatch):
    monkeypatch.setattr(persistence, '_import_hooks', [])
    source = HANDWRITTEN_SOURCE + f'# {uuid.uuid4().hex}\n'
    seen = []

    def hook(meta):
        assert isinstance(meta, dnnlib.EasyDict) and isinstance(meta.state, dnnlib.EasyDict)
        seen.append(meta.class_name)
        meta.module_src = meta.module_src.replace('offset=0.5', 'offset=10.0')
        return meta

    persistence.import_hook(hook)
    obj = pickle.loads(_handwritten_pickle(source, torch.tensor([1.0])))
    assert seen == ['Scaler']
    assert torch.allclose(obj(torch.zeros(1, 1, 1, 1)), torch.tensor(10.0))

def test_unsupported_protocol_version_is_rejected():
    meta = {'type': 'class', 'version': 5, 'module_src': HANDWRITTEN_SOURCE, 'class_name': 'Scaler', 'state': {}}
    with pytest.raises(AssertionError):
        pickle.loads(pickle.dumps(_UpstreamStyleWriter(meta)))

#----------------------------------------------------------------------------

PLAIN_SOURCE = textwrap.dedent('''
    from torch_utils import persistence

    @persistence.persistent_class
    class Box:
        def __init__(self, value, *, label='x'):
            self.value = value

    @persistence.persistent_class
    class Quiet:
        def __init__(self, value):
            self._record_init_args = False
            self.value = value

    @persistence.persistent_class
    class Holder:
        def __init__(self, payload):
            self.payload = payload

    class Plain:
        pass
''')

def test_decorator_records_init_args_and_is_idempotent(tmp_path, monkeypatch):
    _, _, mod = _import_temp_module(tmp_path, monkeypatch, PLAIN_SOURCE)
    box = mod.Box([1, 2], label={'a': 1})
    assert box.init_args == ([1, 2],)
    kwargs = box.init_kwargs
    assert isinstance(kwargs, dnnlib.EasyDict) and kwargs.label == {'a': 1}
    kwargs.label['a'] = 99  # a copy: must not leak back
    assert box.init_kwargs.label == {'a': 1}
    assert type(box).__name__ == 'Box' and type(box).__module__ == mod.__name__
    assert persistence.persistent_class(mod.Box) is mod.Box
    assert persistence.is_persistent(mod.Box) and persistence.is_persistent(box)
    assert not persistence.is_persistent(mod.Plain) and not persistence.is_persistent(mod.Plain())
    assert not persistence.is_persistent({})  # unhashable: no TypeError

    quiet = mod.Quiet(3)
    assert quiet._init_args is None
    with pytest.raises(AssertionError):
        quiet.init_args

def test_unpicklable_member_fails_at_construction(tmp_path, monkeypatch):
    _, _, mod = _import_temp_module(tmp_path, monkeypatch, PLAIN_SOURCE)
    mod.Holder([torch.zeros(2), 'text', mod.Box(1)])  # tensors, strings, persistent objects: fine
    with pytest.raises((pickle.PicklingError, AttributeError), match="Can't pickle"):  # which one depends on the Python version
        mod.Holder(lambda: None)

def test_plain_object_roundtrip_embeds_source(tmp_path, monkeypatch):
    _, _, mod = _import_temp_module(tmp_path, monkeypatch, PLAIN_SOURCE)
    box = mod.Box({'k': [1, 2]})
    data = pickle.dumps(box)
    assert _global_refs(data) >= {'torch_utils.persistence._reconstruct_persistent_obj'}
    assert b'@persistence.persistent_class' in data
    again = pickle.loads(data)
    assert again.value == {'k': [1, 2]} and again.init_args == ({'k': [1, 2]},)

#----------------------------------------------------------------------------
