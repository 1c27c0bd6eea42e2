"""The seed guard's candidates (``tailorkd.candidates`` names them): each trains the model it would ship into a
student folder of the run, and refits itself without a fold of the seeds to predict that fold.

- ``DistilledCandidate`` (adaptive_kd, standard_kd): the distill stage trains it on the teacher's targets. A
  fold's student trains the same way on the targets the teacher would have given without the fold's seeds
  (``stages.cross_fit``); when nothing of the targets was fitted on the seeds, the run's own student is that
  student, and predicts the fold as it is.
- ``JointCandidate`` (joint_kd): the adaptive-KD student trained on the teacher's targets averaged with SetFit's
  probabilities on the pool; a fold's student on the fold's refitted targets averaged with a SetFit fitted
  without the fold (the one the SetFit candidate judges the fold with: ``GuardContext.fold_models``).
- ``SetFitCandidate`` and ``SeedOnlyCandidate``: fitted on the seeds alone (SetFit; logistic regression on the
  frozen encoder), then written as an ordinary encoder student (``tailorkd.seed_students``), so classify, serve,
  export and signals read them like any student. Their confidence temperature is fitted on their cross-fitted
  predictions, the only ones on seeds they did not train on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from tailorkd import distributed
from tailorkd.data import PreparedData
from tailorkd.run_dir import RunDir

if TYPE_CHECKING:
    from tailorkd.candidates import CandidateKind
    from tailorkd.recipe import Recipe
    from tailorkd.stages.cross_fit import TeacherRefit

log = logging.getLogger(__name__)

# Bumped when what a candidate's fold predictions or seeds-only student depend on changes.
CANDIDATE_VERSION = 1


@dataclass
class GuardContext:
    """What every candidate needs: the run, its seeds, the pool rows the students train on and the teacher's
    [N, M] targets for them, the students' shots, the distill stage's ``train(job, system, rows, targets, out,
    fingerprint, shots, force=)`` and its jobs ({student system: the recipe it trains with})."""

    recipe: Recipe
    data: PreparedData
    rows: Any
    targets: np.ndarray
    shots: list[dict[str, Any]]
    train: Callable[..., bool]
    jobs: dict[str, Recipe]
    force: bool = False
    _refit: TeacherRefit | None = field(default=None, repr=False)
    # Seeds-only models fitted for a fold, {(candidate, kept seed ids): student}: a candidate built on another
    # one's refit (joint KD on SetFit's) reuses it instead of fitting it again.
    fold_models: dict[tuple[str, tuple[str, ...]], Any] = field(default_factory=dict, repr=False)

    @property
    def run(self) -> RunDir:
        return RunDir(self.recipe)

    @property
    def seeds(self) -> list[dict[str, Any]]:
        return self.data.rows("seed")

    @property
    def refit(self) -> TeacherRefit:
        """The teacher's targets refitted without a fold (``stages.cross_fit``), read once, on the main process."""
        if self._refit is None:
            from tailorkd.stages.cross_fit import TeacherRefit

            self._refit = TeacherRefit(self.recipe, self.data, self.rows)
        return self._refit


