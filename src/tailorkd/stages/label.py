"""Stage 2, label: the teacher gives every pool text (training targets) and test text (its evaluation) a class
distribution, stored in labels.sqlite under (teacher identity, prompt fingerprint, text hash).

First the teacher check (``stages.teacher_check``, unless ``teacher.check`` is null) judges the teacher on the
seeds and a pool sample, before any other pool text is labelled; a weak or collapsed teacher warns, stops
the run, or (``fallback``) lets the seed classifier label pool and test in its place, without calibration or
ensemble (labels_summary.json's "fallback" names it, and ``teacher_records`` reads its labels).

Resumable: texts already in the store are skipped, so a killed run goes on where it stopped, and a changed
teacher or prompt labels afresh instead of mixing. Then, as the recipe asks: the teacher's reasons on a
sample, its calibration (``stages.calibrate``), the other ensemble members (``stages.ensemble``), and with a
prompt search the hand-written prompt on the test set. labels_summary.json is written last.

A served teacher may abstain on a text (its answer names no class): such texts get no label and are listed
in labels_summary.json, so later stages tell them from texts never labelled. ``teacher_records`` reads the
labels back for the later stages.

Under a launcher (tailorkd.distributed) every process loads the teacher on its own device and labels a
disjoint share of the pool and the test set into the one store; the main process then reads them all and
does the rest (reasons, calibration, ensemble, summary) while the others wait. With ``tailorkd label --engine
ray`` the pool and test texts are scored by one teacher per Ray actor and written by this process alone
(``tailorkd.ray_label``); the rest follows here as usual.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd import distributed
from tailorkd.data import PreparedData
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, stored_probs, text_hash
from tailorkd.run_dir import RunDir
from tailorkd.stages.calibrate import fit_calibration, load_calibration
from tailorkd.stages.ensemble import ensemble_probs, ensemble_record, label_ensemble, member_teacher
from tailorkd.stages.prepare import load_data
from tailorkd.stages.prompt_search import resolve_prompt, search_record
from tailorkd.stages.registry import Stage, is_current, register_stage, run_requirements
from tailorkd.stages.teacher_check import act_on, judge_teacher, load_teacher_check
from tailorkd.teachers import add_reasons, hidden_key
from tailorkd.teachers.seed_classifier import SeedClassifierLabeller

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)


def label(recipe: Recipe, teacher: Any = None, engine: Any = None, force: bool = False) -> dict[str, Any] | None:
    """Label pool and test with the recipe's teacher (``teacher``: one already built; ``engine``: a
    ``tailorkd.ray_label.RayEngine`` to label them on Ray actors first); calibrate and combine as the recipe
    says; write labels_summary.json. Returns the summary (None on a process other than the main one).

    Skipped when labels_summary.json (and the calibration, ensemble and teacher check the recipe asks for)
    were made for this recipe, unless ``force``: then the check, calibration, ensemble and summary are made
    again, and the teacher's stored distributions reused (they are keyed by teacher, prompt and text, so
    scoring them again would give the same; delete labels.sqlite to score afresh)."""
    run_requirements(recipe, "label")
    if not force and is_current(recipe, "label"):
        log.info("label: the teacher labels in %s are up to date", RunDir(recipe).root)
        return labels_summary(resolve_prompt(recipe)) if distributed.is_main() else None
    base_recipe = recipe
    recipe = resolve_prompt(recipe)
    data = load_data(recipe)
    teacher = teacher or member_teacher(recipe, data)
    t0 = time.perf_counter()
    fallback = act_on(recipe, _check(recipe, data, teacher))  # before any pool text is labelled
    if engine is not None and not fallback:  # one teacher per Ray actor; this process writes the store
        from tailorkd.ray_label import label_on_ray

        with LabelStore(RunDir(recipe).label_store) as store:
            label_on_ray(recipe, data, teacher, store, engine, **_label_options(recipe))
    elif distributed.is_distributed() and not fallback:
        with LabelStore(RunDir(recipe).label_store) as store:
            for split in ("pool", "test"):
                teacher.label(distributed.share(data.rows(split), key=lambda row: text_hash(row["text"])), store,
                              desc=f"teacher: {split}, process {distributed.rank()}", **_label_options(recipe))
        distributed.barrier()  # every share is stored before the main process reads them all
        if not distributed.is_main():
            teacher = None  # its device memory is not needed while the main process finishes
            gc.collect()
    return _finish_labelling(base_recipe, recipe, data, teacher, t0, fallback)


def _check(recipe: Recipe, data: PreparedData, teacher: Any) -> dict[str, Any] | None:
    """The teacher check by the main process (None when the recipe asks for none); its record on every process."""
    record = None
    with distributed.main_first() as main:
        if main and recipe.teacher.check is not None:
            with LabelStore(RunDir(recipe).label_store) as store:
                record = judge_teacher(recipe, data, teacher, store)
    return distributed.from_main(record)


@distributed.on_main
def check_teacher(recipe: Recipe, teacher: Any = None) -> dict[str, Any]:
    """The teacher check alone (`tailorkd check-teacher`): judge the recipe's teacher (after the stages the
    label stage requires, run first when not current) on the seeds and a pool sample, write
    teacher_check.json; return its record. Labels nothing else, and a failed check stops nothing."""
    run_requirements(recipe, "label")
    recipe = resolve_prompt(recipe)
    data = load_data(recipe)
    teacher = teacher or member_teacher(recipe, data)
    if recipe.teacher.check is None:  # asked for by name: judged with the default settings
        from tailorkd.recipe.teacher import TeacherCheckConfig

        checked = recipe.teacher.model_copy(update={"check": TeacherCheckConfig()})
        recipe = recipe.model_copy(update={"teacher": checked})
    with LabelStore(RunDir(recipe).label_store) as store:
        return judge_teacher(recipe, data, teacher, store)


def _label_options(recipe: Recipe) -> dict[str, Any]:
    hidden = recipe.teacher.hidden_states
    return {} if hidden is None else {"hidden_layers": hidden.layers, "pooling": hidden.pooling,
                                      "rows_per_shard": hidden.rows_per_shard}


@distributed.on_main
def _finish_labelling(base_recipe: Recipe, recipe: Recipe, data: PreparedData, teacher: Any, t0: float,
                      fallback: bool = False) -> dict[str, Any]:
    """Every text the processes did not label yet (all of them in one process), then reasons, calibration
    and the ensemble; labels_summary.json last. ``fallback``: the seed classifier labels, nothing else."""
    run = RunDir(recipe)
    pool_rows, test_rows = data.rows("pool"), data.rows("test")
    hidden = recipe.teacher.hidden_states
    options = _label_options(recipe)
    reasons = calibration = ensemble = None
    labeller = SeedClassifierLabeller(recipe, data) if fallback else teacher
    with LabelStore(run.label_store) as store:
        pool = labeller.label(pool_rows, store, desc="teacher: pool", **options)
        test = labeller.label(test_rows, store, desc="teacher: test", **options)
        if recipe.teacher.reasons is not None and not fallback:
            reasons = add_reasons(teacher, pool_rows, store, recipe.teacher.reasons.sample, recipe.seed,
                                  recipe.teacher.reasons.max_new_tokens)
        if recipe.teacher.calibration is not None and not fallback:
            calibration = fit_calibration(recipe, data, teacher, store, pool)
        if recipe.teacher.ensemble is not None and not fallback:
            ensemble = label_ensemble(recipe, data, store, teacher, calibration)
        # What the store holds for pool and test, read while it is open (a window of rows at a time).
        predicted = Counter(r.predicted for r in pool.values())  # one pass: the counts add up to len(pool)
        labelled = {"pool_labelled": sum(predicted.values()), "test_labelled": len(test),
                    "abstained": {"pool": pool.missing_ids(), "test": test.missing_ids()},
                    "pool_predicted_counts": dict(predicted.most_common())}
    summary = {
        "splits": splits_made(run),
        "teacher_weights": local_teacher_weights(recipe),
        "teacher": teacher.identity,
        "prompt": teacher.describe_prompt(),
        **labelled,
        "hidden_states": None if hidden is None or fallback else {
            "teacher_key": hidden_key(teacher.identity, hidden.layers, hidden.pooling),
            "layers": hidden.layers, "pooling": hidden.pooling},
        "pool_reasons": reasons,
        "calibration": None if calibration is None else {
            "method": calibration.method, **{k: v for k, v in calibration.details.items() if k != "candidates"}},
        "ensemble": ensemble,
        "fallback": labeller.describe() if fallback else None,
    }
    if base_recipe.prompt_search is not None and not fallback:
        del teacher  # one model in memory at a time
        summary["prompt_search"] = _label_with_base_prompt(base_recipe, recipe, data)
    summary["seconds"] = time.perf_counter() - t0
    return run.write_stamp("label", summary)


def _label_with_base_prompt(base_recipe: Recipe, recipe: Recipe, data: PreparedData) -> dict[str, Any]:
    """With a prompt search: where the teacher's test labels under the hand-written prompt are (labelled
    now when ``prompt_search.evaluate_base_on_test``), so the report can set them beside the chosen prompt's."""
    base = base_recipe.model_copy(update={"prompt_search": None})
    run = RunDir(recipe)
    info: dict[str, Any] = {"search": str(run.search.relative_to(run.root)),
                            "chosen_is_hand_written": base.prompt == recipe.prompt,
                            "base_teacher": None, "base_prompt": None}
    if not base_recipe.prompt_search.evaluate_base_on_test:
        return info
    gc.collect()
    teacher = member_teacher(base, data)
    with LabelStore(run.label_store) as store:
        teacher.label(data.rows("test"), store, desc="teacher, hand-written prompt: test")
    info.update(base_teacher=teacher.identity, base_prompt=teacher.prompt_fingerprint)
    return info


