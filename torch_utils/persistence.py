"""Pickles that carry the source code of their classes (protocol version 6).

A class decorated with ``persistent_class`` pickles its instances together
with the full source of the module that defines it. Unpickling executes that
source in a fresh module, so a network pickle keeps working after the code
that produced it has changed or disappeared. The stream layout follows the
upstream EDM/EDM2 protocol exactly (see shared/spec/pickles-and-persistence.md,
section a), which makes our pickles and theirs mutually loadable.
"""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import dnnlib

#----------------------------------------------------------------------------
# Module state. The names are part of the protocol; do not rename.

_version = 6                # Written into every pickle; readers refuse others.
_decorators = set()         # Every class produced by persistent_class.
_import_hooks = []          # Callables that may rewrite meta before loading.
_module_to_src_dict = {}    # module object -> its source text
_src_to_module_dict = {}    # source text -> module object (shared by equal sources)

#----------------------------------------------------------------------------

def persistent_class(orig_class: type) -> type:
    """Class decorator: make instances pickle with their module's source.

    The returned subclass keeps the original name and module, records the
    constructor arguments (``init_args``/``init_kwargs``) unless the instance
    sets ``_record_init_args = False``, and checks right after construction
    that everything except tensors, arrays and nested persistent objects is
    pickleable, so errors surface at creation instead of at save time.
    """
    assert isinstance(orig_class, type), 'persistent_class() expects a class'
    if is_persistent(orig_class):
        return orig_class

    assert orig_class.__module__ in sys.modules, f'{orig_class.__module__} is not an imported module'
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)
    class_name = orig_class.__name__

    class Persistent(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = class_name

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record = getattr(self, '_record_init_args', True)
            self._init_args = copy.deepcopy(args) if record else None
            self._init_kwargs = copy.deepcopy(kwargs) if record else None
            # The loader looks the class up by name in the embedded module.
            assert class_name in orig_module.__dict__, f'{class_name} is not a top-level name of its module'
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self) -> tuple:
            """Positional constructor arguments (deep copy)."""
            assert self._init_args is not None, 'constructor arguments were not recorded'
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self) -> dnnlib.EasyDict:
            """Keyword constructor arguments (deep copy)."""
            assert self._init_kwargs is not None, 'constructor arguments were not recorded'
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Persistent.__name__ = orig_class.__name__
    Persistent.__qualname__ = orig_class.__qualname__
    Persistent.__module__ = orig_class.__module__
    Persistent.__doc__ = orig_class.__doc__
    _decorators.add(Persistent)
    return Persistent

#----------------------------------------------------------------------------

def is_persistent(obj) -> bool:
    """True if ``obj`` is a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:  # unhashable objects cannot be classes in the set
        pass
    return type(obj) in _decorators

def import_hook(hook) -> None:
    """Register ``hook(meta) -> meta`` to run before each persistent object is rebuilt.

    ``meta`` is an EasyDict with fields type, version, module_src, class_name
    and state; hooks typically patch ``module_src`` to keep old pickles
    loadable when their embedded code needs a fix.
    """
    assert callable(hook)
    _import_hooks.append(hook)

#----------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta: dict):
    """Unpickling entry point referenced by every persistent object in a stream."""
    meta = dnnlib.EasyDict(meta)
    if isinstance(meta.state, dict):
        meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None, 'import hooks must return the meta dict'

    assert meta.version == _version, f'unsupported persistence protocol version {meta.version}'
    module = _src_to_module(meta.module_src)
    assert meta.type == 'class'
    cls = persistent_class(module.__dict__[meta.class_name])

    obj = cls.__new__(cls)
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    elif meta.state is not None:
        obj.__dict__.update(meta.state)
    return obj

def _module_to_src(module: types.ModuleType) -> str:
    """Source text of an imported module, cached in both directions."""
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src

def _src_to_module(src: str) -> types.ModuleType:
    """Module built by executing ``src``; identical sources share one module.

    The module is registered before its code runs, because the
    ``persistent_class`` decorators executed inside need to find its source.
    """
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__)  # pylint: disable=exec-used
    return module

#----------------------------------------------------------------------------

def _check_pickleable(obj) -> None:
    """Raise if ``obj`` contains something pickle cannot handle.

    Tensors, arrays, plain scalars/strings and nested persistent objects are
    skipped (they are known to pickle, and serialising tensors would be slow).
    """
    leaf_types = ('numpy.ndarray', 'torch.Tensor', 'torch.nn.parameter.Parameter')

    def strip(o):
        if isinstance(o, (list, tuple, set)):
            return [strip(x) for x in o]
        if isinstance(o, dict):
            return [[strip(k), strip(v)] for k, v in o.items()]
        if isinstance(o, (str, int, float, bool, bytes, bytearray)):
            return None
        if f'{type(o).__module__}.{type(o).__name__}' in leaf_types:
            return None
        if is_persistent(o):
            return None
        return o

    with io.BytesIO() as f:
        pickle.dump(strip(obj), f)

#----------------------------------------------------------------------------