class Candidate(Protocol):
    """What the guard asks of a candidate."""

    name: str
    fitted_to_labels: bool  # fitted to the seeds' hard labels: flat by regularisation, not collapsed

    def ship(self, ctx: GuardContext) -> Path:
        """The folder of the model it would ship (trained now unless it is there for this run); every process."""

    def fold_probs(self, ctx: GuardContext, fold: int, keep: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
        """[T, M] probabilities for ``rows`` (a fold of the seeds) of the candidate refitted on the seeds where
        ``keep``; NaN rows for seeds it cannot be judged on (shown to it as examples). Every process."""

    def fit_confidence(self, ctx: GuardContext, folder: Path, probs: np.ndarray, labels: list[str]) -> None:
        """Fit its confidence temperature given its cross-fitted ``probs`` on seeds of ``labels`` (or keep the
        one it has)."""

    def fold_fingerprint(self, ctx: GuardContext) -> str:
        """What its refits depend on besides the folds (its cross-fitted predictions are reused while it holds)."""


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([CANDIDATE_VERSION, *parts], sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def kept_ids(ctx: GuardContext, keep: np.ndarray) -> list[str]:
    return sorted(str(r["id"]) for r, k in zip(ctx.seeds, keep) if k)


class DistilledCandidate:
    fitted_to_labels = False  # it learned the teacher's soft targets: flat outputs mean it learned nothing
    confidence_from_folds = False  # fitted on seeds it never saw: a temperature at the top says it learned nothing

    def __init__(self, kind: CandidateKind):
        self.kind, self.name = kind, kind.name

    def job(self, ctx: GuardContext) -> Recipe:
        return ctx.jobs[self.name]

    def ship(self, ctx: GuardContext) -> Path:
        return ctx.run.student_dir(self.name)  # trained by the distill stage before the guard

    def fold_fingerprint(self, ctx: GuardContext) -> str:
        from tailorkd.students import student_file_hash

        # Its folds' students train on targets refitted from this labelling (the distill fingerprint covers the
        # teacher, prompt, data and training); without refits, the trained student itself predicts.
        return key_of(ctx.run.fingerprint("distill", self.job(ctx)), student_file_hash(self.ship(ctx)))

    def fold_probs(self, ctx: GuardContext, fold: int, keep: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
        if not distributed.from_main(_seeds_fitted(ctx)):
            return distributed.from_main(_predict(ctx, ctx.run.student_dir(self.name), rows))
        job = self.job(ctx)
        targets = distributed.from_main(_fold_targets(ctx, keep))
        out = ctx.run.root / "students" / "guard" / f"{self.name}-fold{fold + 1}"
        fingerprint = key_of(ctx.run.fingerprint("distill", job), kept_ids(ctx, keep))
        ctx.train(job, self.name, ctx.rows, targets, out, fingerprint, ctx.shots, force=ctx.force)
        probs = distributed.from_main(_predict(ctx, out, rows))
        if distributed.is_main():
            shutil.rmtree(out, ignore_errors=True)  # its predictions are what the guard keeps
        return probs

    def fit_confidence(self, ctx: GuardContext, folder: Path, probs: np.ndarray, labels: list[str]) -> None:
        if self.confidence_from_folds:  # else fitted by the distill stage on the seeds it never saw
            distributed.on_main(_fit_confidence_on)(ctx, folder, probs, labels)


@distributed.on_main
def _seeds_fitted(ctx: GuardContext) -> bool:
    return ctx.refit.seeds_fitted


@distributed.on_main
def _fold_targets(ctx: GuardContext, keep: np.ndarray) -> np.ndarray:
    return ctx.refit.targets(keep)


def raw_probs(ctx: GuardContext, folder: Path, rows: list[dict[str, Any]], desc: str) -> tuple[np.ndarray, str]:
    """([N, M] raw probabilities of the student in ``folder`` for ``rows``, its kind)."""
    from tailorkd.students import load_student, predict_probs

    recipe = ctx.recipe
    student = load_student(folder, recipe.task, recipe.prompt, ctx.shots, recipe.student)
    probs = predict_probs(student, rows, recipe.evaluation.batch_size, desc=desc) if rows else \
        np.zeros((0, len(recipe.task.labels)))
    return probs, student.kind


@distributed.on_main
def _predict(ctx: GuardContext, folder: Path, rows: list[dict[str, Any]]) -> np.ndarray:
    """Raw probabilities of the student in ``folder`` for ``rows`` (seeds); NaN for the seeds a causal-LM
    student shows as examples."""
    probs, kind = raw_probs(ctx, folder, rows, "seed guard: fold")
    if kind != "encoder":
        shown = {str(s["id"]) for s in ctx.shots}
        probs[[str(r["id"]) in shown for r in rows]] = np.nan
    return probs


class _SeedsOnlyCandidate:
    """A classifier fitted on the seeds alone, shipped as an encoder student (method full)."""

    fitted_to_labels = True  # fitted to hard labels: its raw outputs are as flat as its regularisation makes them
    confidence_from_folds = True  # its temperature is fitted on fold refits, weaker than it: no collapse sign

    def __init__(self, kind: CandidateKind):
        self.kind, self.name = kind, kind.name

    def settings(self, recipe: Recipe) -> dict[str, Any]:
        raise NotImplementedError

    def key(self, recipe: Recipe, seeds: list[dict[str, Any]]) -> str:
        """What its student depends on: its settings and the seeds it is fitted on."""
        return key_of(self.settings(recipe), sorted(str(r["id"]) for r in seeds))

    def fold_fingerprint(self, ctx: GuardContext) -> str:
        return self.key(ctx.recipe, ctx.seeds)

    def fit_student(self, ctx: GuardContext, seeds: list[dict[str, Any]]) -> Any:
        """An EncoderStudent fitted on ``seeds``."""
        raise NotImplementedError

    def ship(self, ctx: GuardContext) -> Path:
        distributed.on_main(self._ship)(ctx)
        distributed.barrier()
        return ctx.run.student_dir(self.name)

    def _ship(self, ctx: GuardContext) -> None:
        from tailorkd.distill.trainer import TRAINING_FORMAT, is_trained
        from tailorkd.students import save_student

        folder = ctx.run.student_dir(self.name)
        key = self.key(ctx.recipe, ctx.seeds)
        if not ctx.force and is_trained(folder, key):
            log.info("seed guard: %s in %s is up to date", self.name, folder)
            return
        t0 = time.perf_counter()
        student = self.fit_student(ctx, ctx.seeds)
        summary = {"train_seconds": time.perf_counter() - t0, "train_loss": None, "steps": 0,
                   "training_format": TRAINING_FORMAT, "trained_on": f"{len(ctx.seeds)} expert seeds",
                   "settings": self.settings(ctx.recipe)}
        save_student(student, "full", folder, {"recipe_hash": key, "base_model": self.settings(ctx.recipe)["encoder"],
                                               "system": self.name, "summary": summary,
                                               "max_length": student.max_length})
        log.info("seed guard: %s fitted on %d seeds in %.1fs -> %s", self.name, len(ctx.seeds),
                 summary["train_seconds"], folder)

    def fold_probs(self, ctx: GuardContext, fold: int, keep: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
        return distributed.from_main(distributed.on_main(self._fold_probs)(ctx, keep, rows))

    def _fold_probs(self, ctx: GuardContext, keep: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
        from tailorkd.students import predict_probs

        return predict_probs(self.fold_student(ctx, keep), rows, ctx.recipe.evaluation.batch_size,
                             desc=f"seed guard: {self.name} fold")

    def fold_student(self, ctx: GuardContext, keep: np.ndarray) -> Any:
        """Its student fitted on the seeds where ``keep`` (once per guard: kept in ``ctx.fold_models``)."""
        key = (self.name, tuple(kept_ids(ctx, keep)))
        if key not in ctx.fold_models:
            ctx.fold_models[key] = self.fit_student(ctx, [r for r, k in zip(ctx.seeds, keep) if k])
        return ctx.fold_models[key]

    def fit_confidence(self, ctx: GuardContext, folder: Path, probs: np.ndarray, labels: list[str]) -> None:
        distributed.on_main(_fit_confidence_on)(ctx, folder, probs, labels)


def seeds_only_student(recipe: Recipe, data: PreparedData, name: str) -> Path | None:
    """The folder of seeds-only candidate ``name`` (setfit, seed_only) when it holds the model fitted on this
    run's seeds with the recipe's settings now, else None."""
    from tailorkd.candidates import get_candidate
    from tailorkd.distill.trainer import is_trained

    candidate = get_candidate(name).build()
    folder = RunDir(recipe).student_dir(name)
    return folder if is_trained(folder, candidate.key(recipe, data.rows("seed"))) else None


def _fit_confidence_on(ctx: GuardContext, folder: Path, probs: np.ndarray, labels: list[str]) -> None:
    from tailorkd.confidence import confidence_warning, fit_temperature
    from tailorkd.students import CONFIDENCE_FILE, student_file_hash

    names = ctx.recipe.task.label_names
    record: dict[str, Any] = {"student_file": student_file_hash(folder), "method": "temperature scaling, "
                              "Laplace-smoothed targets",
                              "fitted_on": "its cross-fitted predictions on the seeds (each by a refit without it)"}
    if len(labels) < len(names):
        record.update(temperature=1.0, n=len(labels), reason=f"fewer judged seeds than classes ({len(labels)})")
    else:
        record.update(fit_temperature(probs, np.array([names.index(label) for label in labels])))
        warning = confidence_warning(record)
        if warning:
            record["warning"] = warning
    ctx.run.write_json(folder / CONFIDENCE_FILE, record)


class SetFitCandidate(_SeedsOnlyCandidate):
    def settings(self, recipe: Recipe) -> dict[str, Any]:
        e = recipe.evaluation
        return {"method": "setfit", "encoder": e.seed_only_encoder, "iterations": e.setfit_iterations,
                "seed": recipe.seed, "labels": recipe.task.label_names, "max_text_chars": recipe.prompt.max_text_chars}

    def fit_student(self, ctx: GuardContext, seeds: list[dict[str, Any]]) -> Any:
        from tailorkd.evaluation.setfit_baseline import fit_setfit
        from tailorkd.seed_students import setfit_student

        s = self.settings(ctx.recipe)
        model = fit_setfit(seeds, s["labels"], s["encoder"], s["seed"], s["iterations"])
        return setfit_student(model, ctx.recipe.task, ctx.recipe.prompt)


class SeedOnlyCandidate(_SeedsOnlyCandidate):
    def settings(self, recipe: Recipe) -> dict[str, Any]:
        return {"method": "logistic_regression", "encoder": recipe.evaluation.seed_only_encoder,
                "seed": recipe.seed, "labels": recipe.task.label_names, "max_text_chars": recipe.prompt.max_text_chars}

    def fit_student(self, ctx: GuardContext, seeds: list[dict[str, Any]]) -> Any:
        from tailorkd.evaluation.baselines import fit_seed_classifier
        from tailorkd.models.embedder import SentenceEmbedder, embedding_text
        from tailorkd.seed_students import logistic_student

        s = self.settings(ctx.recipe)
        x = SentenceEmbedder(s["encoder"])([embedding_text(r) for r in seeds])
        classifier = fit_seed_classifier(x, [str(r["label"]) for r in seeds], s["seed"])
        return logistic_student(s["encoder"], classifier, ctx.recipe.task, ctx.recipe.prompt)


class JointCandidate(DistilledCandidate):
    """The adaptive-KD student trained on the teacher's targets and SetFit's (fitted on the seeds) averaged,
    text by text over the pool: one model that learns from seeds, teacher and pool together. The two err
    differently (the teacher knows the world, the seeds know the task's boundaries), so their average is a
    better target than either (financial tone, the suite's random seed 21: 72.8 test macro-F1 against 68.7 for
    SetFit and 61.3 for adaptive KD). A fold's student trains on the fold's refitted teacher targets averaged
    with a SetFit fitted without the fold."""

    # SetFit's share of the target. Equal shares: ~20 seeds cannot tell which of the two is better on a task
    # (the guard's estimate is that weak), and an equal average is the robust choice.
    SETFIT_WEIGHT = 0.5
    confidence_from_folds = True  # SetFit saw every seed: only its cross-fitted predictions are fair to fit on

    def job(self, ctx: GuardContext) -> Recipe:
        return ctx.jobs["adaptive_kd"]

    def fold_fingerprint(self, ctx: GuardContext) -> str:
        return key_of(ctx.run.fingerprint("distill", self.job(ctx)), _setfit().key(ctx.recipe, ctx.seeds),
                      self.SETFIT_WEIGHT)

    def ship(self, ctx: GuardContext) -> Path:
        from tailorkd.distill.trainer import is_trained

        folder = ctx.run.student_dir(self.name)
        setfit_folder = _setfit().ship(ctx)
        fingerprint = self.fold_fingerprint(ctx)  # the shipped student depends on the same inputs as its folds
        if ctx.force or not distributed.from_main(is_trained(folder, fingerprint)):
            targets = distributed.from_main(_joint_targets(ctx, ctx.targets, None, setfit_folder))
            ctx.train(self.job(ctx), self.name, ctx.rows, targets, folder, fingerprint, ctx.shots, force=ctx.force)
        return folder

    def fold_probs(self, ctx: GuardContext, fold: int, keep: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
        refitted = distributed.from_main(_seeds_fitted(ctx))
        teacher = distributed.from_main(_fold_targets(ctx, keep)) if refitted else ctx.targets
        targets = distributed.from_main(_joint_targets(ctx, teacher, keep, None))
        out = ctx.run.root / "students" / "guard" / f"{self.name}-fold{fold + 1}"
        fingerprint = key_of(self.fold_fingerprint(ctx), kept_ids(ctx, keep))
        ctx.train(self.job(ctx), self.name, ctx.rows, targets, out, fingerprint, ctx.shots, force=ctx.force)
        probs = distributed.from_main(_predict(ctx, out, rows))
        if distributed.is_main():
            shutil.rmtree(out, ignore_errors=True)  # its predictions are what the guard keeps
        return probs


def _setfit() -> SetFitCandidate:
    from tailorkd.candidates import get_candidate

    return get_candidate("setfit").build()


@distributed.on_main
def _joint_targets(ctx: GuardContext, teacher: np.ndarray, keep: np.ndarray | None, setfit_folder: Path | None
                   ) -> np.ndarray:
    """The teacher's [N, M] targets ``teacher`` averaged with SetFit's probabilities on the pool rows: of SetFit
    fitted on the seeds where ``keep`` (a fold's refit), or of the run's SetFit in ``setfit_folder``."""
    from tailorkd.students import predict_probs

    desc = "seed guard: SetFit on the pool"
    pool = raw_probs(ctx, setfit_folder, list(ctx.rows), desc)[0] if keep is None else \
        predict_probs(_setfit().fold_student(ctx, keep), list(ctx.rows), ctx.recipe.evaluation.batch_size, desc=desc)
    weight = JointCandidate.SETFIT_WEIGHT
    return (1.0 - weight) * np.asarray(teacher, dtype=float) + weight * pool
