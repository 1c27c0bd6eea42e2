"""The ``student:`` section (the small model that learns) and ``adapter:`` (which of its weights train)."""

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


class AdapterConfig(Section):
    method: Literal["lora", "qlora", "bottleneck", "full", "none"] = Field(
        default="lora",
        description="lora: train adapters only; qlora: adapters on a 4-bit NF4 base; bottleneck: series "
        "adapters after each block's feed-forward (and attention) output; full: all weights; none: untrained student.",
    )
    r: int = Field(default=16, ge=1, description="LoRA rank (lora, qlora).")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (lora, qlora).")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        default=None, description="lora/qlora: modules to adapt; default: the attention projections of the family. "
        "bottleneck: modules (name suffixes) after whose output an adapter goes; default: by bottleneck_placement.",
    )
    bottleneck_size: int | None = Field(
        default=None, ge=1, description="bottleneck: width of each adapter; default: hidden size / reduction_factor."
    )
    reduction_factor: int = Field(
        default=16, ge=1, description="bottleneck: hidden size / adapter width, when bottleneck_size is not set."
    )
    bottleneck_placement: Literal["ffn", "both"] = Field(
        default="ffn", description="bottleneck: ffn: after each feed-forward block (Pfeiffer); both: also after "
        "each attention output projection (Houlsby).",
    )
    bottleneck_non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        default="relu", description="bottleneck: activation between the down and up projections."
    )
