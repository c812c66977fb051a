"""kiln's layers import only downward. Checked on the source with ``ast`` (nothing is
imported), counting every import: at module level, inside functions, under TYPE_CHECKING,
and the module names written as strings in lazy tables (``importlib.import_module``).

    errors          leaf: everyone may import it (and ``from kiln import __version__``)
    ir              imports only ir
    targets         code-generation targets: imports only targets
    frontend        DSL, nn, ONNX: imports ir
    passes          imports ir and targets (not frontend, not codegen)
    runtime         the deployable runtime: imports only runtime (never the compiler)
    codegen         imports ir, passes, runtime (the artifact writer) and targets
    top             kiln/__init__ (the lazy public API), kiln.train (tracing + compiled
                    training), kiln.cli (the ``kiln`` command), kiln.debug (compare,
                    bisect), kiln.fuzz: anything

Also: no module under kiln/ imports pytest or hypothesis (but ``kiln fuzz``'s engine, which
imports hypothesis lazily and says how to install it), nor anything of tests/; and every
module under kiln/ is reachable from the package's entry points, so none lives only for tests
(tooling that only tests use belongs in tests/, like tests/onnx/coverage.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KILN = Path(__file__).resolve().parents[1] / "kiln"

# module or package -> its layer (the longest matching prefix wins)
LAYER_OF = {
    "kiln.errors": "errors",
    "kiln.__version__": "errors",  # ``from kiln import __version__``: a constant, no code
    "kiln.ir": "ir",
    "kiln.targets": "targets",
    "kiln.frontend": "frontend",
    "kiln.passes": "passes",
    "kiln.runtime": "runtime",
    "kiln.codegen": "codegen",
    "kiln": "top",  # the package itself: its lazy table reaches every layer
    "kiln.train": "top",
    "kiln.cli": "top",
    "kiln.debug": "top",
    "kiln.nn": "top",  # kiln.frontend.nn and its functional, importable as kiln.nn
    "kiln.ops": "top",
    "kiln.fuzz": "top",
}
EVERY_LAYER = {"errors", "ir", "targets", "frontend", "passes", "runtime", "codegen", "top"}

# layer -> the layers it may import (besides itself)
MAY_IMPORT = {
    "errors": set(),
    "ir": {"errors"},
    "targets": {"errors"},
    "frontend": {"ir", "errors"},
    "passes": {"ir", "targets", "errors"},
    "runtime": {"errors"},
    "codegen": {"ir", "passes", "runtime", "targets", "errors"},
    "top": EVERY_LAYER,
}

# third-party packages only the tests may import; (module, package) pairs excused, with why
TEST_ONLY = {"pytest", "_pytest", "hypothesis", "tests"}
EXCUSED = {("kiln.fuzz", "hypothesis"): "kiln fuzz draws its random graphs with hypothesis"}

# what users import or run: the package (its lazy table names the public modules) and the
# ``kiln`` console script (kiln.cli:main, python -m kiln.cli)
ENTRY_POINTS = ("kiln", "kiln.cli", "kiln.cli.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(KILN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(KILN.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer of a kiln module (None: not in LAYER_OF)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYER_OF.get(".".join(parts[:n]))
        if layer is not None and (n > 1 or module == "kiln"):
            return layer
    return None


def _lazy_table() -> dict[str, str]:
    """kiln/__init__'s lazy table: public name -> the module that defines it."""
    tree = ast.parse(MODULES["kiln"].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {name: module for name, (module, _) in table.items()}
    return {}


ROOT_NAMES = _lazy_table()


def _package_of(module: str) -> str:
    path = MODULES.get(module)
    return module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]


def resolve_from(base: str, name: str) -> str:
    """The kiln module that ``from base import name`` reads (``base`` a kiln module)."""
    if f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    if base == "kiln":
        if name == "__version__":
            return "kiln.__version__"
        return ROOT_NAMES.get(name, "kiln")
    return base


