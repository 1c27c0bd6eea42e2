"""Bottleneck (series) adapters: small down/up projections after each block's feed-forward output
(Pfeiffer) or after attention and feed-forward (Houlsby), trained with the base frozen.

Written here rather than taken from AdapterHub's ``adapters`` package, whose releases pin transformers 4.x
(1.3.0: ``transformers~=4.57.6``); PEFT has no series adapters. See docs/design.md.
"""

from tailorkd.adapters.bottleneck import method
from tailorkd.adapters.bottleneck.config import CONFIG_FILE, WEIGHTS_FILE, BottleneckConfig, bottleneck_config
from tailorkd.adapters.bottleneck.layer import BottleneckAdapter, BottleneckWrapper
from tailorkd.adapters.bottleneck.model import (
    adapter_state_dict,
    attach_bottleneck,
    find_targets,
    inject,
    load_bottleneck,
    save_bottleneck,
)
from tailorkd.adapters.registry import AdapterMethod, register_adapter_method

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "BottleneckAdapter", "BottleneckConfig", "BottleneckWrapper",
           "adapter_state_dict", "attach_bottleneck", "bottleneck_config", "find_targets", "inject", "load_bottleneck",
           "save_bottleneck"]

register_adapter_method(AdapterMethod("bottleneck", attach=method.attach_from_recipe, save=method.save_adapters,
                                      load=method.load_adapters, merge=method.merge_refused,
                                      check_export=method.refuse_export))
