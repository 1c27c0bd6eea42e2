"""Class scores of a causal LM: the log-likelihood of each class's answer tokens right after the prompt.

This is how both the teacher and a causal-LM student turn a prompt into a distribution over the M
classes, whatever their tokenizers: no free text is generated or parsed.

Exact scoring (``score``/``score_exact``): the part all prompts share (system prompt, instruction,
few-shot examples) is computed once and its KV cache reused (``set_shared_prefix``). Each text then runs
only its own tokens, which give the first answer token's distribution; labels of several tokens are
finished from the same cache over their remaining tokens, so nothing is recomputed per class.

Two ways to run the texts' own tokens, chosen by device: on a GPU they are left-padded and batched on
copies of the prefix cache (parallelism pays for the padding and copies); on a CPU, where a batch buys
little, each text runs alone on the shared cache itself, without padding or copies, and the cache is put
back as it was afterwards. There the answer tokens of all classes ride in the text's own pass as a token
tree: each attends to the text and to its own label's earlier tokens only (a 4D attention mask).

``class_logits`` is the differentiable form used to train a student: when all classes begin with
different tokens it reads them off one forward pass; otherwise it scores every (prompt, class) sequence
in full.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from tailorkd.errors import TailorkdError


def continuation_token_ids(tokenizer: Any, prompt: str, continuations: Sequence[str], add_special_tokens: bool
                           ) -> list[list[int]]:
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
            raise TailorkdError(f"task.labels: the answer {text!r} has no tokens for this tokenizer; give the label "
                                "a verbalizer with words")
        result.append(list(ids))
    if len({tuple(ids) for ids in result}) != len(result):
        raise TailorkdError(f"task.labels: two classes' answers {continuations} are the same tokens for this "
                            "tokenizer; give them verbalizers that differ")
    return result


def repeat_cache(cache: Any, batch: int, keep_original: bool = True) -> Any:
    """A KV cache with each row repeated ``batch`` times (a copy, unless the original may be consumed)."""
    if keep_original:
        cache = copy.deepcopy(cache)
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(batch)
        return cache
    # Legacy tuple caches: ((key, value), ...) per layer.
    return tuple(tuple(t.repeat_interleave(batch, dim=0) for t in layer) for layer in cache)


def snapshot_cache(cache: Any) -> Any:
    """What is needed to undo a forward pass's appends to ``cache`` without copying any tensor.

    Caches grow by concatenation into new tensors (never in place), so keeping references to the
    current tensors and attributes is enough. Legacy tuple caches are immutable: nothing to keep.
    """
    if isinstance(cache, tuple) or not hasattr(cache, "__dict__"):
        return None
    state = {k: (list(v) if isinstance(v, list) else v) for k, v in vars(cache).items()}
    layers = [dict(vars(layer)) for layer in getattr(cache, "layers", [])]
    return state, layers


def restore_cache(cache: Any, snapshot: Any) -> None:
    if snapshot is None:
        return
    state, layers = snapshot
    vars(cache).clear()
    vars(cache).update(state)
    for layer, saved in zip(getattr(cache, "layers", []), layers):
        vars(layer).clear()
        vars(layer).update(saved)


def answer_tree(label_ids: Sequence[Sequence[int]]) -> tuple[list[int], list[int], list[int]]:
    """The distinct non-final answer prefixes as a token tree: (tokens, parent index or -1, depth).

    Feeding node i's token predicts the next token of every label that extends that prefix, so all
    classes' 2nd..last tokens are scored from one pass over these nodes.
    """
    index: dict[tuple[int, ...], int] = {}
    tokens, parents, depths = [], [], []
    for ids in label_ids:
        for i in range(len(ids) - 1):
            key = tuple(ids[: i + 1])
            if key not in index:
                index[key] = len(tokens)
                tokens.append(int(ids[i]))
                parents.append(index[key[:-1]] if i else -1)
                depths.append(i)
    return tokens, parents, depths


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
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)  # the Trainer hands a DDP- or FSDP-wrapped model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class ScoreResult:
    """Class scores [B, M] (log-likelihoods, or per-token means if normalising) and, when asked for, the
    pooled hidden states {layer: [B, H] float32} of the texts' own tokens."""

    scores: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)


