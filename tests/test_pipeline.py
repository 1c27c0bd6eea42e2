"""The whole pipeline and the CLI end to end on tiny random models (seconds, no download)."""

from __future__ import annotations

import functools
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from helpers import TEST_GUARD_CANDIDATES, TOPICS, labels_in_store, make_recipe, shipped_systems
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.evaluation import classification_metrics
from tailorkd.evaluation.metrics import system_metrics
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.stages.label import teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.stages.prompt_search import SeedScorer


@pytest.mark.parametrize("teacher,student", [("llama", "gpt2"), ("opt", "bert"), ("gemma3", "llama")])
def test_cli_run_end_to_end(tiny_models, tmp_path, capsys, teacher, student):
    if teacher not in tiny_models:
        pytest.skip(f"{teacher} not available in this transformers")
    recipe_path = make_recipe(tmp_path, tiny_models[teacher], tiny_models[student])
    assert main(["run", recipe_path]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["schema_version"] == 3
    # The seed guard chose what ships among its candidates by cross-fitting on the seeds, and said why; a
    # seeds-only student that ships is reported too, as it ships.
    guard = report["seed_guard"]
    added = shipped_systems(guard)
    assert guard["shipped"] in TEST_GUARD_CANDIDATES and guard["reason"].split(" ships: ")[1]
    assert list(report["systems"]) == ["teacher", "untrained_student", "standard_kd", "adaptive_kd", *added,
                                       "seed_only"]
    assert set(report["timings_seconds"]) >= {"prepare", "label", "distill", "evaluate", "total"}
    assert (run / "report.md").read_text().startswith("# tailorkd report: tiny")
    assert "| teacher |" in (run / "report.md").read_text()

    # The pool's labels never reach the pipeline; the teacher labelled pool and test, and the 10 seeds for
    # the teacher check (its pool sample is part of the pool), nothing else (the seed guard labels nothing).
    pool = pd.read_feather(run / "data" / "pool.arrow")
    assert "label" not in pool.columns and len(pool) == 60 - 10 - 20
    assert labels_in_store(run) == 30 + 20 + 10

    # Reported metrics are those of the stored predictions.
    for system in report["systems"]:
        frame = pd.read_parquet(run / "predictions" / f"{system}.parquet")
        recomputed = classification_metrics(frame["label"].tolist(), frame["predicted"].tolist(), TOPICS)
        reported = report["systems"][system]["metrics"]
        for key in ("accuracy", "macro_f1", "sensitivity", "specificity"):
            assert reported[key] == pytest.approx(recomputed[key])
        probs = frame[[f"p_{t}" for t in TOPICS]].to_numpy()
        assert probs.sum(1) == pytest.approx(1.0)
        full = system_metrics(frame["label"].tolist(), frame["predicted"].tolist(), frame["confidence"].to_numpy(),
                              TOPICS, seed=3)
        assert reported["intervals"] == full["intervals"]
        assert reported["calibration"]["ece"] == pytest.approx(full["calibration"]["ece"])
        for key in ("accuracy", "macro_f1"):
            assert reported["intervals"][key]["low"] <= reported[key] <= reported["intervals"][key]["high"]
        assert set(report["systems"][system]["cost"]) >= {"texts_per_second", "latency_seconds",
                                                           "trainable_parameters", "peak_training_memory_gb"}
        assert (run / report["figures"]["confusion_matrix"][system]).is_file()
    assert set(report["vs_teacher"]) == {"untrained_student", "standard_kd", "adaptive_kd", "seed_only", *added}
    assert 0 <= report["systems"]["adaptive_kd"]["metrics"]["agreement_with_teacher"] <= 1
    assert report["systems"]["adaptive_kd"]["cost"]["latency_seconds"]["median"] > 0
    student_info = report["systems"]["adaptive_kd"]["training"]
    assert 0 < student_info["parameters"]["trainable"] < student_info["parameters"]["total"]
    # The paper's baselines: standard KD trains every weight, the untrained student none.
    full = report["systems"]["standard_kd"]["training"]["parameters"]
    assert report["systems"]["standard_kd"]["adapter"] == "full" and full["trainable"] == full["total"]
    assert report["systems"]["untrained_student"]["training"]["parameters"]["trainable"] == 0

    # A second run skips what is done: no new labels, no student is retrained.
    stamps = {d: (run / "students" / d / "student.json").stat().st_mtime_ns
              for d in ("adaptive_kd", "untrained", "standard_kd", "seed_only")}
    guard_written = (run / "students" / "seed_guard.json").stat().st_mtime_ns
    assert main(["run", recipe_path]) == 0
    assert labels_in_store(run) == 60 and (run / "students" / "seed_guard.json").stat().st_mtime_ns == guard_written
    assert {d: (run / "students" / d / "student.json").stat().st_mtime_ns for d in stamps} == stamps

    # A changed prompt labels afresh rather than mixing old and new labels, and the old labels are not
    # taken for the new recipe's: distill run alone labels first (the stages' one rule), then trains.
    old_summary = json.loads((run / "labels_summary.json").read_text())
    assert main(["distill", recipe_path, "prompt.instruction=Name the topic."]) == 0
    new_summary = json.loads((run / "labels_summary.json").read_text())
    assert new_summary["prompt"]["fingerprint"] != old_summary["prompt"]["fingerprint"]
    with sqlite3.connect(run / "labels.sqlite") as conn:
        by_prompt = dict(conn.execute("SELECT prompt, COUNT(*) FROM labels GROUP BY prompt").fetchall())
    # pool 30 + test 20 under each prompt (the teacher check's seeds are scored under leave-one-out prompts)
    assert by_prompt[new_summary["prompt"]["fingerprint"]] == by_prompt[old_summary["prompt"]["fingerprint"]] >= 50
    assert (run / "students" / "adaptive_kd" / "student.json").stat().st_mtime_ns != stamps["adaptive_kd"]
    # The label stage is then current: run alone, it labels nothing.
    before = labels_in_store(run)
    assert main(["label", recipe_path, "prompt.instruction=Name the topic."]) == 0
    assert labels_in_store(run) == before


def test_interrupted_labelling_keeps_finished_chunks_and_resumes(tiny_models, tmp_path, monkeypatch):
    # No teacher check: the second scoring call is then the pool's second chunk.
    recipe = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["gpt2"]), ["teacher.check=null"])
    pipeline.prepare(recipe)
    from tailorkd.teachers import local

    calls = {"n": 0}
    real_score = local.LocalTeacher.score_states

    def dying_score(self, rows, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while scoring the second chunk
        return real_score(self, rows, *args, **kwargs)

    monkeypatch.setattr(local.LocalTeacher, "score_states", dying_score)
    monkeypatch.setattr(local, "label_rows", functools.partial(local.label_rows, chunk=8))
    with pytest.raises(KeyboardInterrupt):
        pipeline.label(recipe)
    assert calls["n"] == 2
    assert labels_in_store(tmp_path / "run") == 8  # the first chunk survived
    monkeypatch.setattr(local.LocalTeacher, "score_states", real_score)
    pipeline.label(recipe)
    assert labels_in_store(tmp_path / "run") == 50


def test_label_stage_stores_hidden_states_and_reasons(tiny_models, tmp_path):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                       "hidden_states": {"layers": [-1], "pooling": "mean", "rows_per_shard": 16},
                                       "reasons": {"sample": 5, "max_new_tokens": 5}})
    assert main(["label", recipe_path]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "labels_summary.json").read_text())
    assert summary["hidden_states"]["layers"] == [-1] and summary["pool_reasons"] == 5
    from tailorkd.hidden_states import HiddenStateReader
    from tailorkd.labels import LabelStore, text_hash

    pool = pd.read_feather(run / "data" / "pool.arrow")
    with LabelStore(run / "labels.sqlite") as store:
        reader = HiddenStateReader(store, summary["hidden_states"]["teacher_key"], summary["prompt"]["fingerprint"])
        states = reader.get([text_hash(t) for t in pool["text"]], [-1])[-1]
        assert states.shape == (len(pool), 32) and (states != 0).any()
        with sqlite3.connect(run / "labels.sqlite") as conn:
            assert conn.execute("SELECT COUNT(reason) FROM labels").fetchone()[0] == 5
    # Both options are for a local teacher only.
    bad = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                      teacher_section={"model": "m", "server": {"base_url": "http://127.0.0.1:1/v1"},
                               "hidden_states": {"layers": [-1]}})
    with pytest.raises(Exception, match="hidden_states needs a local teacher"):
        load_recipe(bad)


