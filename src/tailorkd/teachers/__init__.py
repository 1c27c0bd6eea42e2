"""Teachers: models that give a class distribution for each unlabelled text."""

from tailorkd.teachers.local import LocalTeacher, label_rows

__all__ = ["LocalTeacher", "label_rows"]
