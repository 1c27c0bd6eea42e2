"""A realistic report of five systems, made from seeded predictions without running any model: for the report,
figure, comparison and terminal-table tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tailorkd.evaluation.metrics import system_metrics

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
# As long as the real one: the terminal table once wrapped this row over eight lines.
SEED_ONLY_MODEL = "logistic regression on minilm-l6 embeddings of 21 seeds (C=1)"


def fake_system(accuracy: float, seed: int, model: str, texts_per_second: float | None, n: int = 120
                ) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    truth = [str(t) for t in rng.choice(TOPICS, n)]
    pred = [t if rng.random() < accuracy else str(rng.choice(TOPICS)) for t in truth]
    confidence = np.clip(rng.normal(accuracy, 0.1, n), 0, 1)
    return {"model": model, "metrics": system_metrics(truth, pred, confidence, TOPICS, seed=0, resamples=100),
            "cost": {"texts_per_second": texts_per_second, "latency_seconds": None}}


def fake_report(adaptive_key: str = "adaptive_kd") -> dict[str, Any]:
    """Teacher, untrained student, standard KD, adaptive KD (keyed ``adaptive_key``: "student" in old reports)
    and the seed-only baseline; standard and adaptive KD score alike (same predictions) at nearly one speed."""
    return {"recipe": {"name": "bbc-news-gemma3-270m_to_minilm-l6_lora", "task": "topic", "hash": "0123abcd"},
            "systems": {
                "teacher": fake_system(0.9, 1, "gemma-3-270m-it", 4.2),
                "untrained_student": fake_system(0.3, 2, "minilm-l6 (untrained classification head)", 880.0),
                "standard_kd": fake_system(0.82, 3, "minilm-l6, every weight trained", 910.0),
                adaptive_key: fake_system(0.82, 3, "minilm-l6, LoRA r=8, 2 progressive stages", 905.0),
                "seed_only": fake_system(0.7, 5, SEED_ONLY_MODEL, 1500.0),
            }}