def test_calibrated_teacher_feeds_student_and_report(tiny_models, tmp_path, capsys):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                               "calibration": {"method": "auto", "domain_samples": 4}})
    assert main(["run", recipe_path]) == 0
    run = tmp_path / "run"
    fitted = json.loads((run / "calibration.json").read_text())
    assert fitted["method"] in ("none", "contextual", "domain", "seed_bias")
    # seeds: 2 per class, 3 of them few-shot examples -> 7 held out judge every method
    assert {c["held_out_seeds"] for c in fitted["details"]["candidates"].values()} == {7}
    assert set(fitted["details"]["pool_predicted_counts"]) == {"before", "after"}
    report = json.loads((run / "report.json").read_text())
    teacher = report["systems"]["teacher"]
    assert teacher["calibration"]["method"] == fitted["method"]
    assert set(teacher["calibration"]["uncalibrated_metrics"]) >= {"accuracy", "macro_f1"}
    assert "## Teacher calibration" in (run / "report.md").read_text()

    # What the student learns from and what the report scores are the calibrated distributions.
    from tailorkd.calibration import Calibration

    recipe = load_recipe(recipe_path)
    data = load_data(recipe)
    _, calibrated, _ = teacher_records(recipe, data, "pool")
    _, raw, _ = teacher_records(recipe, data, "pool", calibrated=False)
    assert fitted.pop("fingerprint") == RunDir(recipe).fingerprint("label")
    np.testing.assert_allclose(calibrated, Calibration.from_dict(fitted).apply(raw))
    frame = pd.read_parquet(run / "predictions" / "teacher.parquet")
    recomputed = classification_metrics(frame["label"].tolist(), frame["predicted"].tolist(), TOPICS)
    assert teacher["metrics"]["accuracy"] == pytest.approx(recomputed["accuracy"])

    # A calibration fitted for another recipe is refused rather than silently applied; `evaluate` run alone
    # for that recipe labels first (the stages' one rule), which fits the calibration it asks for.
    other = load_recipe(recipe_path, ["teacher.calibration.method=contextual"])
    with pytest.raises(TailorkdError, match="run `tailorkd label` again"):
        teacher_records(other, load_data(other), "pool")
    assert main(["evaluate", recipe_path, "teacher.calibration.method=contextual"]) == 0
    refitted = json.loads((run / "calibration.json").read_text())
    assert refitted["method"] == "contextual" and refitted["fingerprint"] == RunDir(other).fingerprint("label")


