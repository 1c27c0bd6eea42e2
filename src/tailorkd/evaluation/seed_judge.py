"""Judging a labeller on ~20 expert seeds without the leave-one-out bias, with intervals.

Leave-one-out is biased against balanced seeds: a refit without seed i has one seed fewer of i's class, so a
classifier (its intercept) or a fitted per-class bias leans away from exactly that class. With weak features it
scores below chance (measured: the seed classifier's leave-one-out accuracy 0.43 on CrisisLexT26 seeds against
0.61 on the test set; 0.14 against 0.43 on a task no one tuned to). ``balanced_folds`` holds out one seed of
every class per fold instead (stratified k-fold with as many folds as the smallest class has seeds), so every
refit keeps the class mix of the full seed set, which is what the classifier used on the pool is fitted on.

``judgement`` turns predictions on the seeds into accuracy and macro-F1 with 95% intervals: accuracy by the
Wilson score interval (sound at ~20 trials and at 0 or 1), macro-F1 by a percentile bootstrap over the seeds.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

# Repeated fold draws average out the luck of one partition; each seed is still judged by refits without it.
REPEATS = 5
LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000


def balanced_folds(labels: Sequence[str], seed: int, repeats: int = REPEATS
                   ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``repeats`` partitions of the seeds into stratified folds, each a list of (train, test) index arrays.

    As many folds as the smallest class has seeds (at most 10), so with balanced seeds every fold holds out
    exactly one seed of every class. A class with a single seed cannot be both fitted and judged: its seed is
    left out of every fold (``judged_mask`` says which seeds are judged)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray([str(label) for label in labels])
    judged = judged_mask(labels)
    index = np.flatnonzero(judged)
    if len(set(labels[index])) < 2:
        return []
    k = int(min(10, min(np.sum(labels[index] == c) for c in set(labels[index]))))
    out = []
    for r in range(repeats):
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + r).split(index, labels[index])
        out.append([(index[train], index[test]) for train, test in folds])
    return out


def judged_mask(labels: Sequence[str]) -> np.ndarray:
    """Which seeds can be judged by refits without them: those whose class has at least two seeds."""
    labels = np.asarray([str(label) for label in labels])
    return np.array([np.sum(labels == label) >= 2 for label in labels], dtype=bool)


def cross_validated_predictions(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], labels: Sequence[str],
                                seed: int, repeats: int = REPEATS, one_thread: bool = True
                                ) -> tuple[np.ndarray, np.ndarray]:
    """[R, S] predicted labels of every seed by ``fit_predict(train_idx, test_idx)`` over ``balanced_folds``
    (a seed that cannot be judged gets "(not judged)"), and the [S] mask of judged seeds. ``one_thread``: BLAS
    and OpenMP held to one thread (False for a fit that trains a network)."""
    import contextlib

    from threadpoolctl import threadpool_limits

    labels = [str(label) for label in labels]
    partitions = balanced_folds(labels, seed, repeats)
    predicted = np.full((max(len(partitions), 1), len(labels)), "(not judged)", dtype=object)
    # Fits of ~20 rows: BLAS threads only add overhead (measured 20x slower on 2 busy cores).
    with threadpool_limits(limits=1) if one_thread else contextlib.nullcontext():
        for r, folds in enumerate(partitions):
            for train, test in folds:
                predicted[r, test] = fit_predict(train, test)
    mask = judged_mask(labels) if partitions else np.zeros(len(labels), dtype=bool)
    return predicted, mask


def judgement(truth: Sequence[str], predicted: np.ndarray | Sequence[str], label_names: Sequence[str], seed: int,
              resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``predicted`` ([S] or [R, S] label names: R repeated judgements of the same S
    seeds) against ``truth``, each with its ``level`` interval; also chance (1 / classes), the majority-class
    rate of the seeds and the predicted class mix. Resamples draw seeds, so R repeats do not narrow them."""
    from tailorkd.evaluation.metrics import headline_from_counts, one_hot
    from tailorkd.signals import wilson_interval

    names = list(label_names)
    predicted = np.atleast_2d(np.asarray(predicted, dtype=object))
    truth = np.asarray([str(t) for t in truth], dtype=object)
    repeats, n = predicted.shape
    if n != len(truth):
        raise ValueError(f"{len(truth)} seeds but {n} predictions")
    base = {"n": int(n), "repeats": int(repeats), "chance": 1.0 / len(names),
            "majority_rate": float(max(np.mean(truth == c) for c in names)) if n else None}
    if not n:
        return {**base, "accuracy": None, "accuracy_interval": None, "macro_f1": None, "macro_f1_interval": None,
                "predicted_counts": {}}
    true_hot = np.tile(one_hot(list(truth), names), (repeats, 1))  # [R*S, M], repeat-major
    pred_hot = one_hot(list(predicted.ravel()), names)
    point = headline_from_counts(np.ones((1, repeats * n)), true_hot, pred_hot)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n))
    counts = np.stack([np.bincount(row, minlength=n) for row in drawn]).astype(float)  # [B, S]
    f1 = headline_from_counts(np.tile(counts, (1, repeats)), true_hot, pred_hot)["macro_f1"]
    tail = 100 * (1 - level) / 2
    accuracy = float(point["accuracy"][0])
    low, high = wilson_interval(np.array([accuracy * n]), np.array([n]), level)
    f1_low, f1_high = np.percentile(f1, [tail, 100 - tail])
    mix = {c: int(v) for c, v in zip(names, pred_hot.sum(0))}
    # min / max: the Wilson bounds at 0 or 1 equal the estimate up to rounding
    return {**base, "accuracy": accuracy, "accuracy_interval": {"low": min(float(low[0]), accuracy),
                                                                "high": max(float(high[0]), accuracy)},
            "macro_f1": float(point["macro_f1"][0]),
            "macro_f1_interval": {"low": float(f1_low), "high": float(f1_high)},
            "predicted_counts": {c: v / repeats for c, v in mix.items()} if repeats > 1 else mix}


def judge_by_refits(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], labels: Sequence[str],
                    label_names: Sequence[str], seed: int, repeats: int = REPEATS, one_thread: bool = True,
                    refit: str = "") -> dict[str, Any]:
    """The ``judgement`` of a classifier refitted by ``fit_predict`` on balanced folds of the seeds
    (``cross_validated_predictions``; seeds of single-seed classes left out); ``refit``: how, for its method."""
    predicted, mask = cross_validated_predictions(fit_predict, labels, seed, repeats, one_thread)
    truth = [str(label) for label in labels]
    kept = [t for t, keep in zip(truth, mask) if keep]
    return {**judgement(kept, predicted[:, mask], label_names, seed), "method": f"stratified {repeats}x k-fold, "
            f"one seed of every class held out per fold{refit}"}
