"""Class scores of a causal LM: the log-likelihood of each class's answer tokens right after the prompt.

This is how both the teacher and a causal-LM student turn a prompt into a distribution over the M
classes, whatever their tokenizers: no free text is generated or parsed.

Exact scoring (``score_exact``): one forward pass over the (left-padded) prompts gives the first answer
token's distribution and a KV cache; labels of several tokens are finished from a copy of that cache, so
the prompt is never recomputed per class. ``class_logits`` is the differentiable form used to train a
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

    def _combine(self, per_token: list[torch.Tensor]) -> torch.Tensor:
        """[B] tensors of summed log-probs per class -> [B, M] scores (mean per token if normalising)."""
        scores = torch.stack(per_token, dim=1)
        if self.length_normalize:
            lengths = torch.tensor([len(ids) for ids in self.label_ids], dtype=scores.dtype, device=scores.device)
            scores = scores / lengths
        return scores

    @torch.no_grad()
    def score_exact(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, M] total log-likelihood of each class's answer after each prompt (no gradient)."""
        ids, mask = self._left_pad(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        needs_cache = any(len(label) > 1 for label in self.label_ids)
        out = self._forward(ids, mask, positions, keep=1, use_cache=needs_cache)
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)
        last_pos = positions[:, -1:]
        per_class = []
        for label in self.label_ids:
            total = first[:, label[0]]
            if len(label) > 1:
                n = len(label) - 1
                step = torch.tensor(label[:-1], device=ids.device).expand(ids.shape[0], n)
                cont = self._forward(
                    step,
                    torch.cat([mask, torch.ones_like(step)], dim=1),
                    last_pos + 1 + torch.arange(n, device=ids.device),
                    keep=n,
                    use_cache=True,
                    **{self._cache_kwarg: copy.deepcopy(out.get(self._cache_kwarg))},
                )
                logp = F.log_softmax(cont.logits[:, -n:].float(), dim=-1)
                targets = torch.tensor(label[1:], device=ids.device).expand(ids.shape[0], n)
                total = total + logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)
            per_class.append(total)
        return self._combine(per_class)

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
        return self._combine(per_class)
