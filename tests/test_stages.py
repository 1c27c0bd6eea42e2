"""The stage contract: every stage declares what it requires, RunDir stamps it and says whether it is current,
and one rule (run what is missing, skip what is current) holds for every stage, a plug-in's too."""

from __future__ import annotations

import json
import logging

import pytest

from helpers import make_recipe
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import STAGE_INPUTS, STAMP_FILES, RunDir
from tailorkd.stages import Stage, get_stage, register_stage, stage_order, unregister_stage
from tailorkd.stages.label import labels_summary, teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.stages.registry import is_current

BUILT_IN = ["corpus", "prepare", "prompt_search", "label", "distill", "evaluate"]


def test_the_built_in_stages_are_registered_in_an_order_they_can_run_in():
    names = [stage.name for stage in stage_order()]
    assert names[:len(BUILT_IN)] == BUILT_IN
    for position, stage in enumerate(stage_order()):
        assert all(names.index(required) < position for required in stage.requires), stage.name
    assert get_stage("distill").requires == ("label",)
    assert get_stage("label").requires == ("prepare", "prompt_search")


def test_registering_needs_known_requirements_and_a_new_name():
    with pytest.raises(ValueError, match="unregistered"):
        register_stage(Stage("orphan", lambda recipe, force: None, requires=("no_such_stage",)))
    with pytest.raises(ValueError, match="already registered"):
        register_stage(Stage("label", lambda recipe, force: None))
    with pytest.raises(ValueError, match="required by"):
        unregister_stage("label")


class LabelCounts:
    """A toy stage as a plug-in would write it: the teacher's predicted classes on the pool, counted, in
    label_counts.json; it requires the label stage and is stamped by RunDir like every stage."""

    name = "label_counts"

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, recipe, force: bool = False) -> dict[str, int]:
        from tailorkd.stages.registry import run_requirements

        run_requirements(recipe, self.name)
        run = RunDir(recipe)
        if not force and run.stamp(self.name) is not None:
            return run.stamp(self.name)["counts"]
        self.calls.append(force)
        names = recipe.task.label_names
        _, probs, _ = teacher_records(recipe, load_data(recipe), "pool")
        counts = {name: int((probs.argmax(1) == i).sum()) for i, name in enumerate(names)}
        run.write_stamp(self.name, {"counts": counts})
        return counts


@pytest.fixture
def label_counts():
    stage = LabelCounts()
    register_stage(Stage(stage.name, stage, requires=("label",), stamp_file="label_counts.json",
                         inputs={"data": frozenset(), "task": frozenset(), "seed": frozenset(),
                                 "prompt": frozenset(), "teacher": frozenset()}))
    yield stage
    unregister_stage(stage.name)
    assert stage.name not in STAGE_INPUTS and stage.name not in STAMP_FILES


def test_a_new_stage_is_one_registration_and_follows_the_rule(tiny_models, tmp_path, label_counts, caplog):
    recipe = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]))
    run = RunDir(recipe)
    assert [s.name for s in stage_order()][-1] == "label_counts"
    assert not is_current(recipe, "label_counts") and not is_current(recipe, "label")

    # Run alone on an empty run folder: what it requires (prepare, then label) runs first.
    caplog.set_level(logging.INFO, logger="tailorkd")
    counts = label_counts(recipe)
    assert "label_counts needs prepare first" in caplog.text and "label_counts needs label first" in caplog.text
    assert is_current(recipe, "prepare") and is_current(recipe, "label") and is_current(recipe, "label_counts")
    assert sum(counts.values()) == labels_summary(recipe)["pool_labelled"] == 30
    stamp = json.loads((run.root / "label_counts.json").read_text())
    assert stamp["fingerprint"] == run.fingerprint("label_counts") and stamp["counts"] == counts
    assert label_counts.calls == [False]

    # Current: skipped, requirements included; forced: redone, requirements not.
    summary_time = run.labels_summary.stat().st_mtime_ns
    assert label_counts(recipe) == counts and label_counts.calls == [False]
    label_counts(recipe, force=True)
    assert label_counts.calls == [False, True] and run.labels_summary.stat().st_mtime_ns == summary_time

    # An input it covers changes: no longer current, and neither is the label stage it requires.
    changed = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]), ["teacher.batch_size=2"])
    assert not is_current(changed, "label_counts") and not is_current(changed, "label")
    assert is_current(changed, "prepare")
    # One it does not cover (the student) leaves it current.
    other_student = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]),
                                ["student.max_length=64"])
    assert is_current(other_student, "label_counts")


