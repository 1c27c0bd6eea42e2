"""The bottleneck method's ``adapter:`` settings (BottleneckAdapterConfig), and BottleneckConfig: the shape and
placement of series adapters, as written beside their weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tailorkd.errors import TailorkdError
from tailorkd.recipe.student import AdapterConfig

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck.safetensors"
FORMAT_VERSION = 1

PLACEMENTS = ("ffn", "both")
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")


@dataclass
class BottleneckConfig:
    """Series adapters ``h + up(act(down(dropout(h))))`` after chosen output modules of each block.

    ``placement``: ``ffn`` puts one after each feed-forward block (Pfeiffer et al., 2021); ``both`` also
    puts one after each attention output projection (Houlsby et al., 2019). ``bottleneck_size`` wins over
    ``reduction_factor`` (width = hidden size // reduction_factor). ``init``: ``zero_up`` draws ``down``
    from N(0, init_std) and zeroes ``up`` (weights and biases), so the adapted model starts equal to the base.
    ``target_modules``: full module names, filled in when the adapters are attached (then saved, so a
    reload wraps exactly the same modules).
    """

    placement: str = "ffn"
    bottleneck_size: int | None = None
    reduction_factor: int = 16
    non_linearity: str = "relu"
    dropout: float = 0.0
    init: str = "zero_up"
    init_std: float = 0.02
    base_model: str | None = None
    target_modules: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise TailorkdError(f"bottleneck placement {self.placement!r}: expected one of {PLACEMENTS}")
        if self.non_linearity not in NON_LINEARITIES:
            raise TailorkdError(f"bottleneck non-linearity {self.non_linearity!r}: expected one of {NON_LINEARITIES}")
        if self.init != "zero_up":
            raise TailorkdError(f"bottleneck init {self.init!r}: only 'zero_up' is supported")
        if (self.bottleneck_size is not None and self.bottleneck_size < 1) or self.reduction_factor < 1:
            raise TailorkdError("bottleneck_size and reduction_factor must be at least 1")

    def width(self, hidden_size: int) -> int:
        return self.bottleneck_size or max(1, hidden_size // self.reduction_factor)

    def save(self, folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> BottleneckConfig:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise TailorkdError(f"{folder}: no {CONFIG_FILE}; not a bottleneck adapter folder")
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise TailorkdError(f"{path}: format_version {version!r}, this tailorkd reads {FORMAT_VERSION}")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise TailorkdError(f"{path}: unknown keys {unknown}")
        return cls(**raw)


class BottleneckAdapterConfig(AdapterConfig):
    """``adapter:`` settings of ``method: bottleneck``."""

    method: Literal["bottleneck"] = Field(
        default="bottleneck", description="bottleneck: series adapters after each block's feed-forward (and "
        "attention) output train; the base stays frozen.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        default=None, description="Modules (name suffixes) after whose output an adapter goes; default: by "
        "bottleneck_placement.")
    bottleneck_size: int | None = Field(
        default=None, ge=1, description="Width of each adapter; default: hidden size / reduction_factor.")
    reduction_factor: int = Field(
        default=16, ge=1, description="Hidden size / adapter width, when bottleneck_size is not set.")
    bottleneck_placement: Literal["ffn", "both"] = Field(
        default="ffn", description="ffn: after each feed-forward block (Pfeiffer); both: also after each attention "
        "output projection (Houlsby).")
    bottleneck_non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        default="relu", description="Activation between the down and up projections.")


def bottleneck_config(config: BottleneckAdapterConfig) -> BottleneckConfig:
    """The recipe's adapter section as a BottleneckConfig (target modules are found when attaching)."""
    return BottleneckConfig(placement=config.bottleneck_placement, bottleneck_size=config.bottleneck_size,
                            reduction_factor=config.reduction_factor, non_linearity=config.bottleneck_non_linearity,
                            dropout=config.dropout)
