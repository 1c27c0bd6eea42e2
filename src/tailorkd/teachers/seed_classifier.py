"""Seed-classifier teachers: classifiers fitted on the ~20 expert seeds that label texts like a teacher.

Two kinds (``teacher.ensemble.seed_classifier.method``, registered in ``teachers.registry``), both
``base.SeedModel``s: ``logistic_regression`` (``LogisticSeedModel``: on frozen sentence embeddings, the
seed-only baseline's classifier, ``evaluation.baselines``) and ``setfit`` (``SetFitSeedModel``: the encoder
tuned on pairs of seeds, ``evaluation.setfit_baseline``). Each is judged by refits on balanced folds of the
seeds (``evaluation.seed_judge``), not leave-one-out.

Their distributions go into the label store like a teacher's: under the model's identity, with the seed set as
the "prompt" (``seeds_fingerprint``), so other seeds refit it (``label_with_seed_model``).
``SeedClassifierLabeller`` lets the logistic one label in the teacher's place (the teacher check's fallback,
the seed guard's self-training targets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd.data.pool_rows import windows
from tailorkd.evaluation.baselines import classifier_probs, fit_seed_classifier, judge_seed_classifier
from tailorkd.evaluation.seed_judge import REPEATS, judge_by_refits
from tailorkd.labels import LabelStore, StoredLabels, make_record, text_hash, unlabelled_rows
from tailorkd.models.embedder import SentenceEmbedder, embedding_text

if TYPE_CHECKING:
    from tailorkd.data import PreparedData
    from tailorkd.recipe import Recipe, SeedClassifierConfig
    from tailorkd.teachers.base import SeedModel

log = logging.getLogger(__name__)


def logistic_seed_classifier_identity(encoder: str) -> str:
    """The logistic-regression seed classifier's identity in the label store."""
    return f"seed-classifier|{encoder}|logistic-regression"


class LogisticSeedModel:
    """The logistic regression on frozen sentence embeddings of the seeds (the seed-only baseline's) as a
    ``SeedModel``: ``fit()`` gives a function from rows to [N, M] probabilities, ``judge()`` the judgement from
    refits on balanced folds (``baselines.judge_seed_classifier``)."""

    def __init__(self, seeds: Sequence[dict[str, Any]], encoder: str, label_names: Sequence[str], seed: int):
        self.encoder, self.names, self.seed = encoder, list(label_names), seed
        self.identity = logistic_seed_classifier_identity(encoder)
        self.description = f"seed classifier: logistic regression on {encoder} embeddings of {len(seeds)} seeds"
        self.labels = [str(r["label"]) for r in seeds]
        self.embed = SentenceEmbedder(encoder)
        self.x_seed = self.embed([embedding_text(r) for r in seeds])
        self.judged_as = f"balanced folds {REPEATS}x, seed {seed}, labels {','.join(self.names)}"

    @classmethod
    def from_config(cls, config: SeedClassifierConfig, seeds: Sequence[dict[str, Any]], label_names: Sequence[str],
                    seed: int) -> LogisticSeedModel:
        return cls(seeds, config.encoder, label_names, seed)

    def fit(self) -> Callable[[Sequence[dict[str, Any]]], np.ndarray]:
        model = fit_seed_classifier(self.x_seed, self.labels, self.seed)
        return lambda rows: classifier_probs(model, self.embed([embedding_text(r) for r in rows]), self.names)

    def judge(self) -> dict[str, Any]:
        return judge_seed_classifier(self.x_seed, self.labels, self.names, self.seed)


#: Balanced-fold partitions a SetFit member is judged on: one (each fold is a SetFit training, ~7 per partition
#: with 21 seeds of three classes), where the logistic regression, fitted in milliseconds, takes five.
JUDGE_REPEATS = 1


