"""Judging on ~20 seeds: balanced folds instead of leave-one-out, intervals, and weights that know how little
20 seeds tell."""

from __future__ import annotations

import numpy as np
import pytest

from tailorkd.evaluation.baselines import judge_seed_classifier
from tailorkd.evaluation.seed_judge import balanced_folds, cross_validated_predictions, judgement
from tailorkd.teachers.ensemble import expected_skill, seed_weights

CLASSES = ["a", "b", "c"]


def balanced(n_per_class: int) -> list[str]:
    return [c for c in CLASSES for _ in range(n_per_class)]


def test_balanced_folds_hold_out_one_seed_of_every_class():
    labels = balanced(7)
    partitions = balanced_folds(labels, seed=0, repeats=3)
    assert len(partitions) == 3
    for folds in partitions:
        assert len(folds) == 7
        held_out = np.concatenate([test for _, test in folds])
        assert sorted(held_out) == list(range(21))  # every seed judged once per repeat
        for train, test in folds:
            assert sorted(labels[i] for i in test) == CLASSES  # the refit keeps the seeds' class mix
            assert not set(train) & set(test)
    # A class with one seed cannot be fitted and judged: its seed is left out of every fold.
    lonely = balanced(3) + ["d"]
    assert all(len(lonely) - 1 not in np.concatenate([t for _, t in folds]) for folds in balanced_folds(lonely, 0))


def test_leave_one_out_leans_away_from_the_held_out_class_and_balanced_folds_do_not():
    """With balanced seeds, a refit without seed i has one seed fewer of i's class. A classifier whose
    intercept outweighs its features (strong regularisation, weak features) then predicts another class for
    every held-out seed: leave-one-out accuracy 0 while the classifier separates the classes. Balanced folds
    keep the class mix, so the same classifier is judged by what its features know."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = np.array(balanced(7))
    x = np.eye(3)[[CLASSES.index(y) for y in labels]] + rng.normal(0, 0.2, size=(21, 3))

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return LogisticRegression(C=1e-3).fit(x[train], labels[train]).predict(x[test])

    loo = np.array([fit_predict(np.delete(np.arange(21), i), np.array([i]))[0] for i in range(21)])
    assert np.mean(loo == labels) == 0.0  # below chance (1/3): the bias, not the features
    predicted, judged = cross_validated_predictions(fit_predict, labels, seed=0, repeats=2)
    assert judged.all() and np.mean(predicted == labels[None, :]) >= 0.9
    assert np.mean(LogisticRegression(C=1e-3).fit(x, labels).predict(x) == labels) >= 0.9  # what it really does


def test_seed_classifier_judged_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    labels = balanced(4)
    centres = {"a": [4, 0, 0], "b": [0, 4, 0], "c": [0, 0, 4]}
    separable = np.array([centres[y] for y in labels], dtype=float) + rng.normal(0, 0.3, size=(12, 3))
    judged = judge_seed_classifier(separable, labels, CLASSES, seed=0, repeats=1)
    assert judged["accuracy"] == 1.0 and judged["n"] == 12 and judged["macro_f1"] == 1.0
    assert judged["accuracy_interval"]["high"] == pytest.approx(1.0) and judged["accuracy_interval"]["low"] > 0.7


def test_intervals_contain_the_estimate_and_narrow_with_more_seeds():
    rng = np.random.default_rng(1)
    widths = []
    for n_per_class in (7, 70):
        truth = balanced(n_per_class)
        predicted = [y if rng.random() < 0.6 else rng.choice(CLASSES) for y in truth]
        j = judgement(truth, predicted, CLASSES, seed=0)
        for key in ("accuracy", "macro_f1"):
            assert j[f"{key}_interval"]["low"] <= j[key] <= j[f"{key}_interval"]["high"]
        assert j["chance"] == pytest.approx(1 / 3) and j["majority_rate"] == pytest.approx(1 / 3)
        widths.append(j["accuracy_interval"]["high"] - j["accuracy_interval"]["low"])
    assert widths[1] < widths[0] / 2
    # Repeated judgements of the same seeds do not pretend to be more seeds: the width stays that of n seeds.
    truth = balanced(7)
    once = judgement(truth, [[t if i % 2 else "a" for i, t in enumerate(truth)]], CLASSES, seed=0)
    twice = judgement(truth, [[t if i % 2 else "a" for i, t in enumerate(truth)]] * 2, CLASSES, seed=0)
    assert twice["accuracy_interval"] == once["accuracy_interval"] and twice["n"] == once["n"] == 21


def test_weights_shrink_towards_equal_when_few_seeds_judged():
    strong_weak = [(0.9, 21), (0.4, 21)]
    w21 = seed_weights(strong_weak, 3)
    w3 = seed_weights([(0.9, 3), (0.4, 3)], 3)
    w300 = seed_weights([(0.9, 300), (0.4, 300)], 3)
    assert sum(w21) == pytest.approx(1.0)
    assert 0.5 < w3[0] < w21[0] < w300[0]  # the more seeds, the more a clear difference counts
    assert seed_weights([(0.9, 0), (0.4, 0)], 3) == [0.5, 0.5]  # nothing judged: equal
    assert seed_weights([(0.9, 21), None], 3) == [0.5, 0.5]
    # At chance a member keeps a little weight (21 seeds cannot rule out some skill), below half of a clearly
    # better member's; raw accuracies (0.33 vs 0.6) would have given it 36%.
    at_chance = seed_weights([(1 / 3, 21), (0.6, 21)], 3)
    assert 0.05 < at_chance[0] < 0.25
    assert expected_skill(1.0, 1000, 3) == pytest.approx(2 / 3, abs=1e-2)


def test_a_seed_fitted_bias_is_judged_on_balanced_folds_too():
    """The same bias hits a per-class bias fitted on the seeds (calibration's seed_bias): left out of a refit, a
    seed's class is the minority and the bias leans away from it by about log(7/6), more than this teacher's
    weak signal (0.1) for the true class. Refitted on balanced folds, the signal decides."""
    from tailorkd.calibration import Calibration, fit_bias, fold_calibrated_predictions, held_out_bias
    from tailorkd.prompts.search import fold_calibrated

    labels = balanced(7)
    y = np.array([CLASSES.index(label) for label in labels])
    logits = 0.1 * np.eye(3)[y] + np.array([2.0, 0.0, 0.0])  # leans to "a" whatever the text
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    loo = [int((np.log(probs[i]) + fit_bias(np.log(np.delete(probs, i, 0)), np.delete(y, i), 1e-4)).argmax())
           for i in range(len(y))]
    assert np.mean(np.array(loo) == y) == 0.0
    # How calibration chooses and judges its seed bias, and how the prompt search ranks calibrated prompts.
    _, held_out = held_out_bias(np.log(probs), y, [1e-4], seed=0)
    assert np.mean(held_out == y) == 1.0
    assert np.mean(fold_calibrated(probs, labels, CLASSES, seed=0, l2=1e-4).argmax(1) == y) == 1.0
    calibration = Calibration("seed_bias", CLASSES, [0.0] * 3, list(fit_bias(np.log(probs), y, 1e-4)), {"l2": 1e-4})
    predicted = fold_calibrated_predictions(calibration, probs, labels, seed=0)
    assert np.mean(predicted == np.array(labels)[None, :]) == 1.0
    # A label-free calibration is applied as it is: nothing was fitted on the seeds.
    domain = Calibration("domain", CLASSES, [2.0, 0.0, 0.0], [0.0] * 3)
    assert (fold_calibrated_predictions(domain, probs, labels, seed=0) == np.array(labels)[None, :]).all()
