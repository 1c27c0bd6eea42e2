"""Adapters: what of the student trains. One module per method, one entry point.

- ``lora``: low-rank adapters on the attention projections (PEFT); the base stays frozen.
- ``qlora``: the same adapters on a base loaded in 4-bit NF4 (bitsandbytes).
- ``bottleneck``: series adapters after each block's feed-forward (and attention) output; the base stays frozen.
- ``full``: every weight trains (the paper's standard-KD baseline).
- ``none``: nothing trains (the untrained-student baseline).
"""

from __future__ import annotations

from typing import Any

from tailorkd.adapters.bottleneck import BottleneckConfig, attach_bottleneck, load_bottleneck, save_bottleneck
from tailorkd.adapters.lora import attach_lora, attention_modules
from tailorkd.adapters.qlora import attach_qlora, optimizer_name, quantization_config
from tailorkd.recipe import AdapterConfig


def attach_adapter(model: Any, config: AdapterConfig, kind: str) -> Any:
    """Return the student's model prepared for training under ``config.method``.

    ``kind`` is causal_lm (the model is the LM) or encoder (a classifier whose ``encoder`` is adapted and
    whose ``head`` always trains, except under ``none``).
    """
    for param in model.parameters():
        param.requires_grad = config.method == "full"
    if config.method in ("lora", "qlora"):
        attach = attach_lora if config.method == "lora" else attach_qlora
        if kind == "encoder":
            model.encoder = attach(model.encoder, config, kind)
        else:
            model = attach(model, config, kind)
    elif config.method == "bottleneck":
        # Adapters go into the module in place, so the encoder classifier keeps its encoder attribute.
        attach_bottleneck(model.encoder if kind == "encoder" else model, bottleneck_config(config), config.target_modules)
    if kind == "encoder" and config.method != "none":
        for param in model.head.parameters():
            param.requires_grad = True
    return model


def bottleneck_config(config: AdapterConfig) -> BottleneckConfig:
    """The recipe's adapter section as a BottleneckConfig (target modules are found when attaching)."""
    return BottleneckConfig(placement=config.bottleneck_placement, bottleneck_size=config.bottleneck_size,
                            reduction_factor=config.reduction_factor, non_linearity=config.bottleneck_non_linearity,
                            dropout=config.dropout)


def count_parameters(model: Any) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


__all__ = ["attach_adapter", "attach_bottleneck", "attach_lora", "bottleneck_config", "load_bottleneck",
           "save_bottleneck", "attach_qlora", "attention_modules", "count_parameters", "optimizer_name",
           "quantization_config"]
