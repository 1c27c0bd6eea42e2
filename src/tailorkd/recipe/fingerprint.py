"""The stable short hash of chosen recipe sections, by which outputs are named and found out of date.

It hashes the sections' full JSON dump, so any change to a section it covers (a default that changes
included) moves it, a change elsewhere does not, and a recipe dumped and loaded again hashes the same.
Which sections each stage depends on is listed in one place: ``tailorkd.run_dir.STAGE_INPUTS``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping

from pydantic import BaseModel


def content_hash(recipe: BaseModel, *sections: str) -> str:
    """16 hex digits of the SHA-256 of the named top-level sections of ``recipe`` (all of it when none)."""
    return sections_hash(recipe, {name: () for name in sections}) if sections else sections_hash(recipe, None)


def sections_hash(recipe: BaseModel, sections: Mapping[str, Collection[str]] | None) -> str:
    """16 hex digits of the SHA-256 of ``sections`` of ``recipe`` ({section: its fields left out}; None: the
    whole recipe)."""
    fields = type(recipe).model_fields
    unknown = [s for s in sections or () if s not in fields or fields[s].exclude]
    if unknown:
        # A misspelt name would hash nothing and never change: a bug, not a user's mistake.
        raise ValueError(f"not sections of a recipe: {unknown}")
    include = None if sections is None else {name: True for name in sections}
    exclude = {name: {f: True for f in left_out} for name, left_out in (sections or {}).items() if left_out}
    dump = recipe.model_dump(mode="json", include=include, exclude=exclude or None)
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
