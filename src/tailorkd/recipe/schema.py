"""The root of a recipe: its sections, and the checks that need more than one of them.

Each section is a pydantic model with ``extra="forbid"`` (see :class:`~tailorkd.recipe.base.Section`), so a
misspelt key is an error rather than a silently ignored setting. Paths: data paths are relative to the recipe
file's folder (``base_dir``, so a recipe can sit beside its data); ``output_dir`` is relative to the working
directory (where the user runs ``tailorkd``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, SerializeAsAny, field_validator, model_validator

from tailorkd.data.config import DataConfig
from tailorkd.evaluation.systems import GUARD_STUDENT_SYSTEMS
from tailorkd.recipe.base import Section, readable_dump
from tailorkd.recipe.corpus import CorpusConfig
from tailorkd.recipe.distill import DistillConfig
from tailorkd.recipe.evaluation import AlertsConfig, EvaluationConfig
from tailorkd.recipe.fingerprint import content_hash
from tailorkd.recipe.prompt import PromptConfig, PromptSearchConfig
from tailorkd.recipe.signals import SignalsConfig
from tailorkd.recipe.student import AdapterConfig, StudentConfig
from tailorkd.recipe.task import TaskConfig
from tailorkd.recipe.teacher import TeacherConfig

SCHEMA_VERSION = 1


class Recipe(Section):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    seed: int = 13
    output_dir: Path
    task: TaskConfig
    data: DataConfig
    prompt: PromptConfig
    teacher: TeacherConfig
    student: StudentConfig
    # Validated as the config class of the method it names (see _adapter_of_its_method); dumped as that class.
    adapter: SerializeAsAny[AdapterConfig] = Field(
        default_factory=lambda: _adapter_section({}),
        description="Which of the student's weights train: `method` and that method's own settings.")
    distill: DistillConfig = DistillConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    alerts: AlertsConfig | None = Field(default=None, description="Set: predictions carry a severity level.")
    prompt_search: PromptSearchConfig | None = Field(
        default=None, description="Set: the prompt is chosen on the seeds before labelling (tailorkd prompts tune).")
    corpus: CorpusConfig | None = Field(
        default=None, description="Set: a raw corpus is cleaned, filtered and deduplicated into the pool first "
        "(tailorkd corpus).")
    signals: SignalsConfig | None = Field(
        default=None, description="How `tailorkd signals` aggregates a feed into daily signals and alerts "
        "(defaults when absent).")

    # Where the recipe file lies; data paths are relative to it. Not part of the recipe's content.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_of_its_method(cls, value: object) -> object:
        return _adapter_section(value)

    @model_validator(mode="after")
    def _distill_fits_task_and_teacher(self) -> Recipe:
        self.distill.check_against(self.task.label_names, self.teacher.hidden_states)
        return self

    @model_validator(mode="after")
    def _guard_students_are_candidates(self) -> Recipe:
        guard = self.distill.seed_guard
        missing = [s for s in self.evaluation.systems if s in GUARD_STUDENT_SYSTEMS
                   and (guard is None or s not in guard.candidates)]
        if missing:
            raise ValueError(f"evaluation.systems lists {missing}, which the seed guard trains: add them to "
                             "distill.seed_guard.candidates")
        return self

    @model_validator(mode="after")
    def _shots_fit_seeds(self) -> Recipe:
        seeds = self.data.splits.seed_per_class * len(self.task.labels)
        if self.prompt.shots > seeds:
            raise ValueError(
                f"prompt.shots={self.prompt.shots} but the seed set has only {seeds} examples "
                f"(data.splits.seed_per_class={self.data.splits.seed_per_class} x {len(self.task.labels)} labels)"
            )
        return self

    @model_validator(mode="after")
    def _alerts_name_task_labels(self) -> Recipe:
        unknown = sorted(set(self.alerts.severity) - set(self.task.label_names)) if self.alerts else []
        if unknown:
            raise ValueError(f"alerts.severity names labels the task does not have: {unknown} "
                             f"(task labels: {self.task.label_names})")
        return self

    @model_validator(mode="after")
    def _signals_fit_task_and_alerts(self) -> Recipe:
        if self.signals is None:
            return self
        unknown = sorted(set(self.signals.risk_labels or []) - set(self.task.label_names))
        if unknown:
            raise ValueError(f"signals.risk_labels names labels the task does not have: {unknown} "
                             f"(task labels: {self.task.label_names})")
        levels = {level for rules in (self.alerts.severity.values() if self.alerts else []) for _, level in rules}
        unweighted = sorted(levels - set(self.signals.severity_weights))
        if unweighted:
            raise ValueError(f"signals.severity_weights has no weight for the severity levels {unweighted} "
                             "that alerts.severity names")
        return self

    def content_hash(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none), for naming and invalidating outputs."""
        return content_hash(self, *sections)

    def to_yaml(self) -> str:
        """The recipe as YAML for people to read (idle nulls left out); it loads back to an equal recipe."""
        return yaml.safe_dump(readable_dump(self), sort_keys=False, allow_unicode=True)


def _adapter_section(value: object) -> object:
    # Imported here, not at the top: the adapter methods import this package (for Section and AdapterConfig),
    # and importing tailorkd.adapters registers the built-in methods.
    from tailorkd.adapters import validate_adapter_section

    return validate_adapter_section(value)
