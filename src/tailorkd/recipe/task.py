"""The ``task:`` section: what is classified, and into which labels."""

from __future__ import annotations

from pydantic import Field, field_validator

from tailorkd.recipe.base import Section


class LabelSpec(Section):
    """One class of the task. Its identity on disk is ``name``; ``verbalizer`` is what the models answer."""

    name: str = Field(min_length=1)
    description: str = ""
    verbalizer: str | None = Field(
        default=None, description="The word(s) a language model answers for this class; default: name."
    )

    @property
    def answer(self) -> str:
        return self.verbalizer or self.name


class TaskConfig(Section):
    name: str = Field(min_length=1, description="Short task name, used in reports.")
    description: str = Field(min_length=1, description="What is being classified, in one sentence.")
    labels: list[LabelSpec] = Field(min_length=2, description="The classes, in the order used everywhere.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[LabelSpec]) -> list[LabelSpec]:
        for what in ("name", "answer"):
            values = [getattr(label, what) for label in labels]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"label {what}s must be unique; repeated: {dupes}")
        return labels

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]
