"""A local Hugging Face causal LM as teacher: class probabilities from label likelihoods.

Optionally it also gives its pooled hidden states (for hidden-state distillation) and, for a sample of
texts, a short generated reason for its label (shown beside the student's alerts).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tailorkd.data.pool_rows import take_rows, windows
from tailorkd.devices import resolve_device, resolve_dtype
from tailorkd.hidden_states import HiddenStateWriter
from tailorkd.labels import LabelRecord, LabelStore, StoredLabels, make_record, text_hash, unlabelled_rows
from tailorkd.models import load_causal_lm, weights_fingerprint
from tailorkd.prompts import KnnShotSelector, PromptBuilder, PromptEncoder
from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig
from tailorkd.scoring import LabelScorer

log = logging.getLogger(__name__)


class LocalTeacher:
    """A Hugging Face causal LM as teacher (implements ``tailorkd.teachers.base.Teacher``)."""

    def __init__(self, config: TeacherConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 model: Any = None, tokenizer: Any = None, selector: KnnShotSelector | None = None,
                 weights: str | None = None):
        """``shots``: the fixed few-shot examples; ``selector`` (a KnnShotSelector): per-text ones instead.
        ``model``/``tokenizer``: an already loaded teacher (several prompts can share one model); ``weights``:
        its weights' fingerprint when already known."""
        if model is None:
            model, tokenizer = load_causal_lm(config.model, dtype=resolve_dtype(config.dtype),
                                              device=resolve_device(config.device))
        model.eval()
        # New weights saved at the same path must not reuse the old labels: the identity names the weights.
        self.weights = weights or weights_fingerprint(config.model)
        self.config = config
        self.task = task
        self.model, self.tokenizer = model, tokenizer
        self.builder = PromptBuilder(task, prompt, tokenizer, shots, selector)
        self.prompts = PromptEncoder(self.builder)
        self.scorer = LabelScorer(model, tokenizer, self.prompts.label_token_ids(), config.length_normalize)
        self._prefix_set = False  # computed on first use: a teacher whose texts are all stored never needs it

    def _ensure_prefix(self) -> None:
        if not self._prefix_set:
            self.scorer.set_shared_prefix(self.prompts.shared_prefix_ids())
            self._prefix_set = True

    @property
    def identity(self) -> str:
        c = self.config
        return f"{c.model}|{c.dtype}|norm={int(c.length_normalize)}|weights={self.weights}"

    @property
    def prompt_fingerprint(self) -> str:
        return self.builder.fingerprint()

    def describe_prompt(self) -> dict[str, Any]:
        return self.builder.describe()

    def with_prompt(self, prompt: PromptConfig, shots: list[dict[str, Any]], selector: KnnShotSelector | None = None
                    ) -> LocalTeacher:
        """This teacher under another prompt or other shots, sharing the loaded model."""
        return LocalTeacher(self.config, self.task, prompt, shots, self.model, self.tokenizer, selector, self.weights)

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
              **options: Any) -> StoredLabels:
        """``label_rows`` with this teacher (options: hidden_layers, pooling, rows_per_shard)."""
        return label_rows(self, rows, store, desc=desc, **options)

    def encode(self, row: dict[str, Any]) -> list[int]:
        return self.prompts.encode(row)

    def score(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, M] class probabilities and per-text seconds, in the order of ``rows``."""
        probs, seconds, _ = self.score_states(rows, bar)
        return probs, seconds

    def score_states(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None,
                     hidden_layers: Sequence[int] = (), pooling: str = "last"
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Class probabilities [N, M], per-text seconds [N] and the pooled hidden states {layer: [N, H]}
        of ``hidden_layers`` (none asked: empty), in the order of ``rows``.

        Prompts are batched by length so that little padding is computed.
        """
        self._ensure_prefix()
        if self.builder.selector is not None:
            self.builder.selector.prepare(rows)
        encoded = [self.encode(r) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
        probs = np.zeros((len(rows), len(self.task.labels)), dtype=np.float64)
        seconds = np.zeros(len(rows))
        hidden: dict[int, np.ndarray] = {}
        bs = self.config.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            t0 = time.perf_counter()
            result = self.scorer.score([encoded[i] for i in idx], hidden_layers, pooling)
            probs[idx] = torch.softmax(result.scores, dim=-1).cpu().double().numpy()
            for layer, states in result.hidden.items():
                hidden.setdefault(layer, np.zeros((len(rows), states.shape[1]), dtype=np.float32))[idx] = states.numpy()
            seconds[idx] = (time.perf_counter() - t0) / len(idx)
            if bar is not None:
                bar.update(len(idx))
        return probs, seconds, hidden

    # -- reasons -----------------------------------------------------------------------------------
    REASON_QUESTION = "In one short sentence, why is that the answer?"

    def reason_prompt(self, row: dict[str, Any], label_name: str) -> str:
        """The labelling prompt, the teacher's own answer, then a request for a one-sentence reason."""
        b = self.builder
        answer = b.answer_of(label_name)
        if b.use_chat:
            messages = b.messages(row["text"], row.get("title")) + [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": self.REASON_QUESTION},
            ]
            return b.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The plain prompt ends at the answer cue (inside the JSON object when answers are JSON).
        ending = answer[len(b._answer_opening()):] if b.json_answers else f" {answer}"
        return b.render(row["text"], row.get("title")) + f"{ending}\nReason:"

    @torch.no_grad()
    def reasons(self, rows: Sequence[dict[str, Any]], label_names: Sequence[str], max_new_tokens: int = 48,
                bar: tqdm | None = None) -> list[str]:
        """A short English justification of the given label for each row (greedy, one line).

        Generation starts from a copy of the shared prefix's KV cache, so the few-shot part is not
        recomputed for every text.
        """
        scorer, tok = self.scorer, self.builder.tokenizer
        model = scorer.model
        self._ensure_prefix()
        out = []
        for row, name in zip(rows, label_names):
            ids = tok(self.reason_prompt(row, name), add_special_tokens=self.prompts.add_special_tokens)["input_ids"]
            kwargs: dict[str, Any] = {}
            prefix = scorer.prefix_for([ids])
            if prefix is not None and not scorer.sliding_window:
                kwargs[scorer.cache_kwarg] = copy.deepcopy(prefix[1])
            input_ids = torch.tensor([ids], device=scorer.device)
            generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=scorer.pad_id,
                                       **kwargs)
            text = tok.decode(generated[0, len(ids):], skip_special_tokens=True).strip()
            out.append(" ".join(text.splitlines()[0].split()) if text else "")
            if bar is not None:
                bar.update(1)
        return out


