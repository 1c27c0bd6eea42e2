"""The report of a tiny run: metrics recomputed from the stored predictions, cost, severity, figures, and
`tailorkd compare` over two runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import TOPICS, make_recipe, shipped_systems
from tailorkd.cli import main
from tailorkd.evaluation.metrics import agreement, system_metrics
from tailorkd.recipe import load_recipe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALERTS = {"severity": {"business": [[0.5, "high"], [0.0, "low"]], "sport": [[0.3, "medium"]]}}


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory):
    """One finished run (llama teacher, bert student, all three systems, alerts) and its recipe path."""
    tmp_path = tmp_path_factory.mktemp("report")
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"], alerts=ALERTS)
    assert main(["run", recipe_path]) == 0
    return tmp_path / "run", recipe_path


def _png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature; the image must also decode."""
    from matplotlib.image import imread

    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE and raw[12:16] == b"IHDR", path
    assert imread(path).ndim == 3
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def test_report_metrics_are_those_of_the_stored_predictions(tiny_run):
    run, recipe_path = tiny_run
    report = json.loads((run / "report.json").read_text())
    assert report["schema_version"] == 3
    # (what the seed guard shipped when it is a seeds-only student; tests/test_seed_guard.py)
    added = shipped_systems(report["seed_guard"])
    assert list(report["systems"]) == ["teacher", "untrained_student", "standard_kd", "adaptive_kd", *added,
                                       "seed_only"]
    frames = {name: pd.read_parquet(run / "predictions" / f"{name}.parquet") for name in report["systems"]}
    for name, frame in frames.items():
        reported = report["systems"][name]["metrics"]
        recomputed = system_metrics(frame["label"].tolist(), frame["predicted"].tolist(),
                                    frame["confidence"].to_numpy(), TOPICS, seed=3)
        for key in ("accuracy", "macro_f1", "sensitivity", "specificity"):
            assert reported[key] == pytest.approx(recomputed[key])
            ci = reported["intervals"][key]
            assert ci == recomputed["intervals"][key] and ci["low"] <= reported[key] <= ci["high"]
        assert reported["calibration"] == recomputed["calibration"]
        assert sum(b["count"] for b in reported["calibration"]["bins"]) == len(frame)
        # The confidence is the top probability; 20 test texts each
        probs = frame[[f"p_{t}" for t in TOPICS]].to_numpy()
        np.testing.assert_allclose(frame["confidence"], probs.max(1))
        if name != "teacher":
            agreed = agreement(frame["predicted"].tolist(), frames["teacher"]["predicted"].tolist(), TOPICS)
            assert reported["agreement_with_teacher"] == pytest.approx(agreed["agreement"])
            assert reported["agreement_with_teacher"] == pytest.approx(
                float((frame["predicted"] == frames["teacher"]["predicted"]).mean()))
            cmp = report["vs_teacher"][name]
            teacher_accuracy = report["systems"]["teacher"]["metrics"]["accuracy"]
            assert cmp["accuracy_ratio"] == pytest.approx(reported["accuracy"] / teacher_accuracy)
    assert "teacher" not in report["vs_teacher"]
    assert set(report["definitions"]) >= {"accuracy", "macro_f1", "ece", "confidence_interval", "latency"}


def test_report_cost_block(tiny_run):
    run, _ = tiny_run
    report = json.loads((run / "report.json").read_text())
    teacher, student, seed_only = (report["systems"][k]["cost"] for k in ("teacher", "adaptive_kd", "seed_only"))
    for cost in (teacher, student, seed_only):
        assert cost["texts_per_second"] > 0
    # The teacher's latency is from its stored per-text seconds; p95 >= median.
    assert 0 < teacher["latency_seconds"]["median"] <= teacher["latency_seconds"]["p95"]
    assert 0 < student["latency_seconds"]["median"] <= student["latency_seconds"]["p95"]
    training = report["systems"]["adaptive_kd"]["training"]
    assert student["trainable_parameters"] == training["parameters"]["trainable"] > 0
    assert student["training_seconds"] == training["train_seconds"] > 0
    assert student["peak_training_memory_gb"] > 0
    assert teacher["trainable_parameters"] is None and seed_only["latency_seconds"] is None


