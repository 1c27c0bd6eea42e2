"""Stage 3b, seed guard (run by the distill stage, ``distill.seed_guard``): never ship a student that the
expert seeds judge worse than the seed-only baseline.

A weak or collapsed teacher teaches its collapse: a crisis student that calls every article a risk is worse
than none, and the test set that would show it is not there in production. The seeds are. So after training:

1. the adaptive-KD student is judged on the seeds it never saw (an encoder: all of them, since the students
   train on the pool only; a causal LM: those its prompt does not show), and the seed classifier
   (``seed_only``) on the same seeds by refits on balanced folds (``evaluation.seed_judge``: each seed judged
   by a classifier fitted without it, the class mix kept). Both are honest estimates on the same texts;
2. when the student's seed macro-F1 is not below the classifier's, it ships;
3. else, as ``on_worse`` says: ``self_train`` trains the same student (adapter, stages, losses) on the seed
   classifier's distributions over the pool instead of the teacher's, into ``students/self_trained``, and
   ships it (self-training: the seeds' signal spread over the pool, in the student's form); ``warn`` ships
   the adaptive-KD student with a warning; ``stop`` stops the run with the numbers.

The self-trained student's own seed scores are recorded but are no fair judge: its targets come from a
classifier fitted on those very seeds. The choice is made on the two honest estimates only; the test set
(``evaluate``) then shows all three. ``students/seed_guard.json`` records the judgements and which student
ships (``RunDir.student_dir()``, read by classify, export, serve and signals), tied to the adaptive-KD student
it judged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd import distributed
from tailorkd.data import PreparedData
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, stored_probs
from tailorkd.prompts import held_out_seeds
from tailorkd.run_dir import RunDir

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

GUARD_VERSION = 1


def judge_student(recipe: Recipe, data: PreparedData, system: str, shots: list[dict[str, Any]]) -> dict[str, Any]:
    """The trained student ``system`` judged on the seeds it never saw, and the seed classifier's balanced-fold
    predictions on the same seeds: {"seeds": ids, "student": judgement, "seed_only": judgement}."""
    from tailorkd.confidence import apply_temperature
    from tailorkd.evaluation.baselines import seed_classifier_predictions
    from tailorkd.evaluation.seed_judge import judgement
    from tailorkd.models.embedder import SentenceEmbedder, embedding_text
    from tailorkd.students import load_student, predict_probs, student_file_hash, student_temperature
    from tailorkd.teachers.seed_classifier import seed_classifier_encoder

    names = recipe.task.label_names
    folder = RunDir(recipe).student_dir(system)
    student = load_student(folder, recipe.task, recipe.prompt, shots, recipe.student)
    seeds = data.rows("seed")
    unseen = {r["id"] for r in (seeds if student.kind == "encoder" else held_out_seeds(recipe.prompt, seeds, names,
                                                                                        recipe.seed))}
    labels = [str(r["label"]) for r in seeds]
    encoder = seed_classifier_encoder(recipe)
    x_seed = SentenceEmbedder(encoder)([embedding_text(r) for r in seeds])
    classifier, judged = seed_classifier_predictions(x_seed, labels, recipe.seed)
    keep = np.array([r["id"] in unseen for r in seeds]) & judged
    chosen = [r for r, k in zip(seeds, keep) if k]
    if len({str(r["label"]) for r in chosen}) < 2:
        return {"seeds": [r["id"] for r in chosen], "student_file": student_file_hash(folder), "student": None,
                "seed_only": None,
                "why_not_judged": f"{len(chosen)} seeds of fewer than two classes can judge the student"}
    probs = apply_temperature(predict_probs(student, chosen, recipe.evaluation.batch_size, desc="student: seeds"),
                              student_temperature(folder))
    truth = [str(r["label"]) for r in chosen]
    return {"seeds": [r["id"] for r in chosen], "student_file": student_file_hash(folder),
            "student": judgement(truth, [names[i] for i in probs.argmax(axis=1)], names, recipe.seed),
            "seed_only": {**judgement(truth, classifier[:, keep], names, recipe.seed), "encoder": encoder,
                          "method": "refits on balanced folds: each seed judged by a classifier fitted without it"}}


def is_worse(judged: dict[str, Any]) -> bool:
    """Whether the seeds judge the student below the seed-only classifier (macro-F1, then accuracy on a tie)."""
    student, seed_only = judged["student"], judged["seed_only"]
    if student is None or seed_only is None:
        return False
    return (student["macro_f1"], student["accuracy"]) < (seed_only["macro_f1"], seed_only["accuracy"])


def guard(recipe: Recipe, data: PreparedData, rows: Sequence[dict[str, Any]], shots: list[dict[str, Any]], train: Any,
          force: bool = False) -> dict[str, Any] | None:
    """Judge the adaptive-KD student and act as ``distill.seed_guard`` says; write seed_guard.json and return
    it (None when the recipe has no guard). ``rows``: the pool rows the students trained on; ``train(job,
    system, probs)``: trains a student system on [N, M] targets for ``rows`` (the distill stage's own)."""
    run = RunDir(recipe)
    config = recipe.distill.seed_guard
    if config is None:
        if distributed.is_main():
            run.seed_guard.unlink(missing_ok=True)  # an earlier guard's choice no longer applies
        return None
    record = distributed.from_main(_judge_on_main(recipe, data, shots))
    shipped = "adaptive_kd"
    if record["worse"]:
        message = _worse_message(record)
        if config.on_worse == "stop":
            if distributed.is_main():
                run.write_json(run.seed_guard, {**record, "shipped": None})  # what stopped it, for the record
            raise TailorkdError(f"{run.seed_guard}: {message}; the run stops (distill.seed_guard.on_worse: stop)")
        if config.on_worse == "warn":
            log.warning("seed guard: %s; the adaptive-KD student ships anyway (distill.seed_guard.on_worse: warn)",
                        message)
        else:
            log.warning("seed guard: %s; training the student on the seed classifier's distributions instead",
                        message)
            train(recipe, "self_trained", seed_classifier_targets(recipe, data, rows))
            shipped = "self_trained"
            record["self_trained"] = distributed.from_main(_judge_self_trained(recipe, data, shots))
    record["shipped"] = shipped
    if distributed.is_main():
        run.write_json(run.seed_guard, record)
    log.info("seed guard: %s ships (student seed macro-F1 %s, seed-only %s, on %d seeds)", shipped,
             _f1(record["student"]), _f1(record["seed_only"]), len(record["seeds"]))
    return record


@distributed.on_main
def _judge_on_main(recipe: Recipe, data: PreparedData, shots: list[dict[str, Any]]) -> dict[str, Any]:
    judged = judge_student(recipe, data, "adaptive_kd", shots)
    return {"version": GUARD_VERSION, "on_worse": recipe.distill.seed_guard.on_worse,
            "adaptive_kd_student_file": judged.pop("student_file", None), **judged, "worse": is_worse(judged)}


@distributed.on_main
def _judge_self_trained(recipe: Recipe, data: PreparedData, shots: list[dict[str, Any]]) -> dict[str, Any] | None:
    judged = judge_student(recipe, data, "self_trained", shots)
    return {"judgement": judged["student"], "note": "optimistic: its targets come from a classifier fitted on "
                                                    "these seeds, so it is not compared on them"}


def seed_classifier_targets(recipe: Recipe, data: PreparedData, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """[N, M] distributions of the seed classifier (fitted on all the seeds) for ``rows``, stored in the label
    store under its own identity like a teacher's (so a rerun reads them back)."""
    from tailorkd.teachers.seed_classifier import SeedClassifierLabeller

    labeller = SeedClassifierLabeller(recipe, data)
    with LabelStore(RunDir(recipe).label_store) as store:
        with distributed.main_first() as main:
            if main:
                labeller.label(rows, store, desc="seed classifier: pool")
        probs, _ = stored_probs(store, labeller.identity, labeller.prompt_fingerprint, rows, recipe.task.label_names)
    return probs


def self_trained_fingerprint(recipe: Recipe, distill_fingerprint: str) -> str:
    """What the self-trained student depends on: the adaptive-KD student's inputs and the seed set its
    targets' classifier was fitted on."""
    from tailorkd.stages.prepare import load_split
    from tailorkd.teachers.seed_classifier import seed_classifier_encoder, seed_classifier_key

    seeds = load_split(recipe, "seed").to_dict("records")
    key = seed_classifier_key(seeds, seed_classifier_encoder(recipe))
    return hashlib.sha256(json.dumps([distill_fingerprint, "self_trained", *key]).encode()).hexdigest()[:16]


def _f1(judged: dict[str, Any] | None) -> str:
    return "-" if not judged else f"{100 * judged['macro_f1']:.1f}"


def _worse_message(record: dict[str, Any]) -> str:
    s, o = record["student"], record["seed_only"]
    return (f"on {len(record['seeds'])} seeds it never saw the adaptive-KD student scores macro-F1 "
            f"{_f1(s)} [{100 * s['macro_f1_interval']['low']:.0f}, {100 * s['macro_f1_interval']['high']:.0f}], "
            f"accuracy {100 * s['accuracy']:.0f}%, below the seed-only classifier's {_f1(o)} "
            f"[{100 * o['macro_f1_interval']['low']:.0f}, {100 * o['macro_f1_interval']['high']:.0f}], "
            f"{100 * o['accuracy']:.0f}% (the teacher may be weak or collapsed: see the teacher check)")
