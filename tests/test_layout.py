"""The package layout's import directions, read from the source (every import,
also those inside functions): lower layers never reach up."""

import ast
import os

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'jaxres')

# Each folder and the jaxres modules its files may import.  data/ and cpu/ know
# nothing of training, checkpoints or models; models/ only of cpu/; only the
# command line (main) and the tools themselves reach into tools/.
ALLOWED = {
    'cpu': ('jaxres.cpu',),
    'data': ('jaxres.data', 'jaxres.cpu', 'jaxres.sharding', 'jaxres.safe_io'),
    'models': ('jaxres.models', 'jaxres.cpu'),
}
TOOLS_USERS = ('jaxres.main', 'jaxres.bench')


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def jaxres_imports(path: str) -> set[str]:
    """Every ``jaxres...`` module ``path`` imports (``from jaxres import x`` -> jaxres.x)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith('jaxres'))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.startswith('jaxres'):
            found.update(f'{node.module}.{a.name}' for a in node.names)
    return found


def source_files():
    for folder, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith('.py'):
                yield os.path.join(folder, name)


def allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + '.') for p in prefixes)


def test_lower_layers_do_not_import_upper_ones():
    wrong = []
    for path in source_files():
        parts = os.path.relpath(path, PACKAGE).split(os.sep)
        if len(parts) > 1 and parts[0] in ALLOWED:
            wrong += [f'{module_name(path)} imports {t}' for t in sorted(jaxres_imports(path))
                      if not allowed(t, ALLOWED[parts[0]])]
    assert not wrong, wrong


def test_only_the_command_line_and_tools_import_tools():
    wrong = []
    for path in source_files():
        name = module_name(path)
        if allowed(name, ('jaxres.tools',) + TOOLS_USERS):
            continue
        wrong += [f'{name} imports {t}' for t in sorted(jaxres_imports(path))
                  if allowed(t, ('jaxres.tools',))]
    assert not wrong, wrong


@pytest.mark.parametrize('source, expected', [
    ('from jaxres import models, sharding\n', {'jaxres.models', 'jaxres.sharding'}),
    ('def f():\n    from jaxres.data import streaming\n', {'jaxres.data.streaming'}),
    ('import jaxres.train\nimport os\n', {'jaxres.train'}),
])
def test_imports_are_read_also_inside_functions(tmp_path, source, expected):
    path = tmp_path / 'm.py'
    path.write_text(source)
    assert jaxres_imports(str(path)) == expected


def test_tests_use_the_package_not_the_benchmark_scripts():
    """benchmarks/ holds commands; what tests need of them lives in jaxres/ (a test
    may run a script, never import it)."""
    tests = os.path.join(ROOT, 'tests')
    wrong = []
    for name in sorted(os.listdir(tests)):
        if name.endswith('.py'):
            tree = ast.parse(open(os.path.join(tests, name)).read())
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
                wrong += [f'{name} imports {m}' for m in modules
                          if m.split('.')[0] == 'benchmarks']
    assert not wrong, wrong
