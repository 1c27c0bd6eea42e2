"""The bottleneck method as tailorkd uses it: attached from the recipe, saved in the student's adapter/ folder,
and refused for export."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from tailorkd.adapters.bottleneck.config import BottleneckAdapterConfig, bottleneck_config
from tailorkd.adapters.registry import ADAPTER_DIR
from tailorkd.errors import TailorkdError

# The torch modules (model, layer) are imported when used: a recipe is validated without torch.


def attach_from_recipe(model: Any, config: BottleneckAdapterConfig, kind: str) -> Any:
    from tailorkd.adapters.bottleneck.model import attach_bottleneck

    # The adapters go into the module in place, so an encoder student keeps its encoder.
    return attach_bottleneck(model, bottleneck_config(config), config.target_modules)


def save_adapters(model: Any, tokenizer: Any, folder: Path) -> None:
    from tailorkd.adapters.bottleneck.model import save_bottleneck

    save_bottleneck(model, folder / ADAPTER_DIR)


def load_adapters(base: Any, folder: Path) -> Any:
    from tailorkd.adapters.bottleneck.model import load_bottleneck

    return load_bottleneck(base, folder / ADAPTER_DIR)


def refuse_export(folder: Path) -> NoReturn:
    """Series adapters are non-linear, so they cannot be folded into the base weights, and transformers would
    silently drop extra modules it does not know."""
    raise TailorkdError(
        f"{folder}: a bottleneck student cannot be exported as a standalone model: its series adapters "
        "(h + up(act(down(h)))) are non-linear and cannot be merged into the base weights; use the student "
        "folder with tailorkd (its adapter/ holds the adapters), or train with adapter.method=lora to export"
    )


def merge_refused(base: Any, folder: Path) -> NoReturn:
    refuse_export(folder)