def test_calibration_on_all_seeds_with_leave_one_out_shots(tiny_models, tmp_path):
    """teacher.calibration.seeds: all: the 3 seeds shown as shots are judged too, each by the prompt with its
    shot swapped for an unused seed of its class: the very scorings the prompt search makes (none repeated),
    and the seed bias is the one fitted on them."""
    from tailorkd.calibration import fit_bias, log_probs

    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                               "calibration": {"method": "seed_bias", "domain_samples": 4,
                                                               "seeds": "all"}})
    assert main(["label", recipe_path]) == 0
    fitted = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert {c["held_out_seeds"] for c in fitted["details"]["candidates"].values()} == {10}  # not 7
    assert fitted["details"]["seeds"] == "all"
    recipe = load_recipe(recipe_path)
    data = load_data(recipe)
    seed_probs, calls, _ = SeedScorer(recipe, data, calibrate=False).probs(recipe.prompt)
    assert calls == 0 and not np.isnan(seed_probs).any()
    y = np.array([TOPICS.index(r["label"]) for r in data.rows("seed")])
    bias = fit_bias(log_probs(seed_probs) - np.array(fitted["log_prior"]), y, fitted["details"]["l2"])
    np.testing.assert_allclose(fitted["bias"], bias, atol=1e-6)


def test_cli_reports_recipe_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noutput_dir: y\nteacher: {model: m, batchsize: 2}\n", encoding="utf-8")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "teacher.batchsize" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_the_setfit_baseline_is_reported_when_listed(tiny_models, tmp_path, monkeypatch):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              evaluation={"systems": ["teacher", "seed_only", "setfit"], "setfit_iterations": 2})
    assert main(["run", recipe_path]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert list(report["systems"])[-2:] == ["seed_only", "setfit"]
    setfit = report["systems"]["setfit"]
    assert setfit["model"].startswith("SetFit: minilm-l6 tuned on pairs of 10 seeds (2 pairs per seed)")
    assert setfit["cost"]["training_seconds"] > 0
    frame = pd.read_parquet(run / "predictions" / "setfit.parquet")
    recomputed = classification_metrics(frame["label"].tolist(), frame["predicted"].tolist(), TOPICS)
    assert setfit["metrics"]["macro_f1"] == pytest.approx(recomputed["macro_f1"]) and len(frame) == 20
    assert "**SetFit baseline** (`setfit`)" in (run / "report.md").read_text()

    # Evaluating again (other systems listed) reads both baselines back rather than fitting them anew.
    import tailorkd.evaluation.baselines as baselines
    import tailorkd.evaluation.setfit_baseline as setfit_baseline

    def refit(*args, **kwargs):
        raise AssertionError("a baseline fitted before was fitted again")

    monkeypatch.setattr(setfit_baseline, "setfit_baseline", refit)
    monkeypatch.setattr(baselines, "seed_only_baseline", refit)
    assert main(["evaluate", recipe_path, "evaluation.systems=[seed_only,setfit]"]) == 0
    again = json.loads((run / "report.json").read_text())["systems"]
    for name in ("seed_only", "setfit"):
        assert again[name]["reused"] is True and again[name]["cost"] == report["systems"][name]["cost"]
        assert again[name]["metrics"]["macro_f1"] == report["systems"][name]["metrics"]["macro_f1"]
    # Other baseline settings are another fit: SetFit is fitted anew, the seed-only one is still reused.
    fits = []

    def setfit_fit(seeds, rows, label_names, encoder, seed, iterations):
        fits.append(iterations)
        return {"probs": np.full((len(rows), len(label_names)), 1 / len(label_names)), "seeds": len(seeds),
                "iterations": iterations, "train_seconds": 1.0, "seconds_per_text": 0.01}

    monkeypatch.setattr(setfit_baseline, "setfit_baseline", setfit_fit)
    assert main(["evaluate", recipe_path, "evaluation.setfit_iterations=3"]) == 0
    assert fits == [3]
    third = json.loads((run / "report.json").read_text())["systems"]
    assert "reused" not in third["setfit"] and third["seed_only"]["reused"] is True
    assert json.loads((run / "predictions" / "setfit.json").read_text())["model"].endswith(
        "(3 pairs per seed), logistic-regression head")
    # Not in the default systems: it trains an encoder.
    default = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"]))
    assert "setfit" not in default.evaluation.systems
