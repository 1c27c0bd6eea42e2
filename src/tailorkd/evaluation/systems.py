"""The systems a report compares, named as the paper names them.

The key is what report.json, the predictions files and ``evaluation.systems`` use; the label is what
report.md, the figures and the terminal show; the short label fits an 80-column table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class System:
    key: str
    label: str
    short: str
    description: str


SYSTEMS: dict[str, System] = {s.key: s for s in (
    System("teacher", "teacher", "teacher", "the teacher LLM through its few-shot prompt (calibrated, combined as "
           "the recipe says)"),
    System("untrained_student", "untrained student", "untrained", "the student as it comes: a causal LM answering "
           "through the prompt, an encoder with an untrained head"),
    System("standard_kd", "standard KD", "std KD", "every weight of the student trained on the teacher's soft "
           "targets, one stage"),
    System("adaptive_kd", "adaptive KD", "adapt KD", "the student trained as the recipe says: adapters, progressive "
           "stages, hidden-state loss"),
    System("seed_only", "seed-only baseline", "seeds", "logistic regression on sentence embeddings of the expert "
           "seeds alone: the bar distillation must clear"),
)}

# Systems a recipe lists to have them (not in the default evaluation.systems): SetFit trains an encoder.
OPT_IN_SYSTEMS: dict[str, System] = {s.key: s for s in (
    System("setfit", "SetFit baseline", "SetFit", "the sentence encoder fine-tuned contrastively on pairs of "
           "expert seeds, then a logistic-regression head (SetFit): a stronger seeds-only bar"),
    System("joint_kd", "joint KD", "joint KD", "the adaptive-KD student trained on the teacher's targets averaged "
           "with SetFit's on the pool: seeds, teacher and pool together (a seed-guard candidate)"),
)}

# The student systems, each trained by the distill stage into its own folder.
STUDENT_SYSTEMS = ("untrained_student", "standard_kd", "adaptive_kd")
# Student systems the seed guard trains when they are among its candidates (distill.seed_guard.candidates).
GUARD_STUDENT_SYSTEMS = ("joint_kd",)

# Systems a run may add on its own, not chosen in ``evaluation.systems``: the student the seed guard shipped
# (stages.seed_guard) when it is none of the student systems evaluated, e.g. SetFit written as a student.
ADDED_SYSTEMS: dict[str, System] = {s.key: s for s in (
    System("shipped", "shipped student", "shipped", "the student the seed guard chose to ship, measured as it "
           "ships (e.g. SetFit on the seeds written as an encoder student)"),
)}
KNOWN_SYSTEMS: dict[str, System] = {**SYSTEMS, **OPT_IN_SYSTEMS, **ADDED_SYSTEMS}


# Keys that older report.json files use: before the paper's names the adaptive-KD system was keyed "student".
RENAMED = {"student": "adaptive_kd"}


def current_key(key: str) -> str:
    """The key system ``key`` has today (an old report's ``student`` is ``adaptive_kd``)."""
    return RENAMED.get(key, key)


def label(key: str) -> str:
    """The display name of system ``key``, old keys included (the key itself for a system this table does not
    know)."""
    key = current_key(key)
    return KNOWN_SYSTEMS[key].label if key in KNOWN_SYSTEMS else key


def short(key: str) -> str:
    """The short display name of system ``key``, for narrow tables."""
    key = current_key(key)
    return KNOWN_SYSTEMS[key].short if key in KNOWN_SYSTEMS else key
