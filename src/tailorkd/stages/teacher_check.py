"""Stage 2a, teacher check (``teacher.check``; run by the label stage before any pool text is labelled, or alone
by `tailorkd check-teacher`): is the teacher worth distilling?

A small LLM on a task no one tuned it to can give nearly every text one class; students then learn the
collapse. From the seeds alone, and a sample of the pool, this stage says so before the pool is labelled:

- the teacher's accuracy and macro-F1 on every seed with 95% intervals, each seed scored by a prompt that
  does not show it (``stages.calibrate.scored_seeds``), raw and, when the recipe calibrates, after the
  calibration (a seed-fitted bias refitted on balanced folds, so no seed calibrates itself);
- chance (1 / classes), the seeds' majority-class rate and the seed classifier's accuracy on balanced folds
  (``evaluation.seed_judge``): what the seeds alone give;
- the class mix the teacher gives a seeded sample of the pool (raw and calibrated; those labels stay in the
  store, so labelling the pool later skips them);
- a verdict: ``collapsed`` (one class takes ``collapse_share`` of the answers on the pool sample or on the
  seeds while holding less of the seeds), ``weak`` (the accuracy interval does not clear chance or the
  majority rate, or the accuracy is more than ``seed_only_margin`` below the seed classifier's), else ``ok``.

teacher_check.json records it all; the log says it loudly with likely causes and remedies. What a failed
check does is the label stage's (``act_on``): warn, stop, or fall back to the seed classifier.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd.data import PreparedData
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, text_hash
from tailorkd.run_dir import RunDir
from tailorkd.stages.calibrate import fit_calibration, scored_seeds
from tailorkd.teachers.seed_classifier import seed_classifier_encoder

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

# 1: first version (seed judgement with Wilson / bootstrap intervals, pool mix, verdict).
CHECK_VERSION = 1


def judge_teacher(recipe: Recipe, data: PreparedData, teacher: Any, store: LabelStore) -> dict[str, Any]:
    """Judge ``teacher`` on the seeds and a pool sample (teacher calls go into ``store``), write
    teacher_check.json, log the verdict; return the record."""
    from tailorkd.calibration import fold_calibrated_predictions
    from tailorkd.evaluation.seed_judge import judgement

    config = recipe.teacher.check
    names = recipe.task.label_names
    run = RunDir(recipe)
    t0 = time.perf_counter()
    rows, probs = scored_seeds(recipe, data, teacher, store, every_seed=True)
    truth = [str(r["label"]) for r in rows]
    raw = judgement(truth, _predicted(probs, names), names, recipe.seed)

    sample = pool_sample(data, config.pool_sample, recipe.seed)
    found = teacher.label(sample, store, desc="teacher check: pool sample") if sample else {}
    sample_probs = np.array([found[text_hash(r["text"])].probs for r in sample if text_hash(r["text"]) in found]
                            ).reshape(-1, len(names))
    mixes = {"raw": _mix(sample_probs, names)}
    calibrated = None
    if recipe.teacher.calibration is not None and len(rows):
        calibration = fit_calibration(recipe, data, teacher, store, found, write=False)
        calibrated = {**judgement(truth, fold_calibrated_predictions(calibration, probs, truth, recipe.seed), names,
                                  recipe.seed), "method": calibration.method}
        mixes["calibrated"] = _mix(calibration.apply(sample_probs), names)
    seed_only = seed_classifier_judgement(recipe, data)
    verdict, reasons = judge(calibrated or raw, mixes.get("calibrated", mixes["raw"]), seed_only, truth, names,
                             config.collapse_share, config.seed_only_margin)
    record = {
        "teacher": teacher.identity,
        "prompt": teacher.prompt_fingerprint,
        "verdict": verdict,
        "reasons": reasons,
        "on_failure": config.on_failure,
        "judged_on": "calibrated" if calibrated else "raw",
        "seeds": {"n": len(rows), "of": len(data.seed), "chance": 1.0 / len(names),
                  "majority_rate": raw["majority_rate"], "raw": raw, "calibrated": calibrated},
        "seed_classifier": seed_only,
        "pool_sample": {"n": len(sample_probs), "asked": config.pool_sample, "predicted_counts": mixes},
        "thresholds": {"collapse_share": config.collapse_share, "seed_only_margin": config.seed_only_margin},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    record = run.write_stamp("label", record, run.teacher_check, version=CHECK_VERSION)
    _log(record, names)
    return record


def pool_sample(data: PreparedData, n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of ``n`` pool rows (all of them when the pool is smaller)."""
    rows = data.rows("pool")
    return rows if n >= len(rows) else random.Random(seed).sample(rows, n)


