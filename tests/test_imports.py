"""Layering: no two modules of tailorkd import each other, directly or round a loop, whether at the top of the
module or inside a function (imports only a type checker reads are left out, and so is a package's own
``__init__``, which Python runs before any of its modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import tailorkd

SRC = Path(tailorkd.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the tailorkd modules it imports anywhere in its code (``from pkg import mod`` counts as mod)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and "TYPE_CHECKING" in ast.dump(block.test) for stmt in block.body for node in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tailorkd"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    graph[name].add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
        graph[name] &= set(modules)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_seed_judge_and_the_embedder_sit_below_what_uses_them():
    graph = import_graph()
    # The judge takes the classifier to judge as a function: it needs only metric helpers.
    assert graph["tailorkd.evaluation.seed_judge"] <= {"tailorkd.evaluation.metrics", "tailorkd.signals"}
    assert "tailorkd.evaluation.seed_judge" in graph["tailorkd.evaluation.baselines"]
    # Corpus relevance and shot selection embed texts without reaching into the evaluation.
    assert "tailorkd.models.embedder" in graph["tailorkd.prompts.select"]
    assert not [m for m in graph if m.startswith(("tailorkd.corpus", "tailorkd.prompts"))
                and "tailorkd.evaluation.baselines" in graph[m]]
    # The recipe checks teacher kinds against the registry, which imports nothing of the recipe.
    assert not {m for m in graph["tailorkd.teachers.registry"] if m.startswith("tailorkd.recipe")}
