"""The seed-only baseline on the real packaged MiniLM encoder."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TOPICS, topic_rows
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.baselines import embed_texts, seed_only_baseline


def test_seed_only_baseline_learns_topics_from_a_few_seeds():
    rows = [{**r, "text": r["text"].replace("News item", "Report")} for r in topic_rows(6)]
    seeds = [r for r in rows if r["id"].endswith(("-0", "-1"))]  # 2 per class
    test = [r for r in rows if r not in seeds]
    names = TOPICS + ["weather"]  # a class without seeds gets probability 0
    result = seed_only_baseline(seeds, test, names, "minilm-l6", seed=0)
    probs = result["probs"]
    assert probs.shape == (len(test), len(names)) and np.allclose(probs.sum(1), 1.0)
    assert (probs[:, names.index("weather")] == 0).all()
    accuracy = np.mean([names[i] == r["label"] for i, r in zip(probs.argmax(1), test)])
    assert accuracy >= 0.9  # the topic word is in every text: real embeddings separate them
    assert result["seeds"] == 10 and result["C"] in (0.1, 1.0, 10.0, 100.0) and result["seconds_per_text"] > 0


def test_embeddings_are_normalised_and_seeds_of_one_class_are_refused():
    x = embed_texts(["one text", "another, longer text about markets"], "minilm-l6")
    assert x.shape == (2, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    with pytest.raises(TailorkdError, match="at least two classes"):
        seed_only_baseline([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], [], ["x", "y"], "minilm-l6", 0)
