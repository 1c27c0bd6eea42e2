"""Corrected shares (tailorkd.quantify): quantification by QuaPy's methods on the student's stored
probabilities, with a bootstrap interval over the labelled texts and the day's articles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tailorkd.errors import TailorkdError
from tailorkd.quantify import LabelledPredictions, ShareEstimator, corrected_shares, labelled_from_guard
from tailorkd.signals import daily_signals

LABELS = ["risk", "caution", "safe"]
# P(predicted | true), one row per true class: a student that calls too much 'risk' (as the crisis one does).
CONFUSION = np.array([[0.80, 0.12, 0.08],
                      [0.35, 0.55, 0.10],
                      [0.30, 0.10, 0.60]])


PEAK, FLAT = 12.0, 2.0


def student_outputs(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Probabilities of a student with ``CONFUSION`` that are calibrated (the assumption of EM; the adjusted
    methods need only a fixed confusion): a text of class y yields evidence e ~ Dirichlet peaked at a label
    drawn from CONFUSION[y], and the student says P(y | e) under equal priors, exactly."""
    from scipy.special import gammaln

    predicted = np.array([rng.choice(3, p=CONFUSION[t]) for t in truth])
    alphas = np.full((3, 3), FLAT) + np.eye(3) * (PEAK - FLAT)  # row k: the Dirichlet peaked at label k
    evidence = np.array([rng.dirichlet(alphas[k]) for k in predicted])
    log_density = (gammaln(alphas.sum(axis=1)) - gammaln(alphas).sum(axis=1))[None, :] + \
        np.log(evidence) @ (alphas - 1).T  # [n, k]: log Dirichlet_k(e)
    likelihood = np.exp(log_density) @ CONFUSION.T  # [n, y]: p(e | y)
    return likelihood / likelihood.sum(axis=1, keepdims=True)


