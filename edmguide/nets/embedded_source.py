"""Is the code inside a network pickle the code this project re-implements?

A persistent object in a pickle carries the full source of the module that defined its class
(`torch_utils.persistence`), and that source is what ran when the pickle was opened. The converter
(`edmguide.nets.convert`) verifies the rebuilt network numerically, but only on the CPU in float32; the
float16 path (`use_fp16`) runs only on CUDA. This module compares the embedded source with this
project's module of the same role, without running anything (text and `ast` only), and says how
far they agree:

- `identical`: the same text (pickles written by this project);
- `upstream`: the text of NVIDIA's released file (`KNOWN_UPSTREAM`, matched by normalised sha256),
  the one this project re-implements from the spec;
- `same-interface`: the same classes and module functions, namely those of the pickled objects
  and, transitively, every module-level function or class their code names (helpers that the
  network does not use, such as training functions, are left out), with the same decorators and
  bases, the same public and special methods, argument names, order and default values (defaults
  compared as values: `[1, 1]` equals `(1, 1)`); the bodies are not compared (NVIDIA's own
  `networks_edm2.py` is expected here, since ours is written independently from the spec);
- `different`: something of the above differs (`difference` names the first thing);
- `by-reference`: the pickle refers to the classes by import path and carries no source, so this
  project's code ran.
"""

import ast
import hashlib

# sha256 of `normalised(text)` of the files this project re-implements, as published in
# github.com/NVlabs/edm2 (every version of each file in that repository's history; computed from
# the repository, no code of it is kept here). Their interfaces compare as `same-interface`.
KNOWN_UPSTREAM = {
    '7298880db4bf955d2941496cce3a554a970867b3eae4d22276cb1c293c131fa2':
        'NVlabs/edm2 training/networks_edm2.py (commits d8299d3 and 52b98e1, identical)',
    '02fc9c190d3d1dc879c00db15c761e1d87fc887770076c43a8556caa4b3c06bf':
        'NVlabs/edm2 training/encoders.py (commit d8299d3, initial release)',
    '889cd0f7f0c59beaa373f928f5aa5e83c1865595e330a32eca8daa810afba50c':
        'NVlabs/edm2 training/encoders.py (commit 52b98e1)',
}

def normalised(src):
    """Text with line endings as '\\n', no trailing spaces and exactly one final newline."""
    lines = [line.rstrip() for line in src.replace('\r\n', '\n').replace('\r', '\n').split('\n')]
    return '\n'.join(lines).rstrip('\n') + '\n'

def normalised_sha256(src):
    return hashlib.sha256(normalised(src).encode('utf-8')).hexdigest()

#----------------------------------------------------------------------------
# Outline of a module's source: its public interface as comparable data.

def _default(node):
    """A default value as comparable data: literals as values (tuples as lists), else its text."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ('expr', ast.unparse(node))
    def lists(v):
        return [lists(x) for x in v] if isinstance(v, (list, tuple)) else v
    return ('value', lists(value))

def _signature(node):
    """(positional names, their defaults, *args, keyword-only names with defaults, **kwargs)."""
    a = node.args
    positional = [arg.arg for arg in a.posonlyargs + a.args]
    defaults = [_default(d) for d in a.defaults]
    kwonly = [(arg.arg, None if d is None else _default(d)) for arg, d in zip(a.kwonlyargs, a.kw_defaults)]
    return dict(args=positional, defaults=defaults, vararg=a.vararg and a.vararg.arg, kwonly=kwonly,
                kwarg=a.kwarg and a.kwarg.arg, decorators=[ast.unparse(d) for d in node.decorator_list])

def _public(name):
    return not name.startswith('_') or (name.startswith('__') and name.endswith('__'))

def outline(src):
    """{name: description} of the public top-level functions and classes (with their methods);
    each description's `uses` lists the other top-level names its code refers to."""
    tree = ast.parse(src)
    top = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    out = {}
    for node in tree.body:
        uses = sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in top} - {getattr(node, 'name', None)})
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            out[node.name] = dict(kind='function', uses=uses, **_signature(node))
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            methods = {item.name: _signature(item) for item in node.body
                       if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(item.name)}
            out[node.name] = dict(kind='class', uses=uses, bases=[ast.unparse(b) for b in node.bases],
                                  decorators=[ast.unparse(d) for d in node.decorator_list], methods=methods)
    return out

def reachable(outlined, roots):
    """The part of an outline that `roots` (class names) need: themselves and, transitively, the
    module's functions and classes their code refers to by name."""
    todo, seen = [r for r in roots if r in outlined], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [u for u in outlined[name]['uses'] if u in outlined]
    return {name: {k: v for k, v in entry.items() if k != 'uses'} for name, entry in outlined.items() if name in seen}

def _signature_difference(label, theirs, mine):
    for key in ('args', 'defaults', 'vararg', 'kwonly', 'kwarg', 'decorators'):
        if theirs[key] != mine[key]:
            what = {'args': 'arguments', 'defaults': 'default values', 'kwonly': 'keyword-only arguments',
                    'vararg': '*args', 'kwarg': '**kwargs'}.get(key, key)
            return f'{label} has other {what} (pickle: {_show(theirs[key])}; this project: {_show(mine[key])})'
    return None

