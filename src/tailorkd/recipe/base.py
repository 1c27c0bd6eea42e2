"""What every recipe section shares: unknown keys are errors, and a dump people read leaves out idle nulls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Dtype = Literal["float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


class Section(BaseModel):
    """A recipe section: a misspelt key is an error rather than a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def readable_dump(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json")`` less every null that is only its field's default.

    For files and screens people read. It validates back to an equal model: a null that means something
    (``columns.label: null``, a label map's ``null``) is kept, which ``exclude_none`` would drop.
    """
    return _strip_default_nulls(model, model.model_dump(mode="json"))


def _strip_default_nulls(value: Any, dumped: Any) -> Any:
    # Walks the model and its JSON dump side by side, so each key is judged by the field it came from.
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        fields = type(value).model_fields
        return {key: _strip_default_nulls(getattr(value, key, None), item) for key, item in dumped.items()
                if not (item is None and key in fields and fields[key].default is None)}
    if isinstance(value, (list, tuple)) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_strip_default_nulls(v, d) for v, d in zip(value, dumped)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {key: _strip_default_nulls(value.get(key), item) for key, item in dumped.items()}
    return dumped
