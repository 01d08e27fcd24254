"""Packaging: environment.yml and requirements.txt list the same packages; torch is not pinned."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirement_names(lines):
    names = {}
    for line in lines:
        line = line.split('#')[0].strip()
        if not line or line.startswith('-'):
            continue
        name = re.split(r'[<>=!~\[; ]', line, maxsplit=1)[0].lower().replace('_', '-')
        names[name] = line.replace(' ', '')
    return names


def _environment_pip_lines():
    lines, inside = [], False
    for line in open(os.path.join(ROOT, 'environment.yml')):
        stripped = line.strip()
        if stripped.startswith('- pip:'):
            inside = True
        elif inside and stripped.startswith('- '):
            lines.append(stripped[2:])
        elif inside and stripped and not stripped.startswith('#'):
            inside = False
    return lines


def test_environment_yml_and_requirements_list_the_same_packages_and_bounds():
    requirements = _requirement_names(open(os.path.join(ROOT, 'requirements.txt')))
    environment = _requirement_names(_environment_pip_lines())
    assert requirements == environment


def test_torch_is_not_pinned_to_a_build():
    requirements = _requirement_names(open(os.path.join(ROOT, 'requirements.txt')))
    assert 'torch' in requirements and '==' not in requirements['torch'] and '+cpu' not in requirements['torch']


def test_every_imported_third_party_package_is_required():
    requirements = set(_requirement_names(open(os.path.join(ROOT, 'requirements.txt'))))
    import_names = {'PIL': 'pillow', 'sklearn': 'scikit-learn', 'yaml': 'pyyaml'}
    stdlib_or_local = {'dnnlib', 'torch_utils', 'training', 'edmguide', 'generate_images', 'generate_zip',
                       'calculate_metrics', 'conftest', 'cli_helpers'}
    found = set()
    for folder in ('dnnlib', 'torch_utils', 'training', 'edmguide'):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if file.endswith('.py'):
                    tree = ast.parse(open(os.path.join(dirpath, file)).read())
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            found.update(alias.name.split('.')[0] for alias in node.names)
                        elif isinstance(node, ast.ImportFrom) and node.level == 0:
                            found.add(node.module.split('.')[0])
    import sys
    third_party = {m for m in found if m not in sys.stdlib_module_names and m not in stdlib_or_local}
    missing = {m for m in third_party if import_names.get(m, m).lower() not in requirements}
    assert not missing, f'imported but not in requirements.txt: {sorted(missing)}'
