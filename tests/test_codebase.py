"""Rules the codebase keeps, checked on its source: module size, what tests may import, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "tailorkd"
TESTS = ROOT / "tests"
MAX_MODULE_LINES = 600


def module_name(path: Path, src: Path) -> str:
    """``src/tailorkd/a/b.py`` -> ``tailorkd.a.b``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST):
    """Every import statement, at module level or inside functions, except those under ``if TYPE_CHECKING:``
    (they never run)."""
    if isinstance(tree, ast.If) and is_type_checking(tree.test):
        children = tree.orelse
    else:
        children = list(ast.iter_child_nodes(tree))
    for child in children:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from imports(child)


def absolute_module(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module an ``from ... import`` names, relative imports resolved against ``importer``."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    """tailorkd's modules and the tailorkd modules each imports. ``from tailorkd.x import name`` is an edge to
    ``tailorkd.x.name`` when that is a module, else to ``tailorkd.x``; importing a submodule is an edge to it
    alone (Python runs its package's ``__init__`` first, which never waits on the submodule)."""
    files = {module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for importer, path in files.items():
        for node in imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                module = absolute_module(node, importer, path.name == "__init__.py")
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module
                           for alias in node.names]
            graph.add_edges_from((importer, target) for target in targets
                                 if target in files and target != importer)
    return graph


def is_test_module(name: str) -> bool:
    top = name.split(".")[0]
    return top.startswith("test_") or top == "conftest"


def import_offenders(source: str, where: str) -> list[str]:
    """What a test module's ``source`` takes that tests may not: a private tailorkd name (imported, read as an
    attribute of a tailorkd module, or patched with ``setattr``) or another test module (conftest included:
    pytest loads it itself, and its plain helpers belong in tests/helpers.py)."""
    tree = ast.parse(source)
    offenders = []
    tailorkd_names = set()  # names bound to tailorkd modules or objects, e.g. `from tailorkd import models`
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_test_module(alias.name):
                    offenders.append(f"{line}: imports the test module {alias.name}")
                if alias.name.split(".")[0] == "tailorkd":
                    offenders += [f"{line}: imports the private module {alias.name}"
                                  for part in alias.name.split(".") if part.startswith("_")]
                    tailorkd_names.add(alias.asname or "tailorkd")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if is_test_module(node.module):
                offenders.append(f"{line}: imports from the test module {node.module}")
            if node.module.split(".")[0] == "tailorkd":
                private = [part for part in node.module.split(".") if part.startswith("_")]
                private += [alias.name for alias in node.names if alias.name.startswith("_")]
                offenders += [f"{line}: imports the private name {name} from {node.module}" for name in private]
                tailorkd_names.update(alias.asname or alias.name for alias in node.names)

    def private(name: object) -> bool:
        return isinstance(name, str) and name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in tailorkd_names:
                offenders.append(f"{line}: uses the private name {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr":
            args = [arg.value if isinstance(arg, ast.Constant) else arg for arg in node.args]
            if args and isinstance(args[0], str) and args[0].startswith("tailorkd."):  # setattr("tailorkd.x._y", v)
                if any(private(part) for part in args[0].split(".")):
                    offenders.append(f"{line}: patches the private name {args[0]}")
            elif len(args) >= 2 and private(args[1]):  # setattr(module_or_object, "_y", v)
                target = args[0]
                while isinstance(target, ast.Attribute):
                    target = target.value
                if isinstance(target, ast.Name) and target.id in tailorkd_names:
                    offenders.append(f"{line}: patches the private name {ast.unparse(node.args[0])}.{args[1]}")
    return offenders


def import_cycles(graph: nx.DiGraph) -> list[str]:
    """Each set of modules that import one another, directly or not, with the imports among them."""
    cycles = sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)
    return [f"{modules}: " + "; ".join(sorted(f"{a} -> {b}" for a, b in graph.subgraph(modules).edges))
            for modules in cycles]


def test_no_src_module_is_over_the_line_limit():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
               for p in PACKAGE.rglob("*.py")}
    over = {path: n for path, n in sorted(lengths.items()) if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_tests_import_no_private_name_and_no_other_test_module():
    """Tests (and the benchmarks) use tailorkd's public names only, and share helpers through tests/helpers.py
    and conftest.py's fixtures, never by importing another test module."""
    paths = sorted(TESTS.glob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    offenders = [offender for path in paths
                 for offender in import_offenders(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not offenders, "\n".join(offenders)


def test_tailorkd_has_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (modules: the imports among them):\n" + "\n".join(cycles)


def test_the_guards_catch_what_they_guard(tmp_path):
    """Each check finds a violation planted for it: a function-level import cycle (and none through
    `if TYPE_CHECKING:` or a package's __init__), and every way a test reaches into another module."""
    files = {
        "pkg/__init__.py": "from pkg.sub import helper\n",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from .a import x\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nimport pkg.sub.d\n",
        "pkg/sub/__init__.py": "from pkg.sub.d import helper\n",
        "pkg/sub/d.py": "import pkg.a\nhelper = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert sorted(graph.edges) == [("pkg", "pkg.sub"), ("pkg.a", "pkg.b"), ("pkg.b", "pkg.a"), ("pkg.c", "pkg.sub.d"),
                                   ("pkg.sub", "pkg.sub.d"), ("pkg.sub.d", "pkg.a")]
    assert import_cycles(graph) == ["['pkg.a', 'pkg.b']: pkg.a -> pkg.b; pkg.b -> pkg.a"]
    assert import_graph().has_edge("tailorkd.pipeline", "tailorkd.stages.label")  # the real package is read

    planted = ("from test_pipeline import make_recipe\nimport conftest\nfrom tailorkd.report import _section, write\n"
               "from tailorkd import models\nmodels.gguf._join(1)\n"
               "def test_x(monkeypatch):\n    monkeypatch.setattr(models.cache, '_root', 1)\n"
               "    monkeypatch.setattr('tailorkd.files._fsync', 1)\n    monkeypatch.setattr(models, 'root', 1)\n"
               "from helpers import make_recipe\nimport os\nos._exit(0)\n")
    assert [offender.split(": ", 1)[1] for offender in import_offenders(planted, "t.py")] == [
        "imports from the test module test_pipeline", "imports the test module conftest",
        "imports the private name _section from tailorkd.report", "uses the private name models.gguf._join",
        "patches the private name models.cache._root", "patches the private name tailorkd.files._fsync"]
