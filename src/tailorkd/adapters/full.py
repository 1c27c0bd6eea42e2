"""Full fine-tuning: every weight trains (the paper's standard-KD baseline); the student saves all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tailorkd.adapters.registry import MODEL_DIR, AdapterMethod, register_adapter_method
from tailorkd.recipe.student import AdapterConfig


class FullAdapterConfig(AdapterConfig):
    """``adapter:`` settings of ``method: full``: none besides the method."""

    method: Literal["full"] = Field(default="full", description="full: every weight trains.")


def attach_full(model: Any, config: FullAdapterConfig, kind: str) -> Any:
    for param in model.parameters():
        param.requires_grad = True
    return model


def save_full(model: Any, tokenizer: Any, folder: Path) -> None:
    """The whole model and its tokenizer in ``folder/model``, which a reload takes as its base."""
    model.save_pretrained(str(folder / MODEL_DIR))
    tokenizer.save_pretrained(str(folder / MODEL_DIR))


# Loading and exporting need nothing more: the base is built from model/, which holds the trained weights.
register_adapter_method(AdapterMethod("full", config=FullAdapterConfig, attach=attach_full, saves=MODEL_DIR,
                                      save=save_full))
