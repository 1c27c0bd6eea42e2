"""No adapter: nothing trains and nothing but student.json (and an encoder's head) is saved; the
untrained-student baseline."""

from __future__ import annotations

from typing import Any

from tailorkd.adapters.registry import AdapterMethod, register_adapter_method
from tailorkd.recipe import AdapterConfig


def attach_nothing(model: Any, config: AdapterConfig, kind: str) -> Any:
    return model


register_adapter_method(AdapterMethod("none", attach=attach_nothing, trains=False, saves=None))
