"""The seed guard: a student the seeds judge worse than the seeds alone does not ship."""

from __future__ import annotations

import json

import pytest

from helpers import make_recipe, scripted
from tailorkd.errors import TailorkdError
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.stages.distill import distill
from tailorkd.stages.evaluate import evaluate
from tailorkd.stages.label import label
from tailorkd.stages.prepare import prepare
from tailorkd.stages.seed_guard import is_worse
from tailorkd.students import read_student_info


def collapsed_run(tmp_path, tiny_models, on_worse: str):
    """A tiny run whose teacher calls every text 'sport' (the teacher check warns and goes on), labelled."""
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                        "check": {"pool_sample": 4, "on_failure": "warn"}},
                       distill={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3,
                                "seed_guard": {"on_worse": on_worse}},
                       evaluation={"systems": ["teacher", "adaptive_kd", "seed_only"]})
    recipe = load_recipe(path)
    prepare(recipe)
    label(recipe, teacher=scripted(recipe, lambda text: "sport"))
    return recipe


def test_a_student_that_learned_a_collapse_is_replaced_by_a_self_trained_one(tmp_path, tiny_models, caplog):
    recipe = collapsed_run(tmp_path, tiny_models, "self_train")
    run = RunDir(recipe)
    shipped = distill(recipe)
    guard = json.loads(run.seed_guard.read_text())
    # The collapsed student answers 'sport' to the seeds; the seed classifier, refitted without each seed, knows.
    assert guard["worse"] and guard["shipped"] == "self_trained" and shipped == run.student_dir("self_trained")
    assert guard["student"]["predicted_counts"]["sport"] >= guard["student"]["n"] - 1
    assert guard["seed_only"]["macro_f1"] > guard["student"]["macro_f1"]
    assert len(guard["seeds"]) == guard["student"]["n"] == guard["seed_only"]["n"] == 10  # all, for an encoder
    assert "seed guard: on 10 seeds it never saw" in caplog.text
    info = read_student_info(shipped)
    assert info["system"] == "self_trained" and guard["self_trained"]["judgement"]["n"] == 10
    assert run.student_dir() == shipped  # classify, export, serve and signals take this one
    # The shipped student is the guard's choice only for the adaptive-KD student it judged.
    adaptive_file = run.student_dir("adaptive_kd") / "student.json"
    adaptive_file.write_text(adaptive_file.read_text() + " ")
    assert run.student_dir() == run.student_dir("adaptive_kd") and run.seed_guard_record() is None
    adaptive_file.write_text(adaptive_file.read_text()[:-1])
    # A rerun trains nothing and decides the same.
    assert distill(recipe) == shipped and json.loads(run.seed_guard.read_text())["shipped"] == "self_trained"
    report = evaluate(recipe)
    assert list(report["systems"]) == ["teacher", "adaptive_kd", "self_trained", "seed_only"]
    assert report["seed_guard"]["shipped"] == "self_trained"
    text = run.report_md.read_text()
    assert "## Seed guard" in text and "Shipped: **self-trained student**." in text
    assert "| adaptive KD student |" in text and "| seed-only classifier (balanced folds) |" in text


def test_stop_ends_the_run_with_the_numbers_and_warn_ships_the_student(tmp_path, tiny_models, caplog):
    recipe = collapsed_run(tmp_path, tiny_models, "stop")
    with pytest.raises(TailorkdError, match=r"seed_guard.json: on 10 seeds it never saw the adaptive-KD student "
                                            r"scores macro-F1 .* below the seed-only classifier's .*on_worse: stop"):
        distill(recipe)
    run = RunDir(recipe)
    assert not run.student_dir("self_trained").exists()
    stopped = json.loads(run.seed_guard.read_text())
    assert stopped["worse"] and stopped["shipped"] is None and run.seed_guard_record() is None
    warned = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={
        "seed_guard": recipe.distill.seed_guard.model_copy(update={"on_worse": "warn"})})})
    assert distill(warned) == run.student_dir("adaptive_kd")  # trained already: only the guard runs again
    assert "the adaptive-KD student ships anyway" in caplog.text
    assert json.loads(run.seed_guard.read_text())["shipped"] == "adaptive_kd"
    # No guard: no record, and the adaptive-KD student ships.
    unguarded = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"seed_guard": None})})
    assert distill(unguarded) == run.student_dir("adaptive_kd") and not run.seed_guard.exists()


def judged(f1: float, accuracy: float) -> dict:
    return {"macro_f1": f1, "accuracy": accuracy}


@pytest.mark.parametrize("student,seed_only,worse", [
    (judged(0.5, 0.6), judged(0.6, 0.5), True),   # macro-F1 decides
    (judged(0.6, 0.5), judged(0.5, 0.6), False),
    (judged(0.5, 0.5), judged(0.5, 0.6), True),   # a tie in macro-F1: accuracy decides
    (judged(0.5, 0.6), judged(0.5, 0.6), False),  # equal: the student ships
    (None, judged(0.5, 0.6), False),              # nothing could judge: no verdict against the student
])
def test_worse_means_below_the_seed_only_classifier(student, seed_only, worse):
    assert is_worse({"student": student, "seed_only": seed_only}) is worse
