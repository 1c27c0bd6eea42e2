"""Metrics against hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tailorkd.evaluation import classification_metrics
from tailorkd.evaluation.metrics import (
    HEADLINE,
    agreement,
    bootstrap_intervals,
    expected_calibration_error,
    headline_from_counts,
    one_hot,
    system_metrics,
)


def test_metrics_match_hand_computation():
    truth = ["a", "a", "b", "b", "c", "c"]
    pred = ["a", "b", "b", "b", "c", "a"]
    m = classification_metrics(truth, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall a=1/2, b=1, c=1/2 ; specificity a=3/4, b=3/4, c=4/4
    assert m["sensitivity"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["specificity"] == pytest.approx((0.75 + 0.75 + 1) / 3)
    f1 = {"a": 2 * 0.5 * 0.5 / 1.0, "b": 2 * (2 / 3) * 1 / (2 / 3 + 1), "c": 2 * 1 * 0.5 / 1.5}
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["support"] == 2 and m["predicted_counts"] == {"a": 2, "b": 3, "c": 1}


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError):
        classification_metrics(["a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics([], [], ["a"])


# -- bootstrap intervals, calibration, agreement ----------------------------------------------------------


def _noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    truth = list(rng.choice(["a", "b", "c"], n))
    pred = [t if rng.random() < accuracy else str(rng.choice(["a", "b", "c", "(abstained)"])) for t in truth]
    return truth, pred


def test_vectorised_counts_equal_sklearn_metrics_with_abstentions_and_unseen_classes():
    # The bootstrap computes the metrics from resample multiplicities; a row of ones must give exactly what
    # classification_metrics (scikit-learn) gives, abstentions and a never-seen class "d" included.
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    for _ in range(100):
        n = int(rng.integers(1, 30))
        truth = list(rng.choice(labels[:3], n))
        pred = list(rng.choice(labels + ["(abstained)"], n))
        expected = classification_metrics(truth, pred, labels)
        got = headline_from_counts(np.ones((1, n)), one_hot(truth, labels), one_hot(pred, labels))
        for key in HEADLINE:
            assert got[key][0] == pytest.approx(expected[key], abs=1e-12), key


def test_bootstrap_interval_contains_estimate_is_seeded_and_shrinks_with_n():
    widths = []
    for n in (50, 800):
        truth, pred = _noisy_predictions(n, 0.7, seed=n)
        point = classification_metrics(truth, pred, ["a", "b", "c"])
        ci = bootstrap_intervals(truth, pred, ["a", "b", "c"], resamples=1000, seed=5)
        for key in HEADLINE:
            assert ci[key]["low"] <= point[key] <= ci[key]["high"], key
        widths.append({k: ci[k]["high"] - ci[k]["low"] for k in ("accuracy", "macro_f1")})
        assert ci == bootstrap_intervals(truth, pred, ["a", "b", "c"], resamples=1000, seed=5)
        assert ci != bootstrap_intervals(truth, pred, ["a", "b", "c"], resamples=1000, seed=6)
    # The standard error falls as 1/sqrt(n): 16x the texts, about a quarter of the width.
    for key in ("accuracy", "macro_f1"):
        assert widths[1][key] < 0.5 * widths[0][key]
    # Chunking the resamples (bounded memory) draws the same resamples.
    truth, pred = _noisy_predictions(120, 0.6, seed=1)
    assert bootstrap_intervals(truth, pred, ["a", "b", "c"], seed=2) == \
        bootstrap_intervals(truth, pred, ["a", "b", "c"], seed=2, max_cells=1000)


def test_bootstrap_of_a_perfect_system_is_a_point_and_bad_input_is_refused():
    ci = bootstrap_intervals(["a", "b", "a"], ["a", "b", "a"], ["a", "b"], resamples=200, seed=0)
    assert ci["accuracy"] == {"low": 1.0, "high": 1.0}
    with pytest.raises(ValueError):
        bootstrap_intervals([], [], ["a"])
    with pytest.raises(ValueError):
        bootstrap_intervals(["a"], ["a"], ["a"], resamples=0)


def test_ece_is_zero_when_calibrated_and_positive_when_over_confident():
    # 400 texts at confidence 0.75 of which exactly 300 are right, 100 at 0.35 of which 35 are right.
    correct = [True] * 300 + [False] * 100 + [True] * 35 + [False] * 65
    confidence = [0.75] * 400 + [0.35] * 100
    calibrated = expected_calibration_error(correct, confidence, bins=10)
    assert calibrated["ece"] == pytest.approx(0.0, abs=1e-12)
    assert [b["count"] for b in calibrated["bins"]] == [0, 0, 0, 100, 0, 0, 0, 400, 0, 0]
    assert calibrated["bins"][7] == {"lower": 0.7, "upper": 0.8, "count": 400, "mean_confidence": 0.75,
                                     "accuracy": 0.75}
    assert calibrated["bins"][0]["accuracy"] is None
    # Over-confident: 0.95 claimed, half right -> |0.5 - 0.95| over all texts.
    over = expected_calibration_error([True, False] * 50, [0.95] * 100, bins=10)
    assert over["ece"] == pytest.approx(0.45)
    # Bin edges: (i/B, (i+1)/B]; 0 and 1 are in the first and last bins.
    edges = expected_calibration_error([True] * 4, [0.0, 0.1, 0.1000001, 1.0], bins=10)
    assert [b["count"] for b in edges["bins"]][:2] == [2, 1] and edges["bins"][-1]["count"] == 1


def test_ece_leaves_out_abstentions_and_refuses_bad_confidences():
    result = expected_calibration_error([True, False, False], [0.8, 0.8, float("nan")], bins=5)
    assert result["n"] == 2 and result["left_out"] == 1 and result["ece"] == pytest.approx(0.3)
    assert expected_calibration_error([False], [float("nan")])["ece"] is None
    with pytest.raises(ValueError):
        expected_calibration_error([True], [1.5])


def test_agreement_and_system_metrics():
    names = ["a", "b"]
    got = agreement(["a", "b", "a", "b"], ["a", "b", "b", "(abstained)"], names)
    assert got["agreement"] == pytest.approx(0.5)
    assert -1 <= got["kappa"] <= 1
    assert agreement(["a", "a"], ["a", "a"], names) == {"agreement": 1.0, "kappa": None}
    m = system_metrics(["a", "b", "b", "a"], ["a", "b", "(abstained)", "b"], [0.9, 0.6, float("nan"), 0.7], names,
                       seed=1)
    assert m["accuracy"] == pytest.approx(0.5)
    # Each confidence alone in its bin: right at 0.9 and 0.6, wrong at 0.7; the abstention has none.
    assert m["calibration"]["n"] == 3
    assert m["calibration"]["ece"] == pytest.approx(((1 - 0.9) + (1 - 0.6) + 0.7) / 3)
    assert m["intervals"]["seed"] == 1 and m["intervals"]["accuracy"]["low"] <= 0.5


def test_system_metrics_emit_no_future_warning():
    truth, pred = _noisy_predictions(60, 0.7, seed=4)
    confidence = np.where([p == "(abstained)" for p in pred], np.nan, 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        system_metrics(truth, pred, confidence, ["a", "b", "c", "d"], seed=0, resamples=50)
        agreement(pred, truth, ["a", "b", "c"])
