"""The whole workflow, readable top to bottom: prepare -> label -> distill -> evaluate.

Each stage reads the recipe and the previous stage's files in the run folder and writes its own, so
any stage can be rerun alone; ``run`` calls them in order and skips work that is already done:

    <output_dir>/recipe.yaml                    the resolved recipe (overrides applied)
    <output_dir>/data/{seed,pool,test}.parquet  splits (+ rejects.jsonl, stats.json)
    <output_dir>/labels.sqlite                  the teacher's class distributions
    <output_dir>/students/student/              the trained student (student.json + adapter/)
    <output_dir>/predictions/*.parquet          per-text predictions on the test set
    <output_dir>/report.{md,json}               the comparison against human labels
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tailorkd.data import PreparedData, load_prepared, prepare_data
from tailorkd.errors import TailorkdError
from tailorkd.files import write_text_atomic
from tailorkd.labels import LabelStore, text_hash
from tailorkd.prompts import choose_shots
from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

STUDENT_DIR = "students/student"
# Where each student system lives: the distilled student (adaptive KD) and the paper's two baselines.
STUDENT_DIRS = {"student": STUDENT_DIR, "untrained_student": "students/untrained", "standard_kd": "students/standard_kd"}
# The teacher's prediction on a test text it abstained on: no class, so it counts as wrong.
ABSTAINED = "(abstained)"


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def _shots(recipe: Recipe, data: PreparedData) -> list[dict[str, Any]]:
    return choose_shots(_rows(data.seed), recipe.task.label_names, recipe.prompt.shots, recipe.seed)


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


# -- stage 1: data ---------------------------------------------------------------------------------
def prepare(recipe: Recipe, force: bool = False) -> PreparedData:
    """Read the sources and write the seed / pool / test splits (skipped when the recipe's data is unchanged)."""
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    data_dir = out / "data"
    fingerprint = recipe.content_hash("data", "task", "seed")
    stamp = data_dir / "recipe_hash.txt"
    if not force and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        log.info("data: splits in %s are up to date", data_dir)
        return load_prepared(data_dir)
    data = prepare_data(recipe.data, recipe.task.label_names, data_dir, recipe.seed, recipe.base_dir)
    stamp.write_text(fingerprint)
    log.info("data: seed %d, pool %d, test %d, rejects %d -> %s", len(data.seed), len(data.pool), len(data.test),
             len(data.rejects), data_dir)
    return data


def _data(recipe: Recipe) -> PreparedData:
    data_dir = Path(recipe.output_dir) / "data"
    if not (data_dir / "recipe_hash.txt").is_file():
        return prepare(recipe)
    return load_prepared(data_dir)


# -- stage 2: teacher labels -----------------------------------------------------------------------
def _labels_hash(recipe: Recipe) -> str:
    return recipe.content_hash("data", "task", "seed", "prompt", "teacher")


def _teacher(recipe: Recipe, data: PreparedData, config: Any = None):
    """The recipe's teacher (or the ensemble member ``config``), local or served."""
    from tailorkd.teachers import LocalTeacher, ServedTeacher

    config = config or recipe.teacher
    kind = ServedTeacher if config.server is not None else LocalTeacher
    return kind(config, recipe.task, recipe.prompt, _shots(recipe, data))


def _labeller(teacher: Any) -> Any:
    from tailorkd.teachers import ServedTeacher, label_rows, label_served_rows

    return label_served_rows if isinstance(teacher, ServedTeacher) else label_rows


def label(recipe: Recipe, teacher: Any = None) -> dict[str, Any]:
    """The teacher labels the unlabelled pool (training targets) and the test set (for its evaluation).

    A served teacher may abstain on a text (its answer names no class); such texts get no label and are
    listed in labels_summary.json, so that later stages can tell them from texts never labelled.
    """
    from tailorkd.teachers.local import hidden_key

    data = _data(recipe)
    teacher = teacher or _teacher(recipe, data)
    labeller = _labeller(teacher)
    out = Path(recipe.output_dir)
    t0 = time.perf_counter()
    pool_rows, test_rows = _rows(data.pool), _rows(data.test)
    options: dict[str, Any] = {}
    hidden = recipe.teacher.hidden_states
    if hidden is not None:
        options = {"hidden_layers": hidden.layers, "pooling": hidden.pooling, "rows_per_shard": hidden.rows_per_shard}
    reasons = None
    with LabelStore(out / "labels.sqlite") as store:
        pool = labeller(teacher, pool_rows, store, desc="teacher: pool", **options)
        test = labeller(teacher, test_rows, store, desc="teacher: test", **options)
        if recipe.teacher.reasons is not None:
            from tailorkd.teachers.local import add_reasons

            reasons = add_reasons(teacher, pool_rows, store, recipe.teacher.reasons.sample, recipe.seed,
                                  recipe.teacher.reasons.max_new_tokens)
        calibration = None
        if recipe.teacher.calibration is not None:
            calibration = _fit_calibration(recipe, data, teacher, labeller, store, pool)
        ensemble = None
        if recipe.teacher.ensemble is not None:
            ensemble = _label_ensemble(recipe, data, store, teacher, calibration)
    summary = {
        "recipe_hash": _labels_hash(recipe),
        "teacher": teacher.identity,
        "prompt": teacher.builder.describe(),
        "pool_labelled": len(pool),
        "test_labelled": len(test),
        "abstained": {split: [r["id"] for r in rows if text_hash(r["text"]) not in found]
                      for split, rows, found in (("pool", pool_rows, pool), ("test", test_rows, test))},
        "pool_predicted_counts": pd.Series([r.predicted for r in pool.values()]).value_counts().to_dict(),
        "hidden_states": None if hidden is None else {
            "teacher_key": hidden_key(teacher.identity, hidden.layers, hidden.pooling),
            "layers": hidden.layers, "pooling": hidden.pooling},
        "pool_reasons": reasons,
        "calibration": None if calibration is None else {
            "method": calibration.method, **{k: v for k, v in calibration.details.items() if k != "candidates"}},
        "ensemble": ensemble,
        "seconds": time.perf_counter() - t0,
    }
    _write_json(out / "labels_summary.json", summary)
    return summary


CALIBRATION_FILE = "calibration.json"


def _held_out_seeds(recipe: Recipe, data: PreparedData) -> list[dict[str, Any]]:
    """The expert seeds that are not few-shot examples: the only labelled texts that may judge a teacher."""
    shot_ids = {s["id"] for s in _shots(recipe, data)}
    return [r for r in _rows(data.seed) if r["id"] not in shot_ids]


def _fit_calibration(recipe: Recipe, data: PreparedData, teacher: Any, labeller: Any, store: LabelStore,
                     pool: dict[str, Any], write: bool = True) -> Any:
    """Score the calibration inputs (content-free, random in-domain, held-out seeds), fit the recipe's
    calibration and (``write``) write calibration.json, with the pool's predicted-label counts before and
    after."""
    from tailorkd.calibration import calibrate, domain_inputs

    config = recipe.teacher.calibration
    names = recipe.task.label_names

    def probs_of(rows: list[dict[str, Any]], desc: str) -> tuple[list[dict[str, Any]], np.ndarray]:
        found = labeller(teacher, rows, store, desc=desc) if rows else {}
        kept = [r for r in rows if text_hash(r["text"]) in found]  # a served teacher may abstain
        return kept, np.array([found[text_hash(r["text"])].probs for r in kept]).reshape(len(kept), len(names))

    pool_texts = _rows(data.pool)
    _, content_free = probs_of([{"id": f"content-free-{i}", "text": t} for i, t in enumerate(config.content_free)],
                               "teacher: content-free")
    domain_rows = [{"id": f"domain-{i}", "text": t} for i, t in
                   enumerate(domain_inputs([r["text"] for r in pool_texts], config.domain_samples, recipe.seed,
                                           config.domain_words))]
    _, domain = probs_of(domain_rows, "teacher: in-domain random")
    held_out, seed_probs = probs_of(_held_out_seeds(recipe, data), "teacher: held-out seeds")
    try:
        calibration = calibrate(config.method, names, content_free=content_free, domain=domain,
                                seed_probs=seed_probs, seed_labels=[r["label"] for r in held_out])
    except ValueError as e:
        raise TailorkdError(f"teacher.calibration: {e}") from e
    pool_probs = np.array([rec.probs for rec in pool.values()]).reshape(len(pool), len(names))
    counts = {
        "before": pd.Series([names[i] for i in pool_probs.argmax(1)], dtype=object).value_counts().to_dict(),
        "after": pd.Series([names[i] for i in calibration.apply(pool_probs).argmax(1)], dtype=object).value_counts().to_dict(),
    }
    calibration.details["pool_predicted_counts"] = counts
    if write:
        _write_json(Path(recipe.output_dir) / CALIBRATION_FILE,
                    {"recipe_hash": _labels_hash(recipe), **calibration.to_dict()})
    log.info("calibration: %s (%s); pool predictions %s -> %s", calibration.method,
             calibration.details["chosen_because"], counts["before"], counts["after"])
    return calibration


ENSEMBLE_FILE = "ensemble.json"


def _held_out_accuracy(recipe: Recipe, data: PreparedData, teacher: Any, store: LabelStore,
                       calibration: Any) -> float | None:
    """A teacher's accuracy on the seeds that are not few-shot examples, after its calibration (the
    leave-one-out figure for a seed-fitted bias, which saw those seeds); None without such seeds."""
    if calibration is not None:
        scored = calibration.details.get("candidates", {}).get(calibration.method)
        if scored:
            return float(scored["accuracy"])
    held_out = _held_out_seeds(recipe, data)
    found = _labeller(teacher)(teacher, held_out, store, desc="teacher: held-out seeds") if held_out else {}
    kept = [r for r in held_out if text_hash(r["text"]) in found]
    if not kept:
        return None
    names = recipe.task.label_names
    probs = np.array([found[text_hash(r["text"])].probs for r in kept])
    if calibration is not None:
        probs = calibration.apply(probs)
    return float(np.mean([names[i] == r["label"] for i, r in zip(probs.argmax(1), kept)]))


def _label_ensemble(recipe: Recipe, data: PreparedData, store: LabelStore, main: Any, main_calibration: Any
                    ) -> dict[str, Any]:
    """Every extra teacher labels pool and test (each keyed by its own identity in the store) and is
    calibrated like the main one; the members' weights go with their calibrations into ensemble.json."""
    import gc

    from tailorkd.teachers.ensemble import seed_weights

    config = recipe.teacher.ensemble
    pool_rows, test_rows = _rows(data.pool), _rows(data.test)
    members = [{"model": recipe.teacher.model, "identity": main.identity, "prompt": main.prompt_fingerprint,
                "calibration": main_calibration.to_dict() if main_calibration else None,
                "held_out_seed_accuracy": _held_out_accuracy(recipe, data, main, store, main_calibration)}]
    for i, member_config in enumerate(config.members):
        teacher = _teacher(recipe, data, member_config)
        labeller = _labeller(teacher)
        pool = labeller(teacher, pool_rows, store, desc=f"teacher {i + 2}: pool")
        labeller(teacher, test_rows, store, desc=f"teacher {i + 2}: test")
        calibration = None
        if recipe.teacher.calibration is not None:
            calibration = _fit_calibration(recipe, data, teacher, labeller, store, pool, write=False)
        members.append({"model": member_config.model, "identity": teacher.identity, "prompt": teacher.prompt_fingerprint,
                        "calibration": calibration.to_dict() if calibration else None,
                        "held_out_seed_accuracy": _held_out_accuracy(recipe, data, teacher, store, calibration)})
        del teacher  # one model in memory at a time
        gc.collect()
    weights = (seed_weights([m["held_out_seed_accuracy"] for m in members]) if config.weights == "seed_accuracy"
               else [1.0 / len(members)] * len(members))
    for member, weight in zip(members, weights):
        member["weight"] = weight
    payload = {"recipe_hash": _labels_hash(recipe), "combine": config.combine, "weights": config.weights,
               "members": members}
    _write_json(Path(recipe.output_dir) / ENSEMBLE_FILE, payload)
    log.info("ensemble (%s): %s", config.combine,
             ", ".join(f"{m['model']} w={m['weight']:.2f} (seeds {m['held_out_seed_accuracy']})" for m in members))
    return {"combine": config.combine, "members": [{k: m[k] for k in ("model", "identity", "weight",
                                                                      "held_out_seed_accuracy")} for m in members]}


def _ensemble_probs(recipe: Recipe, rows: list[dict[str, Any]], store: LabelStore, calibrated: bool
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Combined [N, M] distribution, summed per-text seconds and each member's [N, M] distribution."""
    from tailorkd.calibration import Calibration
    from tailorkd.teachers.ensemble import combine

    path = Path(recipe.output_dir) / ENSEMBLE_FILE
    if not path.is_file():
        raise TailorkdError(f"{path}: the recipe asks for a teacher ensemble but none is labelled; run `tailorkd label`")
    payload = json.loads(path.read_text())
    if payload.get("recipe_hash") != _labels_hash(recipe):
        raise TailorkdError(f"{path}: made for another teacher, prompt or data; run `tailorkd label` again")
    names = recipe.task.label_names
    hashes = [text_hash(r["text"]) for r in rows]
    member_probs, seconds = [], np.zeros(len(rows))
    for member in payload["members"]:
        found = store.get(member["identity"], member["prompt"], hashes, names)
        probs = np.array([found[h].probs if h in found else [math.nan] * len(names) for h in hashes]).reshape(
            len(rows), len(names))
        if calibrated and member["calibration"]:
            probs = Calibration.from_dict(member["calibration"]).apply(probs)
        member_probs.append(probs)
        seconds += np.array([found[h].seconds if h in found else 0.0 for h in hashes])
    return combine(member_probs, [m["weight"] for m in payload["members"]], payload["combine"]), seconds, member_probs


def _calibration(recipe: Recipe) -> Any:
    """The fitted calibration of the run, or None when the recipe asks for none."""
    from tailorkd.calibration import Calibration

    if recipe.teacher.calibration is None:
        return None
    path = Path(recipe.output_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise TailorkdError(f"{path}: the recipe asks for teacher calibration but none is fitted; run `tailorkd label`")
    payload = json.loads(path.read_text())
    if payload.pop("recipe_hash", None) != _labels_hash(recipe):
        raise TailorkdError(f"{path}: fitted for another teacher, prompt or data; run `tailorkd label` again")
    calibration = Calibration.from_dict(payload)
    if calibration.label_names != recipe.task.label_names:
        raise TailorkdError(f"{path}: fitted for labels {calibration.label_names}, the recipe has "
                            f"{recipe.task.label_names}")
    return calibration


def _teacher_records(recipe: Recipe, data: PreparedData, split: str, calibrated: bool = True
                     ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Rows of a split with the teacher's stored probabilities (calibrated as the recipe asks, unless
    ``calibrated`` is False) and per-text seconds (label stage must be done).

    A text the teacher abstained on (listed in labels_summary.json) gets a row of NaN probabilities and NaN
    seconds; any other text without a label is an error.
    """
    out = Path(recipe.output_dir)
    summary_path = out / "labels_summary.json"
    if not summary_path.is_file():
        raise TailorkdError(f"{out}: no teacher labels yet; run `tailorkd label` first")
    summary = json.loads(summary_path.read_text())
    if summary.get("recipe_hash") != _labels_hash(recipe):
        raise TailorkdError(f"{summary_path}: the teacher labels were made with another teacher, prompt or data "
                            f"than the recipe now asks for; run `tailorkd label` again")
    rows = _rows(getattr(data, split))
    with LabelStore(out / "labels.sqlite") as store:
        found = store.get(summary["teacher"], summary["prompt"]["fingerprint"], [text_hash(r["text"]) for r in rows],
                          recipe.task.label_names)
    abstained = set(summary.get("abstained", {}).get(split, []))
    missing = [r["id"] for r in rows if text_hash(r["text"]) not in found and r["id"] not in abstained]
    if missing:
        raise TailorkdError(f"{out / 'labels.sqlite'}: {len(missing)} {split} texts have no teacher label "
                            f"(e.g. {missing[:3]}); rerun `tailorkd label`")
    if recipe.teacher.ensemble is not None:
        with LabelStore(out / "labels.sqlite") as store:
            probs, seconds, _ = _ensemble_probs(recipe, rows, store, calibrated)
        return rows, probs, np.where(np.isnan(probs).any(axis=1), math.nan, seconds)
    none = [math.nan] * len(recipe.task.label_names)
    recs = [found.get(text_hash(r["text"])) for r in rows]
    probs = np.array([r.probs if r else none for r in recs], dtype=float).reshape(len(rows), len(none))
    calibration = _calibration(recipe) if calibrated else None
    if calibration is not None:
        probs = calibration.apply(probs)
    return rows, probs, np.array([r.seconds if r else math.nan for r in recs], dtype=float)


# -- stage 3: distillation -------------------------------------------------------------------------
def distill(recipe: Recipe, force: bool = False) -> Path:
    """Train the student's adapter on the teacher's distributions over the pool (stage by stage when the
    recipe sets distill.stages or distill.progressive). An interrupted run resumes from its last checkpoint
    in students/student/trainer/ unless ``force``."""
    from transformers import set_seed

    from tailorkd.distill import distill_student
    from tailorkd.distill.trainer import TRAINING_FORMAT
    from tailorkd.students import STUDENT_FILE, build_student

    data = _data(recipe)
    rows, probs, _ = _teacher_records(recipe, data, "pool")
    answered = ~np.isnan(probs).any(axis=1)
    if not answered.all():
        log.info("distill: %d of %d pool texts left out: the teacher abstained on them", (~answered).sum(), len(rows))
        if not answered.any():
            raise TailorkdError(f"{recipe.output_dir}: the teacher abstained on every pool text; nothing to train on")
        rows, probs = [r for r, ok in zip(rows, answered) if ok], probs[answered]
    base_hash = recipe.content_hash("data", "task", "seed", "prompt", "teacher", "student", "distill")
    jobs = [("student", recipe.adapter, recipe.distill)]
    # The paper's baselines, trained on the same targets when the recipe evaluates them: the student
    # untouched (method none) and standard KD (every weight trains, one stage, soft targets only).
    if "untrained_student" in recipe.evaluation.systems:
        jobs.append(("untrained_student", recipe.adapter.model_copy(update={"method": "none"}), recipe.distill))
    if "standard_kd" in recipe.evaluation.systems:
        plain = recipe.distill.model_copy(update={"stages": None, "progressive": None, "hidden_state_loss": None,
                                                  "learning_rate": recipe.distill.standard_kd_learning_rate})
        jobs.append(("standard_kd", recipe.adapter.model_copy(update={"method": "full"}), plain))
    main_folder = Path(recipe.output_dir) / STUDENT_DIR
    for system, adapter, config in jobs:
        out = Path(recipe.output_dir) / STUDENT_DIRS[system]
        fingerprint = hashlib.sha256(json.dumps([base_hash, adapter.model_dump(mode="json"),
                                                 config.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()[:16]
        if system == "student":  # the main student keeps the hash it always had
            fingerprint = recipe.content_hash("data", "task", "seed", "prompt", "teacher", "student", "adapter", "distill")
        info_path = out / STUDENT_FILE
        if not force and info_path.is_file():
            done = json.loads(info_path.read_text())
            if (done.get("recipe_hash") == fingerprint
                    and done.get("summary", {}).get("training_format") == TRAINING_FORMAT):
                log.info("distill: %s in %s is up to date", system, out)
                continue
        states = (_teacher_hidden_states(recipe, rows) if config.hidden_state_loss is not None else None)
        set_seed(recipe.seed)
        student = build_student(recipe.student, recipe.task, recipe.prompt, _shots(recipe, data), adapter.method)
        summary = distill_student(student, rows, probs, adapter, config, out, recipe.seed,
                                  info={"recipe_hash": fingerprint, "base_model": recipe.student.model,
                                        "system": system},
                                  teacher_states=states, resume=not force)
        log.info("distill: %s, %d steps in %.1fs, final loss %s -> %s", system, summary["steps"],
                 summary["train_seconds"], summary["train_loss"], out)
        del student
    return main_folder


def _teacher_hidden_states(recipe: Recipe, rows: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """The teacher's stored pooled hidden states of ``rows``, {layer: [N, H]}, for the hidden-state loss."""
    from tailorkd.hidden_states import HiddenStateReader

    out = Path(recipe.output_dir)
    stored = json.loads((out / "labels_summary.json").read_text()).get("hidden_states")
    if not stored:
        raise TailorkdError(f"{out / 'labels_summary.json'}: distill.hidden_state_loss needs the teacher's hidden "
                            "states, but the label stage stored none; set teacher.hidden_states in the recipe and run "
                            "`tailorkd label` again")
    layers = recipe.distill.hidden_state_loss.teacher_layers or stored["layers"]
    with LabelStore(out / "labels.sqlite") as store:
        prompt = json.loads((out / "labels_summary.json").read_text())["prompt"]["fingerprint"]
        return HiddenStateReader(store, stored["teacher_key"], prompt).get([text_hash(r["text"]) for r in rows], layers)


# -- stage 4: evaluation ---------------------------------------------------------------------------
def _predictions_frame(rows: list[dict[str, Any]], probs: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One row per text; a row of NaN probabilities (the teacher abstained) is predicted as ABSTAINED, which
    is no class, so it counts as wrong."""
    answered = ~np.isnan(probs).any(axis=1)
    best = np.where(answered[:, None], probs, 0.0).argmax(1)
    frame = pd.DataFrame({"id": [r["id"] for r in rows], "label": [r["label"] for r in rows],
                          "predicted": [names[i] if ok else ABSTAINED for i, ok in zip(best, answered)],
                          "confidence": np.where(answered, np.where(answered[:, None], probs, 0.0).max(1), np.nan)})
    for j, name in enumerate(names):
        frame[f"p_{name}"] = probs[:, j]
    return frame


def _latency(per_text_seconds: np.ndarray, measured: str) -> dict[str, Any] | None:
    """Median and 95th percentile of seconds per text (NaN entries, e.g. abstentions, left out)."""
    known = per_text_seconds[~np.isnan(per_text_seconds)]
    if not len(known):
        return None
    return {"median": float(np.median(known)), "p95": float(np.percentile(known, 95)), "measured": measured}


def _cost(texts_per_second: float | None = None, latency: dict[str, Any] | None = None,
          training: dict[str, Any] | None = None) -> dict[str, Any]:
    """A system's cost block (the same keys for every system; None where not measured). ``training``: a
    student's training summary (parameters, train_seconds, peak_memory)."""
    training = training or {}
    params = training.get("parameters") or {}
    memory = training.get("peak_memory") or {}
    return {
        "texts_per_second": texts_per_second,
        "latency_seconds": latency,
        "trainable_parameters": params.get("trainable"),
        "total_parameters": params.get("total"),
        "peak_training_memory_gb": memory.get("process_peak_gb"),
        "training_memory_added_gb": memory.get("added_by_training_gb"),
        "memory_source": memory.get("source"),
        "training_seconds": training.get("train_seconds"),
    }


def _timed_student_probs(student: Any, rows: list[dict[str, Any]], batch_size: int
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


def _severity_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, dict[str, int]]:
    """{level: {human label: texts}} of a predictions frame with a severity column."""
    table = pd.crosstab(frame["severity"], frame["label"]).reindex(columns=names, fill_value=0)
    return {str(level): {name: int(row[name]) for name in names} for level, row in table.iterrows()}


def evaluate(recipe: Recipe, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Score every system of ``recipe.evaluation.systems`` on the human-labelled test set; write each one's
    predictions, the figures and report.md / report.json.

    Each system yields a predictions frame (``_predictions_frame``) and a cost block (``_cost``); metrics,
    agreement with the teacher, severity levels and the comparison with the teacher are then computed alike
    for all of them. ``timings`` (seconds per stage, from ``run``) go into the report with this stage's own.
    """
    t_start = time.perf_counter()
    from transformers import set_seed

    from tailorkd.evaluation import write_report
    from tailorkd.evaluation.metrics import agreement, system_metrics
    from tailorkd.students import load_student

    data = _data(recipe)
    out = Path(recipe.output_dir)
    names = recipe.task.label_names
    systems: dict[str, Any] = {}
    frames: dict[str, pd.DataFrame] = {}
    test_rows = _rows(data.test)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)

    if "teacher" in recipe.evaluation.systems:
        rows, probs, seconds = _teacher_records(recipe, data, "test")
        frames["teacher"] = _predictions_frame(rows, probs, names)
        mean_seconds = float(np.nanmean(seconds)) if (~np.isnan(seconds)).any() else math.nan
        systems["teacher"] = {
            "model": recipe.teacher.model,
            "abstained": int((frames["teacher"]["predicted"] == ABSTAINED).sum()),
            "cost": _cost(texts_per_second=1.0 / mean_seconds if mean_seconds > 0 else None,
                          latency=_latency(seconds, "per text, as stored by the label stage")),
        }
        calibration = _calibration(recipe)
        if calibration is not None:
            _, raw, _ = _teacher_records(recipe, data, "test", calibrated=False)
            raw_frame = _predictions_frame(rows, raw, names)
            systems["teacher"]["calibration"] = {
                "method": calibration.method,
                "chosen_because": calibration.details.get("chosen_because"),
                "held_out_seeds": calibration.details.get("candidates", {}),
                "uncalibrated_metrics": system_metrics([r["label"] for r in rows], raw_frame["predicted"].tolist(),
                                                       raw_frame["confidence"].to_numpy(), names, seed=recipe.seed),
            }

    for system in ("untrained_student", "standard_kd", "student"):
        if system not in recipe.evaluation.systems:
            continue
        folder = out / STUDENT_DIRS[system]
        set_seed(recipe.seed)
        student = load_student(folder, recipe.task, recipe.prompt, _shots(recipe, data), recipe.student)
        probs, per_text, elapsed = _timed_student_probs(student, test_rows, recipe.evaluation.batch_size)
        frames[system] = _predictions_frame(test_rows, probs, names)
        info = json.loads((folder / "student.json").read_text())
        training = info.get("summary", {})
        systems[system] = {
            "model": recipe.student.model,
            "kind": student.kind,
            "adapter": info.get("adapter_method", recipe.adapter.method),
            "cost": _cost(texts_per_second=len(test_rows) / elapsed if elapsed > 0 else None,
                          latency=_latency(per_text, f"per batch of up to {recipe.evaluation.batch_size}, "
                                                     "divided by its texts"),
                          training=training),
            "training": training,
        }
        del student

    if "seed_only" in recipe.evaluation.systems:
        from tailorkd.evaluation.baselines import seed_only_baseline

        baseline = seed_only_baseline(_rows(data.seed), test_rows, names, recipe.evaluation.seed_only_encoder,
                                      recipe.seed)
        frames["seed_only"] = _predictions_frame(test_rows, baseline["probs"], names)
        systems["seed_only"] = {
            "model": f"logistic regression on {recipe.evaluation.seed_only_encoder} embeddings of "
                     f"{baseline['seeds']} seeds (C={baseline['C']:g})",
            "cost": _cost(texts_per_second=1.0 / baseline["seconds_per_text"] if baseline["seconds_per_text"] > 0
                          else None),
        }

    # Every system alike from here on.
    for name, frame in frames.items():
        if recipe.alerts is not None:
            frame["severity"] = [recipe.alerts.level(p, c) for p, c in zip(frame["predicted"], frame["confidence"])]
            systems[name]["severity_counts"] = _severity_counts(frame, names)
        frame.to_parquet(pred_dir / f"{name}.parquet", index=False)
        metrics = system_metrics(frame["label"].tolist(), frame["predicted"].tolist(), frame["confidence"].to_numpy(),
                                 names, seed=recipe.seed)
        if name != "teacher" and "teacher" in frames:
            agreed = agreement(frame["predicted"].tolist(), frames["teacher"]["predicted"].tolist(), names)
            metrics["agreement_with_teacher"], metrics["kappa_with_teacher"] = agreed["agreement"], agreed["kappa"]
        systems[name] = {"model": systems[name].pop("model"), "metrics": metrics, **systems[name]}

    labels_summary_path = out / "labels_summary.json"
    report = {
        "recipe": {"name": recipe.name, "hash": recipe.content_hash(), "task": recipe.task.name},
        "data": data.stats,
        "prompt": json.loads(labels_summary_path.read_text())["prompt"] if labels_summary_path.is_file() else None,
        "systems": systems,
        "vs_teacher": {name: _versus(systems[name], systems["teacher"]) for name in systems
                       if name != "teacher" and "teacher" in systems},
    }
    if timings is not None:
        timings = {**timings, "evaluate": round(time.perf_counter() - t_start, 2)}
        timings["total"] = round(sum(timings.values()), 2)
        report["timings_seconds"] = timings
    return write_report(report, recipe, out)


def _versus(system: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float | None]:
    """A system's accuracy and macro-F1 as shares of the teacher's, and its speed as a multiple of it."""
    s, t = system["metrics"], teacher["metrics"]
    speed, teacher_speed = system["cost"]["texts_per_second"], teacher["cost"]["texts_per_second"]
    return {
        "accuracy_ratio": s["accuracy"] / t["accuracy"] if t["accuracy"] else None,
        "macro_f1_ratio": s["macro_f1"] / t["macro_f1"] if t["macro_f1"] else None,
        "speedup": speed / teacher_speed if speed and teacher_speed else None,
    }



def classify(recipe: Recipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained student's prediction for each row ({"text", optional "id", "title"}): id, label,
    confidence (its probability), severity (from ``recipe.alerts``; "none" without it) and probabilities."""
    from tailorkd.recipe import NO_ALERT
    from tailorkd.students import load_student, predict_probs

    names = recipe.task.label_names
    folder = Path(recipe.output_dir) / STUDENT_DIR
    # The few-shot examples the student was trained and evaluated with (a causal-LM student reads them).
    shots = _shots(recipe, _data(recipe)) if (folder / "student.json").is_file() else []
    student = load_student(folder, recipe.task, recipe.prompt, shots, recipe.student)
    probs = predict_probs(student, rows, recipe.evaluation.batch_size, desc="student: classify")
    out = []
    for i, (row, p) in enumerate(zip(rows, probs)):
        best = int(p.argmax())
        confidence = float(p[best])
        out.append({"id": row.get("id", i), "label": names[best], "confidence": confidence,
                    "severity": recipe.alerts.level(names[best], confidence) if recipe.alerts else NO_ALERT,
                    "probabilities": {name: float(v) for name, v in zip(names, p)}})
    return out

def run(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Every stage in order; finished, valid work is skipped unless ``force``."""
    timings: dict[str, float] = {}

    def timed(name: str, stage: Any) -> Any:
        start = time.perf_counter()
        result = stage()
        timings[name] = round(time.perf_counter() - start, 2)
        return result

    timed("prepare", lambda: prepare(recipe, force))
    timed("label", lambda: label(recipe))
    timed("distill", lambda: distill(recipe, force))
    return evaluate(recipe, timings=timings)
