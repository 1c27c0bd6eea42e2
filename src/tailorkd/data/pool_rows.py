"""The pool split as rows read from disk a window at a time, never held whole as Python objects.

The prepare stage writes the pool as an uncompressed Arrow IPC file (``pool.arrow``, Feather v2); the later
stages open it memory-mapped, so the texts stay in the operating system's page cache (clean pages it can
drop) instead of in Python strings. ``PoolRows`` is a read-only ``Sequence`` of row dicts over that file:
``len``, ``rows[i]``, slices and ``take(index)`` are views (an index array over the mapped table), and
iterating turns one window of rows at a time into dicts. Code written for a list of rows works on it
unchanged; code that must not hold the pool whole walks ``windows()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write

#: Rows turned into dicts at a time when the pool is walked.
WINDOW = 2048


class PoolRows(Sequence[dict[str, Any]]):
    """Rows of an Arrow table (memory-mapped from the pool file, or in memory), in the order of ``index``
    (all of them, in table order, when None); a missing value reads as None."""

    def __init__(self, table: pa.Table, index: np.ndarray | None = None, path: Path | None = None):
        self.table = table
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.path = path  # the file the table is mapped from, if any

    @classmethod
    def open(cls, path: Path) -> PoolRows:
        """The rows of a pool file written by :func:`write_pool`, memory-mapped (nothing read yet); a file that
        is not one (cut short, overwritten) is a one-line TailorkdError naming it and what to do."""
        try:
            table = feather.read_table(str(path), memory_map=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise damaged_split(Path(path), "an Arrow file", exc) from None
        return cls(table, path=Path(path))

    def __reduce__(self):
        # Pickled (to a Ray actor, a spawned process) as its file and index, not as the mapped table: Arrow
        # pickles a table, even a slice of it, with all its buffers.
        if self.path is not None:
            return _reopen, (self.path, self.index)
        return PoolRows, (self.table, self.index)

    @classmethod
    def empty(cls, columns: Sequence[str]) -> PoolRows:
        """No rows, with these (text) columns."""
        return cls(pa.schema([(c, pa.string()) for c in columns]).empty_table())

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def __len__(self) -> int:
        return self.table.num_rows if self.index is None else len(self.index)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> PoolRows: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(*i.indices(len(self))))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"pool row {i} out of range ({n} rows)")
        position = int(i % n if self.index is None else self.index[i])
        return self.table.slice(position, 1).to_pylist()[0]

    def take(self, index: Sequence[int] | np.ndarray) -> PoolRows:
        """The rows at ``index`` (positions in this sequence), as a view in that order."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"pool rows out of range ({len(self)} rows)")
        index = index % max(len(self), 1)
        return PoolRows(self.table, index if self.index is None else self.index[index], self.path)

    def windows(self, size: int = WINDOW) -> Iterator[list[dict[str, Any]]]:
        """The rows in order, ``size`` at a time, as lists of dicts."""
        for start in range(0, len(self), size):
            if self.index is None:
                part = self.table.slice(start, size)
            else:
                part = self.table.take(pa.array(self.index[start : start + size]))
            yield part.to_pylist()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for window in self.windows():
            yield from window

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a DataFrame (the whole pool in memory: for small pools and inspection)."""
        table = self.table if self.index is None else self.table.take(pa.array(self.index))
        return table.to_pandas()

    def __repr__(self) -> str:
        return f"PoolRows({len(self)} rows, columns {self.columns})"


def damaged_split(path: Path, kind: str, exc: BaseException) -> TailorkdError:
    """The error for a split file of the prepare stage that cannot be read: the splits are made from the
    sources again, deterministically, so nothing is lost by preparing again."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return TailorkdError(f"{path}: not {kind} ({detail}); the prepared data is damaged: run `tailorkd prepare "
                         "RECIPE --force` to make the splits again from the sources")


def _reopen(path: Path, index: np.ndarray | None) -> PoolRows:
    rows = PoolRows.open(path)
    return rows if index is None else PoolRows(rows.table, index, rows.path)


def windows(rows: Sequence[dict[str, Any]], size: int = WINDOW) -> Iterator[Sequence[dict[str, Any]]]:
    """Any rows (a list, or ``PoolRows`` read from disk) ``size`` at a time."""
    if isinstance(rows, PoolRows):
        yield from rows.windows(size)
    else:
        for start in range(0, len(rows), size):
            yield rows[start : start + size]


def take_rows(rows: Sequence[dict[str, Any]], index: Sequence[int] | np.ndarray) -> Sequence[dict[str, Any]]:
    """The rows at ``index``: a view for ``PoolRows``, a list otherwise."""
    if isinstance(rows, PoolRows):
        return rows.take(index)
    return [rows[int(i)] for i in index]


def text_table(frame: pd.DataFrame) -> pa.Table:
    """A split's frame as an Arrow table with every column as nullable text (a missing value as null)."""
    schema = pa.schema([(str(c), pa.string()) for c in frame.columns])
    columns = {str(c): [None if pd.isna(v) else str(v) for v in frame[c].tolist()] for c in frame.columns}
    return pa.Table.from_pydict(columns, schema=schema)


def write_pool(frame: pd.DataFrame, path: Path) -> None:
    """Write the pool split as an uncompressed Arrow IPC file (every column as nullable text), atomically, in
    record batches of ``WINDOW`` rows so that reading one row maps only its batch."""
    table = text_table(frame)
    atomic_write(Path(path), lambda tmp: feather.write_feather(table, str(tmp), compression="uncompressed",
                                                               chunksize=WINDOW))
