"""Bottleneck (series) adapters: small down/up projections after each block's feed-forward output
(Pfeiffer) or after attention and feed-forward (Houlsby), trained with the base frozen.

Written here rather than taken from AdapterHub's ``adapters`` package, whose releases pin transformers 4.x
(1.3.0: ``transformers~=4.57.6``); PEFT has no series adapters. See docs/design.md.
"""

from tailorkd.adapters.bottleneck.config import CONFIG_FILE, WEIGHTS_FILE, BottleneckConfig
from tailorkd.adapters.bottleneck.layer import BottleneckAdapter, BottleneckWrapper
from tailorkd.adapters.bottleneck.model import (adapter_state_dict, attach_bottleneck, find_targets, inject,
                                                load_bottleneck, save_bottleneck)

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "BottleneckAdapter", "BottleneckConfig", "BottleneckWrapper",
           "adapter_state_dict", "attach_bottleneck", "find_targets", "inject", "load_bottleneck", "save_bottleneck"]
