"""A student's confidence calibrated by one temperature fitted on the seeds it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_recipe, shipped_predictions
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.confidence import apply_temperature, fit_temperature
from tailorkd.evaluation.metrics import expected_calibration_error
from tailorkd.recipe import load_recipe
from tailorkd.students import CONFIDENCE_FILE, student_temperature


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 4))
    true_t = 2.5
    labels = np.array([rng.choice(4, p=p) for p in _softmax(logits / true_t)])
    fit = fit_temperature(_softmax(logits), labels)
    assert fit["temperature"] == pytest.approx(true_t, rel=0.08)
    assert fit["nll_after"] < fit["nll_before"]
    calibrated = apply_temperature(_softmax(logits), fit["temperature"])
    correct = calibrated.argmax(1) == labels
    before = expected_calibration_error(correct, _softmax(logits).max(1))["ece"]
    after = expected_calibration_error(correct, calibrated.max(1))["ece"]
    assert after < 0.03 < before


def test_an_underconfident_student_is_sharpened_without_changing_its_answers():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=200)
    logits = rng.normal(size=(200, 5))
    logits[np.arange(200), labels] += 2.0  # right ~85% of the time...
    flat = _softmax(logits / 6.0)  # ...but answers with probabilities near 1/5, as a distilled student does
    fit = fit_temperature(flat, labels)
    assert fit["temperature"] < 0.5 and fit["mean_confidence_after"] > fit["mean_confidence_before"] + 0.3
    assert (apply_temperature(flat, fit["temperature"]).argmax(1) == flat.argmax(1)).all()
    assert np.allclose(apply_temperature(flat, 1.0), flat)


def test_seeds_all_right_do_not_make_the_student_certain():
    """20 of 20 seeds right cannot prove certainty: the smoothed targets stop short of it."""
    labels = np.arange(20) % 5
    probs = np.full((20, 5), 0.15)
    probs[np.arange(20), labels] = 0.4
    fit = fit_temperature(probs, labels)
    assert 0.85 < fit["mean_confidence_after"] < 0.99
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 5)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("student", ["bert", "llama"])
def test_distill_fits_each_students_temperature_and_evaluate_and_classify_use_it(tiny_models, tmp_path, student):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models[student])
    assert main(["run", recipe_path]) == 0
    run = tmp_path / "run"
    recipe = load_recipe(recipe_path)
    seeds = len(pipeline.load_data(recipe).seed)  # 2 per class
    for folder in ("adaptive_kd", "untrained", "standard_kd"):
        fitted = json.loads((run / "students" / folder / CONFIDENCE_FILE).read_text())
        assert fitted["temperature"] > 0
        # an encoder never sees the seeds; a causal LM is judged on those not shown as its 3 examples
        assert fitted["n"] == (seeds if student == "bert" else seeds - 3)

    report = json.loads((run / "report.json").read_text())
    block = report["systems"]["adaptive_kd"]["confidence"]
    assert block["temperature"] == pytest.approx(student_temperature(run / "students" / "adaptive_kd"))
    assert 0 <= block["uncalibrated_ece"] <= 1
    assert "## Student confidence" in (run / "report.md").read_text()

    # classify gives the calibrated confidence of the student that ships (the seed guard's choice): the reported
    # predictions are the same texts' answers
    import pandas as pd

    frame = pd.read_parquet(run / "predictions" / f"{shipped_predictions(report)}.parquet")
    rows = pipeline.load_data(recipe).rows("test")[:4]
    answers = pipeline.classify(recipe, rows)
    by_id = frame.set_index("id")
    for row, answer in zip(rows, answers):
        assert answer["label"] == by_id.loc[row["id"], "predicted"]
        assert answer["confidence"] == pytest.approx(by_id.loc[row["id"], "confidence"], abs=1e-5)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0)

    # A retrained student gets a new fit; an untouched one keeps its file.
    kept = (run / "students" / "untrained" / CONFIDENCE_FILE).stat().st_mtime_ns
    before = (run / "students" / "adaptive_kd" / CONFIDENCE_FILE).read_text()
    assert main(["distill", recipe_path]) == 0
    assert (run / "students" / "untrained" / CONFIDENCE_FILE).stat().st_mtime_ns == kept
    assert (run / "students" / "adaptive_kd" / CONFIDENCE_FILE).read_text() == before
    assert main(["distill", recipe_path, "--force"]) == 0
    refit = json.loads((run / "students" / "adaptive_kd" / CONFIDENCE_FILE).read_text())
    assert refit["student_file"] != json.loads(before)["student_file"]


def test_a_damaged_temperature_is_a_one_line_error(tmp_path):
    from tailorkd.errors import TailorkdError

    (tmp_path / CONFIDENCE_FILE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(TailorkdError, match="temperature must be a positive number"):
        student_temperature(tmp_path)
    assert student_temperature(tmp_path / "missing") == 1.0
    (tmp_path / "student.json").write_text("{}")
    (tmp_path / CONFIDENCE_FILE).write_text(json.dumps({"temperature": 0.5, "student_file": "0123456789abcdef"}))
    with pytest.raises(TailorkdError, match="retrained since"):
        student_temperature(tmp_path)
    (tmp_path / CONFIDENCE_FILE).write_text(json.dumps({"temperature": 0.5}))  # written by hand: trusted
    assert student_temperature(tmp_path) == 0.5


def test_a_cut_student_file_is_named_rather_than_its_calibration(tmp_path):
    from tailorkd.errors import TailorkdError

    (tmp_path / "student.json").write_text('{"kind": "encoder", "label_na')  # cut short
    (tmp_path / CONFIDENCE_FILE).write_text(json.dumps({"temperature": 0.5, "student_file": "0123456789abcdef"}))
    with pytest.raises(TailorkdError, match=r"student.json: this student file is not valid JSON"):
        student_temperature(tmp_path)


def test_a_fit_the_seeds_cannot_support_is_flagged():
    from tailorkd.stages.distill import confidence_warning

    labels = np.arange(20) % 5
    probs = np.full((20, 5), 0.15)
    probs[np.arange(20), labels] = 0.4
    assert "answers all 20 seeds right" in confidence_warning(fit_temperature(probs, labels))
    noise = np.full((20, 5), 0.2)  # no information at all: the fit flattens as far as it may
    noise[np.arange(20), (labels + 1) % 5] = 0.2001
    flat = fit_temperature(noise, labels)
    assert flat["temperature"] == pytest.approx(20.0, rel=1e-3)
    assert "reached the bound" in confidence_warning(flat)
    rng = np.random.default_rng(2)
    honest = _softmax(rng.normal(size=(200, 3)) * 2)  # labels drawn from the student's own probabilities
    labels = np.array([rng.choice(3, p=p) for p in honest])
    assert confidence_warning(fit_temperature(honest, labels)) is None
