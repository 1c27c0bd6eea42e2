"""The ``evaluation:`` section (which systems are compared) and ``alerts:`` (how a prediction becomes an alert)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from tailorkd.evaluation.systems import OPT_IN_SYSTEMS, SYSTEMS, current_key
from tailorkd.recipe.base import Section


class EvaluationConfig(Section):
    systems: list[str] = Field(
        default_factory=lambda: list(SYSTEMS),
        description="The paper's four systems and a baseline: teacher (few-shot prompt); untrained_student (the "
        "student as it comes: a causal LM answering through the prompt, an encoder with an untrained head); "
        "standard_kd (every weight trained on the teacher's targets); adaptive_kd (adapters, stages, "
        "hidden-state loss as configured; formerly student); seed_only (logistic regression on sentence "
        "embeddings of the expert seeds alone, the bar distillation must clear). Opt-in: setfit (the encoder "
        "fine-tuned on seed pairs, SetFit; needs the setfit extra).",
    )
    batch_size: int = Field(default=16, ge=1)
    seed_only_encoder: str = Field(default="minilm-l6", min_length=1,
                                   description="Sentence encoder of the seed-only and SetFit baselines (registry "
                                   "name, folder).")
    setfit_iterations: int = Field(default=20, ge=1, description="SetFit's pairs per seed (num_iterations).")

    @field_validator("systems", mode="before")
    @classmethod
    def _new_names(cls, systems: Any) -> Any:
        if isinstance(systems, list):
            # Old names of systems (evaluation.systems.RENAMED) are still accepted, so that older recipes load.
            return [current_key(s) if isinstance(s, str) else s for s in systems]
        return systems

    @field_validator("systems")
    @classmethod
    def _known_and_unique(cls, systems: list[str]) -> list[str]:
        known = {**SYSTEMS, **OPT_IN_SYSTEMS}
        unknown = [s for s in systems if s not in known]
        if unknown:
            raise ValueError(f"unknown systems {unknown}; use some of: {', '.join(known)}")
        if len(set(systems)) != len(systems):
            raise ValueError(f"systems must not repeat (student is the old name of adaptive_kd); got {systems}")
        return systems


NO_ALERT = "none"


class AlertsConfig(Section):
    """How a prediction becomes an alert: a severity level from the predicted label and its confidence."""

    severity: dict[str, list[tuple[float, str]]] = Field(
        default_factory=dict,
        description="Per predicted label, [min_confidence, level] pairs with thresholds descending: the first "
        "pair whose threshold the confidence reaches gives the level, e.g. risk: [[0.8, high], [0.5, medium], "
        "[0, low]]. A label not listed, or a confidence below its last threshold, gives 'none'.",
    )

    @field_validator("severity")
    @classmethod
    def _thresholds_descend(cls, severity: dict[str, list[tuple[float, str]]]) -> dict[str, list[tuple[float, str]]]:
        for label, rules in severity.items():
            if not rules:
                raise ValueError(f"{label}: give at least one [min_confidence, level] pair (or leave the label out)")
            thresholds = [t for t, _ in rules]
            if any(not 0.0 <= t <= 1.0 for t in thresholds):
                raise ValueError(f"{label}: thresholds are confidences, in [0, 1]; got {thresholds}")
            if any(a <= b for a, b in zip(thresholds, thresholds[1:])):
                raise ValueError(f"{label}: thresholds must strictly descend; got {thresholds}")
            if any(not level.strip() for _, level in rules):
                raise ValueError(f"{label}: a level name is empty")
        return severity

    def level(self, label: str, confidence: float) -> str:
        """The severity level of a prediction of ``label`` with ``confidence`` (NaN: none)."""
        for threshold, level in self.severity.get(label, []):
            if confidence >= threshold:  # False for NaN, so an abstention raises no alert
                return level
        return NO_ALERT
