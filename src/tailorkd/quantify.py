"""Corrected shares: each topic-day's class shares estimated by quantification, not by counting labels.

Counting a classifier's labels per day ("classify and count") is a biased estimate of a class's share: a
student that calls too many texts 'risk' on labelled data does so every day. Quantification corrects it with
the student's behaviour on labelled texts it never trained on (``LabelledPredictions``). The methods are
QuaPy's aggregative quantifiers, fed the student's stored probabilities (QuaPy never sees a text):

- ``raw``: classify and count (QuaPy's CC): the day's label counts, no correction;
- ``pcc``: probabilistic classify and count (mean probability; no labelled data needed);
- ``acc`` / ``pacc``: (probabilistic) adjusted classify and count: the day's counts (mean probabilities)
  solved against the student's confusion P(predicted | true) on the labelled texts (QuaPy's invariant-ratio
  system, solved exactly and projected onto the simplex; the ``minimize`` solver costs ~30x more per replicate);
- ``emq``: EM prior adjustment (Saerens-Latinne-Decaestecker), the training prior estimated as the student's
  mean probability on the labelled texts.

The interval of each share is a paired bootstrap: replicate b refits the quantifier on a class-stratified
resample of the labelled texts (the confusion's uncertainty; the labelled texts were drawn per class) and
applies it to a resample of the day's articles (the day's sampling). ``raw`` and ``pcc`` use no labelled data,
so only the day is resampled. The replicates of the risk share are kept: the alert rules read how sure an
alert is from them (``tailorkd.signals.find_alerts``), and a baseline made of the same replicates carries the
same confusion, so a rise over it is judged without counting that uncertainty twice.

Where the labelled texts come from: the seed guard's cross-fitted predictions of the shipped student's kind on
the expert seeds (students/seed_guard.json: each seed predicted by a refit that never saw it, at the shipped
student's temperature) — honest but few. ``labelled_from_guard`` reads them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tailorkd.errors import TailorkdError

log = logging.getLogger(__name__)

QUANTIFIERS = ("raw", "pcc", "acc", "pacc", "emq")
NEEDS_LABELLED = {"acc", "pacc", "emq"}
MAX_CONDITION = 1e6  # of the confusion, beyond which acc / pacc solve by QuaPy's minimize solver, not exactly


@dataclass(frozen=True)
class LabelledPredictions:
    """The student's probabilities [m, K] on labelled texts it never trained on, their labels (indices), and
    where they come from (said in summary.json)."""

    probs: np.ndarray
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or len(self.probs) != len(self.labels) or not len(self.labels):
            raise TailorkdError(f"{self.source}: {len(self.labels)} labels for probabilities of shape "
                                f"{self.probs.shape}")


def labelled_from_guard(record: dict[str, Any] | None, label_names: Sequence[str], temperature: float,
                        where: str = "students/seed_guard.json") -> LabelledPredictions | None:
    """The shipped candidate's cross-fitted probabilities on the seeds (from the seed guard's ``record``), at
    ``temperature`` (the shipped student's: the feed was scored at it), with the seeds' labels; None when the
    run has no guard record or it kept no cross-fitted probabilities for what ships."""
    if not isinstance(record, dict):
        return None
    shipped = record.get("shipped")
    entry = (record.get("candidates") or {}).get(shipped)
    seeds = record.get("seed_labels")
    probs = entry.get("oof_probs") if isinstance(entry, dict) else None
    if not isinstance(probs, list) or not isinstance(seeds, dict) or len(probs) != len(seeds):
        return None
    names = list(label_names)
    unknown = sorted({str(label) for label in seeds.values()} - set(names))
    if unknown:
        raise TailorkdError(f"{where}: seed labels {unknown} are not the task's labels {names}")
    raw = np.array([[np.nan if v is None else float(v) for v in row] if isinstance(row, list) else
                    [np.nan] * len(names) for row in probs], dtype=float)
    labels = np.array([names.index(str(label)) for label in seeds.values()])  # the record keeps the seeds' order
    kept = ~np.isnan(raw).any(axis=1) if raw.shape == (len(seeds), len(names)) else np.zeros(len(seeds), bool)
    if not kept.any():
        return None
    # The stored probabilities are softmax(logits / T): the same temperature on the fold predictions.
    logits = np.log(np.clip(raw[kept], 1e-12, 1.0)) / temperature
    scaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    return LabelledPredictions(scaled / scaled.sum(axis=1, keepdims=True), labels[kept],
                               f"{where}: {shipped}'s cross-fitted predictions on {int(kept.sum())} seeds")


@functools.cache
def _precomputed_class() -> type:
    """A fitted stand-in for the classifier QuaPy's aggregative quantifiers wrap: they are only ever given the
    student's stored outputs (aggregation_fit / aggregate), never texts."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Precomputed(ClassifierMixin, BaseEstimator):
        def __init__(self, n_classes: int = 2):
            self.n_classes = n_classes
            self.classes_ = np.arange(n_classes)  # fitted: QuaPy checks, and reads the classes from it

        def fit(self, *_: Any) -> Any:
            return self

    return Precomputed


def quapy_quantifier(method: str, n_classes: int) -> Any:
    """A QuaPy aggregative quantifier for ``method`` around the student's precomputed outputs."""
    import matplotlib

    # Importing quapy sets matplotlib's global figure size, dpi and font size (quapy.plot): keep ours.
    with matplotlib.rc_context():
        from quapy.method.aggregative import ACC, CC, EMQ, PACC, PCC

    classifier = _precomputed_class()(n_classes)
    if method == "raw":
        return CC(classifier, fit_classifier=False)
    if method == "pcc":
        return PCC(classifier, fit_classifier=False, val_split=None)
    if method in ("acc", "pacc"):
        kind = ACC if method == "acc" else PACC
        return kind(classifier, fit_classifier=False, val_split=None, solver="exact-cc", method="invariant-ratio",
                    norm="mapsimplex")
    if method == "emq":
        return EMQ(classifier, fit_classifier=False, val_split=None, exact_train_prev=False)
    raise TailorkdError(f"signals.quantifier: {method!r} is not one of {', '.join(QUANTIFIERS)}")


class ShareEstimator:
    """Class shares of a set of articles by one quantification method, with paired-bootstrap replicates (see
    the module docstring). ``labelled``: required by acc, pacc and emq."""

    def __init__(self, method: str, n_classes: int, labelled: LabelledPredictions | None = None,
                 replicates: int = 200, seed: int = 0):
        if method not in QUANTIFIERS:
            raise TailorkdError(f"signals.quantifier: {method!r} is not one of {', '.join(QUANTIFIERS)}")
        if method in NEEDS_LABELLED and labelled is None:
            raise TailorkdError(f"signals.quantifier: {method} needs the student's predictions on labelled texts "
                                "it never trained on (the seed guard's cross-fitted ones)")
        self.method, self.n_classes, self.replicates = method, n_classes, replicates
        self.rng = np.random.default_rng(seed)
        self.crisp = method == "raw" or method == "acc"
        self.point = quapy_quantifier(method, n_classes)
        self.fitted: list[Any] = []
        if labelled is not None and method in NEEDS_LABELLED:
            self._fit(self.point, labelled.probs, labelled.labels)
            strata = [np.flatnonzero(labelled.labels == k) for k in range(n_classes)]
            for _ in range(replicates):
                index = np.concatenate([self.rng.choice(s, len(s)) for s in strata if len(s)])
                quantifier = quapy_quantifier(method, n_classes)
                self._fit(quantifier, labelled.probs[index], labelled.labels[index])
                self.fitted.append(quantifier)

    def _fit(self, quantifier: Any, probs: np.ndarray, labels: np.ndarray) -> None:
        quantifier.aggregation_fit(self._outputs(probs), labels)
        rates = getattr(quantifier, "Pte_cond_estim_", None)  # acc / pacc: P(predicted | true)
        if rates is not None and np.linalg.cond(rates) > MAX_CONDITION:
            # (Nearly) singular: the exact solution is noise, so this one searches the simplex instead.
            quantifier.solver = "minimize"

    def _outputs(self, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(axis=1) if self.crisp else probs

    def estimate(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shares [K] of the articles whose probabilities are ``probs`` [n, K], and their replicates [B, K]."""
        import warnings

        outputs = self._outputs(np.asarray(probs, dtype=float))
        n = len(outputs)
        with warnings.catch_warnings():  # EMQ warns when it stops at its iteration cap; the estimate stands
            warnings.simplefilter("ignore")
            point = np.asarray(self.point.aggregate(outputs), dtype=float)
            draws = self.rng.integers(0, n, size=(self.replicates, n))
            if self.fitted:
                reps = np.array([np.asarray(q.aggregate(outputs[d]), dtype=float) for q, d in zip(self.fitted, draws)])
            elif self.crisp:  # CC on each resample, at once: its aggregate is the resample's label shares
                reps = (outputs[draws][..., None] == np.arange(self.n_classes)).mean(axis=1)
            else:  # PCC on each resample, at once: the resample's mean probability
                reps = outputs[draws].mean(axis=1)
        return point, reps


def corrected_shares(signals: pd.DataFrame, daily: pd.DataFrame, label_names: Sequence[str],
                     risk_labels: Sequence[str], estimator: ShareEstimator, level: float = 0.95
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """``daily`` with, per topic-day, each label's corrected share (``share_<label>``, ``_low``, ``_high``) and
    the corrected risk share (``risk_share_estimate``, ``_low``, ``_high``) beside the raw count's; and the
    risk share's replicates [rows of ``daily``, B]. ``signals``: the articles, with p_<label> columns."""
    names = list(label_names)
    risk = [names.index(r) for r in risk_labels]
    tail = (1 - level) / 2
    points = np.full((len(daily), len(names)), np.nan)
    lows, highs = points.copy(), points.copy()
    replicates = np.full((len(daily), estimator.replicates), np.nan)
    if len(daily):
        probs = signals[[f"p_{name}" for name in names]].to_numpy(dtype=float)
        groups = signals.groupby(["topic", "day"], sort=False).indices
        for i, (topic, day) in enumerate(zip(daily["topic"], daily["day"])):
            point, reps = estimator.estimate(probs[groups[(topic, day)]])
            points[i] = point
            lows[i], highs[i] = np.quantile(reps, [tail, 1 - tail], axis=0)
            replicates[i] = reps[:, risk].sum(axis=1)
    out = daily.copy()
    for j, name in enumerate(names):
        out[f"share_{name}"], out[f"share_{name}_low"], out[f"share_{name}_high"] = points[:, j], lows[:, j], \
            highs[:, j]
    out["risk_share_estimate"] = points[:, risk].sum(axis=1)
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=1) if len(daily) else (np.array([]), np.array([]))
    out["risk_share_estimate_low"], out["risk_share_estimate_high"] = low, high
    return out, replicates
