"""A student's confidence that means what it says: one temperature fitted on labelled texts it never trained on.

A distilled student learns the teacher's distributions softened by the distillation temperature, so its top
probability says little about how often it is right (the demo's students answer 0.37 where they are right 86%
of the time). Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the
logits by one number T fitted to minimise the negative log-likelihood of true labels; the predicted class is
unchanged, so accuracy is too.

The labelled texts are the expert seeds: the student never trains on them (it learns the teacher's labels of
the pool), so they are held out already. A seed shown to a causal-LM student as a few-shot example is left
out. With ~20 seeds the student may get every one right, and the likelihood would then push T towards 0
(certainty); the targets are therefore smoothed as a Laplace prior would (each seed counts as n/(n+1) of its
label and 1/(n+1) spread over all classes), which caps the fitted confidence near (n+1)/(n+2)-like levels when
the seeds cannot tell more.

Shapes: ``probs`` [N, M] (rows sum to 1), ``labels`` [N] class indices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

T_BOUNDS = (0.05, 20.0)
_TINY = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): the probabilities of logits divided by T (log-softmax differs from the logits
    by a constant per row, which the softmax removes)."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=float)
    z = np.log(np.clip(np.asarray(probs, dtype=float), _TINY, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def smoothed_nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean cross-entropy of softmax(log(probs) / T) with the Laplace-smoothed one-hot targets."""
    n, m = probs.shape
    eps = 1.0 / (n + 1)
    targets = np.full((n, m), eps / m)
    targets[np.arange(n), labels] += 1.0 - eps
    scaled = np.log(np.clip(apply_temperature(probs, temperature), _TINY, None))
    return float(-(targets * scaled).sum(axis=1).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The T in ``T_BOUNDS`` that minimises ``smoothed_nll`` (bounded search over log T), with the fit's
    figures: {"temperature", "n", "nll_before", "nll_after", "mean_confidence_before", "mean_confidence_after",
    "accuracy"}."""
    from scipy.optimize import minimize_scalar

    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    if len(probs) == 0:
        raise ValueError("no labelled texts to fit a temperature on")
    result = minimize_scalar(lambda log_t: smoothed_nll(probs, labels, math.exp(log_t)),
                             bounds=tuple(math.log(b) for b in T_BOUNDS), method="bounded",
                             options={"xatol": 1e-4})
    temperature = float(math.exp(result.x))
    after = apply_temperature(probs, temperature)
    return {
        "temperature": temperature,
        "n": int(len(probs)),
        "nll_before": smoothed_nll(probs, labels, 1.0),
        "nll_after": smoothed_nll(probs, labels, temperature),
        "mean_confidence_before": float(probs.max(axis=1).mean()),
        "mean_confidence_after": float(after.max(axis=1).mean()),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
    }


def confidence_warning(fitted: dict[str, Any]) -> str | None:
    """Why a fitted temperature may not hold beyond the seeds, or None: every seed answered right (the seeds
    cannot show how often the student errs, so its confidence may be too high), or a temperature at the edge
    of the search (the seeds pushed it as far as allowed)."""
    if fitted["accuracy"] == 1.0:
        return (f"the student answers all {fitted['n']} seeds right, so they cannot show how often it errs: its "
                "calibrated confidence may be too high on other texts (more, or less typical, seeds would tell)")
    if min(abs(fitted["temperature"] - bound) / bound for bound in T_BOUNDS) < 1e-3:
        return (f"the temperature reached the bound of its search ({fitted['temperature']:.3g}): the seeds ask "
                "for more than scaling can give, e.g. an untrained head whose answers are near chance")
    return None
