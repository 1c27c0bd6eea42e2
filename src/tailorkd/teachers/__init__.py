"""Teachers: models that give a class distribution for each unlabelled text (see ``base.Teacher``)."""

from __future__ import annotations

from typing import Any

from tailorkd.teachers.base import Teacher
from tailorkd.teachers.local import LocalTeacher, add_reasons, hidden_key, label_rows
from tailorkd.teachers.served import ServedTeacher, label_served_rows


def make_teacher(config: Any, task: Any, prompt: Any, shots: list[dict[str, Any]], selector: Any = None) -> Teacher:
    """The teacher a recipe's teacher section (or an ensemble member's) describes: served when it names a
    server, else a local model loaded now."""
    if config.server is not None:
        return ServedTeacher(config, task, prompt, shots, selector)
    return LocalTeacher(config, task, prompt, shots, selector=selector)


__all__ = ["LocalTeacher", "ServedTeacher", "Teacher", "add_reasons", "hidden_key", "label_rows",
           "label_served_rows", "make_teacher"]
