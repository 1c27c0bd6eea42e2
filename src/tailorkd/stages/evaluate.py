"""Stage 4, evaluate: every system of ``evaluation.systems`` on the human-labelled test set, as the paper
compares them (teacher, untrained student, standard KD, adaptive KD) plus the seed-only baseline.

Each system yields a predictions frame and a cost block; metrics with bootstrap intervals, agreement with
the teacher, severity levels and the comparison with the teacher are then computed alike for all of them
(``tailorkd.evaluation``). Writes predictions/<system>.parquet, the figures and report.md / report.json.
Always runs: its output is the point. The seeds-only baselines are the one costly part (SetFit trains an
encoder), so each is fitted once per fingerprint: a rerun with the same seeds, test split and baseline settings
reads its predictions back (predictions/<baseline>.json records the fingerprint).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tailorkd import distributed
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.assemble import (
    ABSTAINED,
    by_language,
    cost,
    latency,
    predictions_frame,
    severity_counts,
    versus_teacher,
)
from tailorkd.evaluation.systems import GUARD_STUDENT_SYSTEMS, STUDENT_SYSTEMS
from tailorkd.labels import LabelStore, text_hash
from tailorkd.prompts import fixed_shots
from tailorkd.run_dir import RunDir
from tailorkd.stages.calibrate import load_calibration
from tailorkd.stages.label import labels_summary, teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.stages.prompt_search import resolve_prompt
from tailorkd.stages.registry import Stage, register_stage, run_requirements
from tailorkd.stages.teacher_check import load_teacher_check

if TYPE_CHECKING:
    from tailorkd.data import PreparedData
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)


@distributed.on_main
def evaluate(recipe: Recipe, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Score every system on the test set and write the report; return it. ``timings`` (seconds per stage,
    from ``run``) go into the report with this stage's own."""
    from tailorkd.evaluation import write_report
    from tailorkd.evaluation.metrics import agreement, system_metrics

    t_start = time.perf_counter()
    run_requirements(recipe, "evaluate")
    recipe = resolve_prompt(recipe)
    run = RunDir(recipe)
    data = load_data(recipe)
    names = recipe.task.label_names
    wanted = recipe.evaluation.systems
    frames: dict[str, pd.DataFrame] = {}
    systems: dict[str, Any] = {}
    if "teacher" in wanted:
        frames["teacher"], systems["teacher"] = teacher_system(recipe, data)
    for system in (*STUDENT_SYSTEMS, *GUARD_STUDENT_SYSTEMS):
        if system in wanted:
            frames[system], systems[system] = student_system(recipe, data, system)
    guard = run.seed_guard_record()
    if guard is not None and guard["shipped"] not in frames:  # e.g. SetFit as a student: what ships is measured
        frames["shipped"], systems["shipped"] = student_system(recipe, data, guard["shipped"])
    fitted: set[str] = set()
    for name, fit in BASELINES.items():
        if name in wanted:
            reused = reused_baseline(run, name, len(data.rows("test")))
            if reused is None:
                fitted.add(name)
            frames[name], systems[name] = reused or fit(recipe, data)

    # Every system alike from here on.
    run.predictions_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if recipe.alerts is not None:
            frame["severity"] = [recipe.alerts.level(p, c) for p, c in zip(frame["predicted"], frame["confidence"])]
            systems[name]["severity_counts"] = severity_counts(frame, names)
        frame.to_parquet(run.predictions(name), index=False)
        if name in fitted:
            run.write_stamp(name, {"model": systems[name]["model"], "cost": systems[name]["cost"]},
                            run.baseline_stamp(name))
        metrics = system_metrics(frame["label"].tolist(), frame["predicted"].tolist(), frame["confidence"].to_numpy(),
                                 names, seed=recipe.seed)
        if name != "teacher" and "teacher" in frames:
            agreed = agreement(frame["predicted"].tolist(), frames["teacher"]["predicted"].tolist(), names)
            metrics["agreement_with_teacher"], metrics["kappa_with_teacher"] = agreed["agreement"], agreed["kappa"]
        systems[name] = {"model": systems[name].pop("model"), "metrics": metrics, **systems[name]}

    summary = run.read_json_if_exists(run.labels_summary, "labels summary") or {}
    report: dict[str, Any] = {
        "recipe": {"name": recipe.name, "hash": recipe.content_hash(), "task": recipe.task.name},
        "data": data.stats,
        "prompt": summary.get("prompt"),
        "systems": systems,
        "vs_teacher": {name: versus_teacher(systems[name], systems["teacher"]) for name in systems
                       if name != "teacher" and "teacher" in systems},
    }
    languages = by_language(data.test, frames, names)
    if languages:
        report["by_language"] = languages
    if summary.get("prompt_search"):
        report["prompt_search"] = prompt_search_block(recipe, data, summary["prompt_search"])
    check = load_teacher_check(recipe)
    if check is not None:
        report["teacher_check"] = {**check, "fallback": summary.get("fallback")}
    if guard is not None:
        report["seed_guard"] = guard
    if timings is not None:
        timings = {**timings, "evaluate": round(time.perf_counter() - t_start, 2)}
        timings["total"] = round(sum(timings.values()), 2)
        report["timings_seconds"] = timings
    return write_report(report, recipe, run.root)