def seed_classifier_judgement(recipe: Recipe, data: PreparedData) -> dict[str, Any] | None:
    """The seed classifier's seed accuracy on balanced folds, with the encoder the recipe fits it with (the
    ensemble member's, else the seed-only baseline's); None with seeds of fewer than two classes."""
    from tailorkd.evaluation.baselines import judge_seed_classifier
    from tailorkd.models.embedder import SentenceEmbedder, embedding_text

    encoder = seed_classifier_encoder(recipe)
    seeds = data.rows("seed")
    if len({str(r["label"]) for r in seeds}) < 2:
        return None
    x_seed = SentenceEmbedder(encoder)([embedding_text(r) for r in seeds])
    return {**judge_seed_classifier(x_seed, [str(r["label"]) for r in seeds], recipe.task.label_names, recipe.seed),
            "encoder": encoder}


def judge(judged: dict[str, Any], pool_mix: dict[str, int], seed_only: dict[str, Any] | None, truth: list[str],
          names: list[str], collapse_share: float, seed_only_margin: float) -> tuple[str, list[str]]:
    """(verdict, reasons) from the teacher's seed ``judged`` (its ``judgement``), its predicted class mix on the
    pool sample and the seed classifier's judgement; see the module docstring."""
    reasons: list[str] = []
    seed_top = max((truth.count(c) / len(truth) for c in names), default=0.0)
    for where, mix in (("pool sample", pool_mix), ("seeds", judged.get("predicted_counts") or {})):
        total = sum(mix.values())
        if not total:
            continue
        top = max(mix, key=mix.get)
        share = mix[top] / total
        if share >= collapse_share and seed_top < collapse_share:
            reasons.append(f"collapsed: {100 * share:.0f}% of its answers on the {where} are '{top}' "
                           f"(threshold {100 * collapse_share:.0f}%; the seeds hold {100 * seed_top:.0f}% at most)")
    collapsed = bool(reasons)
    if judged["accuracy"] is None:
        reasons.append("weak: no seed could judge it")
    else:
        bar = max(judged["chance"], judged["majority_rate"])
        low, high = judged["accuracy_interval"]["low"], judged["accuracy_interval"]["high"]
        if low <= bar:
            reasons.append(f"weak: seed accuracy {100 * judged['accuracy']:.0f}% [{100 * low:.0f}, {100 * high:.0f}] "
                           f"does not clear chance / the majority class ({100 * bar:.0f}%)")
        if seed_only and seed_only["accuracy"] is not None \
                and judged["accuracy"] < seed_only["accuracy"] - seed_only_margin:
            reasons.append(f"weak: seed accuracy {100 * judged['accuracy']:.0f}% is below the seed classifier's "
                           f"{100 * seed_only['accuracy']:.0f}% (the seeds alone do better)")
    if collapsed:
        return "collapsed", reasons
    return ("weak" if reasons else "ok"), reasons


REMEDIES = [
    "a stronger or served teacher (teacher.model, teacher.server)",
    "another prompt (prompt_search; label descriptions or verbalizers that fit the model; prompt.max_text_chars "
    "when texts are long)",
    "teacher.calibration (method: auto, seeds: all) when the teacher leans to one class",
    "more seeds (data.splits.seed_per_class): 20 seeds judge within about +-20 points",
    "teacher.check.on_failure: fallback, to train on the seed classifier's labels instead",
]


