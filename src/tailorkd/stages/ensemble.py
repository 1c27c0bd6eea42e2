"""Stage 2c, ensemble (when the recipe has ``teacher.ensemble``; run by the label stage): more teachers label the
same texts, each is calibrated like the main one, and their distributions are combined (the maths:
``tailorkd.teachers.ensemble``).

Each member labels under its own identity in the store (with the recipe's prompt, or one of its own) and is
judged on every seed, none by a prompt that shows it (``member_judgement``: a shown seed is scored with its
shot swapped; a seed-fitted calibration refitted on balanced folds); the seed classifier
(``ensemble.seed_classifier``: a seed-classifier teacher kind, ``teachers.seed_classifier``) joins as one more
member, judged by refits on balanced folds rather than leave-one-out (``evaluation.seed_judge``). Weights follow
each member's expected skill above chance given how many seeds judged it (``teachers.ensemble.seed_weights``);
each member's temperature puts it on one scale with the others (its mean top probability over the pool set to
its seed accuracy, ``teachers.ensemble.matched_temperature``). ensemble.json records members, their seed
judgements with intervals, calibrations, weights and temperatures;
``ensemble_probs`` reads the combination back.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd.calibration import Calibration
from tailorkd.data import PreparedData
from tailorkd.data.pool_rows import take_rows
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, stored_probs
from tailorkd.prompts import fixed_shots, knn_selector
from tailorkd.run_dir import RunDir
from tailorkd.stages.calibrate import fit_calibration, scored_seeds
from tailorkd.teachers import make_seed_model, make_teacher
from tailorkd.teachers.base import SeedModel
from tailorkd.teachers.ensemble import WEIGHTING_VERSION, combine, matched_temperature, seed_weights, tempered
from tailorkd.teachers.seed_classifier import label_with_seed_model, seeds_fingerprint

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

# Pool texts a member's temperature is matched on (all of a smaller pool).
TEMPERATURE_SAMPLE = 20_000


def label_ensemble(recipe, data: PreparedData, store: LabelStore, main: Any, main_calibration: Calibration | None
                   ) -> dict[str, Any]:
    """Every extra member labels pool and test and is calibrated like the main teacher ``main``; the members'
    weights go with their calibrations into ensemble.json. Returns the summary for labels_summary.json."""
    config = recipe.teacher.ensemble
    run = RunDir(recipe)
    pool_rows, test_rows = data.rows("pool"), data.rows("test")
    members = [{"model": recipe.teacher.model, "identity": main.identity, "prompt": main.prompt_fingerprint,
                "calibration": main_calibration.to_dict() if main_calibration else None,
                **_judged(member_judgement(recipe, data, main, store, main_calibration))}]
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
                        **_judged(member_judgement(member_recipe, data, teacher, store, calibration))})
        del teacher  # one model in memory at a time
        gc.collect()
    if config.seed_classifier is not None:
        try:  # the last record, only to reuse a judgement: one that cannot be read is judged anew
            earlier = (run.read_json_if_exists(run.ensemble, "ensemble record") or {}).get("members", [])
        except TailorkdError:
            earlier = []
        members.append(label_with_seed_classifier(recipe, data, store, seed_classifier_member(recipe, data),
                                                  pool_rows, test_rows, earlier=earlier))
    judged = [None if m["held_out_seed_accuracy"] is None else (m["held_out_seed_accuracy"], m["seed_judgement"]["n"])
              for m in members]
    weights = (seed_weights(judged, len(recipe.task.label_names)) if config.weights == "seed_accuracy"
               else [1.0 / len(members)] * len(members))
    # On one scale: mean top probability over the pool = held-out seed accuracy (teachers.ensemble); a mean
    # needs no more than a seeded sample of a large pool.
    sample = take_rows(pool_rows, np.sort(np.random.default_rng(recipe.seed).choice(
        len(pool_rows), min(len(pool_rows), TEMPERATURE_SAMPLE), replace=False)))
    for member, weight in zip(members, weights):
        member["weight"] = weight
        member["temperature"] = 1.0 if config.confidence == "as_labelled" else matched_temperature(
            member_distributions(member, sample, store, recipe.task.label_names), member["held_out_seed_accuracy"])
    run.write_stamp("label", {"combine": config.combine, "weights": config.weights, "confidence": config.confidence,
                              "weighting_version": WEIGHTING_VERSION, "members": members}, run.ensemble)
    log.info("ensemble (%s): %s", config.combine, ", ".join(
        f"{m['model']} w={m['weight']:.2f} T={m['temperature']:.3g} (seeds {_shown(m)})" for m in members))
    return {"combine": config.combine, "confidence": config.confidence,
            "members": [{k: m[k] for k in ("model", "identity", "weight", "temperature", "held_out_seed_accuracy",
                                           "seed_judgement")} for m in members]}


def _judged(judgement: dict[str, Any]) -> dict[str, Any]:
    """A member's ensemble.json fields from its seed judgement (accuracy also alone, as readers knew it)."""
    return {"held_out_seed_accuracy": judgement["accuracy"], "seed_judgement": judgement}


def _shown(member: dict[str, Any]) -> str:
    j = member["seed_judgement"]
    if j["accuracy"] is None:
        return "not judged"
    ci = j["accuracy_interval"]
    return f"accuracy {j['accuracy']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}] on {j['n']}"


