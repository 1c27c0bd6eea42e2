"""The adapter methods by name: each method module registers one ``AdapterMethod`` on import (as PEFT's
``register_peft_method`` does); ``get_adapter_method`` looks one up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tailorkd.errors import TailorkdError

if TYPE_CHECKING:
    from tailorkd.recipe import AdapterConfig

# The student folder's subfolders a method saves into.
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


def _save_nothing(transformer: Any, tokenizer: Any, folder: Path) -> None:
    return None


def _unchanged(transformer: Any, folder: Path) -> Any:
    return transformer


def _no_quantization() -> Any:
    return None


def _exportable(folder: Path) -> None:
    return None


@dataclass(frozen=True)
class AdapterMethod:
    """How one ``adapter.method`` attaches to, saves, reloads and exports a student's transformer.

    ``transformer`` is what the method adapts (``Student.transformer``: the LM, or an encoder student's
    encoder); ``folder`` is always the student folder. ``saves``: the subfolder ``save`` writes
    (``adapter`` for the adapter alone, ``model`` for all weights, from which the base is then loaded;
    None: nothing). ``trains``: whether anything trains (the student's parts outside the transformer,
    e.g. an encoder's head, train exactly when it does).
    """

    name: str
    attach: Callable[[Any, AdapterConfig, str], Any]  # (base transformer, config, student kind) -> transformer
    trains: bool = True
    saves: str | None = ADAPTER_DIR
    save: Callable[[Any, Any, Path], None] = _save_nothing  # (transformer, tokenizer, folder)
    load: Callable[[Any, Path], Any] = _unchanged  # (freshly built base, folder) -> trained transformer
    # (freshly built base, folder) -> the trained transformer as plain weights, for export
    merge: Callable[[Any, Path], Any] = _unchanged
    check_export: Callable[[Path], None] = _exportable  # raises TailorkdError where the method cannot be exported
    quantization: Callable[[], Any] = _no_quantization  # the base's quantization config (None: not quantised)


_METHODS: dict[str, AdapterMethod] = {}


def register_adapter_method(method: AdapterMethod) -> AdapterMethod:
    """Make ``method`` available as ``adapter.method: <method.name>``; a name registers once."""
    if method.name in _METHODS:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_adapter_method(name: str) -> AdapterMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise TailorkdError(f"adapter.method: unknown method {name!r} (known: {', '.join(sorted(_METHODS))})") from None


def adapter_methods() -> list[str]:
    return sorted(_METHODS)