def teacher_system(recipe: Recipe, data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The teacher's stored test labels (calibrated and combined as the recipe says) and its cost, as the
    label stage measured it; with a calibration, also its metrics without it."""
    from tailorkd.evaluation.metrics import system_metrics

    names = recipe.task.label_names
    rows, probs, seconds = teacher_records(recipe, data, "test")
    frame = predictions_frame(rows, probs, names)
    mean_seconds = float(np.nanmean(seconds)) if (~np.isnan(seconds)).any() else math.nan
    fallback = labels_summary(recipe).get("fallback")
    info: dict[str, Any] = {
        "model": recipe.teacher.model if not fallback else f"{fallback['model']} (the teacher check's fallback for "
                                                           f"{recipe.teacher.model})",
        "abstained": int((frame["predicted"] == ABSTAINED).sum()),
        "cost": cost(texts_per_second=1.0 / mean_seconds if mean_seconds > 0 else None,
                     latency=latency(seconds, "per text, as stored by the label stage")),
    }
    calibration = load_calibration(recipe) if not fallback else None
    if calibration is not None:
        _, raw, _ = teacher_records(recipe, data, "test", calibrated=False)
        raw_frame = predictions_frame(rows, raw, names)
        info["calibration"] = {
            "method": calibration.method,
            "chosen_because": calibration.details.get("chosen_because"),
            "held_out_seeds": calibration.details.get("candidates", {}),
            "uncalibrated_metrics": system_metrics([r["label"] for r in rows], raw_frame["predicted"].tolist(),
                                                   raw_frame["confidence"].to_numpy(), names, seed=recipe.seed),
        }
    return frame, info


def student_system(recipe: Recipe, data: PreparedData, system: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A trained student's test predictions (its confidence calibrated by the temperature fitted after
    training, when there is one), timed batch by batch, and its training cost."""
    from transformers import set_seed

    from tailorkd.confidence import apply_temperature
    from tailorkd.evaluation.metrics import expected_calibration_error
    from tailorkd.students import CONFIDENCE_FILE, load_student, read_student_info, student_temperature

    run = RunDir(recipe)
    folder = run.student_dir(system)
    rows = data.rows("test")
    batch_size = recipe.evaluation.batch_size
    set_seed(recipe.seed)
    shots = fixed_shots(recipe.prompt, data.rows("seed"), recipe.task.label_names, recipe.seed)
    student = load_student(folder, recipe.task, recipe.prompt, shots, recipe.student)
    raw, per_text, elapsed = timed_student_probs(student, rows, batch_size)
    info = read_student_info(folder)
    training = info.get("summary", {})
    fitted = run.read_json_if_exists(folder / CONFIDENCE_FILE, "student confidence calibration")
    probs = raw if fitted is None else apply_temperature(raw, student_temperature(folder))
    result = {
        "model": recipe.student.model,
        "kind": student.kind,
        "adapter": info.get("adapter_method", recipe.adapter.method),
        "cost": cost(texts_per_second=len(rows) / elapsed if elapsed > 0 else None,
                     latency=latency(per_text, f"per batch of up to {batch_size}, divided by its texts"),
                     training=training),
        "training": training,
    }
    if fitted is not None:
        raw_frame = predictions_frame(rows, raw, recipe.task.label_names)
        correct = [r["label"] == p for r, p in zip(rows, raw_frame["predicted"])]
        result["confidence"] = {
            **{k: fitted.get(k) for k in ("n", "fitted_on", "method", "reason", "warning")},
            "temperature": student_temperature(folder),
            "uncalibrated_ece": expected_calibration_error(correct, raw_frame["confidence"].to_numpy())["ece"],
        }
    return predictions_frame(rows, probs, recipe.task.label_names), result


def seed_only_system(recipe: Recipe, data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The seed-only baseline: a classifier fitted on the expert seeds alone."""
    from tailorkd.evaluation.baselines import seed_only_baseline

    rows = data.rows("test")
    encoder = recipe.evaluation.seed_only_encoder
    baseline = seed_only_baseline(data.rows("seed"), rows, recipe.task.label_names, encoder, recipe.seed)
    seconds = baseline["seconds_per_text"]
    return predictions_frame(rows, baseline["probs"], recipe.task.label_names), {
        "model": f"logistic regression on {encoder} embeddings of {baseline['seeds']} seeds (C={baseline['C']:g})",
        "cost": cost(texts_per_second=1.0 / seconds if seconds > 0 else None),
    }


def setfit_system(recipe: Recipe, data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The SetFit baseline: the seed-only encoder fine-tuned on pairs of seeds, with its head. When the seed
    guard fitted the same SetFit (same seeds and settings) as a candidate, that student answers: minutes of
    training saved, the same model."""
    from tailorkd.evaluation.setfit_baseline import setfit_baseline
    from tailorkd.stages.guard_candidates import seeds_only_student
    from tailorkd.students import load_student, read_student_info

    rows = data.rows("test")
    encoder = recipe.evaluation.seed_only_encoder
    folder = seeds_only_student(recipe, data, "setfit")
    if folder is not None:
        student = load_student(folder, recipe.task, recipe.prompt, [], recipe.student)
        probs, _, elapsed = timed_student_probs(student, rows, recipe.evaluation.batch_size)
        trained = read_student_info(folder)["summary"]
        return predictions_frame(rows, probs, recipe.task.label_names), {
            "model": f"SetFit: {encoder} tuned on pairs of {len(data.rows('seed'))} seeds "
                     f"({recipe.evaluation.setfit_iterations} pairs per seed), logistic-regression head (the seed "
                     f"guard's candidate, {folder})",
            "cost": cost(texts_per_second=len(rows) / elapsed if elapsed > 0 else None,
                         training={"train_seconds": round(trained["train_seconds"], 2)}),
        }
    baseline = setfit_baseline(data.rows("seed"), rows, recipe.task.label_names, encoder, recipe.seed,
                               recipe.evaluation.setfit_iterations)
    seconds = baseline["seconds_per_text"]
    return predictions_frame(rows, baseline["probs"], recipe.task.label_names), {
        "model": f"SetFit: {encoder} tuned on pairs of {baseline['seeds']} seeds ({baseline['iterations']} pairs "
                 "per seed), logistic-regression head",
        "cost": cost(texts_per_second=1.0 / seconds if seconds > 0 else None,
                     training={"train_seconds": round(baseline["train_seconds"], 2)}),
    }


BASELINES = {"seed_only": seed_only_system, "setfit": setfit_system}


def reused_baseline(run: RunDir, system: str, test_texts: int) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """Baseline ``system``'s test predictions and record as fitted before under this run's fingerprint, or
    None when there are none (never fitted, other seeds or settings, a record that does not parse)."""
    path = run.predictions(system)
    try:
        record = run.stamp(system, run.baseline_stamp(system))
    except TailorkdError:
        return None
    if record is None or not {"model", "cost"} <= record.keys() or not path.is_file():
        return None
    frame = pd.read_parquet(path).drop(columns=["severity"], errors="ignore")
    if len(frame) != test_texts:
        return None
    log.info("%s: its predictions fitted before under the same seeds and settings are reused (%s)", system, path)
    return frame, {"model": record["model"], "cost": record["cost"], "reused": True}


def timed_student_probs(student: Any, rows: list[dict[str, Any]], batch_size: int
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """The student's [N, M] probabilities, batch by batch through ``predict_probs`` so each batch is timed:
    also each text's share of its batch's seconds and the summed seconds."""
    from tailorkd.students import predict_probs

    parts, per_text, total = [], np.zeros(len(rows)), 0.0
    batches = math.ceil(len(rows) / batch_size)
    for k, start in enumerate(range(0, len(rows), batch_size)):
        batch = rows[start : start + batch_size]
        t0 = time.perf_counter()
        parts.append(predict_probs(student, batch, batch_size, desc=f"student: test batch {k + 1}/{batches}"))
        seconds = time.perf_counter() - t0  # predict_probs copies to the CPU, so a GPU batch is finished here
        per_text[start : start + len(batch)] = seconds / len(batch)
        total += seconds
    probs = np.concatenate(parts) if parts else np.zeros((0, len(student.task.labels)))
    return probs, per_text, total


def prompt_search_block(recipe: Recipe, data: PreparedData, info: dict[str, Any]) -> dict[str, Any]:
    """The search's effect for the report: seed scores of the hand-written and the chosen prompt, and both
    prompts' uncalibrated teacher on the test set (the hand-written one when it was labelled)."""
    from tailorkd.evaluation.metrics import classification_metrics

    run = RunDir(recipe)
    record = run.read_json(run.search, "prompt search record")
    names = recipe.task.label_names

    def test_metrics(probs: np.ndarray, rows: list[dict[str, Any]]) -> dict[str, Any]:
        frame = predictions_frame(rows, probs, names)
        metrics = classification_metrics(frame["label"].tolist(), frame["predicted"].tolist(), names)
        return {k: metrics[k] for k in ("accuracy", "macro_f1")}

    rows, chosen_raw, _ = teacher_records(recipe, data, "test", calibrated=False, combined=False)
    test = {"chosen": test_metrics(chosen_raw, rows)}
    if info.get("chosen_is_hand_written"):
        test["hand_written"] = test["chosen"]
    elif info.get("base_teacher"):
        with LabelStore(run.label_store) as store:
            found = store.get(info["base_teacher"], info["base_prompt"], [text_hash(r["text"]) for r in rows], names)
        none = [math.nan] * len(names)
        probs = np.array([found[text_hash(r["text"])].probs if text_hash(r["text"]) in found else none for r in rows],
                         dtype=float).reshape(len(rows), len(names))
        test["hand_written"] = test_metrics(probs, rows)
    return {
        "metric": record["metric"],
        "candidates": len(record["candidates"]),
        "rounds": record["rounds"],
        "stopped_because": record["stopped_because"],
        "teacher_calls": record["teacher_calls"],
        "seconds": record["seconds"],
        "chosen_parts": record["chosen"]["parts"],
        "hand_written_parts": record["base"]["parts"],
        "seeds": {"n": record["seeds"], "hand_written": record["base"]["metrics"],
                  "chosen": record["chosen"]["metrics"]},
        "test": test,
        "test_note": "teacher without calibration or ensemble, so that only the prompt differs",
    }


# Always runs (never current): its output is the point.
register_stage(Stage("evaluate", lambda recipe, force: evaluate(recipe), requires=("distill",),
                     command="tailorkd evaluate RECIPE", doc="every system on the test set -> report.{md,json}"))
