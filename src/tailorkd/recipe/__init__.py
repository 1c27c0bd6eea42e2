"""The recipe: one YAML file that is the single source of truth for a run.

One module per section (``task``, ``prompt``, ``teacher``, ``student``, ``distill``, ``evaluation``,
``signals``; the ``data:`` section lives in :mod:`tailorkd.data.config`), the root :class:`Recipe` in
``schema``, reading and overrides in ``load``, the hash that names outputs in ``fingerprint``.
"""

from tailorkd.recipe.base import Device, Dtype, Section, readable_dump
from tailorkd.recipe.distill import (
    DEFAULT_PROGRESSIVE_STAGES,
    DistillConfig,
    HiddenStateLossConfig,
    StageConfig,
    StageFilter,
)
from tailorkd.recipe.evaluation import NO_ALERT, AlertsConfig, EvaluationConfig
from tailorkd.recipe.load import apply_overrides, check_files, load_recipe
from tailorkd.recipe.prompt import PromptConfig, PromptSearchConfig
from tailorkd.recipe.schema import SCHEMA_VERSION, Recipe
from tailorkd.recipe.signals import SignalColumns, SignalRule, SignalsConfig
from tailorkd.recipe.student import AdapterConfig, StudentConfig
from tailorkd.recipe.task import LabelSpec, TaskConfig
from tailorkd.recipe.teacher import (
    CalibrationConfig,
    EnsembleConfig,
    EnsembleMemberConfig,
    HiddenStatesConfig,
    ReasonsConfig,
    SeedClassifierConfig,
    ServerConfig,
    TeacherConfig,
)

__all__ = [
    "DEFAULT_PROGRESSIVE_STAGES", "NO_ALERT", "SCHEMA_VERSION",
    "AdapterConfig", "AlertsConfig", "CalibrationConfig", "Device", "DistillConfig", "Dtype", "EnsembleConfig",
    "EnsembleMemberConfig", "EvaluationConfig", "HiddenStateLossConfig", "HiddenStatesConfig", "LabelSpec",
    "PromptConfig", "PromptSearchConfig", "ReasonsConfig", "Recipe", "Section", "SeedClassifierConfig",
    "ServerConfig", "SignalColumns", "SignalRule", "SignalsConfig", "StageConfig", "StageFilter", "StudentConfig",
    "TaskConfig", "TeacherConfig",
    "apply_overrides", "check_files", "load_recipe", "readable_dump",
]
