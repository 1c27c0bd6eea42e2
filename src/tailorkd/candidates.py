"""What the seed guard may ship (``distill.seed_guard.candidates``), one registration each.

A candidate is a model the run trains and the guard judges by cross-fitting (``stages.seed_guard``); its
implementation (``stages.guard_candidates``) is imported only when a run uses it, so a recipe is validated
without loading any model code. Register one of your own with ``register_candidate``: its builder, given the
candidate, returns an object with ``ship(ctx) -> Path`` and ``fold_probs(ctx, fold, keep, rows) -> [T, M]``
(see ``stages.guard_candidates.Candidate``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CandidateKind:
    """One candidate: ``name`` (its key in recipes and records, and its student folder), ``label`` (in words),
    ``uses_teacher`` (learns from the teacher's labels: what the teacher's worth is measured by), ``builder``
    ("module:attribute", called with this kind), ``needs`` (a module it imports; left out of a run, with a
    note, when it is not installed; ``install`` says how), ``short`` (its name in the one-line reason) and
    ``anchored_to_seeds`` (a candidate that uses the teacher but also learns a model fitted on the seeds alone:
    a weak teacher does not bar it, see ``distill.seed_guard.weak_teacher``)."""

    name: str
    label: str
    uses_teacher: bool
    builder: str
    needs: str | None = None
    install: str | None = None
    short: str | None = None  # a few words for the one-line reason (default: the name)
    anchored_to_seeds: bool = False

    @property
    def teacher_only(self) -> bool:
        """Whether it learns from the teacher and from nothing fitted on the seeds alone."""
        return self.uses_teacher and not self.anchored_to_seeds

    @property
    def seed_dependence(self) -> int:
        """How much of it is fitted on the seeds: 0 a student of the teacher alone, 1 one anchored to the seeds
        too, 2 a model of the seeds alone (``guard_stats.choose``: cross-fitting is biased towards the lower)."""
        return 0 if self.teacher_only else 1 if self.uses_teacher else 2

    @property
    def shown(self) -> str:
        return self.short or self.name

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None

    def build(self) -> Any:
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)(self)


_CANDIDATES: dict[str, CandidateKind] = {}


def register_candidate(kind: CandidateKind) -> None:
    """Make ``kind`` a name recipes may list in ``distill.seed_guard.candidates``; a name taken is an error."""
    if kind.name in _CANDIDATES:
        raise ValueError(f"a seed-guard candidate named {kind.name!r} is registered already")
    _CANDIDATES[kind.name] = kind


def unregister_candidate(name: str) -> None:
    _CANDIDATES.pop(name, None)


def candidate_names() -> list[str]:
    return list(_CANDIDATES)


def get_candidate(name: str) -> CandidateKind:
    try:
        return _CANDIDATES[name]
    except KeyError:
        raise ValueError(f"unknown seed-guard candidate {name!r} (known: {', '.join(_CANDIDATES)})") from None


_IMPL = "tailorkd.stages.guard_candidates"
register_candidate(CandidateKind("adaptive_kd", "the adaptive-KD student", True, f"{_IMPL}:DistilledCandidate",
                                 short="adaptive KD"))
register_candidate(CandidateKind("standard_kd", "the standard-KD student", True, f"{_IMPL}:DistilledCandidate",
                                 short="standard KD"))
register_candidate(CandidateKind("setfit", "SetFit on your seeds", False, f"{_IMPL}:SetFitCandidate", needs="setfit",
                                 install="pip install 'tailorkd[setfit]'", short="SetFit"))
register_candidate(CandidateKind("seed_only", "the seed-only classifier (logistic regression on your seeds)", False,
                                 f"{_IMPL}:SeedOnlyCandidate", short="seed-only"))
register_candidate(CandidateKind("joint_kd", "the student distilled from the teacher and SetFit on your seeds together",
                                 True, f"{_IMPL}:JointCandidate", needs="setfit",
                                 install="pip install 'tailorkd[setfit]'", short="joint KD", anchored_to_seeds=True))
