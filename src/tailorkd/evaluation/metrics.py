"""Classification metrics of the paper: accuracy, macro-F1, sensitivity and specificity.

Definitions (M classes, one-vs-rest per class c, then the unweighted mean over classes):
- sensitivity_c = TP_c / (TP_c + FN_c)   (recall of c)
- specificity_c = TN_c / (TN_c + FP_c)
- F1_c = 2 P_c R_c / (P_c + R_c); macro-F1 = mean_c F1_c
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

DEFINITIONS = {
    "accuracy": "share of texts whose predicted class equals the human label",
    "macro_f1": "unweighted mean over classes of F1 = 2PR/(P+R)",
    "sensitivity": "unweighted mean over classes of TP/(TP+FN) (recall), one class vs the rest",
    "specificity": "unweighted mean over classes of TN/(TN+FP), one class vs the rest",
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
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "specificity": float(s), "support": int(n)}
            for name, p, r, f, s, n in zip(labels, precision, recall, f1, specificity, support)
        },
        "confusion_matrix": {"labels": labels, "rows_true_cols_predicted": cm.tolist()},
        "predicted_counts": {name: int(c) for name, c in zip(labels, cm.sum(0))},
    }
