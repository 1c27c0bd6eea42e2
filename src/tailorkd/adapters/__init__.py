"""Adapters: what of the student trains. One module per method, one entry point.

- ``lora``: low-rank adapters on the attention projections (PEFT); the base stays frozen.
- ``full``: every weight trains (the paper's standard-KD baseline).
- ``none``: nothing trains (the untrained-student baseline).
"""

from __future__ import annotations

from typing import Any

from tailorkd.adapters.lora import attach_lora, attention_modules
from tailorkd.recipe import AdapterConfig


def attach_adapter(model: Any, config: AdapterConfig, kind: str) -> Any:
    """Return the model prepared for training under ``config.method`` (``kind``: causal_lm or encoder)."""
    if config.method == "lora":
        return attach_lora(model, config, kind)
    for param in model.parameters():
        param.requires_grad = config.method == "full"
    return model


def count_parameters(model: Any) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


__all__ = ["attach_adapter", "attach_lora", "attention_modules", "count_parameters"]