class SetFitSeedModel:
    """SetFit on the seeds as a ``SeedModel``: ``fit()`` gives a function from rows to [N, M] probabilities,
    ``judge()`` the judgement from refits on balanced folds."""

    def __init__(self, seeds: Sequence[dict[str, Any]], encoder: str, label_names: Sequence[str], seed: int,
                 iterations: int = 20):
        self.seeds, self.encoder, self.names = list(seeds), encoder, list(label_names)
        self.seed, self.iterations = seed, iterations
        # Its fit depends on the random seed (pairs, head), unlike the logistic regression's.
        self.identity = f"seed-classifier|{encoder}|setfit|iterations={iterations}|seed={seed}"
        self.description = (f"seed classifier: SetFit on {encoder} tuned on pairs of {len(self.seeds)} seeds "
                            f"({iterations} per seed), logistic-regression head")
        self.judged_as = f"balanced folds {JUDGE_REPEATS}x, seed {seed}, labels {','.join(self.names)}"

    @classmethod
    def from_config(cls, config: SeedClassifierConfig, seeds: Sequence[dict[str, Any]], label_names: Sequence[str],
                    seed: int) -> SetFitSeedModel:
        return cls(seeds, config.encoder, label_names, seed, config.setfit_iterations)

    def _predictor(self, seeds: Sequence[dict[str, Any]]) -> Callable[[Sequence[dict[str, Any]]], np.ndarray]:
        from tailorkd.evaluation.setfit_baseline import fit_setfit, setfit_probs

        model = fit_setfit(seeds, self.names, self.encoder, self.seed, self.iterations)
        return lambda rows: setfit_probs(model, [embedding_text(r) for r in rows], self.names)

    def fit(self) -> Callable[[Sequence[dict[str, Any]]], np.ndarray]:
        return self._predictor(self.seeds)

    def judge(self) -> dict[str, Any]:
        def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            probs = self._predictor([self.seeds[i] for i in train])([self.seeds[i] for i in test])
            return np.asarray(self.names, dtype=object)[probs.argmax(axis=1)]

        return judge_by_refits(fit_predict, [str(r["label"]) for r in self.seeds], self.names, self.seed,
                               JUDGE_REPEATS, one_thread=False, refit=", SetFit trained anew per fold")


def seeds_fingerprint(seeds: Sequence[dict[str, Any]]) -> str:
    """The seed set a seed classifier is fitted on, as its "prompt" fingerprint in the label store."""
    return "seeds-" + hashlib.sha256(json.dumps(
        sorted([str(r["id"]), str(r["label"]), text_hash(r["text"])] for r in seeds)).encode()).hexdigest()[:16]


def seed_classifier_key(seeds: Sequence[dict[str, Any]], encoder: str) -> tuple[str, str]:
    """The logistic-regression seed classifier's (identity, "prompt" fingerprint) in the label store: its
    encoder, and the seed set it is fitted on (so other seeds refit it)."""
    return logistic_seed_classifier_identity(encoder), seeds_fingerprint(seeds)


def seed_classifier_encoder(recipe: Recipe) -> str:
    """The sentence encoder the recipe's seed classifier uses: the ensemble member's, else the seed-only
    baseline's."""
    ensemble = recipe.teacher.ensemble
    if ensemble is not None and ensemble.seed_classifier is not None:
        return ensemble.seed_classifier.encoder
    return recipe.evaluation.seed_only_encoder


def label_with_seed_model(model: SeedModel, seeds: Sequence[dict[str, Any]], label_names: Sequence[str],
                          store: LabelStore, *row_sets: Sequence[dict[str, Any]]) -> int:
    """Store ``model``'s distributions of the rows of every one of ``row_sets`` that the store lacks (a window at
    a time), keyed by its identity and ``seeds_fingerprint(seeds)``; fitted on all the seeds once, and only if
    a row lacks its label. Returns how many rows were labelled now."""
    names = list(label_names)
    identity, fingerprint = model.identity, seeds_fingerprint(seeds)
    predict, labelled = None, 0
    for window in chain.from_iterable(windows(rows) for rows in row_sets):
        todo = unlabelled_rows(store, (identity, fingerprint), window)
        if not todo:
            continue
        if predict is None:
            predict = model.fit()
        t0 = time.perf_counter()
        probs = predict(todo)
        per_text = (time.perf_counter() - t0) / len(todo)
        store.put_batch(identity, fingerprint, names,
                        [make_record(r["id"], r["text"], p, names, per_text) for r, p in zip(todo, probs)])
        labelled += len(todo)
    if labelled:
        log.info("%s labelled %d texts", model.description, labelled)
    return labelled


class SeedClassifierLabeller:
    """The seed classifier (logistic regression, the seed-only baseline's, with ``seed_classifier_encoder``)
    labelling in the teacher's place (the teacher check's fallback, the seed guard's self-training targets):
    ``label`` stores its distributions like a teacher's (``label_with_seed_model``) and returns them."""

    def __init__(self, recipe: Recipe, data: PreparedData):
        self.recipe, self.seeds = recipe, data.rows("seed")
        self.model = LogisticSeedModel(self.seeds, seed_classifier_encoder(recipe), recipe.task.label_names,
                                       recipe.seed)
        self.identity, self.prompt_fingerprint = self.model.identity, seeds_fingerprint(self.seeds)

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "", **options: Any
              ) -> StoredLabels:
        label_with_seed_model(self.model, self.seeds, self.recipe.task.label_names, store, rows)
        return StoredLabels(store, self.identity, self.prompt_fingerprint, rows, self.recipe.task.label_names)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model.description, "identity": self.identity, "prompt": self.prompt_fingerprint}
