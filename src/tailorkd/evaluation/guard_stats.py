"""What the seed guard decides with: cross-fitting folds of the seeds, a paired comparison of two candidates on
the same seeds, the collapse check, and the choice itself.

With ~20 labels every estimate is weak (Perez, Kiela and Cho, "True Few-Shot Learning with Language Models",
NeurIPS 2021: cross-validation picks models only marginally better than chance). So the choice is not the
argmax of noisy numbers: a preferred candidate ships unless another beats it clearly in a paired comparison
(the same seeds, the same bootstrap draws for both), and a collapsed candidate never ships.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# A collapsed model's outputs: the mean top-probability margin above chance, as a share of its range (0:
# uniform, 1: one-hot), below which its outputs are near uniform; the share of texts given one class above
# which it calls everything one thing; how close its training loss may come to ln K (learning nothing).
NEAR_UNIFORM_MARGIN = 0.03
ONE_CLASS_SHARE = 0.995
ONE_CLASS_MIN_TEXTS = 50
LOSS_AT_CHANCE = 0.005
COMPARISON_RESAMPLES = 2000


def guard_folds(labels: Sequence[str], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, test) index pairs over the seeds whose class has at least two of them: ``folds``
    folds, fewer when the smallest such class has fewer seeds (at least 2). Seeds of single-seed classes are
    in every train part and no test part. Empty when fewer than two classes can be judged."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray([str(label) for label in labels])
    counts = {c: int(np.sum(labels == c)) for c in set(labels)}
    judged = np.array([counts[c] >= 2 for c in labels], dtype=bool)
    index = np.flatnonzero(judged)
    if len(set(labels[index])) < 2:
        return []
    k = max(2, min(folds, min(counts[c] for c in set(labels[index]))))
    unjudged = np.flatnonzero(~judged)
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(index, labels[index])
    return [(np.sort(np.concatenate([index[train], unjudged])), index[test]) for train, test in split]


def paired_comparison(truth: Sequence[str], a: Sequence[str], b: Sequence[str], label_names: Sequence[str],
                      seed: int, level: float = 0.9, resamples: int = COMPARISON_RESAMPLES) -> dict[str, Any]:
    """Macro-F1 and accuracy of predictions ``a`` minus those of ``b`` on the same seeds: the point difference,
    its ``level`` percentile-bootstrap interval (both scored on the same draws of seeds) and the share of draws
    in which ``a`` scores higher (ties count half)."""
    from tailorkd.evaluation.metrics import headline_from_counts, one_hot

    names = list(label_names)
    n = len(truth)
    if not (n == len(a) == len(b)) or n == 0:
        raise ValueError(f"a paired comparison needs the same seeds: {n} truths, {len(a)} and {len(b)} predictions")
    true_hot = one_hot([str(t) for t in truth], names)
    hot_a, hot_b = one_hot([str(p) for p in a], names), one_hot([str(p) for p in b], names)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n))
    counts = np.vstack([np.ones((1, n)), np.stack([np.bincount(row, minlength=n) for row in drawn]).astype(float)])
    score_a, score_b = headline_from_counts(counts, true_hot, hot_a), headline_from_counts(counts, true_hot, hot_b)
    diff = score_a["macro_f1"] - score_b["macro_f1"]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff[1:], [tail, 100 - tail])
    better = float(np.mean(diff[1:] > 0) + 0.5 * np.mean(diff[1:] == 0))
    return {"macro_f1_difference": float(diff[0]), "interval": {"low": float(low), "high": float(high),
                                                                "level": level},
            "probability_better": better,
            "accuracy_difference": float(score_a["accuracy"][0] - score_b["accuracy"][0]), "n": n}


def collapse_reasons(probs: np.ndarray, *, train_loss: float | None = None,
                     temperature_at_bound: float | None = None, soft_targets: bool = True) -> list[str]:
    """Why a model's outputs ``probs`` ([N, M], on texts it may meet: the pool) say it learned nothing, each in
    words; empty when none does. Near-uniform outputs, for a model that learned soft targets (``soft_targets``:
    a classifier fitted to hard labels is as flat as its regularisation makes it, a logistic regression on 20
    seeds of five classes at a top probability of ~0.22 while it ranks them right; its weakness is the
    cross-fitted estimate's to judge); one class for (nearly) every text; a training loss at ln M (soft
    cross-entropy against targets it never matched); a confidence temperature at the bound of its search."""
    reasons = []
    n, m = probs.shape
    if n and m > 1:
        margin = float(np.mean((probs.max(axis=1) - 1.0 / m) / (1.0 - 1.0 / m)))
        if soft_targets and margin < NEAR_UNIFORM_MARGIN:
            reasons.append(f"near-uniform outputs (mean top probability {float(probs.max(axis=1).mean()):.3f} with "
                           f"{m} classes)")
        top = np.bincount(probs.argmax(axis=1), minlength=m)
        if n >= ONE_CLASS_MIN_TEXTS and top.max() >= ONE_CLASS_SHARE * n:
            reasons.append(f"one class for {int(top.max())} of {n} texts")
        if train_loss is not None and math.isfinite(train_loss) and abs(train_loss - math.log(m)) < LOSS_AT_CHANCE:
            reasons.append(f"training loss {train_loss:.4f} at ln {m} = {math.log(m):.4f}: it learned nothing")
    if temperature_at_bound is not None:
        reasons.append(f"confidence temperature at the bound of its search ({temperature_at_bound:.3g})")
    return reasons


def choose(estimates: Mapping[str, Mapping[str, Any]], comparisons: Mapping[str, Mapping[str, Any]],
           collapsed: Mapping[str, Sequence[str]], preference: Sequence[str], probability: float,
           seed_dependence: Mapping[str, int] | None = None) -> tuple[str, str]:
    """(the candidate that ships, why in words). ``preference``: candidates in the order they ship by default
    (the first one not collapsed is the default); ``estimates``: each candidate's cross-fitted judgement
    (``macro_f1``); ``comparisons``: each other candidate's ``paired_comparison`` against the default. A
    candidate replaces the default only when it is not collapsed, scores higher in at least ``probability``
    of the paired draws and, given ``seed_dependence`` ({candidate: how much of it is fitted on the seeds}),
    depends on the seeds at least as much as the default; of several, the highest cross-fitted macro-F1.

    Why the last condition: a fold's refit loses a third of the seeds, which weakens a candidate in proportion
    to what of it was fitted on them (SetFit entirely, joint KD by its SetFit half, a teacher's student only
    through calibration and weights), so the comparison is biased towards the candidate less fitted on the
    seeds. A challenger that depends on them as much or more wins against that bias, and its win is evidence;
    one that depends on them less wins with it (financial tone, seed 13: adaptive KD over joint KD in 94% of
    draws, 78.6 against 68.0 cross-fitted; on test 70.9 against 77.7)."""
    usable = [c for c in preference if not collapsed.get(c)]
    if not usable:
        raise ValueError("every candidate collapsed: "
                         + "; ".join(f"{c}: {', '.join(r)}" for c, r in collapsed.items()))
    default = usable[0]
    dependence = seed_dependence or {}
    clear = [c for c in usable[1:] if c in comparisons and comparisons[c]["probability_better"] >= probability
             and dependence.get(c, 0) >= dependence.get(default, 0)]
    if not clear:
        return default, "default"
    best = max(clear, key=lambda c: (estimates[c]["macro_f1"], -preference.index(c)))
    return best, "clear_win"


def weak_teacher_veto(check: Mapping[str, Any] | None, teacher_only: Mapping[str, bool]) -> dict[str, str]:
    """{candidate: why it may not ship} when the teacher check ``check`` (teacher_check.json) did not find the
    teacher ok: every usable candidate that learns from the teacher alone (``teacher_only``), as long as another
    usable one learns from the seeds, alone or with the teacher; else {} (no check, an ok teacher, or nothing
    else to ship)."""
    verdict = (check or {}).get("verdict")
    if verdict in (None, "ok") or all(teacher_only.values()):
        return {}
    first = ((check or {}).get("reasons") or ["no reason recorded"])[0]
    why = f"the teacher check found the teacher {str(verdict).upper()} on your seeds ({first})"
    return {name: why for name, alone in teacher_only.items() if alone}
