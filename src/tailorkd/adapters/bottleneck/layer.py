"""The series adapter and the wrapper that adds it after an output module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(dropout(h))))``; ``up`` starts at zero, so at first it is the identity."""

    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str, dropout: float, init_std: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = _ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The adapter keeps its own (float32) dtype under a half-precision base, as PEFT does for LoRA.
        delta = self.up(self.act(self.down(self.dropout(hidden.to(self.down.weight.dtype)))))
        return hidden + delta.to(hidden.dtype)


class BottleneckWrapper(nn.Module):
    """Runs the wrapped module, then the adapter on its output (before the block's residual add)."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(*args, **kwargs)
        if not torch.is_tensor(out):
            raise TypeError(f"bottleneck adapter: {type(self.base_layer).__name__} returns {type(out).__name__}, "
                            "not a tensor; choose an output projection or MLP block as target")
        return self.adapter(out)


def output_features(module: nn.Module) -> int | None:
    """The width of ``module``'s output where its type says it (Linear, GPT-2's Conv1D), else None."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":
        return int(module.nf)
    return None
