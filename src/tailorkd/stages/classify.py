"""Classify new texts with the run's trained (adaptive-KD) student: label, confidence, severity, probabilities."""

from __future__ import annotations

from typing import Any

from tailorkd import distributed
from tailorkd.prompts import fixed_shots
from tailorkd.run_dir import RunDir
from tailorkd.stages.prepare import load_data
from tailorkd.stages.prompt_search import resolve_prompt


def student_shots(recipe) -> list[dict[str, Any]]:
    """The few-shot examples the run's student was trained and evaluated with (a causal-LM student reads
    them in its prompt; an encoder student ignores them). Empty before distillation."""
    from tailorkd.students import STUDENT_FILE

    recipe = resolve_prompt(recipe)
    if not (RunDir(recipe).student_dir() / STUDENT_FILE).is_file():
        return []
    return fixed_shots(recipe.prompt, load_data(recipe).rows("seed"), recipe.task.label_names, recipe.seed)


@distributed.on_main
def classify(recipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained student's prediction for each row ({"text", optional "id", "title"}): id, label,
    confidence (its probability), severity (from ``recipe.alerts``; "none" without it) and probabilities."""
    from tailorkd.recipe import NO_ALERT
    from tailorkd.students import load_student, predict_probs

    recipe = resolve_prompt(recipe)
    names = recipe.task.label_names
    student = load_student(RunDir(recipe).student_dir(), recipe.task, recipe.prompt, student_shots(recipe),
                           recipe.student)
    probs = predict_probs(student, rows, recipe.evaluation.batch_size, desc="student: classify")
    out = []
    for i, (row, p) in enumerate(zip(rows, probs)):
        best = int(p.argmax())
        confidence = float(p[best])
        out.append({"id": row.get("id", i), "label": names[best], "confidence": confidence,
                    "severity": recipe.alerts.level(names[best], confidence) if recipe.alerts else NO_ALERT,
                    "probabilities": {name: float(v) for name, v in zip(names, p)}})
    return out


@distributed.on_main
def export(recipe, out: str) -> dict[str, Any]:
    """Write the run's trained student to ``out`` as a standalone Hugging Face model folder; returns its
    description (tailorkd.json)."""
    from tailorkd.students import export_student

    recipe = resolve_prompt(recipe)
    return export_student(RunDir(recipe).student_dir(), out, recipe.task, recipe.prompt, student_shots(recipe),
                          recipe.student)
