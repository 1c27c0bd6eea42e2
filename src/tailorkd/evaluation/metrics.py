"""Classification metrics of the paper (accuracy, macro-F1, sensitivity, specificity), their bootstrap
intervals, the expected calibration error of the confidences, and agreement between two systems.

Definitions (M classes, one-vs-rest per class c, then the unweighted mean over classes):
- sensitivity_c = TP_c / (TP_c + FN_c)   (recall of c)
- specificity_c = TN_c / (TN_c + FP_c)
- F1_c = 2 P_c R_c / (P_c + R_c) = 2 TP_c / (2 TP_c + FP_c + FN_c); macro-F1 = mean_c F1_c

A prediction that is no class (an abstention, e.g. "(abstained)") is wrong: it is a false negative of the
true class and a false positive of none. It has no confidence, so calibration leaves it out.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

CALIBRATION_BINS = 10
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE_LEVEL = 0.95
# The four headline metrics, in the paper's order; each gets a bootstrap interval.
HEADLINE = ("accuracy", "macro_f1", "sensitivity", "specificity")

DEFINITIONS = {
    "accuracy": "share of texts whose predicted class equals the human label (an abstention is wrong)",
    "macro_f1": "unweighted mean over classes of F1 = 2PR/(P+R) = 2TP/(2TP+FP+FN); a class never true and "
                "never predicted scores 0",
    "sensitivity": "unweighted mean over classes of TP/(TP+FN) (recall), one class vs the rest; an abstention "
                   "is a false negative of its true class",
    "specificity": "unweighted mean over classes of TN/(TN+FP), one class vs the rest, over the texts that got a "
                   "class (as scikit-learn's confusion matrix counts them)",
    "confidence_interval": f"{100 * CONFIDENCE_LEVEL:g}% bootstrap interval, percentile method: the test set "
                           f"resampled with replacement {BOOTSTRAP_RESAMPLES} times (seeded by the recipe's seed), "
                           "the metric computed on each resample, the 2.5th and 97.5th percentiles",
    "ece": f"expected calibration error: confidences (the top class probability) in {CALIBRATION_BINS} "
           "equal-width bins over [0, 1] (bin i holds (i/B, (i+1)/B], the first also 0); ECE = sum over bins of "
           "(texts in bin / texts) x |accuracy in bin - mean confidence in bin|; abstentions have no confidence "
           "and are left out",
    "agreement_with_teacher": "share of test texts on which the system predicts the teacher's class (a teacher "
                              "abstention agrees with nothing)",
    "kappa_with_teacher": "Cohen's kappa between the system's and the teacher's predictions: agreement "
                          "corrected for the agreement expected by chance",
    "texts_per_second": "test texts classified per second of inference (teacher: 1 / mean stored seconds per "
                        "text; untrained student, standard KD, adaptive KD: test texts / summed batch times; "
                        "seed-only baseline: 1 / mean seconds per text for embedding and prediction)",
    "latency": "seconds per text, median and 95th percentile: the teacher's are measured per text; the "
               "students' are each batch's time divided by its texts",
}


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], label_names: Sequence[str]) -> dict:
    """Metrics of predicted vs true label names; classes in ``label_names`` order."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not len(y_true):
        raise ValueError("no examples to evaluate")
    labels = list(label_names)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "sensitivity": float(np.mean(recall)),
        "specificity": float(np.mean(specificity)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "specificity": float(s),
                   "support": int(n)}
            for name, p, r, f, s, n in zip(labels, precision, recall, f1, specificity, support)
        },
        "confusion_matrix": {"labels": labels, "rows_true_cols_predicted": cm.tolist()},
        "predicted_counts": {name: int(c) for name, c in zip(labels, cm.sum(0))},
    }


