"""The package tree shows the architecture: every edmguide layer imports only from the layers
below it (and from training, torch_utils and dnnlib, which import nothing of edmguide)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ['util', 'sampler', 'nets', 'jobs', 'metrics', 'models', 'sweeps']  # bottom to top
ALLOWED_UPWARD = {('metrics', 'demo')}  # the demo's feature detector (README: Repository layout)


def _imports(path):
    """Every `edmguide.<package>` a module imports (module level and inside functions)."""
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f'{node.module}.{a.name}' for a in node.names] if node.module == 'edmguide' else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split('.')
            if parts[0] == 'edmguide' and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_layer_imports_only_from_layers_below_it():
    bad = []
    for rank, layer in enumerate(LAYERS):
        folder = os.path.join(ROOT, 'edmguide', layer)
        for name in sorted(os.listdir(folder)):
            if name.endswith('.py'):
                for package in _imports(os.path.join(folder, name)):
                    if package in LAYERS and LAYERS.index(package) > rank or \
                            package in ('demo', 'toys') and (layer, package) not in ALLOWED_UPWARD:
                        bad.append(f'edmguide/{layer}/{name} imports edmguide.{package}')
    assert bad == []


def test_the_packages_below_edmguide_import_nothing_of_it():
    bad = []
    for package in ('dnnlib', 'torch_utils', 'training'):
        for folder, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith('.py') and _imports(os.path.join(folder, name)):
                    bad.append(os.path.join(folder, name))
    assert bad == []


def test_edmguide_has_no_loose_modules_but_the_pickled_helpers():
    loose = sorted(n for n in os.listdir(os.path.join(ROOT, 'edmguide')) if n.endswith('.py'))
    assert loose == ['__init__.py', 'optim.py']  # optim: its path is named inside the shipped toy pickles
