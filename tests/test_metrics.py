"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from tailorkd.evaluation import classification_metrics


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
