"""Stage 2b, calibrate (when the recipe has ``teacher.calibration``; run by the label stage): fit the per-class
offsets that remove a teacher's label bias (the maths: ``tailorkd.calibration``).

The inputs are scored by the teacher into the label store like any text: content-free inputs, random
in-domain word sequences from the pool, and the seeds no prompt showed (``teacher.calibration.seeds``). The
test split never judges. The store keeps raw distributions; the fitted offsets go into calibration.json and
are applied whenever labels are read, so a changed calibration never needs relabelling.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tailorkd.calibration import Calibration, calibrate, domain_inputs
from tailorkd.data import PreparedData
from tailorkd.data.pool_rows import take_rows
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, text_hash
from tailorkd.prompts import fixed_shots, held_out_seeds, per_text_shots
from tailorkd.run_dir import STAMP_KEYS, RunDir

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

#: The in-domain random inputs draw their words from the first this many pool texts (the pool is in a seeded
#: random order, so they are a random sample of it; a bigger pool adds words, not information).
DOMAIN_TEXTS = 10_000


def fit_calibration(recipe: Recipe, data: PreparedData, teacher: Any, store: LabelStore, pool: Mapping[str, Any],
                    write: bool = True) -> Calibration:
    """Score the calibration inputs with ``teacher``, fit the recipe's calibration and (``write``) write
    calibration.json with the pool's predicted-label counts before and after."""
    config = recipe.teacher.calibration
    names = recipe.task.label_names
    inputs = calibration_inputs(recipe, data, teacher, store)
    calibration = fit_on(recipe, inputs)
    pool_probs = np.array([rec.probs for rec in pool.values()]).reshape(-1, len(names))
    counts = {"before": _predicted_counts(pool_probs, names),
              "after": _predicted_counts(calibration.apply(pool_probs), names)}
    calibration.details["pool_predicted_counts"] = counts
    calibration.details["seeds"] = "all" if config.seeds == "all" or per_text_shots(recipe.prompt) else "not_shown"
    if write:
        run = RunDir(recipe)
        run.write_stamp("label", calibration.to_dict(), run.calibration)
    log.info("calibration: %s (%s); pool predictions %s -> %s", calibration.method,
             calibration.details["chosen_because"], counts["before"], counts["after"])
    return calibration


def calibration_inputs(recipe: Recipe, data: PreparedData, teacher: Any, store: LabelStore) -> dict[str, Any]:
    """What the recipe's calibration is fitted on, scored by ``teacher`` (read back from the store when it was
    scored before): {"content_free": [K, M], "domain": [D, M], "seeds": the seeds that may judge it,
    "seed_probs": [S, M]}, all raw."""
    config = recipe.teacher.calibration
    names = recipe.task.label_names

    def probs_of(rows: list[dict[str, Any]], desc: str) -> np.ndarray:
        found = teacher.label(rows, store, desc=desc) if rows else {}
        kept = [r for r in rows if text_hash(r["text"]) in found]  # a served teacher may abstain
        return np.array([found[text_hash(r["text"])].probs for r in kept]).reshape(len(kept), len(names))

    content_free = probs_of([{"id": f"content-free-{i}", "text": t} for i, t in enumerate(config.content_free)],
                            "teacher: content-free")
    try:
        pool_texts = [r["text"] for r in take_rows(data.rows("pool"), range(min(len(data.pool), DOMAIN_TEXTS)))]
        domain_texts = domain_inputs(pool_texts, config.domain_samples, recipe.seed, config.domain_words)
    except ValueError as e:
        raise TailorkdError(f"teacher.calibration: {e}") from None
    domain = probs_of([{"id": f"domain-{i}", "text": t} for i, t in enumerate(domain_texts)],
                      "teacher: in-domain random")
    seeds, seed_probs = scored_seeds(recipe, data, teacher, store, every_seed=config.seeds == "all")
    return {"content_free": content_free, "domain": domain, "seeds": seeds, "seed_probs": seed_probs}