def labels_summary(recipe: Recipe) -> dict[str, Any]:
    """labels_summary.json of the run, checked to belong to the recipe's teacher, prompt and data."""
    run = RunDir(recipe)
    if not run.labels_summary.is_file():
        raise TailorkdError(f"{run.root}: no teacher labels yet; run `tailorkd label` first")
    summary = run.stamp("label")
    if summary is None:
        raise TailorkdError(f"{run.labels_summary}: the teacher labels were made with another teacher, prompt or "
                            "data than the recipe now asks for; run `tailorkd label` again")
    return summary


def splits_made(run: RunDir) -> str | None:
    """Which making of the splits the run folder holds (a hash of the prepare stamp, which records the corpus's
    fingerprint too): the label fingerprint covers the recipe's sections, not the corpus's input files."""
    stamp = run.prepare_stamp
    return hashlib.sha256(stamp.read_bytes()).hexdigest()[:16] if stamp.is_file() else None


def local_teacher_weights(recipe: Recipe) -> dict[str, str]:
    """{model: fingerprint of its weights} of the recipe's teachers whose weights are files here (the main one
    and the ensemble's members; their kind's ``TeacherKind.weights``): the label fingerprint covers the recipe,
    not the weights a path holds. A local teacher's key is its model, another kind's ``kind:model``."""
    from tailorkd.teachers import get_teacher_kind

    members = recipe.teacher.ensemble.members if recipe.teacher.ensemble is not None else []
    found = {}
    for config in (recipe.teacher, *members):
        fingerprint = get_teacher_kind(config.kind).weights_fingerprint(config.model)
        if fingerprint is not None:
            found[config.model if config.kind == "local" else f"{config.kind}:{config.model}"] = fingerprint
    return found


