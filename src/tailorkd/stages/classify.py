"""Classify new texts with the run's trained (adaptive-KD) student: label, confidence, severity, probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tailorkd import distributed
from tailorkd.data.splits import frame_rows
from tailorkd.prompts import fixed_shots
from tailorkd.run_dir import RunDir
from tailorkd.stages.prepare import load_split
from tailorkd.stages.prompt_search import resolve_prompt

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe


def student_shots(recipe: Recipe) -> list[dict[str, Any]]:
    """The few-shot examples the run's student was trained and evaluated with (a causal-LM student reads
    them in its prompt; an encoder student ignores them). Empty before distillation."""
    from tailorkd.students import STUDENT_FILE

    recipe = resolve_prompt(recipe)
    if not (RunDir(recipe).student_dir() / STUDENT_FILE).is_file():
        return []
    return fixed_shots(recipe.prompt, frame_rows(load_split(recipe, "seed")), recipe.task.label_names, recipe.seed)


@distributed.on_main
def classify(recipe: Recipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained student's prediction for each row ({"text", optional "id", "title"}): id, label,
    confidence (its probability, calibrated by the student's fitted temperature), severity (from
    ``recipe.alerts``; "none" without it) and probabilities."""
    from tailorkd.recipe import NO_ALERT
    from tailorkd.students import load_student, predict_probs, student_temperature

    recipe = resolve_prompt(recipe)
    names = recipe.task.label_names
    folder = RunDir(recipe).student_dir()
    student = load_student(folder, recipe.task, recipe.prompt, student_shots(recipe), recipe.student)
    probs = predict_probs(student, rows, recipe.evaluation.batch_size, desc="student: classify",
                          temperature=student_temperature(folder))
    out = []
    for i, (row, p) in enumerate(zip(rows, probs)):
        best = int(p.argmax())
        confidence = float(p[best])
        out.append({"id": row.get("id", i), "label": names[best], "confidence": confidence,
                    "severity": recipe.alerts.level(names[best], confidence) if recipe.alerts else NO_ALERT,
                    "probabilities": {name: float(v) for name, v in zip(names, p)}})
    return out


@distributed.on_main
def export(recipe: Recipe, out: str, check_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the run's trained student to ``out`` as a standalone model folder (Hugging Face, and for an encoder
    also sentence-transformers and ONNX fp32 / int8, checked against the PyTorch student on ``check_rows``, by
    default the run's test texts) with a model card; returns its description (tailorkd.json)."""
    from tailorkd.files import read_json
    from tailorkd.students import export_student

    recipe = resolve_prompt(recipe)
    run_dir = RunDir(recipe)
    source = "given texts"
    if check_rows is None:
        check_rows, source = frame_rows(load_split(recipe, "test")), "the run's test split"
    teacher = recipe.teacher
    members = [m.model for m in (teacher.ensemble.members if teacher.ensemble else [])]
    if teacher.ensemble and teacher.ensemble.seed_classifier:
        seed_classifier = teacher.ensemble.seed_classifier
        members.append(f"a classifier fitted on the seeds ({seed_classifier.method.replace('_', ' ')}, "
                       f"{seed_classifier.encoder})")
    splits = recipe.data.splits
    sources = ", ".join(f"{getattr(s, 'kind', 'file')}" + (f" ({s.path})" if getattr(s, "path", None) else "")
                        for s in recipe.data.sources)
    card = {
        "name": recipe.name,
        "task": recipe.task.name,
        "base_model": recipe.student.model,
        "teacher": teacher.model + (f" (served: {teacher.server.base_url})" if teacher.server else "")
        + (f", calibrated ({teacher.calibration.method})" if teacher.calibration else "")
        + (f", combined with {', '.join(members)}" if members else ""),
        "data": f"{sources}: {splits.seed_per_class} expert-labelled seeds per class, an unlabelled pool labelled "
                f"by the teacher" + (f" (at most {splits.pool_size} texts)" if splits.pool_size else "")
                + f", {splits.test_size} human-labelled test texts",
        "data_kind": sources,
        "report": read_json(run_dir.report_json, "run report") if run_dir.report_json.is_file() else None,
        "system": "adaptive_kd",
    }
    return export_student(run_dir.student_dir(), out, recipe.task, recipe.prompt, student_shots(recipe),
                          recipe.student, check_rows=check_rows, check_source=source,
                          batch_size=recipe.evaluation.batch_size, card=card,
                          alerts=recipe.alerts.model_dump() if recipe.alerts else None)
