"""Small, diffusion-agnostic utilities.

The package name and the names re-exported here are part of the pickle
compatibility surface: source code embedded in EDM/EDM2 pickles does
``import dnnlib`` and uses ``dnnlib.EasyDict``, ``dnnlib.make_cache_dir_path``
and ``dnnlib.util.*``.
"""

from . import util
from .util import EasyDict, make_cache_dir_path

__all__ = ['util', 'EasyDict', 'make_cache_dir_path']
