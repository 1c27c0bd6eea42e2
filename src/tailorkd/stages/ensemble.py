"""Stage 2c, ensemble (when the recipe has ``teacher.ensemble``; run by the label stage): more teachers label the
same texts, each is calibrated like the main one, and their distributions are combined (the maths:
``tailorkd.teachers.ensemble``).

Each member labels under its own identity in the store (with the recipe's prompt, or one of its own) and is
weighed by its accuracy on the seeds it did not see; the seed classifier (``ensemble.seed_classifier``) joins
as one more member. ensemble.json records members, calibrations and weights; ``ensemble_probs`` reads the
combination back.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import time
from typing import Any

import numpy as np

from tailorkd.calibration import Calibration
from tailorkd.data import PreparedData
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, make_record, text_hash
from tailorkd.prompts import fixed_shots, held_out_seeds, knn_selector
from tailorkd.run_dir import RunDir
from tailorkd.stages.calibrate import fit_calibration
from tailorkd.teachers import make_teacher
from tailorkd.teachers.ensemble import combine, seed_weights

log = logging.getLogger(__name__)


def label_ensemble(recipe, data: PreparedData, store: LabelStore, main: Any, main_calibration: Calibration | None
                   ) -> dict[str, Any]:
    """Every extra member labels pool and test and is calibrated like the main teacher ``main``; the members'
    weights go with their calibrations into ensemble.json. Returns the summary for labels_summary.json."""
    config = recipe.teacher.ensemble
    run = RunDir(recipe)
    pool_rows, test_rows = data.rows("pool"), data.rows("test")
    members = [{"model": recipe.teacher.model, "identity": main.identity, "prompt": main.prompt_fingerprint,
                "calibration": main_calibration.to_dict() if main_calibration else None,
                "held_out_seed_accuracy": held_out_accuracy(recipe, data, main, store, main_calibration)}]
    for i, member_config in enumerate(config.members):
        # A member with a prompt of its own: its shots, held-out seeds and calibration follow that prompt.
        member_recipe = recipe if member_config.prompt is None else recipe.model_copy(
            update={"prompt": member_config.prompt})
        teacher = member_teacher(member_recipe, data, member_config)
        pool = teacher.label(pool_rows, store, desc=f"teacher {i + 2}: pool")
        teacher.label(test_rows, store, desc=f"teacher {i + 2}: test")
        calibration = None
        if recipe.teacher.calibration is not None:
            calibration = fit_calibration(member_recipe, data, teacher, store, pool, write=False)
        members.append({"model": member_config.model, "identity": teacher.identity,
                        "prompt": teacher.prompt_fingerprint, "own_prompt": member_config.prompt is not None,
                        "calibration": calibration.to_dict() if calibration else None,
                        "held_out_seed_accuracy": held_out_accuracy(member_recipe, data, teacher, store, calibration)})
        del teacher  # one model in memory at a time
        gc.collect()
    if config.seed_classifier is not None:
        members.append(label_with_seed_classifier(recipe, data, store, config.seed_classifier.encoder,
                                                  pool_rows + test_rows))
    weights = (seed_weights([m["held_out_seed_accuracy"] for m in members]) if config.weights == "seed_accuracy"
               else [1.0 / len(members)] * len(members))
    for member, weight in zip(members, weights):
        member["weight"] = weight
    run.write_json(run.ensemble, {"recipe_hash": run.fingerprint("label"), "combine": config.combine,
                                  "weights": config.weights, "members": members})
    log.info("ensemble (%s): %s", config.combine,
             ", ".join(f"{m['model']} w={m['weight']:.2f} (seeds {m['held_out_seed_accuracy']})" for m in members))
    return {"combine": config.combine, "members": [{k: m[k] for k in ("model", "identity", "weight",
                                                                      "held_out_seed_accuracy")} for m in members]}


def member_teacher(recipe, data: PreparedData, config: Any = None) -> Any:
    """The recipe's teacher, or the ensemble member ``config``, with the recipe's prompt and shots."""
    seeds, names = data.rows("seed"), recipe.task.label_names
    return make_teacher(config or recipe.teacher, recipe.task, recipe.prompt,
                        fixed_shots(recipe.prompt, seeds, names, recipe.seed),
                        knn_selector(recipe.prompt, seeds, names))


def held_out_accuracy(recipe, data: PreparedData, teacher: Any, store: LabelStore,
                      calibration: Calibration | None) -> float | None:
    """A teacher's accuracy on the seeds that are not few-shot examples (with a calibration: on the seeds
    that judged it, see ``teacher.calibration.seeds``), after its calibration (the leave-one-out figure for a
    seed-fitted bias, which saw those seeds); None without such seeds."""
    if calibration is not None:
        scored = calibration.details.get("candidates", {}).get(calibration.method)
        if scored:
            return float(scored["accuracy"])
    names = recipe.task.label_names
    held_out = held_out_seeds(recipe.prompt, data.rows("seed"), names, recipe.seed)
    found = teacher.label(held_out, store, desc="teacher: held-out seeds") if held_out else {}
    kept = [r for r in held_out if text_hash(r["text"]) in found]
    if not kept:
        return None
    probs = np.array([found[text_hash(r["text"])].probs for r in kept])
    if calibration is not None:
        probs = calibration.apply(probs)
    return float(np.mean([names[i] == r["label"] for i, r in zip(probs.argmax(1), kept)]))


def label_with_seed_classifier(recipe, data: PreparedData, store: LabelStore, encoder: str,
                               rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed classifier as an ensemble member: fitted on all the seeds, its distributions for ``rows``
    go into the store like a teacher's (keyed by encoder and by the seed set, so other seeds refit it); its
    weight comes from its leave-one-out accuracy on the seeds."""
    from tailorkd.evaluation.baselines import (
        SentenceEmbedder,
        classifier_probs,
        embedding_text,
        fit_seed_classifier,
        leave_one_out_accuracy,
    )

    seeds = data.rows("seed")
    names = recipe.task.label_names
    identity = f"seed-classifier|{encoder}|logistic-regression"
    fingerprint = "seeds-" + hashlib.sha256(json.dumps(
        sorted([str(r["id"]), str(r["label"]), text_hash(r["text"])] for r in seeds)).encode()).hexdigest()[:16]
    embed = SentenceEmbedder(encoder)
    x_seed = embed([embedding_text(r) for r in seeds])
    labels = [str(r["label"]) for r in seeds]
    done = store.done_hashes(identity, fingerprint)
    todo = [r for r in rows if text_hash(r["text"]) not in done]
    if todo:
        model = fit_seed_classifier(x_seed, labels, recipe.seed)
        t0 = time.perf_counter()
        probs = classifier_probs(model, embed([embedding_text(r) for r in todo]), names)
        per_text = (time.perf_counter() - t0) / len(todo)
        store.put_batch(identity, fingerprint, names,
                        [make_record(r["id"], r["text"], p, names, per_text) for r, p in zip(todo, probs)])
    accuracy = leave_one_out_accuracy(x_seed, labels, recipe.seed)
    log.info("ensemble: seed classifier (%s) labelled %d texts; leave-one-out seed accuracy %.3f", encoder,
             len(todo), accuracy)
    return {"model": f"seed classifier: logistic regression on {encoder} embeddings of {len(seeds)} seeds",
            "identity": identity, "prompt": fingerprint, "calibration": None, "held_out_seed_accuracy": accuracy}


def ensemble_probs(recipe, rows: list[dict[str, Any]], store: LabelStore, calibrated: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The combined [N, M] distribution of ``rows``, the members' summed per-text seconds and each member's
    [N, M] distribution (NaN rows: that member abstained)."""
    run = RunDir(recipe)
    if not run.ensemble.is_file():
        raise TailorkdError(f"{run.ensemble}: the recipe asks for a teacher ensemble but none is labelled; run "
                            "`tailorkd label`")
    payload = run.read_json(run.ensemble, "ensemble record")
    if payload.get("recipe_hash") != run.fingerprint("label"):
        raise TailorkdError(f"{run.ensemble}: made for another teacher, prompt or data; run `tailorkd label` again")
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