def labels_are_current(recipe: Recipe) -> bool:
    """Whether the label stage's files were made for this recipe: its summary, and the calibration, ensemble
    and teacher check the recipe asks for (none of them after a fallback to the seed classifier)."""
    if recipe.prompt_search is not None and search_record(recipe) is None:
        return False
    recipe = resolve_prompt(recipe)
    run = RunDir(recipe)
    summary = run.stamp("label")
    if summary is None:
        return False
    if recipe.teacher.check is not None and load_teacher_check(recipe) is None:
        return False
    if summary.get("splits") != splits_made(run):
        return False  # the splits were made again (e.g. a corpus input added): new pool texts to label
    if summary.get("teacher_weights") != local_teacher_weights(recipe):
        return False  # new weights saved where a local teacher's were: its labels are made afresh
    if summary.get("fallback"):
        return True
    return ((recipe.teacher.calibration is None or run.stamp("label", run.calibration) is not None)
            and (recipe.teacher.ensemble is None or ensemble_record(recipe) is not None))


def teacher_records(recipe: Recipe, data: PreparedData, split: str, calibrated: bool = True, combined: bool = True
                    ) -> tuple[Sequence[dict[str, Any]], np.ndarray, np.ndarray]:
    """The rows of ``split`` with the teacher's stored [N, M] probabilities (calibrated as the recipe asks,
    unless ``calibrated`` is False; the ensemble's combination when the recipe has one, unless ``combined``
    is False: then the main teacher's own) and per-text seconds. The label stage must be done. After a fallback
    (the teacher check's, see labels_summary.json) the seed classifier's distributions, as they are.

    A text the teacher abstained on (listed in labels_summary.json) gets a row of NaN probabilities and NaN
    seconds; any other text without a label is an error.
    """
    run = RunDir(recipe)
    summary = labels_summary(recipe)
    rows = data.rows(split)
    names = recipe.task.label_names
    fallback = summary.get("fallback")
    if fallback:  # the seed classifier labelled in the teacher's place: its distributions as they are
        calibrated = combined = False
    identity, fingerprint = ((fallback["identity"], fallback["prompt"]) if fallback
                             else (summary["teacher"], summary["prompt"]["fingerprint"]))
    with LabelStore(run.label_store) as store:
        if recipe.teacher.ensemble is not None and combined:
            probs, seconds, members = ensemble_probs(recipe, rows, store, calibrated)
            seconds = np.where(np.isnan(probs).any(axis=1), math.nan, seconds)
            own = members[0]  # the main teacher's
        else:
            own, seconds = stored_probs(store, identity, fingerprint, rows, names)
            calibration = load_calibration(recipe) if calibrated else None
            probs = own if calibration is None else calibration.apply(own)
    abstained = set(summary.get("abstained", {}).get(split, []))
    missing = [rows[int(i)]["id"] for i in np.flatnonzero(np.isnan(own).any(axis=1))]
    missing = [i for i in missing if i not in abstained]
    if missing:
        raise TailorkdError(f"{run.label_store}: {len(missing)} {split} texts have no teacher label "
                            f"(e.g. {missing[:3]}); rerun `tailorkd label`")
    return rows, probs, seconds


def teacher_hidden_states(recipe: Recipe, rows: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """The teacher's stored pooled hidden states of ``rows``, {layer: [N, H]}, for the hidden-state loss."""
    from tailorkd.hidden_states import HiddenStateReader

    run = RunDir(recipe)
    summary = labels_summary(recipe)
    stored = summary.get("hidden_states")
    if not stored:
        raise TailorkdError(f"{run.labels_summary}: distill.hidden_state_loss needs the teacher's hidden states, "
                            "but the label stage stored none; set teacher.hidden_states in the recipe and run "
                            "`tailorkd label` again")
    layers = recipe.distill.hidden_state_loss.teacher_layers or stored["layers"]
    with LabelStore(run.label_store) as store:
        reader = HiddenStateReader(store, stored["teacher_key"], summary["prompt"]["fingerprint"])
        return reader.get([text_hash(r["text"]) for r in rows], layers)


register_stage(Stage("label", lambda recipe, force: label(recipe, force=force), requires=("prepare", "prompt_search"),
                     is_current=labels_are_current, command="tailorkd label RECIPE",
                     doc="teacher distributions -> labels.sqlite; calibrate, ensemble"))
