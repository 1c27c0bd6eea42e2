"""The seed-only baseline: what the ~20 expert seeds give without any teacher.

A logistic regression on frozen sentence embeddings (mean-pooled, L2-normalised encoder states, as
sentence-transformers computes them for MiniLM) of the seed texts. If a distilled student does not beat
it, the teacher added nothing the seeds did not already hold.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from tailorkd.errors import TailorkdError


@torch.no_grad()
def embed_texts(texts: Sequence[str], encoder: str, batch_size: int = 32, max_length: int = 256) -> np.ndarray:
    """[N, H] L2-normalised mean-pooled embeddings of ``texts`` by ``encoder`` (registry name, folder, hub id)."""
    from tailorkd.models import load_encoder

    model, tokenizer = load_encoder(encoder)
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _text(row: dict[str, Any]) -> str:
    title = row.get("title")
    return f"{title}. {row['text']}" if title else str(row["text"])


def seed_only_baseline(seeds: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], label_names: Sequence[str],
                       encoder: str, seed: int) -> dict[str, Any]:
    """Fit on the seeds, predict ``rows``: {"probs": [N, M] in label order, "seconds_per_text", "C", "seeds"}.

    The regularisation strength C is chosen by stratified cross-validation over the seeds when every class
    has at least two of them; classes with no seed get probability 0.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    names = list(label_names)
    labels = [str(r["label"]) for r in seeds]
    if len(set(labels)) < 2:
        raise TailorkdError(f"the seed-only baseline needs seeds of at least two classes, got {sorted(set(labels))}")
    x_seed = embed_texts([_text(r) for r in seeds], encoder)
    t0 = time.perf_counter()
    x = embed_texts([_text(r) for r in rows], encoder)
    embed_s = time.perf_counter() - t0
    smallest = min(labels.count(label) for label in set(labels))
    if smallest >= 2:
        model = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=min(5, smallest), max_iter=2000,
                                     random_state=seed)
    else:
        model = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    model.fit(x_seed, labels)
    t1 = time.perf_counter()
    probs_known = model.predict_proba(x) if len(rows) else np.zeros((0, len(model.classes_)))
    predict_s = time.perf_counter() - t1
    probs = np.zeros((len(rows), len(names)))
    for j, cls in enumerate(model.classes_):
        probs[:, names.index(cls)] = probs_known[:, j]
    chosen_c = float(np.atleast_1d(model.C_)[0]) if hasattr(model, "C_") else float(model.C)
    return {"probs": probs, "seconds_per_text": (embed_s + predict_s) / max(len(rows), 1), "C": chosen_c,
            "seeds": len(seeds)}
