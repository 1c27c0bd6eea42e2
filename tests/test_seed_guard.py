"""The seed guard: the run ships the best of its candidates judged by cross-fitting on the seeds, never a
collapsed one, and says why in one line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from helpers import TOPICS, ScriptedTeacher, make_recipe, scripted
from tailorkd.candidates import CandidateKind, get_candidate, register_candidate, unregister_candidate
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.guard_stats import choose, collapse_reasons, guard_folds, paired_comparison, weak_teacher_veto
from tailorkd.recipe import load_recipe
from tailorkd.recipe.distill import SeedGuardConfig
from tailorkd.run_dir import RunDir
from tailorkd.stages.distill import distill
from tailorkd.stages.evaluate import evaluate
from tailorkd.stages.guard_candidates import SeedOnlyCandidate
from tailorkd.stages.label import label
from tailorkd.stages.prepare import prepare
from tailorkd.students import load_student, predict_probs, read_student_info

# A teacher that names two of the five topics wrong (each as the next topic) and the others right.
HALF_WRONG = {t: TOPICS[(i + 1) % len(TOPICS)] if i < 2 else t for i, t in enumerate(TOPICS)}


LEARNS = {"epochs": 10, "learning_rate": 5e-3, "warmup_ratio": 0.0}  # the tiny student learns its teacher's topics


def guarded_run(tmp_path, tiny_models, teacher, on_worse="choose", distill_settings=LEARNS, weak_teacher="judge"):
    """A tiny run labelled by ``teacher(recipe)``, whose guard weighs the adaptive-KD student against the seed-only
    classifier (SetFit is left to its own tests: minutes of training); cross-fitting decides even when the teacher
    check finds the teacher weak, unless ``weak_teacher`` is seeds_only."""
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                        "check": {"pool_sample": 4, "on_failure": "warn"}},
                       distill={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, **(distill_settings or {}),
                                "seed_guard": {"on_worse": on_worse, "candidates": ["adaptive_kd", "seed_only"],
                                               "weak_teacher": weak_teacher}},
                       adapter={"method": "full"}, evaluation={"systems": ["teacher", "adaptive_kd", "seed_only"]})
    recipe = load_recipe(path)
    prepare(recipe)
    label(recipe, teacher=teacher(recipe))
    return recipe


def wrong_teacher(recipe):
    return scripted(recipe, lambda text: next(HALF_WRONG[t] for t in TOPICS if t in text))


class UniformTeacher(ScriptedTeacher):
    """Every class equally likely for every text: a teacher that knows nothing."""

    def score_states(self, rows, bar=None, hidden_layers=(), pooling="last"):
        if bar is not None:
            bar.update(len(rows))
        return np.full((len(rows), len(TOPICS)), 1 / len(TOPICS)), np.full(len(rows), 1e-3), {}


def uniform_teacher(recipe):
    from tailorkd.prompts import fixed_shots
    from tailorkd.stages.prepare import load_data

    shots = fixed_shots(recipe.prompt, load_data(recipe).rows("seed"), TOPICS, recipe.seed)
    return UniformTeacher(recipe.teacher, recipe.task, recipe.prompt, shots)


def test_a_student_taught_wrong_labels_loses_to_the_seeds_clearly_and_the_seed_only_student_ships(
        tmp_path, tiny_models, capsys):
    recipe = guarded_run(tmp_path, tiny_models, wrong_teacher)
    run = RunDir(recipe)
    shipped = distill(recipe)
    guard = json.loads(run.seed_guard.read_text())
    assert guard["shipped"] == guard["choice"] == "seed_only" and guard["why"] == "clear_win"
    assert shipped == run.student_dir("seed_only") == run.student_dir()  # classify, export, serve, signals
    # Judged by cross-fitting: every seed by models refitted without it, paired on the same seeds.
    assert guard["folds"]["k"] == 2 and guard["folds"]["judged_seeds"] == 10
    # What cross-fitting cost, kept with the fold predictions so that a guard deciding again still reports it.
    made = guard["seconds"]["cross_fitting_when_made"]
    assert set(made) == {"adaptive_kd", "seed_only"} and all(v >= 0 for v in made.values())
    folds_file = json.loads((run.root / "students" / "guard" / "seed_only.folds.json").read_text())
    assert set(folds_file["seconds"]) == {"0", "1"}
    assert sum(folds_file["seconds"].values()) == pytest.approx(made["seed_only"], abs=0.01)
    adaptive, seed_only = guard["candidates"]["adaptive_kd"], guard["candidates"]["seed_only"]
    assert seed_only["judgement"]["macro_f1"] > adaptive["judgement"]["macro_f1"]
    assert guard["comparisons"]["seed_only"]["probability_better"] >= 0.9
    assert set(adaptive["predicted"]) == set(guard["seed_labels"]) and not adaptive["collapsed"]
    assert guard["teacher_worth"]["with_teacher"] == "adaptive_kd" and guard["teacher_worth"]["macro_f1_difference"] < 0
    assert guard["reason"].startswith("The seed-only classifier (logistic regression on your seeds) ships: "
                                      "cross-fitted on 10 seeds")
    assert "the teacher did not help" in guard["reason"] or "the teacher's worth is unclear" in guard["reason"]
    # The shipped seeds-only model is an ordinary student: it loads and answers; its confidence was fitted on
    # its cross-fitted predictions.
    info = read_student_info(shipped)
    assert info["system"] == "seed_only" and info["adapter_method"] == "full"
    student = load_student(shipped, recipe.task, recipe.prompt, [], recipe.student)
    probs = predict_probs(student, [{"text": "News item 3 about politics: the politics story of the day."}], 4)
    assert probs.shape == (1, len(TOPICS)) and np.isclose(probs.sum(), 1)
    confidence = json.loads((shipped / "confidence.json").read_text())
    assert confidence["n"] == 10 and "cross-fitted" in confidence["fitted_on"]
    # The guard's choice is tied to the adaptive-KD student it judged.
    adaptive_file = run.student_dir("adaptive_kd") / "student.json"
    adaptive_file.write_text(adaptive_file.read_text() + " ")
    assert run.student_dir() == run.student_dir("adaptive_kd") and run.seed_guard_record() is None
    adaptive_file.write_text(adaptive_file.read_text()[:-1])
    # The report measures what ships and gives the reason in one line.
    report = evaluate(recipe)
    assert list(report["systems"]) == ["teacher", "adaptive_kd", "shipped", "seed_only"]
    assert report["seed_guard"]["reason"] == guard["reason"]
    text = run.report_md.read_text()
    assert "## Seed guard" in text and f"**{guard['reason']}.**" in text
    assert "| the seed-only classifier (logistic regression on your seeds) (shipped) | seeds |" in text
    # The end of `tailorkd distill` says it too; a rerun trains nothing and decides the same.
    assert main(["distill", str(tmp_path / "recipe.yaml")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("students/seed_only")
    assert f"seed guard: {guard['reason']}" in captured.err


def test_a_weak_teachers_student_never_ships_over_a_seeds_only_candidate(tmp_path, tiny_models):
    recipe = guarded_run(tmp_path, tiny_models, wrong_teacher, weak_teacher="seeds_only")
    run = RunDir(recipe)
    check = json.loads(run.teacher_check.read_text())
    assert check["verdict"] == "weak", check["reasons"]  # two of five topics named wrong
    # adaptive KD first in the preference order, yet the seed-only classifier ships, whatever cross-fitting says
    assert distill(recipe) == run.student_dir("seed_only")
    guard = json.loads(run.seed_guard.read_text())
    assert guard["shipped"] == "seed_only" and guard["why"] == "weak_teacher"
    assert set(guard["vetoed"]) == {"adaptive_kd"} and "judgement" in guard["candidates"]["adaptive_kd"]
    assert guard["reason"].startswith("The seed-only classifier (logistic regression on your seeds) ships: the teacher "
                                      f"check found the teacher WEAK on your seeds ({check['reasons'][0]}), so no "
                                      "student of it alone ships")
    assert "on this task the teacher" in guard["reason"]  # its worth is still stated
    evaluate(recipe)
    text = run.report_md.read_text()
    assert f"**{guard['reason']}.**" in text
    assert "| the adaptive-KD student | teacher | " in text and "barred: the teacher check did not find" in text


def test_the_weak_teacher_veto_bars_the_teacher_only_students_while_one_that_learns_the_seeds_is_left():
    kinds = ["adaptive_kd", "standard_kd", "joint_kd", "setfit"]
    teacher_only = {n: get_candidate(n).teacher_only for n in kinds}
    assert teacher_only == {"adaptive_kd": True, "standard_kd": True, "joint_kd": False, "setfit": False}
    weak = {"verdict": "weak", "reasons": ["weak: seed accuracy 48% [28, 68] does not clear chance"]}
    assert set(weak_teacher_veto(weak, teacher_only)) == {"adaptive_kd", "standard_kd"}
    assert "WEAK on your seeds (weak: seed accuracy 48%" in weak_teacher_veto(weak, teacher_only)["adaptive_kd"]
    assert set(weak_teacher_veto({"verdict": "collapsed", "reasons": []}, teacher_only)) == {"adaptive_kd",
                                                                                            "standard_kd"}
    assert weak_teacher_veto({"verdict": "ok", "reasons": []}, teacher_only) == {}
    assert weak_teacher_veto(None, teacher_only) == {}  # no check in the recipe
    assert weak_teacher_veto(weak, {"adaptive_kd": True}) == {}  # nothing that learns the seeds is usable


def test_a_collapsed_student_never_ships_even_when_preferred(tmp_path, tiny_models):
    recipe = guarded_run(tmp_path, tiny_models, uniform_teacher,
                         distill_settings=LEARNS)
    run = RunDir(recipe)
    assert distill(recipe) == run.student_dir("seed_only")
    guard = json.loads(run.seed_guard.read_text())
    collapsed = guard["candidates"]["adaptive_kd"]["collapsed"]
    assert any(reason.startswith("near-uniform outputs") for reason in collapsed), collapsed
    assert guard["shipped"] == "seed_only" and guard["why"] == "default"
    assert "adaptive KD collapsed (near-uniform outputs" in guard["reason"]
    # warn ships the adaptive-KD student only when it did not collapse.
    warned = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={
        "seed_guard": recipe.distill.seed_guard.model_copy(update={"on_worse": "warn"})})})
    assert distill(warned) == run.student_dir("seed_only")


def test_stop_ends_the_run_with_the_reason_and_warn_ships_the_student(tmp_path, tiny_models, caplog):
    caplog.set_level(logging.INFO, logger="tailorkd.stages.seed_guard")
    recipe = guarded_run(tmp_path, tiny_models, wrong_teacher, on_worse="stop")
    with pytest.raises(TailorkdError, match=r"seed_guard.json: The seed-only classifier .* ships: cross-fitted on "
                                            r"10 seeds .*; the run stops \(distill.seed_guard.on_worse: stop\)"):
        distill(recipe)
    run = RunDir(recipe)
    stopped = json.loads(run.seed_guard.read_text())
    assert stopped["choice"] == "seed_only" and stopped["shipped"] is None and run.seed_guard_record() is None
    warned = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={
        "seed_guard": recipe.distill.seed_guard.model_copy(update={"on_worse": "warn"})})})
    assert distill(warned) == run.student_dir("adaptive_kd")  # trained already: only the guard decides again
    assert "the adaptive-KD student ships anyway" in caplog.text
    # Another choice rule refits nothing: the candidates' cross-fitted predictions made before are read back.
    assert caplog.text.count("2 of 2 folds predicted before are reused") == 2
    assert json.loads(run.seed_guard.read_text())["shipped"] == "adaptive_kd"
    # No guard: no record, and the adaptive-KD student ships.
    unguarded = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"seed_guard": None})})
    assert distill(unguarded) == run.student_dir("adaptive_kd") and not run.seed_guard.exists()


def test_the_guard_settings_are_checked_and_the_old_self_train_means_choose():
    assert SeedGuardConfig(on_worse="self_train").on_worse == "choose"
    assert SeedGuardConfig().candidates == ["joint_kd", "setfit", "adaptive_kd", "standard_kd", "seed_only"]
    assert SeedGuardConfig().weak_teacher == "seeds_only"
    with pytest.raises(ValueError, match=r"unknown candidates \['self_trained'\]"):
        SeedGuardConfig(candidates=["adaptive_kd", "self_trained"])
    with pytest.raises(ValueError, match="listed twice"):
        SeedGuardConfig(candidates=["seed_only", "seed_only"])


# -- the statistics it decides with --------------------------------------------------------------------------

def test_collapse_reasons_name_each_sign_and_pass_a_model_that_learned():
    rng = np.random.default_rng(0)
    learned = rng.dirichlet([0.3] * 3, size=200)
    assert collapse_reasons(learned, train_loss=0.4) == []
    flat = np.full((200, 3), 1 / 3) + rng.normal(0, 0.002, size=(200, 3))
    flat /= flat.sum(axis=1, keepdims=True)
    assert collapse_reasons(flat)[0].startswith("near-uniform outputs (mean top probability 0.33")
    one_class = np.tile([0.1, 0.8, 0.1], (200, 1))
    assert collapse_reasons(one_class) == ["one class for 200 of 200 texts"]
    assert collapse_reasons(learned, train_loss=float(np.log(3)) + 1e-4)[0].startswith("training loss 1.0987 at ln 3")
    assert collapse_reasons(learned, temperature_at_bound=20.0) == [
        "confidence temperature at the bound of its search (20)"]
    assert collapse_reasons(one_class[:10]) == []  # too few texts to call it
    # A classifier fitted to hard labels is flat by its regularisation, not collapsed; one class is still collapse.
    assert collapse_reasons(flat, soft_targets=False) == []
    assert collapse_reasons(one_class, soft_targets=False) == ["one class for 200 of 200 texts"]


def test_choose_keeps_the_first_choice_unless_another_wins_clearly_and_never_a_collapsed_one():
    estimates = {"a": {"macro_f1": 0.6}, "b": {"macro_f1": 0.7}, "c": {"macro_f1": 0.9}}
    close = {"b": {"probability_better": 0.7}, "c": {"probability_better": 0.8}}
    assert choose(estimates, close, {}, ["a", "b", "c"], 0.9) == ("a", "default")
    clear = {"b": {"probability_better": 0.95}, "c": {"probability_better": 0.99}}
    assert choose(estimates, clear, {}, ["a", "b", "c"], 0.9) == ("c", "clear_win")
    # The best estimate collapsed: never chosen, whatever its numbers.
    assert choose(estimates, clear, {"c": ["near-uniform outputs"]}, ["a", "b", "c"], 0.9) == ("b", "clear_win")
    assert choose(estimates, {}, {"a": ["one class"]}, ["a", "b", "c"], 0.9) == ("b", "default")
    with pytest.raises(ValueError, match="every candidate collapsed"):
        choose(estimates, {}, {n: ["x"] for n in "abc"}, ["a", "b", "c"], 0.9)
    # A challenger less fitted on the seeds than the default wins under cross-fitting's bias: its win does not
    # count; one fitted on them as much or more may still replace it.
    dependence = {"a": 1, "b": 0, "c": 2}
    assert choose(estimates, clear, {}, ["a", "b", "c"], 0.9, dependence) == ("c", "clear_win")
    assert choose(estimates, {"b": clear["b"]}, {}, ["a", "b", "c"], 0.9, dependence) == ("a", "default")
    assert [get_candidate(n).seed_dependence for n in ("adaptive_kd", "joint_kd", "setfit")] == [0, 1, 2]


def test_paired_comparison_draws_the_same_seeds_for_both():
    truth = ["x", "y", "z"] * 6
    same = paired_comparison(truth, truth, truth, ["x", "y", "z"], seed=0)
    assert same["macro_f1_difference"] == 0 and same["probability_better"] == 0.5
    wrong = ["y", "z", "x"] * 6
    better = paired_comparison(truth, truth, wrong, ["x", "y", "z"], seed=0)
    assert better["macro_f1_difference"] == 1.0 and better["probability_better"] == 1.0
    assert better["interval"]["low"] > 0.9 and better["accuracy_difference"] == 1.0
    one_off = truth[:-1] + ["x"]
    small = paired_comparison(truth, truth, one_off, ["x", "y", "z"], seed=0)
    assert 0 < small["macro_f1_difference"] < 0.1 and 0.5 < small["probability_better"] < 0.9
    with pytest.raises(ValueError, match="the same seeds"):
        paired_comparison(truth, truth[:-1], truth, ["x", "y", "z"], seed=0)


def test_guard_folds_are_stratified_and_never_judge_a_single_seed_class():
    labels = ["a"] * 7 + ["b"] * 7 + ["c"] * 7 + ["d"]
    folds = guard_folds(labels, 3, seed=1)
    assert len(folds) == 3
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(21))  # every seed of a class with two or more, once; never the lone "d"
    for train, test in folds:
        assert 21 in train and not set(train) & set(test)
        assert sorted(labels[i] for i in test).count("a") in (2, 3)
    assert len(guard_folds(["a", "a", "b", "b"], 3, seed=1)) == 2  # no more folds than the smallest class has seeds
    assert guard_folds(["a", "a", "b"], 3, seed=1) == []


def test_setfit_is_a_candidate_written_as_a_student_and_judged_by_refits(tmp_path, tiny_models):
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       distill={"batch_size": 8, **LEARNS,
                                "seed_guard": {"candidates": ["setfit", "adaptive_kd", "joint_kd"], "folds": 2,
                                               "weak_teacher": "judge"}},
                       adapter={"method": "full"},
                       evaluation={"systems": ["teacher", "adaptive_kd"], "seed_only_encoder": str(tiny_models["bert"]),
                                   "setfit_iterations": 1})
    recipe = load_recipe(path)
    prepare(recipe)
    label(recipe, teacher=wrong_teacher(recipe))
    run = RunDir(recipe)
    distill(recipe)
    guard = json.loads(run.seed_guard.read_text())
    setfit = guard["candidates"]["setfit"]
    assert setfit["uses_teacher"] is False and setfit["judgement"]["n"] == 10
    assert all(p in TOPICS for p in setfit["predicted"].values())  # each seed by a SetFit fitted without it
    info = read_student_info(run.student_dir("setfit"))
    assert info["system"] == "setfit" and info["summary"]["settings"]["iterations"] == 1
    assert "cross-fitted" in json.loads((run.student_dir("setfit") / "confidence.json").read_text())["fitted_on"]
    # Joint KD: the adaptive-KD student trained on the teacher's and SetFit's targets together, judged by refits
    # of both; its confidence fitted on those (SetFit saw every seed).
    joint = guard["candidates"]["joint_kd"]
    assert joint["uses_teacher"] is True and joint["judgement"]["n"] == 10 and not joint["collapsed"]
    info = read_student_info(run.student_dir("joint_kd"))
    assert info["system"] == "joint_kd" and info["summary"]["steps"] > 0
    assert "cross-fitted" in json.loads((run.student_dir("joint_kd") / "confidence.json").read_text())["fitted_on"]
    assert not list((run.root / "students" / "guard").glob("joint_kd-fold*"))  # fold students kept as predictions
    # The first choice ships unless another wins clearly; the teacher's worth is stated either way.
    assert guard["shipped"] == "setfit" if guard["why"] == "default" else guard["why"] == "clear_win"
    assert guard["teacher_worth"]["seeds_alone"] == "setfit" and "on this task the teacher" in guard["reason"]
    # A rerun with the same settings is current: nothing is fitted again; the SetFit baseline of the evaluation is
    # the guard's SetFit student, not a second training; joint KD is evaluated as the student it is.
    written = [(run.student_dir(s) / "student.json").stat().st_mtime_ns for s in ("setfit", "joint_kd")]
    assert main(["run", path, "evaluation.systems=[teacher,adaptive_kd,setfit,joint_kd]"]) == 0
    assert [(run.student_dir(s) / "student.json").stat().st_mtime_ns for s in ("setfit", "joint_kd")] == written
    report = json.loads(run.report_json.read_text())
    assert "the seed guard's candidate" in report["systems"]["setfit"]["model"]
    assert report["systems"]["joint_kd"]["metrics"]["macro_f1"] is not None
    with pytest.raises(TailorkdError, match=r"evaluation.systems lists \['joint_kd'\], which the seed guard trains"):
        load_recipe(path, ["distill.seed_guard.candidates=[setfit,adaptive_kd]", "evaluation.systems=[joint_kd]"])


class RidgeCandidate(SeedOnlyCandidate):
    """A toy candidate registered from outside: the seed-only classifier under another name and settings."""

    def settings(self, recipe):
        return {**super().settings(recipe), "method": "toy"}


def test_a_registered_candidate_is_trained_judged_and_may_ship(tmp_path, tiny_models):
    register_candidate(CandidateKind("toy", "a toy seeds-only classifier", False, "test_seed_guard:RidgeCandidate"))
    try:
        recipe = guarded_run(tmp_path, tiny_models, wrong_teacher)
        recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={
            "seed_guard": SeedGuardConfig(candidates=["toy", "adaptive_kd"])})})
        run = RunDir(recipe)
        assert distill(recipe) == run.student_dir("toy") == run.root / "students" / "toy"
        guard = json.loads(run.seed_guard.read_text())
        assert guard["candidates"]["toy"]["judgement"]["n"] == 10 and guard["shipped"] == "toy"
        assert read_student_info(run.student_dir("toy"))["summary"]["settings"]["method"] == "toy"
    finally:
        unregister_candidate("toy")
    with pytest.raises(ValueError, match="unknown candidates"):
        SeedGuardConfig(candidates=["toy"])
