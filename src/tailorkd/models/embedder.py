"""Sentence embeddings: mean-pooled, L2-normalised encoder states (as sentence-transformers computes them for
MiniLM), for the seed classifier, per-text shot selection and corpus relevance."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from tailorkd.models.loading import load_encoder


class SentenceEmbedder:
    """A sentence encoder loaded once: texts -> [N, H] L2-normalised mean-pooled embeddings (as
    sentence-transformers computes them for MiniLM)."""

    def __init__(self, encoder: str, batch_size: int = 32, max_length: int = 256):
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
