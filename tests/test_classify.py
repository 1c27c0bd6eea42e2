"""Severity levels (recipe `alerts:`) and `tailorkd classify` on a tiny trained student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import TOPICS, make_recipe, shipped_predictions
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.recipe import NO_ALERT, AlertsConfig, load_recipe
from tailorkd.run_dir import STAGE_INPUTS, RunDir

REPO = Path(__file__).resolve().parents[1]
CRISIS = REPO / "recipes" / "crisis-signals" / "smollm2-135m-instruct_to_minilm-l6_lora.yaml"


def test_severity_levels_by_descending_thresholds():
    alerts = AlertsConfig(severity={"risk": [[0.8, "high"], [0.5, "medium"], [0, "low"]],
                                    "caution": [[0.7, "medium"]]})
    assert [alerts.level("risk", c) for c in (0.95, 0.8, 0.79, 0.5, 0.2, 0.0)] == \
        ["high", "high", "medium", "medium", "low", "low"]
    # Below the last threshold, a label not listed, or no confidence (an abstention): no alert.
    assert alerts.level("caution", 0.69) == NO_ALERT == "none"
    assert alerts.level("caution", 0.7) == "medium"
    assert alerts.level("safe", 1.0) == "none"
    assert alerts.level("risk", float("nan")) == "none"


@pytest.mark.parametrize("rules,message", [
    ([[0.5, "medium"], [0.8, "high"]], "strictly descend"),
    ([[0.5, "medium"], [0.5, "low"]], "strictly descend"),
    ([[1.5, "high"]], r"in \[0, 1\]"),
    ([], "at least one"),
    ([[0.5, " "]], "level name is empty"),
])
def test_severity_validation(rules, message):
    with pytest.raises(ValueError, match=message):
        AlertsConfig(severity={"risk": rules})


def test_recipe_alerts_section_is_validated_and_leaves_other_hashes_alone(tmp_path):
    raw = yaml.safe_load(CRISIS.read_text())
    raw["alerts"] = {"severity": {"danger": [[0.5, "high"]]}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(TailorkdError, match=r"alerts.severity names labels the task does not have: \['danger'\]"):
        load_recipe(bad)
    raw["alerts"] = {"severity": {"risk": [[0.5, "high"], [0.7, "medium"]]}}
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(TailorkdError, match=r"alerts.severity: .*risk: thresholds must strictly descend"):
        load_recipe(bad)

    # With alerts, only the whole-recipe hash moves: no stage (data, labels, student) sees the section.
    crisis = load_recipe(CRISIS)
    without = crisis.model_copy(update={"alerts": None})
    for stage in STAGE_INPUTS:
        assert RunDir(crisis).fingerprint(stage) == RunDir(without).fingerprint(stage)
    assert crisis.content_hash() != without.content_hash()
    assert crisis.task.model_dump() == without.task.model_dump()


def test_shipped_crisis_recipe_has_default_severity():
    alerts = load_recipe(CRISIS).alerts
    assert alerts is not None
    assert [alerts.level("risk", c) for c in (0.9, 0.6, 0.4)] == ["high", "medium", "low"]
    assert [alerts.level("caution", c) for c in (0.9, 0.4)] == ["medium", "low"]
    assert alerts.level("safe", 0.99) == "none"


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("classify")
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              evaluation={"systems": ["teacher", "adaptive_kd"]},
                              alerts={"severity": {"business": [[0.4, "high"], [0.0, "low"]], "tech": [[0.0, "low"]]}})
    assert main(["run", recipe_path]) == 0
    return tmp_path, recipe_path


def test_classify_matches_the_evaluated_student(trained, capsys):
    tmp_path, recipe_path = trained
    run = tmp_path / "run"
    recipe = load_recipe(recipe_path)
    test = pd.read_parquet(run / "data" / "test.parquet")
    # The student that ships: the seed guard's choice, measured as it ships.
    shipped = shipped_predictions(json.loads((run / "report.json").read_text()))
    evaluated = pd.read_parquet(run / "predictions" / f"{shipped}.parquet").set_index("id")
    inputs = tmp_path / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n\n" for _, r in test.iterrows()))
    out = tmp_path / "predicted.jsonl"
    capsys.readouterr()
    assert main(["classify", recipe_path, "--input", str(inputs), "--output", str(out)]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(predictions) == len(test) and "predictions ->" in capsys.readouterr().err
    for p in predictions:
        assert set(p) == {"id", "label", "confidence", "severity", "probabilities"}
        probs = np.array([p["probabilities"][t] for t in TOPICS])
        assert probs.sum() == pytest.approx(1.0)
        assert p["label"] == TOPICS[int(probs.argmax())] and p["confidence"] == pytest.approx(probs.max())
        assert p["severity"] == recipe.alerts.level(p["label"], p["confidence"])
        # The same student as `evaluate` scored, so the same probabilities for the same text.
        row = evaluated.loc[p["id"]]
        np.testing.assert_allclose(probs, [row[f"p_{t}"] for t in TOPICS], atol=1e-5)
        assert row["severity"] == p["severity"]


def test_classify_texts_from_the_command_line(trained, capsys):
    _, recipe_path = trained
    capsys.readouterr()
    assert main(["classify", recipe_path, "--text", "Shares rose on the market.", "--text", "The team won."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["text-0", "text-1"]
    assert all(json.loads(line)["label"] in TOPICS for line in lines)


def test_classify_refuses_bad_input(trained, tmp_path, capsys):
    _, recipe_path = trained
    assert main(["classify", recipe_path]) == 2
    assert "either with --text or with --input" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    assert main(["classify", recipe_path, "--input", str(bad)]) == 2
    assert f"{bad}:2: expected an object with a non-empty string \"text\"" in capsys.readouterr().err
    bad.write_text('{"text": "fine"}\nnot json\n')
    assert main(["classify", recipe_path, "--input", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["classify", recipe_path, "--input", str(tmp_path / "missing.jsonl")]) == 2
    assert "input file not found" in capsys.readouterr().err
