"""The seed-only baseline: what the ~20 expert seeds give without any teacher.

A logistic regression on frozen sentence embeddings (mean-pooled, L2-normalised encoder states, as
sentence-transformers computes them for MiniLM) of the seed texts. If a distilled student does not beat
it, the teacher added nothing the seeds did not already hold.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Sequence

import numpy as np
import torch

from tailorkd.errors import TailorkdError


class SentenceEmbedder:
    """A sentence encoder loaded once: texts -> [N, H] L2-normalised mean-pooled embeddings (as
    sentence-transformers computes them for MiniLM)."""

    def __init__(self, encoder: str, batch_size: int = 32, max_length: int = 256):
        from tailorkd.models import load_encoder

        self.encoder = encoder
        self.batch_size, self.max_length = batch_size, max_length
        self.model, self.tokenizer = load_encoder(encoder)
        self.model.eval()

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def embed_texts(texts: Sequence[str], encoder: str, batch_size: int = 32, max_length: int = 256) -> np.ndarray:
    """[N, H] L2-normalised mean-pooled embeddings of ``texts`` by ``encoder`` (registry name, folder, hub id)."""
    return SentenceEmbedder(encoder, batch_size, max_length)(texts)


def embedding_text(row: dict[str, Any]) -> str:
    """What is embedded of a data row: its title and text ("<title>. <text>"), or the text alone."""
    title = row.get("title")
    return f"{title}. {row['text']}" if title else str(row["text"])



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


def logistic_seed_classifier_identity(encoder: str) -> str:
    """The logistic-regression seed classifier's identity in the label store."""
    return f"seed-classifier|{encoder}|logistic-regression"


class LogisticSeedModel:
    """The logistic regression on frozen sentence embeddings of the seeds (the seed-only baseline's) as a
    seed-classifier member (the protocol of ``stages.ensemble``): ``fit()`` gives a function from rows to
    [N, M] probabilities, ``judge()`` the judgement from refits on balanced folds (``judge_seed_classifier``)."""

    def __init__(self, seeds: Sequence[dict[str, Any]], encoder: str, label_names: Sequence[str], seed: int):
        self.encoder, self.names, self.seed = encoder, list(label_names), seed
        self.identity = logistic_seed_classifier_identity(encoder)
        self.description = f"seed classifier: logistic regression on {encoder} embeddings of {len(seeds)} seeds"
        self.labels = [str(r["label"]) for r in seeds]
        self.embed = SentenceEmbedder(encoder)
        self.x_seed = self.embed([embedding_text(r) for r in seeds])
        from tailorkd.evaluation.seed_judge import REPEATS

        self.judged_as = f"balanced folds {REPEATS}x, seed {seed}, labels {','.join(self.names)}"

    def fit(self) -> Any:
        model = fit_seed_classifier(self.x_seed, self.labels, self.seed)
        return lambda rows: classifier_probs(model, self.embed([embedding_text(r) for r in rows]), self.names)

    def judge(self) -> dict[str, Any]:
        from tailorkd.evaluation.seed_judge import judge_seed_classifier

        return judge_seed_classifier(self.x_seed, self.labels, self.names, self.seed)