def _first_difference(embedded, ours):
    """The first difference between two outlines, in words; None if they are equal."""
    for name in ours:
        if name not in embedded:
            return f'it lacks {name}'
    for name in embedded:
        if name not in ours:
            return f'it defines {name}, which this project does not'
    for name, mine in ours.items():
        theirs = embedded[name]
        if theirs['kind'] != mine['kind']:
            return f'{name} is a {theirs["kind"]} there, a {mine["kind"]} here'
        if mine['kind'] == 'function':
            difference = _signature_difference(f'function {name}', theirs, mine)
            if difference:
                return difference
            continue
        for key in ('bases', 'decorators'):
            if theirs[key] != mine[key]:
                return f'class {name} has other {key} (pickle: {", ".join(theirs[key]) or "none"})'
        for method in mine['methods']:
            if method not in theirs['methods']:
                return f'class {name} lacks {method}'
        for method in theirs['methods']:
            if method not in mine['methods']:
                return f'class {name} defines {method}, which this project\'s does not'
        for method, sig in mine['methods'].items():
            difference = _signature_difference(f'{name}.{method}', theirs['methods'][method], sig)
            if difference:
                return difference
    return None

def _show(value):
    if isinstance(value, list):
        return '[' + ', '.join(_show(v) for v in value) + ']'
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ('value', 'expr'):
        return repr(value[1]) if value[0] == 'value' else value[1]
    if isinstance(value, tuple):
        return '(' + ', '.join(_show(v) for v in value) + ')'
    return str(value)

#----------------------------------------------------------------------------
# Comparing a loaded object tree with this project's modules.

def compare_source(embedded, ours, roots):
    """(match, difference) for an embedded module source against ours (see module docstring),
    over the classes `roots` and what they use (`reachable`)."""
    if embedded == ours:
        return 'identical', None
    if normalised_sha256(embedded) in KNOWN_UPSTREAM:
        return 'upstream', None
    try:
        theirs = reachable(outline(embedded), roots)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return 'different', f'its source cannot be parsed ({type(exc).__name__})'
    missing = [r for r in roots if r not in theirs]
    if missing:
        return 'different', f'it does not define {missing[0]} at module level'
    difference = _first_difference(theirs, reachable(outline(ours), roots))
    return ('same-interface', None) if difference is None else ('different', difference)

def embedded_sources(objects):
    """{source text: [class names]} of the persistent classes among `objects` (modules: their whole
    tree), in order of first appearance; classes without embedded source are left out."""
    out = {}
    for obj in objects:
        members = obj.modules() if hasattr(obj, 'modules') else [obj]
        for member in members:
            src = getattr(type(member), '_orig_module_src', None)
            name = getattr(type(member), '_orig_class_name', type(member).__name__)
            if isinstance(src, str) and name not in out.setdefault(src, []):
                out[src].append(name)
    return out

def check(obj, our_class, module_name):
    """Metadata entry on the code `obj` (a network or encoder, with its submodules) was defined
    with, against `our_class`'s module `module_name`: {module, classes, sha256, match, difference}.
    Several distinct embedded sources for one role count as `different`."""
    ours = our_class._orig_module_src
    sources = embedded_sources([obj])
    if not sources:
        return dict(module=module_name, classes=[], sha256=None, match='by-reference', difference=None, upstream=None)
    results = [(src, names) + compare_source(src, ours, names) for src, names in sources.items()]
    worst = next((r for r in results if r[2] == 'different'), None) or \
            next((r for r in results if r[2] == 'same-interface'), results[0])
    src, names, match, difference = worst
    if len(results) > 1:
        match, difference = 'different', difference or f'its classes come from {len(results)} different sources'
    return dict(module=module_name, classes=sorted({n for r in results for n in r[1]}),
                sha256=hashlib.sha256(src.encode('utf-8')).hexdigest(), match=match, difference=difference,
                upstream=KNOWN_UPSTREAM.get(normalised_sha256(src)) if match == 'upstream' else None)

def describe(entry):
    """One line for the converter's report."""
    where = f"the pickle's {entry['module']} source"
    if entry['match'] == 'identical':
        return f'code: {where} is identical to this project\'s'
    if entry['match'] == 'upstream':
        return (f'code: {where} is {entry["upstream"]}, the code this project re-implements '
                f'(the outputs above are verified on the CPU in float32 only)')
    if entry['match'] == 'by-reference':
        return f'code: the pickle carries no source for {entry["module"]}; this project\'s code ran'
    if entry['match'] == 'same-interface':
        return (f'code: {where} differs in text from this project\'s but has the same classes, functions, '
                f'methods, arguments and defaults; bodies are not compared: the outputs above are verified on '
                f'the CPU in float32 only, not on CUDA, where use_fp16 switches EDM2 nets to float16')
    return (f'warning: {where} is not the one this project re-implements ({entry["difference"]}); the '
            f'outputs above are verified on the CPU in float32 only; on CUDA (float16 with use_fp16) they may differ')

#----------------------------------------------------------------------------