def headline_from_counts(weights: np.ndarray, true_hot: np.ndarray, pred_hot: np.ndarray) -> dict[str, np.ndarray]:
    """The four headline metrics for each row of ``weights`` ([R, N] multiplicities of the N texts).

    ``true_hot`` / ``pred_hot``: [N, M] one-hot classes (an abstention's ``pred_hot`` row is all zero).
    Counted as ``classification_metrics`` counts them (sklearn's conventions), so that a weight row of
    ones gives exactly its values.
    """
    answered = pred_hot.sum(1)
    tp = weights @ (true_hot * pred_hot)                     # [R, M]
    true_all = weights @ true_hot                            # every text of class c, abstentions included
    true_answered = weights @ (true_hot * answered[:, None])  # rows of the confusion matrix
    predicted = weights @ pred_hot
    total_answered = (weights @ answered)[:, None]
    fp = predicted - tp
    tn = total_answered - tp - fp - (true_answered - tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(true_all + predicted > 0, 2 * tp / (true_all + predicted), 0.0)
        recall = np.where(true_all > 0, tp / true_all, 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
    return {"accuracy": tp.sum(1) / weights.sum(1), "macro_f1": f1.mean(1), "sensitivity": recall.mean(1),
            "specificity": specificity.mean(1)}


def one_hot(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """[N, M] one-hot rows of ``values`` over ``labels``; a value outside them (an abstention) is a row of zeros."""
    index = {name: j for j, name in enumerate(labels)}
    out = np.zeros((len(values), len(labels)))
    for i, v in enumerate(values):
        if v in index:
            out[i, index[v]] = 1.0
    return out


def bootstrap_intervals(y_true: Sequence[str], y_pred: Sequence[str], label_names: Sequence[str],
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = CONFIDENCE_LEVEL,
                        max_cells: int = 4_000_000) -> dict[str, Any]:
    """Percentile bootstrap intervals of accuracy, macro-F1, sensitivity and specificity.

    Each resample draws N texts with replacement (numpy's seeded generator); it is held as a row of
    multiplicities, so one matrix product per count gives every resample's confusion counts. Resamples
    are processed in chunks of at most ``max_cells`` / N rows to bound memory.
    Returns {metric: {"low", "high"}, "level", "resamples", "seed"}.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    n = len(y_true)
    if not n:
        raise ValueError("no examples to evaluate")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {resamples}, {level}")
    labels = list(label_names)
    true_hot, pred_hot = one_hot(y_true, labels), one_hot(y_pred, labels)
    rng = np.random.default_rng(seed)
    chunk = max(1, max_cells // n)
    values: dict[str, list[np.ndarray]] = {k: [] for k in HEADLINE}
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(rows, n))
        weights = np.bincount((drawn + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
        for key, v in headline_from_counts(weights.astype(float), true_hot, pred_hot).items():
            values[key].append(v)
    tail = 100 * (1 - level) / 2
    out: dict[str, Any] = {}
    for key in HEADLINE:
        low, high = np.percentile(np.concatenate(values[key]), [tail, 100 - tail])
        out[key] = {"low": float(low), "high": float(high)}
    return {**out, "level": level, "resamples": resamples, "seed": seed}


def expected_calibration_error(correct: Sequence[bool], confidence: Sequence[float],
                               bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """ECE of ``confidence`` (top class probability per text) against ``correct`` over equal-width bins.

    Texts without a confidence (NaN: abstentions) are left out and counted in "left_out". Returns
    {"ece", "bins": [{"lower", "upper", "count", "mean_confidence", "accuracy"}] (None in empty bins),
    "n", "left_out"}; "ece" is None when no text has a confidence.
    """
    correct = np.asarray(correct, dtype=float)
    confidence = np.asarray(confidence, dtype=float)
    if correct.shape != confidence.shape:
        raise ValueError(f"{len(correct)} correctness flags but {len(confidence)} confidences")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    known = ~np.isnan(confidence)
    conf, hit = confidence[known], correct[known]
    if ((conf < 0) | (conf > 1)).any():
        raise ValueError("confidences must lie in [0, 1]")
    # Bin i holds (i/B, (i+1)/B]; 0 goes to the first bin.
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for i in range(bins):
        member = which == i
        count = int(member.sum())
        mean_conf = float(conf[member].mean()) if count else None
        accuracy = float(hit[member].mean()) if count else None
        if count:
            ece += count / len(conf) * abs(accuracy - mean_conf)
        table.append({"lower": i / bins, "upper": (i + 1) / bins, "count": count, "mean_confidence": mean_conf,
                      "accuracy": accuracy})
    return {"ece": float(ece) if len(conf) else None, "bins": table, "n": int(len(conf)),
            "left_out": int((~known).sum())}


def agreement(y_pred: Sequence[str], reference: Sequence[str], label_names: Sequence[str]) -> dict[str, float | None]:
    """How far two systems' predictions on the same texts agree: share equal (an abstention of the
    reference, a name outside ``label_names``, agrees with nothing) and Cohen's kappa."""
    if len(y_pred) != len(reference):
        raise ValueError(f"{len(y_pred)} predictions but {len(reference)} reference predictions")
    labels = set(label_names)
    same = [p == r and r in labels for p, r in zip(y_pred, reference)]
    # kappa is undefined when both give one single class throughout (no variation to correct for chance).
    kappa = cohen_kappa_score(list(y_pred), list(reference)) if len(set(y_pred) | set(reference)) > 1 else None
    return {"agreement": float(np.mean(same)) if same else None,
            "kappa": None if kappa is None or np.isnan(kappa) else float(kappa)}


def system_metrics(y_true: Sequence[str], y_pred: Sequence[str], confidence: Sequence[float],
                   label_names: Sequence[str], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                   bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Everything the report holds about one system's predictions: ``classification_metrics``, plus
    "intervals" (bootstrap) and "calibration" (ECE with its bin table)."""
    metrics = classification_metrics(y_true, y_pred, label_names)
    metrics["intervals"] = bootstrap_intervals(y_true, y_pred, label_names, resamples=resamples, seed=seed)
    correct = [t == p for t, p in zip(y_true, y_pred)]
    metrics["calibration"] = expected_calibration_error(correct, confidence, bins=bins)
    return metrics