def fit_on(recipe: Recipe, inputs: Mapping[str, Any], keep: np.ndarray | None = None) -> Calibration:
    """The recipe's calibration fitted on ``calibration_inputs`` (``keep``: a mask of their seeds to fit on,
    e.g. a fold of them; default all)."""
    seeds, seed_probs = inputs["seeds"], inputs["seed_probs"]
    if keep is not None:
        seeds, seed_probs = [r for r, k in zip(seeds, keep) if k], seed_probs[np.asarray(keep, dtype=bool)]
    try:
        return calibrate(recipe.teacher.calibration.method, recipe.task.label_names,
                         content_free=inputs["content_free"], domain=inputs["domain"], seed_probs=seed_probs,
                         seed_labels=[r["label"] for r in seeds], seed=recipe.seed)
    except ValueError as e:
        raise TailorkdError(f"teacher.calibration: {e}") from None


def scored_seeds(recipe: Recipe, data: PreparedData, teacher: Any, store: LabelStore, every_seed: bool = True
                 ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The seeds that may judge ``teacher`` and its raw [S, M] distributions on them (seeds it abstained on
    left out). ``every_seed``: none scored by a prompt that shows it: the seeds that are not shots with the
    teacher's own shots, each shown seed with its shot swapped for an unused seed of its class (one teacher
    call per shot; free after a prompt search, which scored the same prompts). Else only the seeds that are
    not shots. With per-text shots every seed (a text is never its own shot)."""
    from tailorkd.prompts.search import loo_shot_groups

    names = recipe.task.label_names
    seeds = data.rows("seed")
    if every_seed and not per_text_shots(recipe.prompt):
        own_shots = fixed_shots(recipe.prompt, seeds, names, recipe.seed)
        groups = [(teacher if shots == own_shots else teacher.with_prompt(recipe.prompt, shots), rows)
                  for shots, rows in loo_shot_groups(own_shots, seeds)]
        desc = "teacher: seeds, leave-one-out shots"
    else:
        groups = [(teacher, held_out_seeds(recipe.prompt, seeds, names, recipe.seed))]
        desc = "teacher: held-out seeds"
    kept, parts = [], []
    for by, rows in groups:
        found = by.label(rows, store, desc=desc) if rows else {}
        answered = [r for r in rows if text_hash(r["text"]) in found]  # a served teacher may abstain
        kept += answered
        parts.append(np.array([found[text_hash(r["text"])].probs for r in answered]).reshape(len(answered),
                                                                                            len(names)))
    return kept, np.concatenate(parts) if parts else np.zeros((0, len(names)))


def load_calibration(recipe: Recipe) -> Calibration | None:
    """The run's fitted calibration, or None when the recipe asks for none."""
    if recipe.teacher.calibration is None:
        return None
    run = RunDir(recipe)
    if not run.calibration.is_file():
        raise TailorkdError(f"{run.calibration}: the recipe asks for teacher calibration but none is fitted; "
                            "run `tailorkd label`")
    payload = run.stamp("label", run.calibration)
    if payload is None:
        raise TailorkdError(f"{run.calibration}: fitted for another teacher, prompt or data; run `tailorkd label` "
                            "again")
    try:
        calibration = Calibration.from_dict({k: v for k, v in payload.items() if k not in STAMP_KEYS})
    except (KeyError, TypeError, ValueError) as e:
        raise TailorkdError(f"{run.calibration}: not a calibration tailorkd can read ({e}); run `tailorkd label` "
                            "again") from None
    if calibration.label_names != recipe.task.label_names:
        raise TailorkdError(f"{run.calibration}: fitted for labels {calibration.label_names}, the recipe has "
                            f"{recipe.task.label_names}")
    return calibration


def _predicted_counts(probs: np.ndarray, names: list[str]) -> dict[str, int]:
    return pd.Series([names[i] for i in probs.argmax(1)], dtype=object).value_counts().to_dict()
