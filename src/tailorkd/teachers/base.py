"""What every teacher offers the stages: Protocols that the teacher kinds (``teachers.registry``) implement.

A teacher gives each text a distribution over the task's classes. Its ``identity`` and
``prompt_fingerprint`` key its labels in the store, so labels of another model, other weights or another
prompt are never mixed in. A seed classifier (``SeedModel``) is fitted on the expert seeds instead of prompted;
``teachers.seed_classifier`` stores its distributions under the same kind of key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from tailorkd.labels import LabelRecord, LabelStore

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from tailorkd.prompts import KnnShotSelector
    from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig


@runtime_checkable
class Teacher(Protocol):
    config: TeacherConfig  # the recipe's teacher section (or an ensemble member's)
    task: TaskConfig  # the recipe's task section

    @property
    def identity(self) -> str:
        """Which model (and weights, dtype, scoring mode) gives the labels."""

    @property
    def prompt_fingerprint(self) -> str:
        """Which prompt (parts and shots) the labels were given under."""

    def describe_prompt(self) -> dict[str, Any]:
        """What labels_summary.json records of the prompt: at least its ``fingerprint`` (``prompt_fingerprint``)."""

    def score(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, M] class probabilities (a NaN row: abstained) and per-text seconds, in the order of ``rows``."""

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
              **options: Any) -> Mapping[str, LabelRecord]:
        """Label the rows the store lacks (resumable, a window of rows at a time); return the records of every
        row that has one, by text hash (``labels.StoredLabels``: read from the store on demand)."""

    def with_prompt(self, prompt: PromptConfig, shots: list[dict[str, Any]],
                    selector: KnnShotSelector | None = None) -> Teacher:
        """The same teacher under another prompt or other shots (a local one shares its loaded model)."""


@runtime_checkable
class SeedModel(Protocol):
    """A classifier fitted on the expert seeds (a ``seed_classifier`` teacher kind)."""

    identity: str  # its identity in the label store (the seed set is its "prompt": ``seeds_fingerprint``)
    description: str  # what it is, for logs and ensemble.json
    judged_as: str  # what else its judgement depends on (a recorded judgement alike is reused)

    def fit(self) -> Callable[[Sequence[dict[str, Any]]], np.ndarray]:
        """Fitted on all the seeds: a function from rows to [N, M] probabilities in the task's label order."""

    def judge(self) -> dict[str, Any]:
        """Its ``evaluation.seed_judge.judgement`` from refits on balanced folds of the seeds."""
