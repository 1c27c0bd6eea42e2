"""Stage 2 references and threshold: the expert seeds and the topics' descriptions embedded once (in the
driver), and the threshold, fixed or chosen on the seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.recipe.corpus import CorpusConfig


def references(config: CorpusConfig, seeds: Sequence[str] | None) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """(seed embeddings or None, topic name -> description embedding), L2-normalised rows."""
    from tailorkd.models.embedder import SentenceEmbedder

    relevance = config.relevance
    assert relevance is not None
    wants_seeds = relevance.against in ("seeds", "both")
    if wants_seeds and not seeds:
        raise TailorkdError("corpus.relevance.against: comparing with the seeds needs the expert seeds (the recipe's "
                            "labelled seed split); none were given")
    if relevance.threshold == "auto" and not seeds:
        raise TailorkdError("corpus.relevance.threshold: auto is chosen on the expert seeds; none were given "
                            "(set a number instead)")
    embed = SentenceEmbedder(relevance.encoder, relevance.batch_size, relevance.max_length)
    seed_matrix = embed(list(seeds)) if seeds else None
    described = [t for t in config.topics if t.description] if relevance.against in ("topics", "both") else []
    topic_matrix = embed([t.description for t in described]) if described else None
    topics = {t.name: topic_matrix[i] for i, t in enumerate(described)} if topic_matrix is not None else {}
    return seed_matrix, topics


def seed_scores(config: CorpusConfig, seed_matrix: np.ndarray | None, topics: dict[str, np.ndarray]) -> np.ndarray:
    """Each seed's score as a corpus text would get it, leaving the seed itself out of the references."""
    assert config.relevance is not None and seed_matrix is not None
    against = config.relevance.against
    scores = np.full(len(seed_matrix), -np.inf)
    if against in ("seeds", "both"):
        if len(seed_matrix) < 2:
            raise TailorkdError("corpus.relevance: choosing a threshold against the seeds needs at least two seeds")
        sims = seed_matrix @ seed_matrix.T
        np.fill_diagonal(sims, -np.inf)
        scores = np.maximum(scores, sims.max(axis=1))
    if against in ("topics", "both") and topics:
        scores = np.maximum(scores, (seed_matrix @ np.stack(list(topics.values())).T).max(axis=1))
    return scores


def choose_threshold(config: CorpusConfig, seed_matrix: np.ndarray | None,
                     topics: dict[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
    """(threshold, report): the fixed threshold, or the ``seed_quantile`` quantile of the seeds' scores."""
    relevance = config.relevance
    assert relevance is not None
    report: dict[str, Any] = {"against": relevance.against, "encoder": relevance.encoder,
                              "seeds": 0 if seed_matrix is None else int(len(seed_matrix)),
                              "topics_described": sorted(topics)}
    scores = seed_scores(config, seed_matrix, topics) if seed_matrix is not None and \
        (relevance.against != "seeds" or len(seed_matrix) >= 2) else None
    if scores is not None:
        report["seed_scores"] = {"min": float(scores.min()), "q05": float(np.quantile(scores, 0.05)),
                                 "median": float(np.median(scores)), "max": float(scores.max())}
    if relevance.threshold == "auto":
        assert scores is not None
        threshold = float(np.quantile(scores, relevance.seed_quantile))
        report["chosen_by"] = f"the {relevance.seed_quantile:g} quantile of the seeds' own scores"
        report["seeds_below_threshold"] = int((scores < threshold).sum())
    else:
        threshold = float(relevance.threshold)
        report["chosen_by"] = "fixed in the recipe"
        if scores is not None:
            report["seeds_below_threshold"] = int((scores < threshold).sum())
    report["threshold"] = threshold
    return threshold, report
