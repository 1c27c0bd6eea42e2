"""Reading a recipe: YAML in, ``key.sub=value`` overrides applied, validated, and every problem turned into
one :class:`TailorkdError` that names the file and the key path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tailorkd.data.config import SOURCE_KINDS
from tailorkd.errors import TailorkdError
from tailorkd.recipe.schema import Recipe

log = logging.getLogger(__name__)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise TailorkdError(f"override {text!r} is not of the form key.sub=value")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise TailorkdError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise TailorkdError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``key.sub=value`` (value parsed as YAML; list items by index: ``data.sources.0.path=x``)."""
    for text in overrides:
        parts, value = _parse_override(text)
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise TailorkdError(f"override {text!r}: {where} is not an index of a {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise TailorkdError(f"override {text!r}: {'.'.join(parts[:depth])} is a value, not a section")
    return raw


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: the recipe is not valid ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        # pydantic puts the tag of a tagged union (e.g. a source's kind) into the path: leave it out.
        loc = [p for i, p in enumerate(err["loc"])
               if not (i and isinstance(err["loc"][i - 1], int) and p in SOURCE_KINDS)]
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt, or not a setting of this section)"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem is one TailorkdError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise TailorkdError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TailorkdError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TailorkdError(f"{path}: a recipe is a mapping of sections (task, data, prompt, ...), "
                            f"got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides or []))
    _switch_adapter_method(raw, list(overrides or []))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise TailorkdError(_format_validation_error(str(path), exc)) from None
    recipe.base_dir = path.resolve().parent
    check_files(recipe, str(path))
    return recipe


def _switch_adapter_method(raw: dict[str, Any], overrides: list[str]) -> None:
    """An override of ``adapter.method`` switches the method: the settings that belong to other methods (the
    file's, or ones a sweep over methods gives every run, as in ``adapter.method=full adapter.r=8``) are dropped,
    each named in a warning. Misspelt keys stay, for validation to report; in a file without that override, a
    setting of another method is an error."""
    if not any(_parse_override(text)[0] == ["adapter", "method"] for text in overrides):
        return
    section = raw.get("adapter")
    if not isinstance(section, dict) or not isinstance(section.get("method"), str):
        return
    from tailorkd.adapters import settings_owner

    method = section["method"]
    dropped = [key for key in section if isinstance(key, str) and settings_owner(key, method)]
    for key in dropped:
        del section[key]
    if dropped:
        log.warning("adapter.method=%s: left out the settings of other methods: %s", method,
                    ", ".join(f"adapter.{key}" for key in dropped))


def check_files(recipe: Recipe, source: str) -> None:
    """Fail early, naming the key and the path, when a file or folder the recipe names does not exist."""
    from tailorkd.data.sources import resolve_source_path

    for i, src in enumerate(recipe.data.sources):
        try:
            resolve_source_path(src, recipe.base_dir, key=f"data.sources.{i}")
        except TailorkdError as exc:
            raise TailorkdError(f"{source}: {exc}") from None
