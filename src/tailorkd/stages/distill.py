"""Stage 3, distill: the student learns the teacher's distributions over the pool (``tailorkd.distill``).

Three student systems, each in its own folder of the run: adaptive KD (the recipe's adapter, stages and
losses), and, when the recipe evaluates them or its seed guard may ship them, the paper's baselines on the same
targets: the untrained student (method none) and standard KD (every weight trains, one stage, soft targets
only). The seed guard (``stages.seed_guard``) then chooses what ships. A student is
skipped when its student.json records the fingerprint of the recipe it was trained for; an interrupted
one resumes from its last checkpoint unless ``force``. Under a launcher every process trains (data-parallel,
see tailorkd.distill.trainer) and the main process decides what is up to date.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd import distributed
from tailorkd.confidence import confidence_warning  # noqa: F401  (read here before it moved)
from tailorkd.data import PreparedData
from tailorkd.data.pool_rows import take_rows
from tailorkd.distill.trainer import is_trained
from tailorkd.errors import TailorkdError
from tailorkd.prompts import fixed_shots, held_out_seeds
from tailorkd.run_dir import RunDir
from tailorkd.stages.label import teacher_hidden_states, teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.stages.prompt_search import resolve_prompt, search_record
from tailorkd.stages.registry import Stage, register_stage, run_requirements
from tailorkd.stages.seed_guard import guard as seed_guard

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)


def distill(recipe: Recipe, force: bool = False) -> Path:
    """Train every student system the recipe evaluates or its seed guard may ship, then let the guard choose
    what ships (``stages.seed_guard``); return the folder of the student that ships."""
    engine = distributed.sharding_engine()
    if engine is not None:
        # Checkpoints, stage records and the saved student read whole parameters; sharded ones are not gathered.
        raise TailorkdError(f"distill under {engine}: sharded students are not supported yet; launch with "
                            "configs/accelerate/multi_gpu_ddp.yaml (data-parallel) and adapter.method lora or qlora, "
                            "which fit a 7B or 13B student on one GPU")
    run_requirements(recipe, "distill")
    recipe = resolve_prompt(recipe)
    run = RunDir(recipe)
    data = load_data(recipe)
    rows, probs, _ = teacher_records(recipe, data, "pool")
    answered = ~np.isnan(probs).any(axis=1)
    if not answered.all():
        log.info("distill: %d of %d pool texts left out: the teacher abstained on them", (~answered).sum(), len(rows))
        if not answered.any():
            raise TailorkdError(f"{run.root}: the teacher abstained on every pool text; nothing to train on")
        rows, probs = take_rows(rows, np.flatnonzero(answered)), probs[answered]
    shots = fixed_shots(recipe.prompt, data.rows("seed"), recipe.task.label_names, recipe.seed)

    for system, job in student_jobs(recipe).items():
        out = run.student_dir(system)
        train_student(job, system, rows, probs, out, run.fingerprint("distill", job), shots, force=force)
        calibrate_confidence(job, data, out, shots)
    record = seed_guard(recipe, data, rows, probs, shots, train_student, student_jobs(recipe), force=force)
    return run.student_dir(record["shipped"] if record else "adaptive_kd")


def train_student(job: Recipe, system: str, rows: Sequence[dict[str, Any]], targets: np.ndarray, out: Path,
                  fingerprint: str, shots: list[dict[str, Any]], force: bool = False) -> bool:
    """Train student ``system`` as ``job`` describes (adapter, stages, losses) on [N, M] ``targets`` for ``rows`` into
    ``out``, unless ``out`` holds one trained for ``fingerprint``; an interrupted one resumes from its last
    checkpoint unless ``force``. Every process of a launch calls it. Returns whether it trained."""
    from transformers import set_seed

    from tailorkd.distill import distill_student
    from tailorkd.students import build_student

    if not force and distributed.from_main(is_trained(out, fingerprint)):
        log.info("distill: %s in %s is up to date", system, out)
        return False
    states = teacher_hidden_states(job, rows) if job.distill.hidden_state_loss is not None else None
    set_seed(job.seed)
    student = build_student(job.student, job.task, job.prompt, shots, job.adapter.method)
    summary = distill_student(student, rows, targets, job.adapter, job.distill, out, job.seed,
                              info={"recipe_hash": fingerprint, "base_model": job.student.model, "system": system},
                              teacher_states=states, resume=not force)
    log.info("distill: %s, %d steps in %.1fs, final loss %s -> %s", system, summary["steps"],
             summary["train_seconds"], summary["train_loss"], out)
    return True


@distributed.on_main
def calibrate_confidence(recipe: Recipe, data: PreparedData, folder: Path, shots: list[dict[str, Any]]
                         ) -> dict[str, Any]:
    """Fit the temperature of the trained student in ``folder`` on the expert seeds it has not seen (all of
    them for an encoder; those not shown as few-shot examples for a causal LM) and write confidence.json
    (``tailorkd.confidence``). Skipped when confidence.json was fitted for this very student.json."""
    from tailorkd.confidence import fit_temperature
    from tailorkd.students import CONFIDENCE_FILE, load_student, predict_probs, student_file_hash

    path = folder / CONFIDENCE_FILE
    student_file = student_file_hash(folder)
    done = RunDir(recipe).read_json_if_exists(path, "student confidence calibration")
    if isinstance(done, dict) and done.get("student_file") == student_file:
        return done
    names = recipe.task.label_names
    student = load_student(folder, recipe.task, recipe.prompt, shots, recipe.student)
    seeds = data.rows("seed") if student.kind == "encoder" else held_out_seeds(
        recipe.prompt, data.rows("seed"), names, recipe.seed)
    record: dict[str, Any] = {"student_file": student_file, "fitted_on": "expert seeds the student never saw",
                              "method": "temperature scaling, Laplace-smoothed targets"}
    if len(seeds) < len(names):
        log.warning("distill: %s: only %d seeds are not shown to the student as examples; its confidence stays "
                    "uncalibrated (temperature 1)", folder, len(seeds))
        record.update(temperature=1.0, n=len(seeds), reason=f"fewer held-out seeds than classes ({len(seeds)})")
    else:
        probs = predict_probs(student, seeds, recipe.evaluation.batch_size, desc="student: seeds")
        record.update(fit_temperature(probs, np.array([names.index(r["label"]) for r in seeds])))
        warning = confidence_warning(record)
        if warning:
            record["warning"] = warning
            log.warning("distill: %s: %s", folder, warning)
        log.info("distill: %s: confidence temperature %.3f on %d seeds (mean confidence %.2f -> %.2f, seed accuracy "
                 "%.2f)", folder.name, record["temperature"], record["n"], record["mean_confidence_before"],
                 record["mean_confidence_after"], record["accuracy"])
    RunDir(recipe).write_json(path, record)
    return record


def student_jobs(recipe: Recipe) -> dict[str, Recipe]:
    """{student system: the recipe it is trained with}: adaptive KD is the recipe itself; the baselines are
    the recipe with their adapter and distillation settings."""
    from tailorkd.adapters import adapter_config

    jobs = {"adaptive_kd": recipe}
    guard = recipe.distill.seed_guard
    systems = [*recipe.evaluation.systems, *(guard.candidates if guard is not None else [])]
    if "untrained_student" in systems:
        jobs["untrained_student"] = recipe.model_copy(update={"adapter": adapter_config("none")})
    if "standard_kd" in systems:
        plain = recipe.distill.model_copy(update={"stages": None, "progressive": None, "hidden_state_loss": None,
                                                  "learning_rate": recipe.distill.standard_kd_learning_rate})
        jobs["standard_kd"] = recipe.model_copy(
            update={"adapter": adapter_config("full"), "distill": plain})
    return jobs


def students_are_current(recipe: Recipe) -> bool:
    """Whether every student system the recipe trains is trained for it (its confidence fitted), and the seed
    guard, when the recipe has one, chose among them as the recipe's guard settings say (its own candidates'
    folders are judged by its record)."""
    from tailorkd.stages.seed_guard import guard_is_current
    from tailorkd.students import CONFIDENCE_FILE, student_file_hash

    if recipe.prompt_search is not None and search_record(recipe) is None:
        return False
    recipe = resolve_prompt(recipe)
    run = RunDir(recipe)
    for system, job in student_jobs(recipe).items():
        folder = run.student_dir(system)
        if not is_trained(folder, run.fingerprint("distill", job)):
            return False
        confidence = run.read_json_if_exists(folder / CONFIDENCE_FILE, "student confidence calibration")
        if not isinstance(confidence, dict) or confidence.get("student_file") != student_file_hash(folder):
            return False
    if recipe.distill.seed_guard is None:
        return not run.seed_guard.is_file()
    return guard_is_current(recipe)


register_stage(Stage("distill", lambda recipe, force: distill(recipe, force), requires=("label",),
                     is_current=students_are_current, command="tailorkd distill RECIPE",
                     doc="students/<system>/ learn the teacher's distributions"))