def act_on(recipe: Recipe, record: dict[str, Any] | None) -> bool:
    """What the check's verdict does to the run: True when the seed classifier is to label in the teacher's
    place (``fallback``, and it did at least as well on the seeds); raises for ``stop``; else False."""
    if record is None or record["verdict"] == "ok":
        return False
    run = RunDir(recipe)
    action = record["on_failure"]
    if action == "stop":
        raise TailorkdError(f"{run.teacher_check}: the teacher is {record['verdict']} on the seeds "
                            f"({record['reasons'][0]}); stopped before labelling the pool "
                            "(teacher.check.on_failure: stop)")
    if action == "fallback":
        seed_only, judged = record["seed_classifier"], record["seeds"][record["judged_on"]]
        if seed_only and seed_only["accuracy"] is not None \
                and (judged["accuracy"] is None or seed_only["accuracy"] >= judged["accuracy"]):
            log.warning("teacher check: falling back to the seed classifier (%s): it labels pool and test in "
                        "the teacher's place (teacher.check.on_failure: fallback)", seed_only["encoder"])
            return True
        log.warning("teacher check: on_failure is fallback, but the seed classifier scores no better on the seeds "
                    "than the teacher; going on with the teacher")
    return False


def load_teacher_check(recipe: Recipe) -> dict[str, Any] | None:
    """teacher_check.json of the run when it was made for the recipe as it is, else None."""
    run = RunDir(recipe)
    return run.stamp("label", run.teacher_check, version=CHECK_VERSION)


def _predicted(probs: np.ndarray, names: list[str]) -> np.ndarray:
    return np.asarray([names[i] for i in probs.argmax(axis=1)], dtype=object)


def _mix(probs: np.ndarray, names: list[str]) -> dict[str, int]:
    predicted = list(_predicted(probs, names)) if len(probs) else []
    return {c: predicted.count(c) for c in names}


def _interval(j: dict[str, Any] | None, key: str) -> str:
    if not j or j.get(key) is None:
        return "-"
    ci = j[f"{key}_interval"]
    return f"{100 * j[key]:.0f}% [{100 * ci['low']:.0f}, {100 * ci['high']:.0f}]"


def _log(record: dict[str, Any], names: list[str]) -> None:
    seeds = record["seeds"]
    lines = [f"teacher check: {record['verdict'].upper()} ({record['teacher']})",
             f"  seeds judged: {seeds['n']} of {seeds['of']}; chance {100 * seeds['chance']:.0f}%, majority class "
             f"{100 * (seeds['majority_rate'] or 0):.0f}%",
             f"  teacher raw:        accuracy {_interval(seeds['raw'], 'accuracy')}, macro-F1 "
             f"{_interval(seeds['raw'], 'macro_f1')}"]
    if seeds["calibrated"]:
        lines.append(f"  teacher calibrated: accuracy {_interval(seeds['calibrated'], 'accuracy')}, macro-F1 "
                     f"{_interval(seeds['calibrated'], 'macro_f1')} ({seeds['calibrated']['method']})")
    lines.append(f"  seed classifier:    accuracy {_interval(record['seed_classifier'], 'accuracy')}, macro-F1 "
                 f"{_interval(record['seed_classifier'], 'macro_f1')} (balanced folds)")
    for kind, mix in record["pool_sample"]["predicted_counts"].items():
        lines.append(f"  pool sample ({record['pool_sample']['n']}), {kind}: "
                     + ", ".join(f"{c} {mix.get(c, 0)}" for c in names))
    if record["verdict"] == "ok":
        log.info("\n".join(lines))
        return
    lines += [f"  {reason}" for reason in record["reasons"]]
    lines += ["  likely causes: a teacher too small or not instructed for this task, a prompt that does not fit it, "
              "texts longer than the prompt keeps; remedies:"] + [f"    - {r}" for r in REMEDIES]
    lines.append(f"  teacher.check.on_failure: {record['on_failure']}")
    log.warning("\n".join(lines))
