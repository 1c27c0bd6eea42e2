"""Several teachers, one distribution: combine the members' (calibrated) class distributions per text.

- ``weighted_mean``: sum_i w_i p_i (a mixture; forgiving when one member is confidently wrong).
- ``product``: prod_i p_i^w_i, renormalised (a product of experts: classes every member allows win).

Weights are the members' accuracies on the held-out expert seeds (``seed_accuracy``: w_i proportional to
accuracy, equal when no seed was held out or all score 0) or ``equal``. A member that abstained on a
text (NaN row) is left out of that text's combination and the others' weights are renormalised.

``disagreement`` is a per-text reliability signal: the share of members whose top class differs from
the combined top class (0 = all agree).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tailorkd.calibration import EPS

COMBINES = ("weighted_mean", "product")


def seed_weights(accuracies: Sequence[float | None]) -> list[float]:
    """Weights proportional to held-out seed accuracy; equal when any is unknown or all are 0."""
    if any(a is None for a in accuracies) or not sum(a for a in accuracies if a is not None):
        return [1.0 / len(accuracies)] * len(accuracies)
    total = float(sum(accuracies))  # type: ignore[arg-type]
    return [float(a) / total for a in accuracies]  # type: ignore[arg-type]


def combine(member_probs: Sequence[np.ndarray], weights: Sequence[float], how: str) -> np.ndarray:
    """[N, M] combined distribution from each member's [N, M] distribution (rows of NaN = abstained)."""
    if how not in COMBINES:
        raise ValueError(f"unknown combination {how!r}; choose from {COMBINES}")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # [K, N, M]
    answered = ~np.isnan(stack).any(axis=2)  # [K, N]
    w = np.asarray(weights, dtype=np.float64)[:, None] * answered  # [K, N]
    norm = w.sum(axis=0)  # [N]
    out = np.full(stack.shape[1:], np.nan)
    ok = norm > 0
    w = np.where(ok, w / np.where(ok, norm, 1.0), 0.0)
    filled = np.where(answered[:, :, None], stack, 1.0)
    if how == "weighted_mean":
        mixed = (w[:, :, None] * np.where(answered[:, :, None], stack, 0.0)).sum(axis=0)
    else:
        logp = (w[:, :, None] * np.log(np.clip(filled, EPS, 1.0))).sum(axis=0)
        mixed = np.exp(logp - logp.max(axis=1, keepdims=True))
    out[ok] = mixed[ok] / mixed[ok].sum(axis=1, keepdims=True)
    return out


def disagreement(member_probs: Sequence[np.ndarray], combined: np.ndarray) -> np.ndarray:
    """[N] share of the answering members whose top class differs from the combined one (NaN: none answered)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])
    answered = ~np.isnan(stack).any(axis=2)
    top = np.where(answered, np.nan_to_num(stack, nan=-1.0).argmax(axis=2), -1)
    best = np.nan_to_num(combined, nan=-1.0).argmax(axis=1)
    differ = (top != best[None, :]) & answered
    count = answered.sum(axis=0)
    return np.where(count > 0, differ.sum(axis=0) / np.maximum(count, 1), np.nan)
