"""Per-text few-shot examples: the seeds most like each text, balanced across classes.

In-context examples close to the input help a small model most (Liu et al. 2022, "What makes good
in-context examples for GPT-3?"). Texts and seeds are embedded by a sentence encoder (the packaged
MiniLM by default); for each text every class contributes its nearest seeds, so no class is missing from
the prompt, and the nearest example goes last, next to the text.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from tailorkd.labels import text_hash
from tailorkd.models.embedder import embedding_text

#: Texts whose embeddings the selector keeps (``prepare`` embeds a window of rows just before ``select`` asks
#: for them; an unbounded cache would hold the whole pool's embeddings, 1.5 KB a text for MiniLM).
CACHE_TEXTS = 8192


class KnnShotSelector:
    """Chooses ``k`` shots per text from ``seeds`` by cosine similarity of sentence embeddings.

    ``k`` is split evenly across the classes that have seeds (the first classes in label order take the
    remainder when k is not a multiple of their number); within a class the nearest seeds are taken. A
    text that is itself a seed never gets itself as an example (leave-one-out on the seeds).
    Embeddings are cached by text hash, and ``prepare`` embeds many texts in batches.
    """

    def __init__(self, seeds: Sequence[dict[str, Any]], label_names: Sequence[str], k: int, encoder: str,
                 embed: Any = None):
        """``embed``: an already loaded embedder (texts -> [N, H] unit vectors) to share; default: load
        ``encoder``."""
        self.k = k
        self.encoder = encoder
        self.label_names = list(label_names)
        if embed is None:
            from tailorkd.models.embedder import SentenceEmbedder

            embed = SentenceEmbedder(encoder)
        self._embed_fn = embed  # texts -> [N, H] unit vectors
        self.seeds = sorted((dict(s) for s in seeds if s.get("label") in self.label_names), key=lambda r: str(r["id"]))
        self._seed_hashes = [text_hash(s["text"]) for s in self.seeds]
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._seed_matrix = self._embed([embedding_text(s) for s in self.seeds], self._seed_hashes)
        classes = [name for name in self.label_names if any(s["label"] == name for s in self.seeds)]
        base, extra = divmod(k, max(len(classes), 1))
        self.per_class = {name: base + (1 if i < extra else 0) for i, name in enumerate(classes)}

    def _embed(self, texts: list[str], keys: list[str]) -> np.ndarray:
        found = {key: self._cache[key] for key in keys if key in self._cache}
        todo = [(t, key) for t, key in zip(texts, keys) if key not in found]
        if todo:
            vectors = np.asarray(self._embed_fn([t for t, _ in todo]), dtype=np.float32)
            for (_, key), vector in zip(todo, vectors):
                found[key] = self._cache[key] = vector
            while len(self._cache) > CACHE_TEXTS:  # the oldest go: a pool is embedded a window at a time
                self._cache.popitem(last=False)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[key] for key in keys])

    def prepare(self, rows: Sequence[dict[str, Any]]) -> None:
        """Embed the texts of ``rows`` in batches ahead of ``select`` (optional; saves time)."""
        self._embed([embedding_text(r) for r in rows], [self._key(r) for r in rows])

    @staticmethod
    def _key(row: dict[str, Any]) -> str:
        return text_hash(embedding_text(row))

    def select(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The shots for one row ({"text", optional "title"}), least similar first."""
        if self.k == 0 or not self.seeds:
            return []
        vector = self._embed([embedding_text(row)], [self._key(row)])[0]
        similarity = self._seed_matrix @ vector
        own = text_hash(row["text"])
        chosen: list[int] = []
        for name, take in self.per_class.items():
            members = [i for i, s in enumerate(self.seeds) if s["label"] == name and self._seed_hashes[i] != own]
            members.sort(key=lambda i: (-similarity[i], str(self.seeds[i]["id"])))
            chosen.extend(members[:take])
        chosen.sort(key=lambda i: (similarity[i], str(self.seeds[i]["id"])))
        return [self.seeds[i] for i in chosen]

    def describe(self) -> dict[str, Any]:
        return {"selection": "knn", "encoder": self.encoder, "k": self.k, "per_class": self.per_class,
                "seeds": [[s["id"], s["label"]] for s in self.seeds]}
