"""Calibrating the teacher's class distribution before any student learns from it.

An LLM classifier has a label bias: its prompt alone pushes probability towards some classes (measured:
Gemma-3-270M gave 0 of 600 BBC pool articles the class 'tech'). Every method here moves the teacher's
log-probabilities by a per-class offset, ``log q = log p - log_prior + bias`` (then renormalised):

- ``contextual`` (Zhao et al. 2021): ``log_prior`` is the teacher's mean log-distribution on content-free
  inputs such as "N/A" put in the prompt's input slot.
- ``domain`` (Fei et al. 2023, domain-context calibration): the content-free inputs are random word
  sequences drawn from the unlabelled pool, so the prior also holds the bias the domain's words cause.
- ``seed_bias``: on top of ``domain``, a per-class bias fitted on the expert seeds that are not few-shot
  examples (L2-regularised, the strength chosen by refits on balanced folds of those seeds: leave-one-out
  would leave the held-out seed's class the minority of every refit, so the bias would lean away from it).
- ``auto``: whichever of none / contextual / domain / seed_bias gives the best macro-F1 on those held-out
  seeds (seed_bias judged by the same fold refits); ties go to the method listed first in ``AUTO_ORDER``.

Only the held-out seeds judge the methods: the test split never does.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

METHODS = ("none", "contextual", "domain", "seed_bias")
AUTO_ORDER = ("domain", "contextual", "seed_bias", "none")  # tie-break: label-free methods first
EPS = 1e-12


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - np.nanmax(logits, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_log_prior(probs: np.ndarray) -> np.ndarray:
    """The prior as the mean log-distribution (a geometric mean), centred so it sums to zero."""
    prior = log_probs(probs).mean(axis=0)
    return prior - prior.mean()


def domain_inputs(pool_texts: Sequence[str], n: int, seed: int, words: int | None = None) -> list[str]:
    """``n`` texts of random words drawn from the pool (with replacement), each as long as a typical pool
    text (the median word count, between 5 and 200) unless ``words`` is given."""
    vocabulary = [w for text in pool_texts for w in str(text).split()]
    if not vocabulary:
        raise ValueError("the pool has no words to draw content-free inputs from")
    if words is None:
        words = int(min(200, max(5, np.median([len(str(t).split()) for t in pool_texts]))))
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(n)]


@dataclass
class Calibration:
    """A fitted per-class offset: ``log q = log p - log_prior + bias``."""

    method: str
    label_names: list[str]
    log_prior: list[float]
    bias: list[float]
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, label_names: Sequence[str], method: str = "none") -> Calibration:
        m = len(label_names)
        return cls(method, list(label_names), [0.0] * m, [0.0] * m)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated [N, M] probabilities; rows with NaN (abstentions) stay NaN."""
        probs = np.asarray(probs, dtype=np.float64)
        out = np.full_like(probs, np.nan)
        ok = ~np.isnan(probs).any(axis=1)
        if ok.any():
            out[ok] = softmax_rows(log_probs(probs[ok]) - np.array(self.log_prior) + np.array(self.bias))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibration:
        return cls(**payload)


def fit_bias(logits: np.ndarray, labels: np.ndarray, l2: float) -> np.ndarray:
    """The per-class bias b minimising mean cross-entropy of softmax(logits + b) on (logits, labels) plus
    ``l2 * |b|^2`` (b is centred: a common shift changes nothing)."""
    from scipy.optimize import minimize

    n, m = logits.shape
    onehot = np.eye(m)[labels]

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        q = softmax_rows(logits + b)
        value = -np.sum(onehot * np.log(np.clip(q, EPS, 1.0))) / n + l2 * float(b @ b)
        grad = (q - onehot).sum(axis=0) / n + 2 * l2 * b
        return value, grad

    b = minimize(loss, np.zeros(m), jac=True, method="L-BFGS-B").x
    return b - b.mean()


def _scores(truth: Sequence[int], pred: Sequence[int], m: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(truth, pred)),
            "macro_f1": float(f1_score(truth, pred, labels=list(range(m)), average="macro", zero_division=0))}


def held_out_bias_probs(logits: np.ndarray, labels: np.ndarray, l2: float, seed: int) -> np.ndarray:
    """[S, M] each seed's distribution after a per-class bias fitted without it: refits on balanced folds
    (``evaluation.seed_judge``: one seed of every class held out, so no refit leans away from the held-out
    seed's class as leave-one-out does), averaged over the fold draws; a seed whose class has no other seed
    can only be left out alone (its class's bias then regularised towards 0)."""
    from tailorkd.evaluation.seed_judge import balanced_folds

    n = len(labels)
    total, draws = np.zeros(logits.shape), np.zeros(n)
    for folds in balanced_folds(labels, seed):
        for train, test in folds:
            total[test] += softmax_rows(logits[test] + fit_bias(logits[train], labels[train], l2))
            draws[test] += 1
    for i in np.flatnonzero(draws == 0):
        keep = np.arange(n) != i
        total[i] = softmax_rows(logits[i : i + 1] + fit_bias(logits[keep], labels[keep], l2))[0]
        draws[i] = 1
    return total / draws[:, None]


