"""The teacher's pooled hidden states: float16 safetensors shards beside the label store, indexed in it.

Layout, next to ``labels.sqlite``::

    hidden/<key>/shard-00000.safetensors   one [rows, H] float16 tensor per layer, named ``layer.<i>``
    hidden_index (table of labels.sqlite)  (teacher, prompt, text_hash) -> (shard, row)

``<key>`` is ``shard_folder_key(teacher, prompt)``, a hash: teacher identities hold '/' and '|'. ``shard``
is the path relative to the store's folder, so a run folder can be moved.

Durability: a shard is written under a temporary name, fsynced, renamed into place and its folder fsynced,
and only then are its index rows committed, all inside one write transaction of the store. A crash in
between leaves a shard file that no index row names (an orphan) or a temporary file (a hidden one, its
name starting with '.'): readers never look at them, and the next writer for that teacher and prompt
deletes them when it opens. So an index row never points at a missing or partial file.

Expected call order, per chunk of ``label_rows``::

    writer.add(hashes, states)           # buffers only: nothing is durable yet
    store.put_batch(teacher, prompt, names, records)
    writer.flush()                       # writes and indexes every full shard buffered
    ...
    writer.close()                       # after the last chunk: the remaining rows as a last shard

Flushing after ``put_batch`` keeps the invariant that every indexed hidden state has its label. A kill
loses the rows still buffered (fewer than ``rows_per_shard`` plus a chunk); their texts have a label but
no hidden state, so on resume label the texts missing from either ``LabelStore.done_hashes`` or
``HiddenStateWriter.done_hashes`` (putting a label again replaces it with the same values).

Several processes may write the same (teacher, prompt) at once: a shard is written and indexed while the
store's write lock is held, and its texts that another process indexed meanwhile are left out of it, so
each text has at most one index row (``label_rows`` re-reads what is done before each chunk, so that
such overlaps stay small).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.files import fsync_dir
from tailorkd.labels import LabelStore, first_column_among

log = logging.getLogger(__name__)

HIDDEN_DIR = "hidden"
_SHARD_NAME = re.compile(r"^shard-(\d{5,})\.safetensors$")
_TMP_MARK = ".tmp-"

# Created on first use; a new table, so label stores of any schema version take it without a migration.
_INDEX_SCHEMA = """CREATE TABLE IF NOT EXISTS hidden_index (
    teacher TEXT NOT NULL,
    prompt TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    shard TEXT NOT NULL,        -- path of the safetensors file, relative to the store's folder
    row INTEGER NOT NULL,       -- row of this text in each of the shard's tensors
    PRIMARY KEY (teacher, prompt, text_hash)
)"""


def shard_folder_key(teacher: str, prompt: str) -> str:
    return hashlib.sha256(f"{teacher}\n{prompt}".encode("utf-8")).hexdigest()[:16]


def tensor_name(layer: int) -> str:
    return f"layer.{layer}"


def _has_index(store: LabelStore) -> bool:
    found = store.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='hidden_index'").fetchone()
    return found is not None


def _indexed_hashes(store: LabelStore, teacher: str, prompt: str, among: Sequence[str] | None = None) -> set[str]:
    """The indexed texts of (teacher, prompt); with ``among``, only those of these texts."""
    if not _has_index(store):
        return set()
    return first_column_among(store.conn, "SELECT text_hash FROM hidden_index WHERE teacher=? AND prompt=?",
                              [teacher, prompt], "text_hash", among)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly bfloat16 (which numpy lacks) or on a GPU
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


class HiddenStateWriter:
    """Appends pooled hidden states of chosen layers for one (teacher, prompt) to shards of ``rows_per_shard``."""

    def __init__(self, store: LabelStore, teacher: str, prompt: str, layers: Sequence[int], rows_per_shard: int = 1024):
        layers = [int(layer) for layer in layers]
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"{store.path}: hidden-state layers must be a non-empty list without repeats, "
                             f"got {layers}")
        if rows_per_shard < 1:
            raise ValueError(f"{store.path}: rows_per_shard must be at least 1, got {rows_per_shard}")
        self.store, self.teacher, self.prompt = store, teacher, prompt
        self.layers = layers
        self.rows_per_shard = rows_per_shard
        self.relative_folder = Path(HIDDEN_DIR) / shard_folder_key(teacher, prompt)
        self.folder = store.path.parent / self.relative_folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hashes: list[str] = []
        self._arrays: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
        self._widths: dict[int, int] = {}
        with store.transaction():
            store.conn.execute(_INDEX_SCHEMA)
            self._remove_orphans()
        self._done = _indexed_hashes(store, teacher, prompt)
        self._next_number = 0

    def _remove_orphans(self) -> None:
        """Delete shard files no index row names and stale temporary (hidden) files, inside the write lock: no
        other writer is between writing a shard and committing its index."""
        indexed = {Path(r[0]).name for r in self.store.conn.execute(
            "SELECT DISTINCT shard FROM hidden_index WHERE teacher=? AND prompt=?", (self.teacher, self.prompt))}
        removed = []
        for path in self.folder.iterdir():
            # Any hidden file: ours are '.shard-*.tmp-<pid>'; safetensors' save_file (used by earlier versions)
            # wrote through a '.tmpXXXXXX' of its own.
            if path.name.startswith(".") or (_SHARD_NAME.match(path.name) and path.name not in indexed):
                path.unlink()
                removed.append(path.name)
        if removed:
            log.info("%s: removed %d shard file(s) left by an interrupted run: %s", self.folder, len(removed),
                     ", ".join(sorted(removed)[:5]))

    def done_hashes(self, among: Sequence[str] | None = None) -> set[str]:
        """Texts whose hidden states are durable (indexed); a resumed run skips them. With ``among``: those of
        these texts, read afresh from the index (another process may have stored some since this one looked)."""
        if among is None:
            return set(self._done)
        fresh = _indexed_hashes(self.store, self.teacher, self.prompt, among)
        self._done |= fresh
        return fresh

    @property
    def buffered(self) -> int:
        return len(self._hashes)

    def add(self, text_hashes: Sequence[str], states: Mapping[int, Any]) -> int:
        """Buffer one batch: ``states`` maps each layer to a [B, H] float array (numpy or torch) whose rows
        follow ``text_hashes``. Texts already stored or buffered are skipped. Returns the rows taken."""
        if set(states) != set(self.layers):
            raise ValueError(f"{self.store.path}: hidden states for layers {sorted(states)}, but this writer "
                             f"stores layers {self.layers}")
        arrays = {}
        for layer in self.layers:
            arr = _as_array(states[layer])
            if arr.ndim != 2 or arr.shape[0] != len(text_hashes):
                raise ValueError(f"{self.store.path}: layer {layer} hidden states have shape {arr.shape}; "
                                 f"expected [{len(text_hashes)}, H] for {len(text_hashes)} texts")
            width = self._widths.setdefault(layer, arr.shape[1])
            if arr.shape[1] != width:
                raise ValueError(f"{self.store.path}: layer {layer} hidden size {arr.shape[1]} differs from the "
                                 f"{width} of earlier batches")
            with np.errstate(over="ignore"):
                half = arr.astype(np.float16)
            if not np.isfinite(half).all():
                worst = np.nanmax(np.abs(arr.astype(np.float64))) if np.isfinite(arr).all() else float("nan")
                raise ValueError(f"{self.store.path}: layer {layer} hidden states are not finite in float16 "
                                 f"(largest magnitude {worst}; float16 holds up to 65504)")
            arrays[layer] = half
        keep = []
        seen = set(self._hashes)
        for i, h in enumerate(text_hashes):
            if h not in self._done and h not in seen:
                keep.append(i)
                seen.add(h)
        if keep:
            self._hashes += [text_hashes[i] for i in keep]
            for layer in self.layers:
                self._arrays[layer].append(arrays[layer][keep])
        return len(keep)

    def flush(self, final: bool = False) -> int:
        """Write every full shard buffered (and, when ``final``, the rest as a smaller one); each shard is
        durable and indexed in one transaction. Returns the rows written (texts another process indexed
        meanwhile are not written again)."""
        written = 0
        while self._hashes and (len(self._hashes) >= self.rows_per_shard or final):
            stacked = {layer: np.concatenate(parts) for layer, parts in self._arrays.items()}
            n = min(self.rows_per_shard, len(self._hashes))
            written += self._write_shard(self._hashes[:n], {layer: arr[:n] for layer, arr in stacked.items()})
            self._done.update(self._hashes[:n])
            self._hashes = self._hashes[n:]
            self._arrays = {layer: [arr[n:]] if len(arr) > n else [] for layer, arr in stacked.items()}
        return written

    def _write_shard(self, hashes: list[str], arrays: dict[int, np.ndarray]) -> int:
        """Write and index one shard of these texts, less those another process indexed meanwhile (no shard
        when none is left). Returns its rows."""
        from safetensors.numpy import save

        with self.store.transaction() as conn:
            taken = _indexed_hashes(self.store, self.teacher, self.prompt, hashes)
            if taken:
                keep = [i for i, h in enumerate(hashes) if h not in taken]
                if not keep:
                    return 0
                hashes = [hashes[i] for i in keep]
                arrays = {layer: arr[keep] for layer, arr in arrays.items()}
            while (self.folder / f"shard-{self._next_number:05d}.safetensors").exists():
                self._next_number += 1
            name = f"shard-{self._next_number:05d}.safetensors"
            final, tmp = self.folder / name, self.folder / f".{name}{_TMP_MARK}{os.getpid()}"
            try:
                # Serialised here and written by us: save_file writes through a temporary file of its own
                # ('.tmpXXXXXX'), which a kill in the middle left behind.
                data = save({tensor_name(layer): np.ascontiguousarray(arr) for layer, arr in arrays.items()})
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
                fsync_dir(self.folder)
                relative = (self.relative_folder / name).as_posix()
                conn.executemany("INSERT INTO hidden_index VALUES (?,?,?,?,?)",
                                 [(self.teacher, self.prompt, h, relative, row) for row, h in enumerate(hashes)])
            except BaseException:
                for path in (tmp, final):  # the index is rolled back: leave no orphan behind if we can help it
                    path.unlink(missing_ok=True)
                raise
        self._next_number += 1
        return len(hashes)

    def close(self) -> None:
        """Write what is still buffered. Does not close the store."""
        self.flush(final=True)

    def __enter__(self) -> HiddenStateWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:  # after an error, keep only what was flushed, as a kill would
            self.close()


class HiddenStateReader:
    """Hidden states of one (teacher, prompt) from the store's index and shards, as float32."""

    def __init__(self, store: LabelStore, teacher: str, prompt: str):
        self.store, self.teacher, self.prompt = store, teacher, prompt

    def done_hashes(self) -> set[str]:
        return _indexed_hashes(self.store, self.teacher, self.prompt)

    def get(self, text_hashes: Sequence[str], layers: Sequence[int]) -> dict[int, np.ndarray]:
        """``{layer: [N, H] float32}`` with rows in the order of ``text_hashes``; a text, layer or shard
        that is missing is an error naming the store."""
        from safetensors import safe_open

        where = self.store.path
        located: dict[str, tuple[str, int]] = {}
        if _has_index(self.store):
            wanted = list(dict.fromkeys(text_hashes))
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                for h, shard, row in self.store.conn.execute(
                    f"SELECT text_hash, shard, row FROM hidden_index WHERE teacher=? AND prompt=? "
                    f"AND text_hash IN ({','.join('?' * len(chunk))})", (self.teacher, self.prompt, *chunk)):
                    located[h] = (shard, row)
        missing = [h for h in text_hashes if h not in located]
        if missing:
            raise TailorkdError(f"{where}: {len(missing)} of {len(text_hashes)} texts have no stored hidden states "
                                f"for teacher {self.teacher!r}, prompt {self.prompt!r} (e.g. {missing[:3]})")
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, h in enumerate(text_hashes):
            shard, row = located[h]
            by_shard.setdefault(shard, []).append((position, row))
        out: dict[int, np.ndarray] = {}
        for shard, places in by_shard.items():
            path = where.parent / shard
            if not path.is_file():
                raise TailorkdError(f"{where}: hidden-state shard {path} is missing (indexed, but not on disk)")
            positions = np.array([p for p, _ in places])
            rows = np.array([r for _, r in places])
            lo, hi = int(rows.min()), int(rows.max()) + 1
            with safe_open(str(path), framework="np") as f:
                names = set(f.keys())
                for layer in layers:
                    name = tensor_name(int(layer))
                    if name not in names:
                        raise TailorkdError(f"{where}: hidden-state shard {path} has no layer {layer} "
                                            f"(it has {sorted(names)})")
                    part = f.get_slice(name)
                    if hi > part.get_shape()[0]:
                        raise TailorkdError(f"{where}: hidden-state shard {path} has {part.get_shape()[0]} rows; "
                                            f"the index points at row {hi - 1}")
                    block = part[lo:hi]
                    target = out.get(int(layer))
                    if target is None:
                        target = out[int(layer)] = np.empty((len(text_hashes), block.shape[1]), dtype=np.float32)
                    elif target.shape[1] != block.shape[1]:
                        raise TailorkdError(f"{where}: layer {layer} has hidden size {block.shape[1]} in {path} "
                                            f"but {target.shape[1]} in another shard")
                    target[positions] = block[rows - lo]
        # Nothing asked for: empty arrays (their hidden size is unknown without a row to read).
        return {int(layer): out.get(int(layer), np.empty((0, 0), np.float32)) for layer in layers}
