"""Class scores of a causal LM: the log-likelihood of each class's answer tokens right after the prompt.

This is how both the teacher and a causal-LM student turn a prompt into a distribution over the M
classes, whatever their tokenizers: no free text is generated or parsed.

Exact scoring (``score_exact``): the part all prompts share (system prompt, instruction, few-shot
examples) is computed once and its KV cache reused (``set_shared_prefix``); one forward pass over the
texts' own tokens (left-padded, batched) gives the first answer token's distribution and a KV cache;
labels of several tokens are finished from a copy of that cache, so nothing is recomputed per class. ``class_logits`` is the differentiable form used to train a
student: when all classes begin with different tokens it reads them off one forward pass; otherwise it
scores every (prompt, class) sequence in full.
"""

from __future__ import annotations

import copy
import inspect
from functools import cached_property
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def continuation_token_ids(tokenizer: Any, prompt: str, continuations: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each continuation as the tokenizer splits it *after* ``prompt``.

    Tokenizing prompt+answer and removing the prompt's tokens respects merges at the boundary; if the
    boundary itself merges (rare), the answer is tokenized on its own.
    """
    base = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    result = []
    for text in continuations:
        full = tokenizer(prompt + text, add_special_tokens=add_special_tokens)["input_ids"]
        if full[: len(base)] == base and len(full) > len(base):
            ids = full[len(base) :]
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the answer {text!r} has no tokens")
        result.append(list(ids))
    if len({tuple(ids) for ids in result}) != len(result):
        raise ValueError(f"two classes have the same answer tokens: {continuations}")
    return result


def _repeat_cache(cache: Any, batch: int, keep_original: bool = True) -> Any:
    """A KV cache with each row repeated ``batch`` times (a copy, unless the original may be consumed)."""
    if keep_original:
        cache = copy.deepcopy(cache)
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(batch)
        return cache
    # Legacy tuple caches: ((key, value), ...) per layer.
    return tuple(tuple(t.repeat_interleave(batch, dim=0) for t in layer) for layer in cache)


def shared_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The longest common token prefix of ``sequences``."""
    first = list(sequences[0])
    n = len(first)
    for seq in sequences[1:]:
        n = min(n, len(seq))
        for i in range(n):
            if seq[i] != first[i]:
                n = i
                break
    return first[:n]


def _base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LabelScorer:
    """Scores the M classes for batches of tokenized prompts with one causal LM."""

    def __init__(self, model: Any, tokenizer: Any, label_ids: list[list[int]], length_normalize: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.label_ids = label_ids
        self.length_normalize = length_normalize
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.first_tokens_distinct = len({ids[0] for ids in label_ids}) == len(label_ids)
        self._prefix: tuple[list[int], Any] | None = None
        # With sliding-window attention, padding between the cached prefix and a text would shift the
        # window; such models score texts of equal length together instead (no padding at all).
        config = getattr(_base_model(model), "config", None)
        self.sliding_window = getattr(config, "sliding_window", None) is not None

    @cached_property
    def _forward_params(self) -> set[str]:
        return set(inspect.signature(_base_model(self.model).forward).parameters)

    @cached_property
    def _keep_kwarg(self) -> str | None:
        return next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in self._forward_params), None)

    @cached_property
    def _cache_kwarg(self) -> str:
        # transformers >= 5.2x renamed past_key_values to cache (input and output alike).
        return "cache" if "cache" in self._forward_params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _left_pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, keep: int, **kwargs: Any) -> Any:
        # Positions come from the mask so that left padding does not shift models with absolute
        # position embeddings (GPT-2, OPT); rotary models are unaffected either way.
        if self._keep_kwarg is not None:
            kwargs[self._keep_kwarg] = keep
        return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs)

    def _combine(self, scores: torch.Tensor) -> torch.Tensor:
        """[B, M] summed log-probs per class -> scores (the mean per token if normalising)."""
        if self.length_normalize:
            lengths = torch.tensor([len(ids) for ids in self.label_ids], dtype=scores.dtype, device=scores.device)
            scores = scores / lengths
        return scores

    def set_shared_prefix(self, prefix: Sequence[int]) -> None:
        """Compute the KV cache of the part every prompt shares (system, instruction, few-shot) once.

        Later ``score_exact`` calls whose prompts all start with ``prefix`` only run their own tokens.
        """
        self._prefix = None
        if len(prefix) < 2:
            return
        ids = torch.tensor([list(prefix)], device=self.device)
        with torch.no_grad():
            out = self._forward(ids, torch.ones_like(ids), torch.arange(ids.shape[1], device=ids.device)[None], keep=1,
                                use_cache=True)
        self._prefix = (list(prefix), out.get(self._cache_kwarg))

    def _prefix_for(self, prompts: Sequence[Sequence[int]]) -> tuple[list[int], Any] | None:
        prefix = self._prefix
        if prefix is None:
            return None
        n = len(prefix[0])
        return prefix if all(len(p) > n and list(p[:n]) == prefix[0] for p in prompts) else None

    @torch.no_grad()
    def score_exact(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, M] total log-likelihood of each class's answer after each prompt (no gradient)."""
        prefix = self._prefix_for(prompts)
        if prefix is not None and self.sliding_window and len({len(p) for p in prompts}) > 1:
            out = torch.empty(len(prompts), len(self.label_ids), device=self.device)
            for length in {len(p) for p in prompts}:
                rows = [i for i, p in enumerate(prompts) if len(p) == length]
                out[rows] = self.score_exact([prompts[i] for i in rows])
            return out
        needs_cache = any(len(label) > 1 for label in self.label_ids)
        if prefix is None:
            ids, mask = self._left_pad(prompts)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self._forward(ids, mask, positions, keep=1, use_cache=needs_cache)
        else:
            # Only the texts' own tokens run, on top of a copy of the shared prefix's cache. Padding sits
            # between prefix and text, masked out; positions continue from the prefix.
            n, cache = len(prefix[0]), _repeat_cache(prefix[1], len(prompts))
            ids, own_mask = self._left_pad([p[n:] for p in prompts])
            positions = n + (own_mask.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([torch.ones(len(prompts), n, dtype=own_mask.dtype, device=ids.device), own_mask], dim=1)
            out = self._forward(ids, mask, positions, keep=1, use_cache=True, **{self._cache_kwarg: cache})
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)
        scores = torch.stack([first[:, label[0]] for label in self.label_ids], dim=1)
        longer = [c for c, label in enumerate(self.label_ids) if len(label) > 1]
        if longer:
            scores = scores + self._continuations(out.get(self._cache_kwarg), mask, positions[:, -1:], longer)
        return self._combine(scores)

    def _continuations(self, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """[B, M] log-probs of the 2nd.. answer tokens (0 for one-token answers), in one forward pass.

        Each text's cache is repeated once per multi-token class; the answers are right-padded, which
        cannot affect the positions before the padding.
        """
        b, k = mask.shape[0], len(classes)
        width = max(len(self.label_ids[c]) for c in classes) - 1
        steps = torch.full((k, width), self.pad_id, dtype=torch.long)
        for j, c in enumerate(classes):
            steps[j, : len(self.label_ids[c]) - 1] = torch.tensor(self.label_ids[c][:-1])
        steps = steps.to(mask.device).repeat(b, 1)  # row b*k + j: text b, class classes[j]
        rows_mask = mask.repeat_interleave(k, dim=0)
        cont = self._forward(
            steps,
            torch.cat([rows_mask, torch.ones_like(steps)], dim=1),
            last_pos.repeat_interleave(k, dim=0) + 1 + torch.arange(width, device=mask.device),
            keep=width,
            use_cache=True,
            **{self._cache_kwarg: _repeat_cache(cache, k, keep_original=False)},
        )
        logp = F.log_softmax(cont.logits[:, -width:].float(), dim=-1).view(b, k, width, -1)
        extra = torch.zeros(b, len(self.label_ids), device=mask.device)
        for j, c in enumerate(classes):
            targets = torch.tensor(self.label_ids[c][1:], device=mask.device)
            extra[:, c] = logp[:, j, torch.arange(len(targets), device=mask.device), targets].sum(-1)
        return extra

    def class_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, M] differentiable class scores for training (softmax of them = class distribution)."""
        if self.first_tokens_distinct:
            ids, mask = self._left_pad(prompts)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self._forward(ids, mask, positions, keep=1, use_cache=False).logits[:, -1].float()
            first = [label[0] for label in self.label_ids]
            # Renormalising over the M first tokens equals the full softmax restricted to them.
            return logits[:, first]
        # Classes share a first token: score every (prompt, class) sequence in full.
        m = len(self.label_ids)
        longest = max(len(label) for label in self.label_ids)
        sequences = [list(p) + label for p in prompts for label in self.label_ids]
        ids, mask = self._left_pad(sequences)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(ids, mask, positions, keep=longest + 1, use_cache=False).logits
        logp = F.log_softmax(logits[:, -(longest + 1) : -1].float(), dim=-1)  # predicts the last `longest` tokens
        per_class = []
        for c, label in enumerate(self.label_ids):
            rows = logp[c::m, longest - len(label) :]
            targets = torch.tensor(label, device=ids.device).expand(rows.shape[0], len(label))
            per_class.append(rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1))
        return self._combine(torch.stack(per_class, dim=1))
