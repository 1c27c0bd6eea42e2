"""The adapter methods by name: each method module registers one ``AdapterMethod`` on import, with the config
class of its ``adapter:`` settings (as PEFT's ``register_peft_method`` registers a method with its config);
``get_adapter_method`` looks one up, and ``validate_adapter_section`` validates a recipe's ``adapter:`` section
as the config class of the method it names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from tailorkd.errors import TailorkdError
from tailorkd.recipe.student import DEFAULT_ADAPTER_METHOD, AdapterConfig

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
    """How one ``adapter.method`` is configured, and attaches to, saves, reloads and exports a student's
    transformer.

    ``config``: the class of the method's ``adapter:`` settings, a subclass of ``AdapterConfig`` whose
    ``method`` defaults to ``name``; ``attach`` receives an instance of it. ``transformer`` is what the method
    adapts (``Student.transformer``: the LM, or an encoder student's encoder); ``folder`` is always the student
    folder. ``saves``: the subfolder ``save`` writes (``adapter`` for the adapter alone, ``model`` for all
    weights, from which the base is then loaded; None: nothing). ``trains``: whether anything trains (the
    student's parts outside the transformer, e.g. an encoder's head, train exactly when it does).
    """

    name: str
    config: type[AdapterConfig]
    attach: Callable[[Any, Any, str], Any]  # (base transformer, config: an instance of `config`, kind) -> transformer
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
    """Make ``method`` available as ``adapter.method: <method.name>``, its settings those of ``method.config``;
    a name registers once."""
    if method.name in _METHODS:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    if not (isinstance(method.config, type) and issubclass(method.config, AdapterConfig)):
        raise ValueError(f"adapter method {method.name!r}: its config must be a subclass of AdapterConfig")
    # A dumped section must load back as the same method, and a config built in code must name its method.
    if method.config.model_fields["method"].default != method.name:
        raise ValueError(f"adapter method {method.name!r}: {method.config.__name__}.method must default to "
                         f"{method.name!r}")
    _METHODS[method.name] = method
    return method


def unregister_adapter_method(name: str) -> AdapterMethod:
    """Forget the method registered as ``name`` (e.g. one a test registered); return it."""
    try:
        return _METHODS.pop(name)
    except KeyError:
        raise ValueError(f"adapter method {name!r} is not registered") from None


def get_adapter_method(name: str) -> AdapterMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise TailorkdError(f"adapter.method: unknown method {name!r} (known: {', '.join(sorted(_METHODS))})") from None


def adapter_methods() -> list[str]:
    return sorted(_METHODS)


def settings_owner(key: str, method: str) -> str | None:
    """The first registered method whose config has the setting ``key`` where ``method``'s has not, or None
    (``key`` is a setting of ``method``, or of no method: misspelt; or ``method`` is not registered)."""
    if method not in _METHODS or key in _METHODS[method].config.model_fields:
        return None
    return next((name for name in sorted(_METHODS) if key in _METHODS[name].config.model_fields), None)


def adapter_config(method: str = DEFAULT_ADAPTER_METHOD, **settings: Any) -> AdapterConfig:
    """The ``adapter:`` settings of ``method`` (its registered config class), e.g. ``adapter_config("full")``;
    a TailorkdError names an unknown method or a bad setting."""
    try:
        return validate_adapter_section({"method": method, **settings})
    except ValidationError as exc:
        problems = "; ".join(f"adapter.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TailorkdError(problems) from None


def validate_adapter_section(value: Any) -> Any:
    """A recipe's ``adapter:`` section as the config class registered for its ``method`` (default lora).

    Raises pydantic's ValidationError, located inside the section: ``method`` when no method of that name is
    registered; a key of another method's settings (``bottleneck_size`` under ``method: lora``) by that key.
    A value neither a mapping nor an AdapterConfig is returned as it is, for pydantic to report its type.
    """
    if isinstance(value, AdapterConfig):
        registered = _METHODS.get(value.method)
        if registered is not None and type(value) is registered.config:
            return value
        value = value.model_dump()
    if not isinstance(value, Mapping):
        return value
    name = value.get("method", DEFAULT_ADAPTER_METHOD)
    method = _METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        error = PydanticCustomError("unknown_adapter_method", "unknown adapter method; registered: {known}",
                                    {"known": ", ".join(sorted(_METHODS))})
        raise ValidationError.from_exception_data("AdapterConfig", [{"type": error, "loc": ("method",),
                                                                     "input": name}])
    foreign = {key: owner for key in value if isinstance(key, str) and (owner := settings_owner(key, method.name))}
    if foreign:
        # Said apart from misspelt keys, which pydantic reports as unknown.
        raise ValidationError.from_exception_data("AdapterConfig", [
            {"type": PydanticCustomError("adapter_setting_of_another_method",
                                         "a setting of adapter.method {owner}, not of {method}",
                                         {"owner": owner, "method": method.name}),
             "loc": (key,), "input": value[key]}
            for key, owner in foreign.items()])
    return method.config.model_validate(dict(value))