def held_out_bias(logits: np.ndarray, labels: np.ndarray, grid: Sequence[float], seed: int
                  ) -> tuple[float, np.ndarray]:
    """Choose the L2 strength by held-out accuracy (then log-loss) over the seeds (``held_out_bias_probs``);
    return it and the held-out predictions made with it."""
    best: tuple[tuple[float, float], float, np.ndarray] | None = None
    for l2 in grid:
        q = held_out_bias_probs(logits, labels, l2, seed)
        pred = q.argmax(axis=1)
        key = (float(np.mean(pred == labels)), float(np.sum(np.log(np.maximum(q[np.arange(len(labels)), labels],
                                                                                  EPS)))))
        if best is None or key > best[0]:
            best = (key, l2, pred)
    assert best is not None
    return best[1], best[2]


def fold_calibrated_predictions(calibration: Calibration, probs: np.ndarray, labels: Sequence[str], seed: int
                                ) -> np.ndarray:
    """[R, S] class names the calibrated teacher predicts for seeds it scored ``probs`` ([S, M], raw), judged
    without letting a seed calibrate itself: a seed-fitted bias (``seed_bias``) is refitted on balanced folds
    (``evaluation.seed_judge``: one seed of every class held out, so no refit leans away from the held-out
    seed's class as leave-one-out does); label-free methods are applied as they are (R = 1)."""
    from tailorkd.evaluation.seed_judge import cross_validated_predictions

    names = np.asarray(calibration.label_names, dtype=object)
    logits = log_probs(probs) - np.array(calibration.log_prior)
    if calibration.method != "seed_bias":
        return names[(logits + np.array(calibration.bias)).argmax(axis=1)][None, :]
    y = np.array([list(names).index(str(label)) for label in labels])
    l2 = float(calibration.details.get("l2", 0.1))
    predicted, judged = cross_validated_predictions(
        lambda train, test: names[(logits[test] + fit_bias(logits[train], y[train], l2)).argmax(axis=1)], labels, seed)
    # A seed of a class with one seed cannot be held out and still fit its class's bias: the full fit judges it.
    predicted[:, ~judged] = names[(logits[~judged] + np.array(calibration.bias)).argmax(axis=1)]
    return predicted


def calibrate(method: str, label_names: Sequence[str], *, content_free: np.ndarray | None,
              domain: np.ndarray | None, seed_probs: np.ndarray | None, seed_labels: Sequence[str] | None,
              l2_grid: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0) -> Calibration:
    """Fit ``method`` (or, for ``auto``, every method and keep the best on the held-out seeds).

    ``content_free``/``domain``: the teacher's [K, M] distributions on content-free / random in-domain
    inputs; ``seed_probs``/``seed_labels``: its distributions on held-out expert seeds and their labels.
    ``details`` records each candidate's held-out seed accuracy and macro-F1 (``seed``: the fold draws of
    seed_bias's).
    """
    names = list(label_names)
    m = len(names)
    if method not in (*METHODS, "auto"):
        raise ValueError(f"unknown calibration method {method!r}; choose from {('auto', *METHODS)}")
    priors: dict[str, np.ndarray] = {"none": np.zeros(m)}
    if content_free is not None and len(content_free):
        priors["contextual"] = mean_log_prior(content_free)
    if domain is not None and len(domain):
        priors["domain"] = mean_log_prior(domain)
    have_seeds = seed_probs is not None and seed_labels is not None and len(seed_labels) > 0
    candidates: dict[str, dict[str, Any]] = {}
    fitted: dict[str, Calibration] = {name: Calibration(name, names, list(map(float, prior)), [0.0] * m)
                                      for name, prior in priors.items()}
    if have_seeds:
        unknown = sorted({str(y) for y in seed_labels} - set(names))  # type: ignore[union-attr]
        if unknown:
            raise ValueError(f"seed labels {unknown} are not among the task's labels {names}")
        y = np.array([names.index(str(label)) for label in seed_labels])  # type: ignore[union-attr]
        logits = log_probs(seed_probs)
        for name, prior in priors.items():
            candidates[name] = {**_scores(y, (logits - prior).argmax(axis=1), m), "held_out_seeds": len(y)}
        base = priors.get("domain", priors.get("contextual", priors["none"]))
        if len(y) >= 2:
            l2, held_out_pred = held_out_bias(logits - base, y, l2_grid, seed)
            bias = fit_bias(logits - base, y, l2)
            fitted["seed_bias"] = Calibration("seed_bias", names, list(map(float, base)), list(map(float, bias)),
                                              {"l2": l2})
            candidates["seed_bias"] = {**_scores(y, held_out_pred, m), "held_out_seeds": len(y),
                                       "judged_by": "refits on balanced folds", "l2": l2}
    if method == "auto":
        if candidates:
            order = [name for name in AUTO_ORDER if name in candidates]
            chosen = max(order, key=lambda name: (candidates[name]["macro_f1"], -order.index(name)))
            reason = "best macro-F1 on the held-out seeds"
        else:
            chosen = next(name for name in AUTO_ORDER if name in fitted)
            reason = "no held-out seeds: the first label-free method available"
    else:
        if method not in fitted:
            need = {"contextual": "content-free inputs", "domain": "in-domain random inputs",
                    "seed_bias": "at least 2 expert seeds that are not few-shot examples"}[method]
            raise ValueError(f"calibration method {method!r} needs {need}")
        chosen, reason = method, "set in the recipe"
    result = fitted[chosen]
    result.details = {**result.details, "asked": method, "chosen_because": reason, "candidates": candidates}
    return result
