"""The ``distill:`` section: how the student learns the teacher's distributions, in one stage or several."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tailorkd.recipe.base import Section
from tailorkd.recipe.teacher import HiddenStatesConfig


class StageFilter(Section):
    """Which pool texts a progressive-distillation stage trains on (all bounds that are set must hold).

    Difficulty is read from the teacher's distribution as the student learns it (calibrated when the recipe
    calibrates): confidence is its largest probability, entropy its entropy in nats. A quantile bound is
    taken over the training texts of the stage's input (e.g. min_confidence_quantile: 0.5 keeps the most
    confident half).
    """

    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0, description="Keep texts the teacher "
                                         "gives at least this probability to its top class.")
    min_confidence_quantile: float | None = Field(default=None, ge=0.0, lt=1.0, description="Keep texts whose "
                                                  "confidence is at least this quantile of the pool's.")
    max_entropy: float | None = Field(default=None, ge=0.0, description="Keep texts whose teacher entropy "
                                      "(nats) is at most this.")
    max_entropy_quantile: float | None = Field(default=None, gt=0.0, le=1.0, description="Keep texts whose "
                                               "entropy is at most this quantile of the pool's.")
    min_chars: int | None = Field(default=None, ge=0, description="Keep texts at least this many characters long.")
    max_chars: int | None = Field(default=None, ge=1, description="Keep texts at most this many characters long.")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> StageFilter:
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars={self.min_chars} is above max_chars={self.max_chars}")
        return self


class StageConfig(Section):
    """One stage of progressive distillation: a subset of the pool and/or coarser classes, its own epochs
    and learning rate. Each stage continues from the weights the previous one ended with (a fresh
    optimizer and schedule)."""

    name: str | None = Field(default=None, description="Shown in logs and student.json; default stage-<k>.")
    filter: StageFilter | None = Field(default=None, description="Which texts to train on; default: all.")
    label_map: dict[str, list[str]] | None = Field(
        default=None, description="Coarse classes: group name -> the task labels it sums (every label in exactly "
        "one group). Teacher and student distributions are both summed into the groups; the head is unchanged.",
    )
    epochs: float | None = Field(default=None, gt=0, description="Default: distill.epochs.")
    learning_rate: float | None = Field(default=None, gt=0, description="Default: distill.learning_rate.")

    @field_validator("label_map")
    @classmethod
    def _groups_non_empty(cls, label_map: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if label_map is not None:
            if len(label_map) < 2:
                raise ValueError(f"a label map needs at least two groups, got {list(label_map)}")
            empty = [g for g, members in label_map.items() if not members]
            if empty:
                raise ValueError(f"groups without labels: {empty}")
        return label_map


# `distill.progressive: default`: first the texts the teacher is surest of, then all of them.
DEFAULT_PROGRESSIVE_STAGES = [
    {"name": "confident", "filter": {"min_confidence_quantile": 0.5}},
    {"name": "all"},
]


class HiddenStateLossConfig(Section):
    """Align the student's pooled representation with the teacher's stored pooled hidden states.

    The student's representation (encoder: the mean-pooled last hidden state its head reads; causal LM: the
    hidden state at the answer position after ``student_layer``) goes through a learned linear projection
    to the teacher's width, one per teacher layer. Total loss = (1 - weight) * soft cross-entropy +
    weight * hidden loss (the mean over the layers), so the weight is the share of the hidden term.
    """

    weight: float = Field(gt=0.0, lt=1.0, description="Share of the hidden-state term in the total loss.")
    kind: Literal["mse", "cosine"] = Field(
        default="cosine", description="cosine: 1 - cosine similarity; mse: mean squared error against the teacher "
        "states standardised per dimension (mean 0, variance 1 over the training texts), so it is of order 1.",
    )
    teacher_layers: list[int] | None = Field(
        default=None, description="Which stored teacher layers to align to; default: all that teacher.hidden_states "
        "stores.",
    )
    student_layer: int = Field(default=-1, description="Causal-LM student: the hidden state index to use (0 = "
                               "embeddings, -1 = last layer). An encoder uses its mean-pooled last state.")


# What may ship, in the order each ships by default (stages.guard_candidates): the first one not collapsed
# (nor barred by weak_teacher) ships unless another beats it clearly under cross-fitting. Joint KD first: it
# learns from the teacher and SetFit together; on the quality suite's runs with it (3 tasks at random seed 21,
# financial tone and crisis at 13) it was the best candidate on four of five and 0.5 below the best on the
# fifth, averaging 76.9 test macro-F1 against SetFit's 74.0 and adaptive KD's 70.2 (docs/recipes.md). SetFit
# next. Without the setfit library both are left out and the distilled students come first.
DEFAULT_GUARD_CANDIDATES = ["joint_kd", "setfit", "adaptive_kd", "standard_kd", "seed_only"]


class SeedGuardConfig(Section):
    """Ship the best model the run made: the candidates (the distilled students, and SetFit and the seed-only
    classifier on the seeds, each a student folder) are judged on the seeds by cross-fitting (each fold's
    seed-fitted parts of the teacher and every candidate refitted without the fold), a collapsed one never
    ships, and the first in ``candidates`` ships unless another beats it in at least ``switch_probability``
    of the paired bootstrap draws (``stages.seed_guard``)."""

    candidates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GUARD_CANDIDATES), min_length=1,
        description="Candidates in order of preference (stages.guard_candidates): joint_kd (the adaptive-KD student "
        "on the teacher's and SetFit's targets averaged), adaptive_kd, standard_kd, setfit (joint_kd and setfit "
        "need `tailorkd[setfit]`; left out with a note when it is not installed), seed_only.")
    folds: int = Field(default=3, ge=2, le=10, description="Cross-fitting folds of the seeds (stratified; fewer when "
                       "a class has fewer seeds). Each costs a training of every distilled candidate.")
    switch_probability: float = Field(
        default=0.9, gt=0.5, lt=1.0, description="How sure the paired comparison must be that a candidate beats the "
        "preferred one before it ships instead (share of bootstrap draws of the seeds in which it scores higher).")
    weak_teacher: Literal["seeds_only", "judge"] = Field(
        default="seeds_only", description="When the teacher check (teacher.check) did not find the teacher ok: "
        "seeds_only bars the candidates that learn from the teacher alone (adaptive_kd, standard_kd) while one "
        "that learns from the seeds (setfit, seed_only, joint_kd) is usable, whatever cross-fitting says (its "
        "estimate on ~20 seeds is weak, and a weak teacher's students looked better on the seeds than they "
        "were); judge lets cross-fitting choose among all candidates.")
    on_worse: Literal["choose", "warn", "stop"] = Field(
        default="choose", description="When the choice is not the adaptive-KD student: choose ships the choice; "
        "warn ships the adaptive-KD student with a warning (unless it collapsed); stop stops the run with the "
        "numbers.")

    @field_validator("on_worse", mode="before")
    @classmethod
    def _self_train_is_choose(cls, value: Any) -> Any:
        # self_train (a student trained on the seed classifier's labels) was the one action before candidates;
        # it shipped a student that had learned nothing, so it is gone: the guard chooses among real candidates.
        return "choose" if value == "self_train" else value

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, names: list[str]) -> list[str]:
        from tailorkd.candidates import candidate_names

        unknown = [n for n in names if n not in candidate_names()]
        if unknown:
            raise ValueError(f"unknown candidates {unknown} (known: {', '.join(candidate_names())})")
        if len(set(names)) != len(names):
            raise ValueError(f"a candidate is listed twice: {names}")
        return names


class DistillConfig(Section):
    epochs: float = Field(default=3.0, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    weight_decay: float = Field(default=0.001, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(default=0.3, gt=0)
    temperature: float = Field(default=1.0, gt=0, description="Softens both distributions; loss scaled by T^2.")
    validation_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of the teacher-labelled pool held out (seeded) to evaluate "
        "the student against the teacher after each epoch (loss and agreement); 0: none.",
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Set: stop a stage after this many evaluations without a lower validation "
        "loss and keep its best checkpoint (needs validation_fraction > 0).",
    )
    checkpoint_steps: int | None = Field(
        default=None, ge=1, description="Save a resumable checkpoint (and evaluate) every this many optimizer "
        "steps; default: after each epoch.",
    )
    stages: list[StageConfig] | None = Field(
        default=None, min_length=1, description="Progressive distillation: stages trained in order, each from the "
        "previous one's weights; default: one stage on all texts and classes.",
    )
    progressive: Literal["default"] | None = Field(
        default=None, description="default: two stages, the most confident half of the pool first, then all of it "
        "(each for distill.epochs); not together with stages.",
    )
    hidden_state_loss: HiddenStateLossConfig | None = Field(
        default=None, description="Set: add a hidden-state alignment term (needs teacher.hidden_states).",
    )
    hard_label_weight: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of a hard-label term (cross-entropy with the teacher's "
        "top class) in the class loss: (1-h)*soft + h*hard; 0: soft targets only.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass instead of keeping them: less "
        "memory, about a third more time (the paper's setting).",
    )
    standard_kd_learning_rate: float = Field(
        default=5e-5, gt=0, description="Learning rate of the standard-KD baseline (every weight trains, so far "
        "lower than an adapter's).",
    )
    seed_guard: SeedGuardConfig | None = Field(
        default_factory=SeedGuardConfig, description="Choose what ships among the run's candidates by "
        "cross-fitting on the seeds (null: the adaptive-KD student ships unjudged).")

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.stages is not None and self.progressive is not None:
            raise ValueError("set either stages or progressive, not both")
        if self.early_stopping_patience is not None and self.validation_fraction == 0:
            raise ValueError("early_stopping_patience needs a validation split: set validation_fraction > 0")
        return self

    def check_against(self, label_names: list[str], hidden_states: HiddenStatesConfig | None) -> None:
        """Raise ValueError, naming the key path, when a label map or the hidden-state loss does not fit the
        task's labels or the teacher's stored states."""
        for k, stage in enumerate(self.stages or []):
            if stage.label_map is None:
                continue
            where = f"distill.stages.{k}.label_map"
            unknown = sorted({n for members in stage.label_map.values() for n in members} - set(label_names))
            if unknown:
                raise ValueError(f"{where}: unknown labels {unknown} (the task's labels: {label_names})")
            seen: dict[str, list[str]] = {}
            for group, members in stage.label_map.items():
                for name in members:
                    seen.setdefault(name, []).append(group)
            twice = {n: g for n, g in seen.items() if len(g) > 1}
            if twice:
                raise ValueError(f"{where}: labels in more than one group: {twice}")
            left_out = [n for n in label_names if n not in seen]
            if left_out:
                raise ValueError(f"{where}: labels in no group: {left_out} (every label must be in exactly one)")
        loss = self.hidden_state_loss
        if loss is not None:
            if hidden_states is None:
                raise ValueError("distill.hidden_state_loss needs the teacher's hidden states: set "
                                 "teacher.hidden_states (e.g. {layers: [-1]}) and run `tailorkd label` again")
            missing = [layer for layer in loss.teacher_layers or [] if layer not in hidden_states.layers]
            if missing:
                raise ValueError(f"distill.hidden_state_loss.teacher_layers: {missing} are not stored; "
                                 f"teacher.hidden_states.layers is {hidden_states.layers}")

    def resolved_stages(self) -> list[StageConfig]:
        """The stages to train, in order (one stage with the top-level settings when none are set)."""
        if self.stages is not None:
            return list(self.stages)
        if self.progressive == "default":
            return [StageConfig.model_validate(s) for s in DEFAULT_PROGRESSIVE_STAGES]
        return [StageConfig()]