POOLINGS = ("last", "mean")


class LabelScorer:
    """Scores the M classes for batches of tokenized prompts with one causal LM.

    ``sequential`` (default: True on a CPU) runs each text alone on the shared prefix cache instead of
    batching padded texts on copies of it; both give the same scores.
    """

    def __init__(self, model: Any, tokenizer: Any, label_ids: list[list[int]], length_normalize: bool = False,
                 sequential: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.label_ids = label_ids
        self.length_normalize = length_normalize
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.first_tokens_distinct = len({ids[0] for ids in label_ids}) == len(label_ids)
        self.prefix: tuple[list[int], Any] | None = None
        # With sliding-window attention, padding between the cached prefix and a text would shift the
        # window; such models score texts of equal length together instead (no padding at all).
        config = getattr(_base_model(model), "config", None)
        self.sliding_window = getattr(config, "sliding_window", None) is not None
        self.sequential = self.device.type == "cpu" if sequential is None else sequential
        self.tree = answer_tree(label_ids)

    @cached_property
    def _forward_params(self) -> set[str]:
        return set(inspect.signature(_base_model(self.model).forward).parameters)

    @cached_property
    def _keep_kwarg(self) -> str | None:
        return next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in self._forward_params), None)

    @cached_property
    def cache_kwarg(self) -> str:
        # transformers >= 5.2x renamed past_key_values to cache (input and output alike).
        return "cache" if "cache" in self._forward_params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def left_pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, keep: int,
                **kwargs: Any) -> Any:
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
        self.prefix = None
        if len(prefix) < 2:
            return
        ids = torch.tensor([list(prefix)], device=self.device)
        with torch.no_grad():
            out = self.forward(ids, torch.ones_like(ids), torch.arange(ids.shape[1], device=ids.device)[None], keep=1,
                                use_cache=True)
        self.prefix = (list(prefix), out.get(self.cache_kwarg))

    def prefix_for(self, prompts: Sequence[Sequence[int]]) -> tuple[list[int], Any] | None:
        prefix = self.prefix
        if prefix is None:
            return None
        n = len(prefix[0])
        return prefix if all(len(p) > n and list(p[:n]) == prefix[0] for p in prompts) else None

    @torch.no_grad()
    def score_exact(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, M] total log-likelihood of each class's answer after each prompt (no gradient)."""
        return self.score(prompts).scores

    @torch.no_grad()
    def score(self, prompts: Sequence[Sequence[int]], hidden_layers: Sequence[int] = (),
              pooling: str = "last") -> ScoreResult:
        """Class scores, and the hidden states of ``hidden_layers`` (indices into the model's hidden
        states: 0 = embeddings, -1 = last layer) pooled over each text's own tokens: ``last`` = the
        state at the answer position, ``mean`` = the mean over the tokens after the shared prefix."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        prefix = self.prefix_for(prompts)
        if prefix is not None and self.sequential:
            parts = [self._score_alone(p, prefix, hidden_layers, pooling) for p in prompts]
            return ScoreResult(torch.cat([r.scores for r in parts]),
                               {k: torch.cat([r.hidden[k] for r in parts]) for k in parts[0].hidden})
        if prefix is not None and self.sliding_window and len({len(p) for p in prompts}) > 1:
            scores = torch.empty(len(prompts), len(self.label_ids), device=self.device)
            hidden: dict[int, torch.Tensor] = {}
            for length in sorted({len(p) for p in prompts}):
                rows = [i for i, p in enumerate(prompts) if len(p) == length]
                part = self.score([prompts[i] for i in rows], hidden_layers, pooling)
                scores[rows] = part.scores
                for k, v in part.hidden.items():
                    hidden.setdefault(k, torch.empty(len(prompts), v.shape[1]))[rows] = v
            return ScoreResult(scores, hidden)
        needs_cache = any(len(label) > 1 for label in self.label_ids)
        extra = {"output_hidden_states": True} if hidden_layers else {}
        if prefix is None:
            ids, own_mask = self.left_pad(prompts)
            mask = own_mask
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.forward(ids, mask, positions, keep=1, use_cache=needs_cache, **extra)
        else:
            # Only the texts' own tokens run, on top of a copy of the shared prefix's cache. Padding sits
            # between prefix and text, masked out; positions continue from the prefix.
            n, cache = len(prefix[0]), repeat_cache(prefix[1], len(prompts))
            ids, own_mask = self.left_pad([p[n:] for p in prompts])
            positions = n + (own_mask.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([torch.ones(len(prompts), n, dtype=own_mask.dtype, device=ids.device), own_mask], dim=1)
            out = self.forward(ids, mask, positions, keep=1, use_cache=True, **{self.cache_kwarg: cache}, **extra)
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)
        scores = torch.stack([first[:, label[0]] for label in self.label_ids], dim=1)
        longer = [c for c, label in enumerate(self.label_ids) if len(label) > 1]
        if longer:
            scores = scores + self._continuations(out.get(self.cache_kwarg), mask, positions[:, -1:], longer)
        return ScoreResult(self._combine(scores), self._pool(out, own_mask, hidden_layers, pooling))

    def _score_alone(self, prompt: Sequence[int], prefix: tuple[list[int], Any], hidden_layers: Sequence[int],
                     pooling: str) -> ScoreResult:
        """One text on the shared prefix cache itself (no padding, no copy); the cache is restored after.

        The answer-tree tokens (see ``answer_tree``) ride in the same pass, after the text: a 4D mask lets
        the text's tokens see only the prefix and earlier text tokens (exactly causal), and each tree node
        the prefix, the whole text and its own ancestors, so one forward pass scores every class.
        Sliding-window models cannot take a custom mask over their truncated cache and finish
        multi-token answers in a second pass instead.
        """
        n, cache = len(prefix[0]), prefix[1]
        own = list(prompt[n:])
        tree_tokens, _, depths = self.tree if not self.sliding_window else ([], [], [])
        q_own, q_tree = len(own), len(tree_tokens)
        snapshot = snapshot_cache(cache)
        try:
            ids = torch.tensor([own + tree_tokens], device=self.device)
            positions = torch.tensor([list(range(n, len(prompt))) + [len(prompt) + d for d in depths]],
                                     device=self.device)
            if q_tree:
                mask = self._tree_mask(n, q_own)
            else:
                mask = torch.ones(1, len(prompt), dtype=torch.long, device=self.device)
            extra = {"output_hidden_states": True} if hidden_layers else {}
            out = self.forward(ids, mask, positions, keep=q_tree + 1, use_cache=True, **{self.cache_kwarg: cache},
                                **extra)
            logp = F.log_softmax(out.logits[0, -(q_tree + 1):].float(), dim=-1)  # text's last token, then nodes
            scores = torch.stack([logp[0, label[0]] for label in self.label_ids])[None]
            if q_tree:
                scores = scores + self._tree_scores(logp[1:])
            elif any(len(label) > 1 for label in self.label_ids):  # sliding window: a second pass
                longer = [c for c, label in enumerate(self.label_ids) if len(label) > 1]
                scores = scores + self._continuations(out.get(self.cache_kwarg), mask, positions[:, -1:], longer)
            if hidden_layers:
                out.hidden_states = tuple(h[:, :q_own] for h in out.hidden_states)
            return ScoreResult(self._combine(scores),
                               self._pool(out, torch.ones(1, q_own, dtype=torch.long), hidden_layers, pooling))
        finally:
            restore_cache(cache, snapshot)

    def _tree_mask(self, n: int, q_own: int) -> torch.Tensor:
        """[1, 1, q_own + q_tree, n + q_own + q_tree] additive mask: 0 where a token may attend."""
        parents = self.tree[1]
        q_tree = len(parents)
        q = q_own + q_tree
        allowed = torch.zeros(q, n + q, dtype=torch.bool)
        allowed[:, :n] = True
        allowed[:q_own, n : n + q_own] = torch.ones(q_own, q_own, dtype=torch.bool).tril()
        allowed[q_own:, n : n + q_own] = True
        for i in range(q_tree):
            node = i
            while node >= 0:  # the node itself and its ancestors
                allowed[q_own + i, n + q_own + node] = True
                node = parents[node]
        dtype = next(self.model.parameters()).dtype
        dtype = dtype if dtype.is_floating_point else torch.float32
        mask = torch.zeros(1, 1, q, n + q, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask.to(self.device)

    def _tree_scores(self, node_logp: torch.Tensor) -> torch.Tensor:
        """[1, M] log-probs of every class's 2nd.. answer tokens from the tree nodes' next-token log-probs."""
        tokens = self.tree[0]
        index = {tuple(tokens[j] for j in self._path(i)): i for i in range(len(tokens))}
        extra = torch.zeros(1, len(self.label_ids), device=node_logp.device)
        for c, ids in enumerate(self.label_ids):
            for i in range(1, len(ids)):
                extra[0, c] += node_logp[index[tuple(ids[:i])], ids[i]]
        return extra

    def _path(self, node: int) -> list[int]:
        parents = self.tree[1]
        path = []
        while node >= 0:
            path.append(node)
            node = parents[node]
        return path[::-1]

    def _pool(self, out: Any, own_mask: torch.Tensor, layers: Sequence[int], pooling: str) -> dict[int, torch.Tensor]:
        if not layers:
            return {}
        states = out.hidden_states
        pooled = {}
        for layer in layers:
            if not -len(states) <= layer < len(states):
                raise TailorkdError(f"teacher.hidden_states.layers: layer {layer} does not exist; the model has "
                                    f"hidden states 0..{len(states) - 1} (or -1..-{len(states)})")
            h = states[layer].float()
            if pooling == "last":
                pooled[layer] = h[:, -1].cpu()
            else:
                m = own_mask[:, -h.shape[1]:].to(h.dtype).unsqueeze(-1)
                pooled[layer] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu()
        return pooled

    def _continuations(self, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor, classes: list[int]
                       ) -> torch.Tensor:
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
        cont = self.forward(
            steps,
            torch.cat([rows_mask, torch.ones_like(steps)], dim=1),
            last_pos.repeat_interleave(k, dim=0) + 1 + torch.arange(width, device=mask.device),
            keep=width,
            use_cache=True,
            **{self.cache_kwarg: repeat_cache(cache, k, keep_original=False)},
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
            ids, mask = self.left_pad(prompts)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.forward(ids, mask, positions, keep=1, use_cache=False).logits[:, -1].float()
            first = [label[0] for label in self.label_ids]
            # Renormalising over the M first tokens equals the full softmax restricted to them.
            return logits[:, first]
        # Classes share a first token: score every (prompt, class) sequence in full.
        m = len(self.label_ids)
        longest = max(len(label) for label in self.label_ids)
        sequences = [list(p) + label for p in prompts for label in self.label_ids]
        ids, mask = self.left_pad(sequences)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.forward(ids, mask, positions, keep=longest + 1, use_cache=False).logits
        logp = F.log_softmax(logits[:, -(longest + 1) : -1].float(), dim=-1)  # predicts the last `longest` tokens
        per_class = []
        for c, label in enumerate(self.label_ids):
            rows = logp[c::m, longest - len(label) :]
            targets = torch.tensor(label, device=ids.device).expand(rows.shape[0], len(label))
            per_class.append(rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1))
        return self._combine(torch.stack(per_class, dim=1))
