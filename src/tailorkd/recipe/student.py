"""The ``student:`` section (the small model that learns) and what every ``adapter:`` section (which of its
weights train) shares; each adapter method's own settings live with the method, in ``tailorkd.adapters``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tailorkd.recipe.base import Device, Dtype, Section


class StudentConfig(Section):
    model: str = Field(min_length=1, description="Registry name, local folder or hub id.")
    kind: Literal["auto", "causal_lm", "encoder"] = Field(
        default="auto", description="causal_lm answers through the prompt; encoder uses a classification head."
    )
    dtype: Dtype = "float32"
    device: Device = "auto"
    max_length: int = Field(default=256, ge=8, description="Token limit of one student input.")


DEFAULT_ADAPTER_METHOD = "lora"


class AdapterConfig(Section):
    """What every adapter method's settings share: the method's name. Each method registers its own subclass
    with its settings (``tailorkd.adapters``: ``LoraAdapterConfig`` in adapters/lora.py, ...); a recipe's
    ``adapter:`` section is validated as the subclass its ``method`` names."""

    method: str = Field(
        description="A registered adapter method (tailorkd.adapters.adapter_methods()). Built in: lora: train "
        "adapters only; qlora: adapters on a 4-bit NF4 base; bottleneck: series adapters after each block's "
        "feed-forward (and attention) output; full: all weights; none: untrained student.",
    )
