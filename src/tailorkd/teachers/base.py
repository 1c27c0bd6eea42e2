"""What every teacher offers the stages: a Protocol that local and served teachers implement.

A teacher gives each text a distribution over the task's classes. Its ``identity`` and
``prompt_fingerprint`` key its labels in the store, so labels of another model, other weights or another
prompt are never mixed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from tailorkd.labels import LabelRecord, LabelStore


@runtime_checkable
class Teacher(Protocol):
    config: Any  # the recipe's teacher section (or an ensemble member's)
    task: Any  # the recipe's task section
    builder: Any  # the PromptBuilder that renders its prompts

    @property
    def identity(self) -> str:
        """Which model (and weights, dtype, scoring mode) gives the labels."""

    @property
    def prompt_fingerprint(self) -> str:
        """Which prompt (parts and shots) the labels were given under."""

    def score(self, rows: Sequence[dict[str, Any]], bar: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, M] class probabilities (a NaN row: abstained) and per-text seconds, in the order of ``rows``."""

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
              **options: Any) -> Mapping[str, LabelRecord]:
        """Label the rows the store lacks (resumable, a window of rows at a time); return the records of every
        row that has one, by text hash (``labels.StoredLabels``: read from the store on demand)."""

    def with_prompt(self, prompt: Any, shots: list[dict[str, Any]], selector: Any = None) -> Teacher:
        """The same teacher under another prompt or other shots (a local one shares its loaded model)."""
