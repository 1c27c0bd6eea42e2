"""A cheap, content-based fingerprint of a model's weight files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tailorkd.errors import TailorkdError
from tailorkd.models.loading import resolve_model

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HEAD_BYTES = 1 << 20  # a safetensors header (names, shapes, dtypes, offsets) lives here
_SAMPLES = 16
_SAMPLE_BYTES = 64 << 10


def weights_fingerprint(name_or_path: str) -> str:
    """16 hex characters that change when a model's weights change: registry name, folder or Hub id.

    Each weight file adds its relative name, its size, its first 1 MiB and 16 evenly spaced 64 KiB
    samples, so a multi-GB model takes milliseconds, and a copy of the folder elsewhere gives the same
    value (no times, no absolute paths). A Hub id cannot be read offline: it gives "hub:<id>".
    """
    source = resolve_model(str(name_or_path))  # a registry name is prepared, as loading does
    folder = Path(source)
    if not folder.is_dir():
        return "hub:" + source
    files = sorted(
        (path.relative_to(folder).as_posix(), path)
        for path in folder.rglob("*")
        if path.suffix in WEIGHT_SUFFIXES and path.is_file()
    )
    if not files:
        raise TailorkdError(
            f"The model folder {folder} has no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})."
        )
    digest = hashlib.sha256()
    for name, path in files:
        _add_file(digest, name, path)
    return digest.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """16 hex characters that change when one weight file (a GGUF) changes: its size, first 1 MiB and 16
    samples, as ``weights_fingerprint`` reads each file of a folder. The name is left out, so a copy or a
    renamed file gives the same value."""
    digest = hashlib.sha256()
    _add_file(digest, "", Path(path))
    return digest.hexdigest()[:16]


def _add_file(digest, name: str, path: Path) -> None:
    size = path.stat().st_size
    digest.update(f"{name}\0{size}\0".encode())
    with open(path, "rb") as file:
        digest.update(file.read(_HEAD_BYTES))
        last = max(size - _SAMPLE_BYTES, 0)
        for index in range(_SAMPLES):
            file.seek(last * index // (_SAMPLES - 1))
            digest.update(file.read(_SAMPLE_BYTES))
