"""Writing files so that a reader never sees half of one: write a temporary file beside it, fsync it, rename it
over the old one and fsync the folder. A kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from tailorkd.errors import TailorkdError


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path next to ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON (anything JSON does not know as its ``str``), written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: Path, what: str = "file") -> Any:
    """The JSON in ``path``; a file that is not valid JSON (e.g. cut short by a crash or edited by hand) is a
    TailorkdError naming it and what to do."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TailorkdError(f"{path}: this {what} is not valid JSON ({exc.msg} at line {exc.lineno}); delete it "
                            "and rerun the stage that writes it") from None
    except UnicodeDecodeError:
        raise TailorkdError(f"{path}: this {what} is not UTF-8 text; delete it and rerun the stage that writes "
                            "it") from None