def hidden_key(teacher_identity: str, layers: Sequence[int], pooling: str) -> str:
    """The teacher key hidden states are stored under: a change of layers or pooling stores afresh."""
    return f"{teacher_identity}|hidden={','.join(str(int(x)) for x in layers)}|pool={pooling}"


def label_rows(teacher: LocalTeacher, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
               chunk: int = 64, hidden_layers: Sequence[int] = (), pooling: str = "last",
               rows_per_shard: int = 1024) -> StoredLabels:
    """Label the rows not yet in the store (chunk by chunk, each one transaction); return their records (read
    from the store on demand). The rows are walked a window at a time (``PoolRows`` from disk stay there).

    With ``hidden_layers``, the teacher's pooled hidden states of those layers are stored too (sharded
    beside the store, see ``tailorkd.hidden_states``); a text lacking either is labelled again.
    """
    names = teacher.task.label_names
    key = (teacher.identity, teacher.prompt_fingerprint)
    writer = None
    if hidden_layers:
        writer = HiddenStateWriter(store, hidden_key(teacher.identity, hidden_layers, pooling), key[1], hidden_layers,
                                   rows_per_shard)
    skipped = 0
    with tqdm(total=len(rows), desc=desc, unit="text", dynamic_ncols=True, disable=not rows) as bar:
        for window in windows(rows):
            todo = unlabelled_rows(store, key, window, writer)
            skipped += len(window) - len(todo)
            bar.update(len(window) - len(todo))
            for start in range(0, len(todo), chunk):
                # Another process labelling the same rows may have stored some since: skip them (whatever both
                # still label, the writer indexes once and the label is replaced with the same values).
                part = unlabelled_rows(store, key, todo[start : start + chunk], writer)
                bar.update(min(chunk, len(todo) - start) - len(part))
                if not part:
                    continue
                probs, secs, hidden = teacher.score_states(part, bar, hidden_layers, pooling)
                records = [make_record(r["id"], r["text"], p, names, s) for r, p, s in zip(part, probs, secs)]
                if writer is not None:
                    writer.add([r.text_hash for r in records], hidden)
                store.put_batch(*key, names, records)
                if writer is not None:
                    writer.flush()  # after put_batch: every stored hidden state has its label
    if writer is not None:
        writer.close()
    if skipped:
        log.info("%s: %d of %d texts already labelled in %s", desc, skipped, len(rows), store.path)
    return StoredLabels(store, *key, rows, names)


def add_reasons(teacher: LocalTeacher, rows: Sequence[dict[str, Any]], store: LabelStore, sample: int, seed: int,
                max_new_tokens: int = 48, desc: str = "teacher: reasons", chunk: int = 8) -> int:
    """Generate the teacher's reason for its label on a seeded sample of ``sample`` labelled rows (texts
    that already have one count towards the sample). Returns how many reasons the sample now has.

    The sample is the first labelled rows in a seeded random order of the rows, so a bigger sample extends a
    smaller one; the order is walked a few hundred rows at a time, never the whole pool."""
    names = teacher.task.label_names
    key = (teacher.identity, teacher.prompt_fingerprint)
    order = np.random.default_rng([seed, 7]).permutation(len(rows))
    chosen: list[tuple[dict[str, Any], LabelRecord]] = []
    step = max(4 * sample, 256)
    for start in range(0, len(order), step):
        if len(chosen) >= sample:
            break
        part = list(take_rows(rows, order[start : start + step]))
        records = store.get(*key, [text_hash(r["text"]) for r in part], names)
        chosen += [(r, records[text_hash(r["text"])]) for r in part if text_hash(r["text"]) in records]
    chosen = chosen[:sample]
    todo = [r for r, record in chosen if record.reason is None]
    with tqdm(total=len(todo), desc=desc, unit="text", dynamic_ncols=True, disable=not todo) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            # Another process may have given some of them a reason since (generating is the slow part).
            fresh = store.get(*key, [text_hash(r["text"]) for r in part], names)
            before = len(part)
            part = [r for r in part if fresh[text_hash(r["text"])].reason is None]
            bar.update(before - len(part))
            if not part:
                continue
            predicted = [fresh[text_hash(r["text"])].predicted for r in part]
            reasons = teacher.reasons(part, predicted, max_new_tokens, bar)
            store.put_reasons(*key, {text_hash(r["text"]): reason for r, reason in zip(part, reasons)})
    return len(chosen)