def imports(module: str, source: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``, kiln modules resolved to the
    module they read, other packages by their top-level name."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                package = _package_of(module).split(".")
                base = ".".join(package[:len(package) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            if base == "kiln" or base.startswith("kiln."):
                out += [(node.lineno, resolve_from(base, a.name)) for a in node.names]
            else:
                out.append((node.lineno, base))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "." in node.value and node.value in MODULES and node.value != module:
            out.append((node.lineno, node.value))  # a lazy table's or import_module's string
    return out


def violations(module: str, source: str) -> list[str]:
    """Every import of ``source`` (the text of kiln module ``module``) that breaks a rule."""
    layer = layer_of(module)
    found = []
    for line, target in imports(module, source):
        top = target.split(".")[0]
        if top == "kiln":
            to = layer_of(target)
            if to is None:
                found.append(f"{module}:{line} imports {target}, which LAYER_OF does not place")
            elif to != layer and to not in MAY_IMPORT[layer]:
                found.append(f"{module}:{line} ({layer}) imports {target} ({to})")
        elif top in TEST_ONLY and (module, top) not in EXCUSED:
            found.append(f"{module}:{line} imports {target}, which only tests may use")
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, f"add these modules to LAYER_OF: {unplaced}"
    assert set(MAY_IMPORT) == EVERY_LAYER == set(LAYER_OF.values())


def test_layers_import_only_downward():
    found = [v for m, p in MODULES.items() for v in violations(m, p.read_text())]
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_no_module_lives_only_for_tests():
    edges = {m: {t for _, t in imports(m, p.read_text()) if t in MODULES}
             for m, p in MODULES.items()}
    for m in MODULES:  # importing kiln.a.b runs kiln/a/__init__ first
        parts = m.split(".")
        edges[m] |= {".".join(parts[:n]) for n in range(1, len(parts))}
    reached, todo = set(), list(ENTRY_POINTS)
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += edges[m]
    unreached = sorted(set(MODULES) - reached)
    assert not unreached, (f"nothing in kiln imports {unreached}: if only tests use them, "
                           "move them to tests/")


@pytest.mark.parametrize("module, source, broken", [
    ("kiln.passes.x", "from kiln.codegen import api", "(passes) imports kiln.codegen.api"),
    ("kiln.passes.x", "def f():\n    from kiln.codegen.api import compile",
     "kiln.passes.x:2 (passes) imports kiln.codegen.api (codegen)"),
    ("kiln.passes.x", "import kiln.frontend.dsl", "imports kiln.frontend.dsl (frontend)"),
    ("kiln.passes.x", "from kiln import compile", "imports kiln.codegen.api (codegen)"),
    ("kiln.frontend.x", "from kiln.passes import training", "imports kiln.passes.training"),
    ("kiln.ir.x", "from kiln.frontend import ops", "(ir) imports kiln.frontend.ops"),
    ("kiln.ir.x", "from .. import train", "(ir) imports kiln.train (top)"),
    ("kiln.runtime.x", "import kiln", "(runtime) imports kiln (top)"),
    ("kiln.runtime.x", "MOD = 'kiln.codegen.build'", "(runtime) imports kiln.codegen.build"),
    ("kiln.codegen.x", "from kiln.cli import main", "(codegen) imports kiln.cli (top)"),
    ("kiln.codegen.x", "import pytest", "imports pytest, which only tests may use"),
    ("kiln.ir.x", "from hypothesis import given", "imports hypothesis, which only tests"),
    ("kiln.passes.x", "from tests.strategies import graphs", "imports tests.strategies"),
])
def test_the_checker_catches(module, source, broken):
    assert any(broken in v for v in violations(module, source)), violations(module, source)


@pytest.mark.parametrize("module, source", [
    ("kiln.passes.x", "from kiln.ir.graph import Graph\nfrom kiln.errors import KilnError"),
    ("kiln.passes.x", "from kiln.targets import Target\nfrom . import autodiff"),
    ("kiln.runtime.x", "from kiln import __version__\nfrom kiln.runtime import format"),
    ("kiln.codegen.x", "from kiln.runtime import load\nfrom kiln.passes.manager import optimize"),
    ("kiln.train", "from kiln.codegen.api import compile\nfrom kiln.frontend.dsl import trace"),
    ("kiln.fuzz", "from hypothesis import strategies"),
])
def test_the_checker_allows(module, source):
    assert violations(module, source) == []
