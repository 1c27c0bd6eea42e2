"""The parts of a report every system shares: its predictions frame, cost block, latency, severity counts, its
comparison with the teacher and the per-language scores. Pure functions of predictions and measurements."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# The teacher's prediction on a test text it abstained on: no class, so it counts as wrong.
ABSTAINED = "(abstained)"
# Languages with fewer test texts than this are scored together as "other": a score on 1-4 texts says little.
MIN_TEXTS_PER_LANGUAGE = 5


def predictions_frame(rows: list[dict[str, Any]], probs: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One row per text: id, label, predicted, confidence, p_<class>. A row of NaN probabilities (the teacher
    abstained) is predicted as ABSTAINED, which is no class, so it counts as wrong."""
    answered = ~np.isnan(probs).any(axis=1)
    filled = np.where(answered[:, None], probs, 0.0)
    frame = pd.DataFrame({"id": [r["id"] for r in rows], "label": [r["label"] for r in rows],
                          "predicted": [names[i] if ok else ABSTAINED for i, ok in zip(filled.argmax(1), answered)],
                          "confidence": np.where(answered, filled.max(1), np.nan)})
    for j, name in enumerate(names):
        frame[f"p_{name}"] = probs[:, j]
    return frame


def latency(per_text_seconds: np.ndarray, measured: str) -> dict[str, Any] | None:
    """Median and 95th percentile of seconds per text (NaN entries, e.g. abstentions, left out)."""
    known = per_text_seconds[~np.isnan(per_text_seconds)]
    if not len(known):
        return None
    return {"median": float(np.median(known)), "p95": float(np.percentile(known, 95)), "measured": measured}


def cost(texts_per_second: float | None = None, latency: dict[str, Any] | None = None,
         training: dict[str, Any] | None = None) -> dict[str, Any]:
    """A system's cost block (the same keys for every system; None where not measured). ``training``: a
    student's training summary (parameters, train_seconds, peak_memory)."""
    training = training or {}
    params = training.get("parameters") or {}
    memory = training.get("peak_memory") or {}
    return {
        "texts_per_second": texts_per_second,
        "latency_seconds": latency,
        "trainable_parameters": params.get("trainable"),
        "total_parameters": params.get("total"),
        "peak_training_memory_gb": memory.get("process_peak_gb"),
        "training_memory_added_gb": memory.get("added_by_training_gb"),
        "memory_source": memory.get("source"),
        "training_seconds": training.get("train_seconds"),
    }


def severity_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, dict[str, int]]:
    """{level: {human label: texts}} of a predictions frame with a severity column."""
    table = pd.crosstab(frame["severity"], frame["label"]).reindex(columns=names, fill_value=0)
    return {str(level): {name: int(row[name]) for name in names} for level, row in table.iterrows()}


def versus_teacher(system: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float | None]:
    """A system's accuracy and macro-F1 as shares of the teacher's, and its speed as a multiple of it."""
    s, t = system["metrics"], teacher["metrics"]
    speed, teacher_speed = system["cost"]["texts_per_second"], teacher["cost"]["texts_per_second"]
    return {
        "accuracy_ratio": s["accuracy"] / t["accuracy"] if t["accuracy"] else None,
        "macro_f1_ratio": s["macro_f1"] / t["macro_f1"] if t["macro_f1"] else None,
        "speedup": speed / teacher_speed if speed and teacher_speed else None,
    }


def by_language(test: pd.DataFrame, frames: dict[str, pd.DataFrame], names: list[str]) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of every system per language of the test texts, when they have two or more
    (known from the source or data.detect_language); languages with fewer than MIN_TEXTS_PER_LANGUAGE
    texts are pooled as "other (<codes>)". None when there is one language or none."""
    from tailorkd.evaluation.metrics import classification_metrics

    if "language" not in test.columns or test["language"].dropna().nunique() < 2:
        return None
    language = dict(zip(test["id"], test["language"].fillna("unknown")))
    counts = pd.Series(list(language.values())).value_counts()
    rare = sorted(str(lang) for lang, n in counts.items() if n < MIN_TEXTS_PER_LANGUAGE)
    if len(rare) > 1:
        other = f"other ({', '.join(rare)})"
        language = {k: (other if v in rare else v) for k, v in language.items()}
    out: dict[str, Any] = {}
    for lang, n in pd.Series(list(language.values())).value_counts().items():
        entry: dict[str, Any] = {"n": int(n)}
        for system, frame in frames.items():
            part = frame[frame["id"].map(language) == lang]
            m = classification_metrics(part["label"].tolist(), part["predicted"].tolist(), names)
            entry[system] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        out[str(lang)] = entry
    return out
