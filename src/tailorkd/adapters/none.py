"""No adapter: nothing trains and nothing but student.json (and an encoder's head) is saved; the
untrained-student baseline."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tailorkd.adapters.registry import AdapterMethod, register_adapter_method
from tailorkd.recipe.student import AdapterConfig


class NoAdapterConfig(AdapterConfig):
    """``adapter:`` settings of ``method: none``: none besides the method."""

    method: Literal["none"] = Field(default="none", description="none: nothing trains (the untrained student).")


def attach_nothing(model: Any, config: NoAdapterConfig, kind: str) -> Any:
    return model


register_adapter_method(AdapterMethod("none", config=NoAdapterConfig, attach=attach_nothing, trains=False,
                                      saves=None))
