"""The seed-only baseline: what the ~20 expert seeds give without any teacher.

A logistic regression on frozen sentence embeddings (mean-pooled, L2-normalised encoder states, as
sentence-transformers computes them for MiniLM) of the seed texts. If a distilled student does not beat
it, the teacher added nothing the seeds did not already hold.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Sequence

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.evaluation.seed_judge import REPEATS, cross_validated_predictions, judge_by_refits
from tailorkd.models.embedder import SentenceEmbedder, embedding_text


def _current_cv_options() -> dict[str, Any]:
    """LogisticRegressionCV options whose defaults recent scikit-learn is changing (each left unset warns with a
    FutureWarning the user sees), set to what keeps today's fit: plain L2 (l1_ratio 0) and C_ as one float
    (read through np.atleast_1d either way). Older versions lack them, so only what this one has is passed."""
    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    wanted = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    return {k: v for k, v in wanted.items() if k in params and params[k].default == "warn"}


def fit_seed_classifier(x_seed: np.ndarray, labels: Sequence[str], seed: int) -> Any:
    """Logistic regression on seed embeddings; C chosen by stratified cross-validation over the seeds when
    every class has at least two of them (else C=10)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    labels = [str(label) for label in labels]
    if len(set(labels)) < 2:
        raise TailorkdError(f"a seed classifier needs seeds of at least two classes, got {sorted(set(labels))}")
    smallest = min(labels.count(label) for label in set(labels))
    if smallest >= 2:
        # scoring named: accuracy is today's default, which scikit-learn 1.11 changes to log-loss.
        model = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=min(5, smallest), max_iter=2000,
                                     random_state=seed, scoring="accuracy", **_current_cv_options())
    else:
        model = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    return model.fit(x_seed, labels)


def classifier_probs(model: Any, x: np.ndarray, label_names: Sequence[str]) -> np.ndarray:
    """[N, M] probabilities in the task's label order (a class the classifier never saw gets 0)."""
    names = list(label_names)
    probs = np.zeros((len(x), len(names)))
    if len(x):
        known = model.predict_proba(x)
        for j, cls in enumerate(model.classes_):
            probs[:, names.index(cls)] = known[:, j]
    return probs


def seed_only_baseline(seeds: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], label_names: Sequence[str],
                       encoder: str, seed: int) -> dict[str, Any]:
    """Fit on the seeds, predict ``rows``: {"probs": [N, M] in label order, "seconds_per_text", "C", "seeds"}.

    The regularisation strength C is chosen by stratified cross-validation over the seeds when every class
    has at least two of them; classes with no seed get probability 0.
    """
    labels = [str(r["label"]) for r in seeds]
    if len(set(labels)) < 2:
        raise TailorkdError(f"the seed-only baseline needs seeds of at least two classes, got {sorted(set(labels))}")
    embed = SentenceEmbedder(encoder)
    x_seed = embed([embedding_text(r) for r in seeds])
    t0 = time.perf_counter()
    x = embed([embedding_text(r) for r in rows])
    embed_s = time.perf_counter() - t0
    model = fit_seed_classifier(x_seed, labels, seed)
    t1 = time.perf_counter()
    probs = classifier_probs(model, x, label_names)
    predict_s = time.perf_counter() - t1
    chosen_c = float(np.atleast_1d(model.C_)[0]) if hasattr(model, "C_") else float(model.C)
    return {"probs": probs, "seconds_per_text": (embed_s + predict_s) / max(len(rows), 1), "C": chosen_c,
            "seeds": len(seeds)}


def seed_classifier_predictions(x_seed: np.ndarray, labels: Sequence[str], seed: int, repeats: int = REPEATS
                                ) -> tuple[np.ndarray, np.ndarray]:
    """The seed classifier (``fit_seed_classifier``) refitted on balanced folds of the seeds
    (``seed_judge.cross_validated_predictions``): [R, S] predictions and the judged mask."""
    return cross_validated_predictions(_seed_classifier_refit(x_seed, labels, seed), labels, seed, repeats)


def judge_seed_classifier(x_seed: np.ndarray, labels: Sequence[str], label_names: Sequence[str], seed: int,
                          repeats: int = REPEATS) -> dict[str, Any]:
    """The seed classifier's ``seed_judge.judgement`` from balanced-fold refits (seeds of single-seed classes
    left out)."""
    return judge_by_refits(_seed_classifier_refit(x_seed, labels, seed), labels, label_names, seed, repeats)


def _seed_classifier_refit(x_seed: np.ndarray, labels: Sequence[str], seed: int
                           ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fit_predict`` for ``seed_judge.cross_validated_predictions``: the seed classifier fitted on the train
    seeds."""
    y = np.asarray([str(label) for label in labels])
    return lambda train, test: fit_seed_classifier(x_seed[train], y[train], seed).predict(x_seed[test])
