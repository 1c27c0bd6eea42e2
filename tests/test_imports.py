"""Layering of the seed judge, the sentence embedder and the teacher registry: each sits below what uses it,
whether imported at the top of a module or inside a function (imports only a type checker reads left out)."""

from __future__ import annotations

import ast
from pathlib import Path

import tailorkd

SRC = Path(tailorkd.__file__).parent


def tailorkd_imports(module: str) -> set[str]:
    """The tailorkd modules (or packages) ``module`` imports anywhere in its code; ``from pkg import name``
    counts as ``pkg.name`` when that is a module."""
    path = SRC.parent.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and "TYPE_CHECKING" in ast.dump(block.test) for stmt in block.body for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tailorkd"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = SRC.parent.joinpath(*sub.split(".")).with_suffix(".py").is_file()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tailorkd"))
    return found


def test_the_seed_judge_imports_none_of_what_it_judges():
    # The classifier to judge comes in as a refit function: the judge needs only metric helpers.
    assert tailorkd_imports("tailorkd.evaluation.seed_judge") <= {"tailorkd.evaluation.metrics", "tailorkd.signals"}
    assert "tailorkd.evaluation.seed_judge" in tailorkd_imports("tailorkd.evaluation.baselines")


def test_texts_are_embedded_without_reaching_into_the_evaluation():
    for module in ("tailorkd.prompts.select", "tailorkd.corpus.relevance", "tailorkd.corpus.steps",
                   "tailorkd.stages.prompt_search", "tailorkd.stages.teacher_check",
                   "tailorkd.stages.guard_candidates"):
        imported = tailorkd_imports(module)
        assert "tailorkd.models.embedder" in imported, module
        assert not (module.startswith(("tailorkd.prompts", "tailorkd.corpus"))
                    and "tailorkd.evaluation.baselines" in imported), module
    assert not {m for m in tailorkd_imports("tailorkd.models.embedder") if not m.startswith("tailorkd.models")}


def test_the_teacher_registry_imports_nothing_of_the_recipe_that_checks_against_it():
    assert tailorkd_imports("tailorkd.teachers.registry") == {"tailorkd.errors"}
    assert "tailorkd.teachers.registry" in tailorkd_imports("tailorkd.recipe.teacher")
