"""Teachers: models that give a class distribution for each unlabelled text (see ``base.Teacher``), one
registry of their kinds (``registry``).

The registry is imported eagerly (the recipe checks kind names against it); the kinds' modules, which load
model libraries, only when one of their names is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from tailorkd.teachers.registry import (
    TeacherKind,
    get_teacher_kind,
    make_seed_model,
    make_teacher,
    register_teacher_kind,
    teacher_kinds,
    unregister_teacher_kind,
)

_LAZY = {"Teacher": "base", "SeedModel": "base", "LocalTeacher": "local", "add_reasons": "local",
         "hidden_key": "local", "label_rows": "local", "ServedTeacher": "served", "label_served_rows": "served",
         "LlamaCppTeacher": "llama_cpp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"tailorkd.teachers.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LlamaCppTeacher", "LocalTeacher", "SeedModel", "ServedTeacher", "Teacher", "TeacherKind", "add_reasons",
           "get_teacher_kind", "hidden_key", "label_rows", "label_served_rows", "make_seed_model", "make_teacher",
           "register_teacher_kind", "teacher_kinds", "unregister_teacher_kind"]