def feed(rng: np.random.Generator, days: int, per_day: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Articles over ``days`` days of one topic, each day with its own true class mix; the true risk share."""
    rows, truth_share = [], {}
    for d in range(days):
        mix = rng.dirichlet([1.5, 1.0, 1.5])
        truth = rng.choice(3, size=per_day, p=mix)
        probs = student_outputs(rng, truth)
        day = (pd.Timestamp("2024-01-01") + pd.Timedelta(days=d)).strftime("%Y-%m-%d")
        truth_share[day] = float((truth == 0).mean())
        for k, p in enumerate(probs):
            label = LABELS[int(p.argmax())]
            rows.append({"key": f"{day}-{k}", "id": f"{day}-{k}", "topic": "floods", "day": day, "label": label,
                         "severity": "none", "confidence": float(p.max()), "text": "t", "source": "",
                         **{f"p_{name}": float(p[j]) for j, name in enumerate(LABELS)}})
    return pd.DataFrame(rows), truth_share


def test_quantification_removes_a_known_bias_and_its_interval_covers_the_truth():
    rng = np.random.default_rng(7)
    truth_labels = np.repeat(np.arange(3), 40)  # labelled texts drawn per class, as the seeds are
    labelled = LabelledPredictions(student_outputs(rng, truth_labels), truth_labels, "synthetic seeds")
    frame, truth = feed(rng, days=60, per_day=120)
    daily = daily_signals(frame, LABELS, ["risk"], {"none": 0.0}, baseline_days=7)
    true_share = daily["day"].map(truth).to_numpy()
    raw_error = np.abs(daily["risk_share"].to_numpy() - true_share).mean()
    assert raw_error > 0.1  # the count is biased: the check below has something to correct

    for method in ("acc", "pacc", "emq"):
        estimated, replicates = corrected_shares(frame, daily, LABELS, ["risk"],
                                                 ShareEstimator(method, 3, labelled, replicates=100, seed=1))
        assert replicates.shape == (len(daily), 100)
        error = np.abs(estimated["risk_share_estimate"].to_numpy() - true_share).mean()
        assert error < 0.6 * raw_error, (method, error, raw_error)
        low, high = estimated["risk_share_estimate_low"].to_numpy(), estimated["risk_share_estimate_high"].to_numpy()
        covered = ((low <= true_share) & (true_share <= high)).mean()
        assert covered >= 0.85, (method, covered)
        assert (low <= estimated["risk_share_estimate"]).all() and (estimated["risk_share_estimate"] <= high).all()
        # every class gets its share, and they add up to one
        shares = estimated[[f"share_{name}" for name in LABELS]].sum(axis=1)
        assert np.allclose(shares, 1.0, atol=1e-6)

    # The raw count keeps its bias, and its interval (the day's sampling only) does not cover the truth.
    raw, _ = corrected_shares(frame, daily, LABELS, ["risk"], ShareEstimator("raw", 3, replicates=100, seed=1))
    assert np.allclose(raw["risk_share_estimate"], daily["risk_share"])
    raw_covered = ((raw["risk_share_estimate_low"] <= true_share) & (true_share <= raw["risk_share_estimate_high"]))
    assert raw_covered.mean() < 0.5


def test_the_interval_widens_with_fewer_labelled_texts():
    rng = np.random.default_rng(3)
    frame, _ = feed(rng, days=5, per_day=200)
    daily = daily_signals(frame, LABELS, ["risk"], {"none": 0.0}, baseline_days=7)
    widths = []
    for per_class in (7, 100):
        truth = np.repeat(np.arange(3), per_class)
        labelled = LabelledPredictions(student_outputs(rng, truth), truth, f"{per_class} per class")
        estimated, _ = corrected_shares(frame, daily, LABELS, ["risk"],
                                        ShareEstimator("pacc", 3, labelled, replicates=150, seed=0))
        widths.append((estimated["risk_share_estimate_high"] - estimated["risk_share_estimate_low"]).mean())
    assert widths[0] > 1.5 * widths[1]  # the confusion's own uncertainty is in the interval


def test_labelled_predictions_come_from_the_seed_guard_at_the_students_temperature():
    probs = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], None, [0.1, 0.1, 0.8]]
    record = {"shipped": "joint_kd", "seed_labels": {"s1": "risk", "s2": "caution", "s3": "safe", "s4": "safe"},
              "candidates": {"joint_kd": {"oof_probs": [p if p is None else list(p) for p in probs]},
                             "adaptive_kd": {"oof_probs": [[1 / 3] * 3] * 4}}}
    labelled = labelled_from_guard(record, LABELS, temperature=0.5)
    assert labelled is not None and list(labelled.labels) == [0, 1, 2]  # the seed without a prediction left out
    sharpened = np.array([0.6, 0.3, 0.1]) ** 2 / (np.array([0.6, 0.3, 0.1]) ** 2).sum()
    assert np.allclose(labelled.probs[0], sharpened) and "joint_kd" in labelled.source
    assert labelled_from_guard(None, LABELS, 1.0) is None
    assert labelled_from_guard({**record, "shipped": "setfit"}, LABELS, 1.0) is None
    with pytest.raises(TailorkdError, match=r"seed labels \['flood'\] are not the task's labels"):
        labelled_from_guard({**record, "seed_labels": {**record["seed_labels"], "s1": "flood"}}, LABELS, 1.0)
    with pytest.raises(TailorkdError, match="acc needs the student's predictions on labelled texts"):
        ShareEstimator("acc", 3)
    with pytest.raises(TailorkdError, match="signals.quantifier: 'median' is not one of raw, pcc, acc"):
        ShareEstimator("median", 3)


def test_using_quapy_leaves_matplotlibs_settings_as_they_were():
    # In a fresh interpreter: quapy sets them when first imported, which another test may already have done here.
    code = """
import matplotlib
keys = ("figure.figsize", "figure.dpi", "font.size")
before = {key: matplotlib.rcParams[key] for key in keys}
from tailorkd.quantify import quapy_quantifier
quapy_quantifier("acc", 3)
import quapy  # now imported: what its import changed stays changed
after = {key: matplotlib.rcParams[key] for key in keys}
assert after == before, (before, after)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