def test_run_runs_a_registered_stage_and_skips_what_is_current(tiny_models, tmp_path, label_counts):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              evaluation={"systems": ["teacher", "adaptive_kd"]})
    recipe = load_recipe(recipe_path)
    report = pipeline.run(recipe)
    assert label_counts.calls == [False]
    assert {"prepare", "label", "label_counts", "distill"} <= set(report["timings_seconds"])
    assert all(is_current(recipe, name) for name in ("prepare", "label", "label_counts", "distill"))
    # A second run finds every stage current: only the evaluation runs.
    again = pipeline.run(recipe)
    assert set(again["timings_seconds"]) == {"evaluate", "total"}
    assert label_counts.calls == [False]
    # --force redoes every stage, the label stage too (its check, calibration and summary; the teacher's
    # stored distributions are reused).
    summary_time = RunDir(recipe).labels_summary.stat().st_mtime_ns
    forced = pipeline.run(recipe, force=True)
    assert {"prepare", "label", "label_counts", "distill"} <= set(forced["timings_seconds"])
    assert label_counts.calls == [False, True]
    assert RunDir(recipe).labels_summary.stat().st_mtime_ns > summary_time


def test_a_later_stage_run_alone_runs_what_it_requires(tiny_models, tmp_path, capsys):
    """`tailorkd evaluate` on a run folder with only its splits labels and distils first, as `tailorkd label`
    prepares first: one rule for every stage."""
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["gpt2"],
                              evaluation={"systems": ["teacher", "adaptive_kd"]})
    assert main(["prepare", recipe_path]) == 0
    recipe = load_recipe(recipe_path)
    assert not is_current(recipe, "label") and not is_current(recipe, "distill")
    assert main(["evaluate", recipe_path]) == 0
    assert is_current(recipe, "label") and is_current(recipe, "distill")
    report = json.loads((RunDir(recipe).report_json).read_text())
    assert list(report["systems"])[:2] == ["teacher", "adaptive_kd"]


def test_stamps_written_before_run_dir_owned_them_stay_current(tiny_models, tmp_path):
    """A stamp whose fingerprint stands under the key older tailorkd wrote ("recipe_hash") is read like one
    under "fingerprint": current when it matches, stale when it does not."""
    recipe = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]))
    pipeline.label(recipe)
    run = RunDir(recipe)
    summary = json.loads(run.labels_summary.read_text())
    summary["recipe_hash"] = summary.pop("fingerprint")
    run.write_json(run.labels_summary, summary)
    assert is_current(recipe, "label")
    summary["recipe_hash"] = "0" * 16
    run.write_json(run.labels_summary, summary)
    assert not is_current(recipe, "label")


def test_splits_made_again_make_the_labels_stale(tiny_models, tmp_path):
    """The label fingerprint covers the recipe's sections; splits made again from other corpus inputs (the same
    sections) hold new pool texts, so the label stage must run again rather than be skipped."""
    recipe = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]))
    pipeline.label(recipe)
    assert is_current(recipe, "label")
    run = RunDir(recipe)
    stamp = json.loads(run.prepare_stamp.read_text())
    run.write_json(run.prepare_stamp, {**stamp, "corpus": "another-corpus-build"})
    assert not is_current(recipe, "label")
