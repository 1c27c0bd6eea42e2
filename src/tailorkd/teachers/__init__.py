"""Teachers: models that give a class distribution for each unlabelled text."""

from tailorkd.teachers.local import LocalTeacher, label_rows
from tailorkd.teachers.served import ServedTeacher, label_served_rows

__all__ = ["LocalTeacher", "ServedTeacher", "label_rows", "label_served_rows"]
