"""The teacher judged before it labels the pool: verdicts, what a failed check does, the record and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import TOPICS, make_recipe, scripted
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, text_hash
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.stages.evaluate import evaluate
from tailorkd.stages.label import label, labels_summary, teacher_records
from tailorkd.stages.prepare import load_data, prepare
from tailorkd.stages.teacher_check import judge


def the_topic(text: str) -> str:
    return next(t for t in TOPICS if t in text)


def tiny(tmp_path, tiny_models, **check) -> object:
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4, "check": check},
                       evaluation={"systems": ["teacher", "seed_only"]})
    recipe = load_recipe(path)
    prepare(recipe)
    return recipe


def pool_labels(recipe, teacher) -> int:
    data = load_data(recipe)
    with LabelStore(RunDir(recipe).label_store) as store:
        return len(store.get(teacher.identity, teacher.prompt_fingerprint,
                             [text_hash(r["text"]) for r in data.rows("pool")], TOPICS))


def test_collapsed_teacher_stops_the_run_before_any_pool_text_is_labelled(tmp_path, tiny_models):
    recipe = tiny(tmp_path, tiny_models, on_failure="stop", pool_sample=0)
    teacher = scripted(recipe, lambda text: "sport")
    with pytest.raises(TailorkdError, match=r"teacher_check.json: the teacher is collapsed .*on_failure: stop"):
        label(recipe, teacher=teacher)
    record = json.loads(RunDir(recipe).teacher_check.read_text())
    assert record["verdict"] == "collapsed" and record["seeds"]["raw"]["accuracy"] == pytest.approx(0.2)
    assert record["seeds"]["n"] == len(load_data(recipe).seed)  # every seed, shown ones with their shot swapped
    assert pool_labels(recipe, teacher) == 0 and not RunDir(recipe).labels_summary.exists()


def test_warn_reports_the_collapse_and_goes_on(tmp_path, tiny_models, caplog):
    recipe = tiny(tmp_path, tiny_models, pool_sample=6)
    teacher = scripted(recipe, lambda text: "sport")
    summary = label(recipe, teacher=teacher)
    assert "COLLAPSED" in caplog.text and "remedies" in caplog.text
    record = json.loads(RunDir(recipe).teacher_check.read_text())
    assert record["verdict"] == "collapsed" and record["pool_sample"]["predicted_counts"]["raw"]["sport"] == 6
    assert record["seed_classifier"]["accuracy"] > record["seeds"]["raw"]["accuracy"]
    assert summary["fallback"] is None and summary["pool_labelled"] == len(load_data(recipe).pool)
    # The check's sample is part of the pool labels: nothing is labelled twice.
    assert pool_labels(recipe, teacher) == len(load_data(recipe).pool)
    report = evaluate(recipe)
    assert report["teacher_check"]["verdict"] == "collapsed"
    text = RunDir(recipe).report_md.read_text()
    assert "## Teacher check" in text and "Verdict: **collapsed**" in text and "| teacher, raw |" in text


def test_fallback_lets_the_seed_classifier_label_in_the_teachers_place(tmp_path, tiny_models):
    recipe = tiny(tmp_path, tiny_models, on_failure="fallback", pool_sample=4)
    teacher = scripted(recipe, lambda text: "sport")
    summary = label(recipe, teacher=teacher)
    fallback = summary["fallback"]
    assert fallback["identity"].startswith("seed-classifier|minilm-l6")
    assert pool_labels(recipe, teacher) == 4  # the teacher labelled only the check's sample
    data = load_data(recipe)
    rows, probs, _ = teacher_records(recipe, data, "pool")
    with LabelStore(RunDir(recipe).label_store) as store:
        stored = store.get(fallback["identity"], fallback["prompt"], [text_hash(r["text"]) for r in rows], TOPICS)
    np.testing.assert_allclose(probs, [stored[text_hash(r["text"])].probs for r in rows])
    assert np.mean([TOPICS[i] == the_topic(r["text"]) for i, r in zip(probs.argmax(1), rows)]) > 0.9
    report = evaluate(recipe)
    assert "fallback" in report["systems"]["teacher"]["model"]
    assert "labelled pool and test in the teacher's place" in RunDir(recipe).report_md.read_text()


def test_a_teacher_that_knows_the_task_passes(tmp_path, tiny_models):
    recipe = tiny(tmp_path, tiny_models, on_failure="stop", pool_sample=10)
    summary = label(recipe, teacher=scripted(recipe, the_topic))
    record = json.loads(RunDir(recipe).teacher_check.read_text())
    assert record["verdict"] == "ok" and record["reasons"] == [] and record["seeds"]["raw"]["accuracy"] == 1.0
    assert summary["fallback"] is None and labels_summary(recipe)["pool_labelled"] == len(load_data(recipe).pool)


def test_check_teacher_command_labels_no_more_than_its_sample(tmp_path, tiny_models, capsys):
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                        "check": {"pool_sample": 5}})
    assert main(["check-teacher", path]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["verdict"] in ("ok", "weak", "collapsed") and set(out["pool_sample"]["raw"]) == set(TOPICS)
    run = tmp_path / "run"
    assert (run / "teacher_check.json").is_file() and not (run / "labels_summary.json").exists()
    record = json.loads((run / "teacher_check.json").read_text())
    assert sum(record["pool_sample"]["predicted_counts"]["raw"].values()) == 5


@pytest.mark.parametrize("accuracy, low, seed_only, mix, verdict", [
    (0.9, 0.7, 0.8, {"a": 40, "b": 30, "c": 30}, "ok"),
    (0.5, 0.3, 0.4, {"a": 40, "b": 30, "c": 30}, "weak"),  # the interval does not clear chance
    (0.7, 0.5, 0.9, {"a": 40, "b": 30, "c": 30}, "weak"),  # the seeds alone do better
    (0.9, 0.7, 0.8, {"a": 90, "b": 5, "c": 5}, "collapsed"),  # one class takes the pool sample
])
def test_verdict_rules(accuracy, low, seed_only, mix, verdict):
    judged = {"accuracy": accuracy, "accuracy_interval": {"low": low, "high": 1.0}, "chance": 1 / 3,
              "majority_rate": 1 / 3, "predicted_counts": {"a": 7, "b": 7, "c": 7}}
    got, reasons = judge(judged, mix, {"accuracy": seed_only}, ["a", "b", "c"] * 7, ["a", "b", "c"], 0.8, 0.0)
    assert got == verdict and bool(reasons) == (verdict != "ok")
    # A margin lets a teacher a little below the seed classifier pass.
    if verdict == "weak" and low > 1 / 3:
        assert judge(judged, mix, {"accuracy": seed_only}, ["a", "b", "c"] * 7, ["a", "b", "c"], 0.8, 0.25)[0] == "ok"


def test_check_settings_are_validated_and_members_carry_none(tmp_path, tiny_models):
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    assert load_recipe(path).teacher.check.on_failure == "warn"  # the default: judged, warned
    assert load_recipe(path, ["teacher.check=null"]).teacher.check is None
    with pytest.raises(TailorkdError, match="on_failure"):
        load_recipe(path, ["teacher.check.on_failure=ignore"])
    with pytest.raises(Exception, match="check belong"):
        load_recipe(path, ["teacher.ensemble={members: [{model: x, check: {on_failure: stop}}]}"])