def member_teacher(recipe, data: PreparedData, config: Any = None) -> Any:
    """The recipe's teacher, or the ensemble member ``config``, with the recipe's prompt and shots."""
    seeds, names = data.rows("seed"), recipe.task.label_names
    return make_teacher(config or recipe.teacher, recipe.task, recipe.prompt,
                        fixed_shots(recipe.prompt, seeds, names, recipe.seed),
                        knn_selector(recipe.prompt, seeds, names))


def member_judgement(recipe, data: PreparedData, teacher: Any, store: LabelStore,
                     calibration: Calibration | None) -> dict[str, Any]:
    """A teacher's accuracy and macro-F1 on every seed with intervals (``evaluation.seed_judge.judgement``),
    after its calibration: each seed scored by a prompt that does not show it (``scored_seeds``), a
    seed-fitted bias refitted without the held-out seeds (``fold_calibrated_predictions``)."""
    from tailorkd.calibration import fold_calibrated_predictions
    from tailorkd.evaluation.seed_judge import judgement

    names = recipe.task.label_names
    rows, probs = scored_seeds(recipe, data, teacher, store, every_seed=True)
    truth = [str(r["label"]) for r in rows]
    if calibration is None:
        predicted = np.asarray([names[i] for i in probs.argmax(axis=1)], dtype=object)
    else:
        predicted = fold_calibrated_predictions(calibration, probs, truth, recipe.seed)
    return judgement(truth, predicted, names, recipe.seed)


def seed_classifier_member(recipe, data: PreparedData) -> SeedModel:
    """The recipe's ``teacher.ensemble.seed_classifier`` as a member: the seed-classifier teacher kind its
    ``method`` names (``teachers.seed_classifier``: logistic regression on frozen embeddings, or SetFit)."""
    return make_seed_model(recipe.teacher.ensemble.seed_classifier, data.rows("seed"), recipe.task.label_names,
                           recipe.seed)


def label_with_seed_classifier(recipe, data: PreparedData, store: LabelStore, model: SeedModel,
                               *row_sets: Sequence[dict[str, Any]], earlier: Sequence[dict[str, Any]] = ()
                               ) -> dict[str, Any]:
    """A seed-classifier ``model`` (see ``seed_classifier_member``) as an ensemble member: its distributions for
    the rows of every one of ``row_sets`` (e.g. pool and test) go into the store like a teacher's
    (``teachers.seed_classifier.label_with_seed_model``); its weight comes from its accuracy when refitted on
    balanced folds of the seeds (``model.judge()``), or from its record among the ``earlier`` members (the
    last ensemble.json's) when that was judged alike (same identity, seeds and ``model.judged_as``: a SetFit
    judgement is minutes of training)."""
    seeds = data.rows("seed")
    identity, fingerprint = model.identity, seeds_fingerprint(seeds)
    label_with_seed_model(model, seeds, recipe.task.label_names, store, *row_sets)
    same = [m for m in earlier if (m.get("identity"), m.get("prompt"), m.get("judged_as")) ==
            (identity, fingerprint, model.judged_as) and m.get("seed_judgement")]
    judged = same[0]["seed_judgement"] if same else model.judge()
    member = {"model": model.description, "identity": identity, "prompt": fingerprint, "calibration": None,
              "judged_as": model.judged_as, **_judged(judged)}
    log.info("ensemble: %s: seed %s (balanced folds)", model.description, _shown(member))
    return member


def ensemble_probs(recipe, rows: list[dict[str, Any]], store: LabelStore, calibrated: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The combined [N, M] distribution of ``rows``, the members' summed per-text seconds and each member's
    [N, M] distribution (NaN rows: that member abstained)."""
    run = RunDir(recipe)
    if not run.ensemble.is_file():
        raise TailorkdError(f"{run.ensemble}: the recipe asks for a teacher ensemble but none is labelled; run "
                            "`tailorkd label`")
    payload = run.stamp("label", run.ensemble)
    if payload is None:
        raise TailorkdError(f"{run.ensemble}: made for another teacher, prompt or data; run `tailorkd label` again")
    if payload.get("weighting_version") != WEIGHTING_VERSION:
        raise TailorkdError(f"{run.ensemble}: its members were weighted by an older rule; run `tailorkd label` again "
                            "(the labels are kept, only the weights are recomputed)")
    names = recipe.task.label_names
    member_probs, seconds = [], np.zeros(len(rows))
    for member in payload["members"]:
        probs, member_seconds = member_distributions(member, rows, store, names, calibrated, with_seconds=True)
        member_probs.append(tempered(probs, member["temperature"]) if calibrated else probs)
        seconds += np.nan_to_num(member_seconds, nan=0.0)
    return combine(member_probs, [m["weight"] for m in payload["members"]], payload["combine"]), seconds, member_probs


def ensemble_record(recipe: Recipe) -> dict[str, Any] | None:
    """ensemble.json when it was weighted for this recipe by the current rule, else None."""
    payload = RunDir(recipe).stamp("label", RunDir(recipe).ensemble)
    return payload if payload is not None and payload.get("weighting_version") == WEIGHTING_VERSION else None


def member_distributions(member: dict[str, Any], rows: list[dict[str, Any]], store: LabelStore,
                         names: Sequence[str], calibrated: bool = True, with_seconds: bool = False) -> Any:
    """An ensemble.json ``member``'s stored [N, M] distributions of ``rows`` (NaN: abstained), after its
    calibration unless ``calibrated`` is False, before its temperature; with its per-text seconds if asked."""
    probs, seconds = stored_probs(store, member["identity"], member["prompt"], rows, names)
    if calibrated and member["calibration"]:
        probs = Calibration.from_dict(member["calibration"]).apply(probs)
    return (probs, seconds) if with_seconds else probs
