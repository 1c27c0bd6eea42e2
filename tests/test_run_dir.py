"""The run folder: stage fingerprints, stale splits, atomic writes, clear errors for damaged files, and a
teacher identity that follows its weights."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import labels_in_store, make_recipe
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write, read_json
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import STAGE_INPUTS, RunDir
from tailorkd.stages.prepare import load_data, prepare


def test_each_stage_fingerprint_follows_its_sections_only(tiny_models, tmp_path):
    recipe = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]))
    run = RunDir(recipe)
    changes = {
        "data": "data.splits.test_size=10", "task": "task.description=Another task.", "seed": "seed=4",
        "prompt": "prompt.instruction=Name it.", "teacher": "teacher.batch_size=2",
        "student": "student.max_length=128", "adapter": "adapter.r=8", "distill": "distill.epochs=2",
    }
    for section, override in changes.items():
        changed = RunDir(load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]), [override]))
        for stage, sections in STAGE_INPUTS.items():
            same = changed.fingerprint(stage) == run.fingerprint(stage)
            assert same == (section not in sections), (section, stage)
    # The prompt search is judged by the teacher that scores, not by what is done with its labels later.
    calibrated = RunDir(load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]),
                                    ["teacher.calibration={method: domain}"]))
    assert calibrated.fingerprint("prompt_search") == run.fingerprint("prompt_search")
    assert calibrated.fingerprint("label") != run.fingerprint("label")
    # A seeds-only baseline is fitted again only when its own settings change, not the systems listed.
    for override, moved in (("evaluation.setfit_iterations=5", {"setfit"}),
                            ("evaluation.seed_only_encoder=other", {"seed_only", "setfit"}),
                            ("evaluation.systems=[teacher,setfit]", set()), ("evaluation.batch_size=3", set())):
        changed = RunDir(load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]), [override]))
        assert {s for s in STAGE_INPUTS if changed.fingerprint(s) != run.fingerprint(s)} == moved, override


def test_a_stage_run_alone_after_the_data_changed_prepares_again(tiny_models, tmp_path, caplog):
    """Bug: `tailorkd label` after the recipe's data section changed used the old splits and recorded the
    new hash. Now the splits are made again first, and the log names the changed section."""
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    assert main(["prepare", recipe_path]) == 0
    run = tmp_path / "run"
    assert len(pd.read_parquet(run / "data" / "test.parquet")) == 20
    caplog.set_level(logging.INFO, logger="tailorkd")
    assert main(["label", recipe_path, "data.splits.test_size=10"]) == 0
    assert len(pd.read_parquet(run / "data" / "test.parquet")) == 10
    assert "the recipe's data changed" in caplog.text
    summary = json.loads((run / "labels_summary.json").read_text())
    assert summary["test_labelled"] == 10 and summary["pool_labelled"] == 60 - 10 - 10
    # Unchanged data is not prepared again.
    stamp = (run / "data" / "prepare.json").stat().st_mtime_ns
    load_data(load_recipe(recipe_path, ["data.splits.test_size=10"]))
    assert (run / "data" / "prepare.json").stat().st_mtime_ns == stamp


def test_a_prepare_killed_half_way_is_redone_not_trusted(tiny_models, tmp_path, monkeypatch):
    """Splits of recipe A, then a prepare of recipe B killed after writing some of its splits: the stamp of A
    must not make a rerun of A trust the folder."""
    from tailorkd.data import splits

    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    assert main(["prepare", recipe_path]) == 0
    first = pd.read_parquet(tmp_path / "run" / "data" / "test.parquet")
    real_write = splits.write_parquet

    def killed_at_the_test_split(frame, path):
        if path.name == "test.parquet":
            raise KeyboardInterrupt
        real_write(frame, path)

    monkeypatch.setattr(splits, "write_parquet", killed_at_the_test_split)
    with pytest.raises(KeyboardInterrupt):
        prepare(load_recipe(recipe_path, ["seed=5"]))
    monkeypatch.setattr(splits, "write_parquet", real_write)
    assert main(["prepare", recipe_path]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "data" / "test.parquet"), first)


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "student.json"
    path.write_text('{"done": true}')

    def dies_half_way(tmp):
        tmp.write_text('{"done": fal')  # a kill in the middle of writing
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_half_way)
    assert json.loads(path.read_text()) == {"done": True}
    assert [p.name for p in tmp_path.iterdir()] == ["student.json"]  # no temporary file left behind


def test_a_damaged_json_file_is_a_one_line_error(tiny_models, tmp_path, capsys):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              evaluation={"systems": ["teacher"]})
    assert main(["label", recipe_path]) == 0
    summary = tmp_path / "run" / "labels_summary.json"
    summary.write_text(summary.read_text()[:40])  # cut short, as by a crash or a careless edit
    capsys.readouterr()
    assert main(["evaluate", recipe_path]) == 2
    err = capsys.readouterr().err
    assert "labels_summary.json" in err and "not valid JSON" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(TailorkdError, match="prepare.json"):
        (tmp_path / "run" / "data" / "prepare.json").write_text("{")
        read_json(tmp_path / "run" / "data" / "prepare.json", "prepare stamp")


def test_a_chat_template_the_teacher_lacks_is_a_one_line_error(tiny_models, tmp_path, capsys):
    """prompt.template: chat with a base model used to end in a ValueError traceback."""
    recipe_path = make_recipe(tmp_path, tiny_models["opt"], tiny_models["bert"],
                              prompt={"instruction": "Which topic?", "shots": 3, "template": "chat"})
    assert main(["label", recipe_path]) == 2
    err = capsys.readouterr().err
    assert "prompt.template" in err and "no chat" in err and "Traceback" not in err


def test_new_weights_at_the_same_path_are_labelled_afresh(tiny_models, tmp_path):
    """Bug: a local teacher was known by its path and dtype, so new weights saved there reused old labels."""
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_models["llama"], folder)
    recipe_path = make_recipe(tmp_path, folder, tiny_models["bert"], evaluation={"systems": ["teacher"]})
    assert main(["label", recipe_path]) == 0
    run = tmp_path / "run"
    first = json.loads((run / "labels_summary.json").read_text())["teacher"]
    # pool 30 + test 20 + the teacher check's 10 seeds (its pool sample is part of the pool)
    assert main(["label", recipe_path]) == 0 and labels_in_store(run) == 60  # the same weights: nothing new

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # same shapes, other values: as after further training
    model.save_pretrained(folder)
    assert main(["label", recipe_path]) == 0
    second = json.loads((run / "labels_summary.json").read_text())["teacher"]
    assert second != first and labels_in_store(run) == 120
