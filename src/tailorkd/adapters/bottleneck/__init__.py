"""Bottleneck (series) adapters: small down/up projections after each block's feed-forward output
(Pfeiffer) or after attention and feed-forward (Houlsby), trained with the base frozen.

Written here rather than taken from AdapterHub's ``adapters`` package, whose releases pin transformers 4.x
(1.3.0: ``transformers~=4.57.6``); PEFT has no series adapters. See docs/design.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from tailorkd.adapters.bottleneck import method
from tailorkd.adapters.bottleneck.config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BottleneckAdapterConfig,
    BottleneckConfig,
    bottleneck_config,
)
from tailorkd.adapters.registry import AdapterMethod, register_adapter_method

# Names of the torch modules, imported on first use: registering the method (and validating a recipe) needs
# only its config.
_LAZY = {"BottleneckAdapter": "layer", "BottleneckWrapper": "layer", "adapter_state_dict": "model",
         "attach_bottleneck": "model", "find_targets": "model", "inject": "model", "load_bottleneck": "model",
         "save_bottleneck": "model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "BottleneckAdapter", "BottleneckAdapterConfig", "BottleneckConfig",
           "BottleneckWrapper", "adapter_state_dict", "attach_bottleneck", "bottleneck_config", "find_targets",
           "inject", "load_bottleneck", "save_bottleneck"]

register_adapter_method(AdapterMethod("bottleneck", config=BottleneckAdapterConfig, attach=method.attach_from_recipe,
                                      save=method.save_adapters, load=method.load_adapters,
                                      merge=method.merge_refused, check_export=method.refuse_export))
