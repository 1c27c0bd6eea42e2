"""Stage 3, distill: the student learns the teacher's distributions over the pool (``tailorkd.distill``).

Three student systems, each in its own folder of the run: adaptive KD (the recipe's adapter, stages and
losses), and, when the recipe evaluates them, the paper's baselines on the same targets: the untrained
student (method none) and standard KD (every weight trains, one stage, soft targets only). A student is
skipped when its student.json records the fingerprint of the recipe it was trained for; an interrupted
one resumes from its last checkpoint unless ``force``. Under a launcher every process trains (data-parallel,
see tailorkd.distill.trainer) and the main process decides what is up to date.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tailorkd import distributed
from tailorkd.errors import TailorkdError
from tailorkd.prompts import fixed_shots
from tailorkd.run_dir import RunDir
from tailorkd.stages.label import teacher_hidden_states, teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.stages.prompt_search import resolve_prompt

log = logging.getLogger(__name__)


def distill(recipe, force: bool = False) -> Path:
    """Train every student system the recipe evaluates; return the adaptive-KD student's folder."""
    from transformers import set_seed

    from tailorkd.distill import distill_student
    from tailorkd.students import build_student

    engine = distributed.sharding_engine()
    if engine is not None:
        # Checkpoints, stage records and the saved student read whole parameters; sharded ones are not gathered.
        raise TailorkdError(f"distill under {engine}: sharded students are not supported yet; launch with "
                            "configs/accelerate/multi_gpu_ddp.yaml (data-parallel) and adapter.method lora or qlora, "
                            "which fit a 7B or 13B student on one GPU")
    recipe = resolve_prompt(recipe)
    run = RunDir(recipe)
    data = load_data(recipe)
    rows, probs, _ = teacher_records(recipe, data, "pool")
    answered = ~np.isnan(probs).any(axis=1)
    if not answered.all():
        log.info("distill: %d of %d pool texts left out: the teacher abstained on them", (~answered).sum(), len(rows))
        if not answered.any():
            raise TailorkdError(f"{run.root}: the teacher abstained on every pool text; nothing to train on")
        rows, probs = [r for r, ok in zip(rows, answered) if ok], probs[answered]
    shots = fixed_shots(recipe.prompt, data.rows("seed"), recipe.task.label_names, recipe.seed)
    for system, job in student_jobs(recipe).items():
        out = run.student_dir(system)
        fingerprint = run.fingerprint("distill", job)
        if not force and distributed.from_main(is_trained(out, fingerprint)):
            log.info("distill: %s in %s is up to date", system, out)
            continue
        states = teacher_hidden_states(job, rows) if job.distill.hidden_state_loss is not None else None
        set_seed(recipe.seed)
        student = build_student(job.student, job.task, job.prompt, shots, job.adapter.method)
        summary = distill_student(student, rows, probs, job.adapter, job.distill, out, recipe.seed,
                                  info={"recipe_hash": fingerprint, "base_model": job.student.model, "system": system},
                                  teacher_states=states, resume=not force)
        log.info("distill: %s, %d steps in %.1fs, final loss %s -> %s", system, summary["steps"],
                 summary["train_seconds"], summary["train_loss"], out)
        del student
    return run.student_dir("adaptive_kd")


def student_jobs(recipe) -> dict:
    """{student system: the recipe it is trained with}: adaptive KD is the recipe itself; the baselines are
    the recipe with their adapter and distillation settings."""
    jobs = {"adaptive_kd": recipe}
    systems = recipe.evaluation.systems
    if "untrained_student" in systems:
        jobs["untrained_student"] = recipe.model_copy(
            update={"adapter": recipe.adapter.model_copy(update={"method": "none"})})
    if "standard_kd" in systems:
        plain = recipe.distill.model_copy(update={"stages": None, "progressive": None, "hidden_state_loss": None,
                                                  "learning_rate": recipe.distill.standard_kd_learning_rate})
        jobs["standard_kd"] = recipe.model_copy(
            update={"adapter": recipe.adapter.model_copy(update={"method": "full"}), "distill": plain})
    return jobs


def is_trained(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a student trained for ``fingerprint`` in the current training format."""
    from tailorkd.distill.trainer import TRAINING_FORMAT
    from tailorkd.students import STUDENT_FILE, read_student_info

    if not (folder / STUDENT_FILE).is_file():
        return False
    try:
        done = read_student_info(folder)
    except TailorkdError as e:  # cut short by a kill under an older tailorkd: train again rather than trust it
        log.warning("distill: %s; training again", e)
        return False
    return (done.get("recipe_hash") == fingerprint
            and done.get("summary", {}).get("training_format") == TRAINING_FORMAT)
