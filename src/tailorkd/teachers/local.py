"""A local Hugging Face causal LM as teacher: class probabilities from label likelihoods."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tailorkd.devices import resolve_device, resolve_dtype
from tailorkd.labels import LabelRecord, LabelStore, make_record, text_hash
from tailorkd.models import load_causal_lm
from tailorkd.prompts import PromptBuilder, PromptEncoder
from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig
from tailorkd.scoring import LabelScorer

log = logging.getLogger(__name__)


class LocalTeacher:
    def __init__(self, config: TeacherConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 model: Any = None, tokenizer: Any = None):
        if model is None:
            model, tokenizer = load_causal_lm(config.model, dtype=resolve_dtype(config.dtype), device=resolve_device(config.device))
        model.eval()
        self.config = config
        self.task = task
        self.builder = PromptBuilder(task, prompt, tokenizer, shots)
        self.prompts = PromptEncoder(self.builder)
        self.scorer = LabelScorer(model, tokenizer, self.prompts.label_token_ids(), config.length_normalize)
        self.scorer.set_shared_prefix(self.prompts.shared_prefix_ids())

    @property
    def identity(self) -> str:
        c = self.config
        return f"{c.model}|{c.dtype}|norm={int(c.length_normalize)}"

    @property
    def prompt_fingerprint(self) -> str:
        return self.builder.fingerprint()

    def encode(self, row: dict[str, Any]) -> list[int]:
        return self.prompts.encode(row)

    def score(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, M] class probabilities and per-text seconds, in the order of ``rows``.

        Prompts are batched by length so that little padding is computed.
        """
        encoded = [self.encode(r) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
        probs = np.zeros((len(rows), len(self.task.labels)), dtype=np.float64)
        seconds = np.zeros(len(rows))
        bs = self.config.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            t0 = time.perf_counter()
            scores = self.scorer.score_exact([encoded[i] for i in idx])
            probs[idx] = torch.softmax(scores, dim=-1).cpu().double().numpy()
            seconds[idx] = (time.perf_counter() - t0) / len(idx)
            if bar is not None:
                bar.update(len(idx))
        return probs, seconds


def label_rows(teacher: LocalTeacher, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
               chunk: int = 64) -> dict[str, LabelRecord]:
    """Label the rows not yet in the store (chunk by chunk, each one transaction); return all their records."""
    names = teacher.task.label_names
    key = (teacher.identity, teacher.prompt_fingerprint)
    done = store.done_hashes(*key)
    todo = [r for r in rows if text_hash(r["text"]) not in done]
    if len(todo) < len(rows):
        log.info("%s: %d of %d texts already labelled in %s", desc, len(rows) - len(todo), len(rows), store.path)
    with tqdm(total=len(todo), desc=desc, unit="text", dynamic_ncols=True, disable=not todo) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            probs, secs = teacher.score(part, bar)
            records = [make_record(r["id"], r["text"], p, names, s) for r, p, s in zip(part, probs, secs)]
            store.put_batch(*key, names, records)
    return store.get(*key, [text_hash(r["text"]) for r in rows], names)