def test_report_severity_follows_the_alerts_mapping(tiny_run):
    run, recipe_path = tiny_run
    recipe = load_recipe(recipe_path)
    report = json.loads((run / "report.json").read_text())
    for name in report["systems"]:
        frame = pd.read_parquet(run / "predictions" / f"{name}.parquet")
        assert frame["severity"].tolist() == [recipe.alerts.level(p, c) for p, c in
                                              zip(frame["predicted"], frame["confidence"])]
        counts = report["systems"][name]["severity_counts"]
        assert sum(sum(row.values()) for row in counts.values()) == len(frame)
        assert set(counts) <= {"high", "low", "medium", "none"}
        for level, row in counts.items():
            assert row == {t: int(((frame["severity"] == level) & (frame["label"] == t)).sum()) for t in TOPICS}
    assert "## Alert severity" in (run / "report.md").read_text()


def test_report_markdown_tables_and_figures(tiny_run):
    run, _ = tiny_run
    report = json.loads((run / "report.json").read_text())
    md = (run / "report.md").read_text()
    assert "## Quality on the human-labelled test set (Table 2)" in md and "## Cost (Table 3)" in md
    teacher = report["systems"]["teacher"]["metrics"]
    ci = teacher["intervals"]["accuracy"]
    assert f"| {100 * teacher['accuracy']:.2f} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}] |" in md
    assert "## Versions" in md and "- matplotlib " in md and "## Recipe" in md
    figures = report["figures"]
    paths = [*figures["confusion_matrix"].values(), figures["reliability"], figures["cost_quality"]]
    # a confusion matrix per system (5, and the seed guard's self-trained student), the reliability diagram,
    # cost vs quality
    assert len(paths) == len(report["systems"]) + 2 and len(report["systems"]) in (5, 6)
    for rel in paths:
        assert rel.startswith("figures/") and f"({rel})" in md
        width, height = _png_size(run / rel)
        assert width > 200 and height > 200


def test_compare_two_runs(tiny_run, tmp_path, capsys):
    run, recipe_path = tiny_run
    # A second run: the same labels and student, evaluated on two systems only.
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    (other / "report.json").unlink()
    assert main(["evaluate", recipe_path, f"output_dir={other}", "evaluation.systems=[teacher,seed_only]"]) == 0
    capsys.readouterr()
    out_md = tmp_path / "compare.md"
    assert main(["compare", str(run), str(other), "--output", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert printed == out_md.read_text()
    header, rule, *rows = printed.splitlines()
    assert header.startswith("| run | system | accuracy [95% CI] | macro-F1 [95% CI] | texts/s |")
    assert rule.startswith("|---")
    # Systems by the paper's names; the student that ships is always reported (a seeds-only one the seed guard
    # chose as "shipped student").
    added = ["shipped student"] if shipped_systems(json.loads((run / "report.json").read_text())["seed_guard"]) \
        else []
    assert [r.split(" | ")[:2] for r in rows] == [["| run", s] for s in (
        "teacher", "untrained student", "standard KD", "adaptive KD", *added, "seed-only baseline")] + [
        ["| other-run", s] for s in ("teacher", *added, "seed-only baseline")]
    first = json.loads((run / "report.json").read_text())["systems"]["adaptive_kd"]
    m, ci = first["metrics"], first["metrics"]["intervals"]["macro_f1"]
    assert (f"| {100 * m['macro_f1']:.2f} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}] | "
            f"{first['cost']['texts_per_second']:.1f} | {first['cost']['trainable_parameters']:,} |") in rows[3]

    # A folder without a report, and a report of an unknown schema, are named in the error.
    assert main(["compare", str(run), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "no report.json" in err
    payload = json.loads((other / "report.json").read_text())
    (other / "report.json").write_text(json.dumps({**payload, "schema_version": 99}))
    assert main(["compare", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other / "report.json") in err and "schema_version 99" in err


def test_report_scores_each_language_when_the_test_set_has_several():
    import pandas as pd

    from tailorkd.evaluation.assemble import by_language

    ids = [str(i) for i in range(14)]
    test = pd.DataFrame({"id": ids, "language": ["en"] * 10 + ["it", "it", "fr", None]})
    frame = pd.DataFrame({"id": ids, "label": ["a", "b"] * 5 + ["a", "b", "a", "b"],
                          "predicted": ["a"] * 10 + ["a", "a", "a", "b"]})
    languages = by_language(test, {"student": frame}, ["a", "b"])
    assert languages["en"]["n"] == 10 and languages["en"]["student"]["accuracy"] == 0.5
    # Languages with fewer than 5 test texts are scored together.
    assert list(languages) == ["en", "other (fr, it, unknown)"]
    assert languages["other (fr, it, unknown)"] == {"n": 4, "student": {"accuracy": 0.75, "macro_f1": pytest.approx(
        0.7333333333)}}
    assert by_language(test.assign(language="en"), {"student": frame}, ["a", "b"]) is None
    assert by_language(test.drop(columns="language"), {"student": frame}, ["a", "b"]) is None
