"""Adapters: what of the student trains. One module per method, each registering an ``AdapterMethod`` with the
config class of its ``adapter:`` settings.

- ``lora``: low-rank adapters on the attention projections (PEFT); the base stays frozen.
- ``qlora``: the same adapters on a base loaded in 4-bit NF4 (bitsandbytes).
- ``bottleneck``: series adapters after each block's feed-forward (and attention) output; the base stays frozen.
- ``full``: every weight trains (the paper's standard-KD baseline).
- ``none``: nothing trains (the untrained-student baseline).

A method registers itself and its config class with one ``register_adapter_method`` call (as PEFT's
``register_peft_method`` does); ``get_adapter_method(name)`` looks one up; a recipe's ``adapter:`` section is
validated as the config class of the method it names (``validate_adapter_section``); ``attach_adapter``
prepares a student for training.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The method modules register themselves on import, so that importing tailorkd.adapters makes them all known.
# They import torch, PEFT and bitsandbytes only when a method is used: validating a recipe needs none of them.
from tailorkd.adapters.bottleneck import BottleneckAdapterConfig, bottleneck_config
from tailorkd.adapters.full import FullAdapterConfig
from tailorkd.adapters.lora import LoraAdapterConfig, attach_lora, attention_modules
from tailorkd.adapters.none import NoAdapterConfig
from tailorkd.adapters.qlora import QLoraAdapterConfig, attach_qlora, optimizer_name, quantization_config
from tailorkd.adapters.registry import (
    ADAPTER_DIR,
    MODEL_DIR,
    AdapterMethod,
    adapter_config,
    adapter_methods,
    get_adapter_method,
    register_adapter_method,
    settings_owner,
    unregister_adapter_method,
    validate_adapter_section,
)

if TYPE_CHECKING:
    from tailorkd.recipe import AdapterConfig
    from tailorkd.students import Student


def attach_adapter(student: Student, config: AdapterConfig) -> None:
    """Prepare ``student`` for training under ``config.method``: adapt its transformer in place of the old one;
    its other parts (an encoder's head) train whenever the method trains anything."""
    method = get_adapter_method(config.method)
    for param in student.model.parameters():
        param.requires_grad = False
    student.transformer = method.attach(student.transformer, validate_adapter_section(config), student.kind)
    adapted = {id(p) for p in student.transformer.parameters()}
    for param in student.model.parameters():
        if id(param) not in adapted:
            param.requires_grad = method.trains


def __getattr__(name: str) -> Any:
    # The bottleneck functions that need torch, from their module on first use.
    if name in ("attach_bottleneck", "load_bottleneck", "save_bottleneck"):
        return getattr(importlib.import_module("tailorkd.adapters.bottleneck.model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def count_parameters(model: Any) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


__all__ = ["ADAPTER_DIR", "MODEL_DIR", "AdapterMethod", "BottleneckAdapterConfig", "FullAdapterConfig",
           "LoraAdapterConfig", "NoAdapterConfig", "QLoraAdapterConfig", "adapter_config", "adapter_methods",
           "attach_adapter", "attach_bottleneck", "attach_lora", "attach_qlora", "attention_modules",
           "bottleneck_config", "count_parameters", "get_adapter_method", "load_bottleneck", "optimizer_name",
           "quantization_config", "register_adapter_method", "save_bottleneck", "settings_owner",
           "unregister_adapter_method", "validate_adapter_section"]
