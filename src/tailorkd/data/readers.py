"""Reading source files into records, with a column mapping and a label mapping.

Formats: ``jsonl`` (one JSON object per line), ``csv`` and ``tsv`` (header row, standard quoting; a quoted
field may span lines), ``parquet`` and ``lines`` (``text<sep>label`` on each line, split on the *last*
separator; with ``columns.label: null`` the whole line is the text).

Every record becomes a row with the fields of :data:`RECORD_FIELDS`:

- ``id``: the id column's value, else ``<source name>:<line number>``;
- ``text``: stripped, line ends (``\\r\\n``, a lone ``\\r``) made ``\\n``, never empty; ``title``, ``language``,
  ``date``: text or ``None``;
- ``label``: a task label, or ``None`` when the source has no label for the row (such rows only go to the pool);
- ``source``: the source name; ``origin``: ``"<file>:<line>"`` for tracing a row back.

A record that cannot be read is a *reject* (a dict ``file``, ``line``, ``position``, ``reason``, ``raw``); the run
goes on. ``line`` is the 1-based line on which the record starts (a CSV record may span lines); for Parquet,
which has no lines, ``position`` is ``"row"`` and ``line`` is the row index + 1 (else ``position`` is
``"line"``). ``raw`` is the record's text, cut to 200 characters. Blank lines are skipped, not rejected.
A row whose raw label maps to ``None`` is *excluded*: not a reject, but counted per raw label.

Whole-file problems raise :class:`TailorkdError`: a missing file, a mapped column that the file lacks, a file
without records, and more rejects than ``data.max_reject_fraction`` allows.

Text is decoded with the configured encoding; bytes it cannot decode make their record a reject ("undecodable
bytes") rather than stopping the run. Multi-byte encodings whose newline is not the byte ``\\n`` (UTF-16/32)
are not supported for the line-based formats.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tailorkd.data.config import ColumnMap, LabelMap
from tailorkd.errors import TailorkdError

#: The fields of a record, in the order of the DataFrame columns.
RECORD_FIELDS: tuple[str, ...] = ("id", "text", "title", "language", "date", "label", "source", "origin")

RAW_LIMIT = 200
_SURROGATES = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept by errors="surrogateescape"
_LONE_SURROGATES = re.compile("[\ud800-\udfff]")
_CSV_FIELD_LIMIT = 2**31 - 1


# --------------------------------------------------------------------------------------------------------------
# values


class _NotText(Exception):
    pass


def scalar_text(value: Any) -> str | None:
    """A cell as text: ``None``/NaN -> ``None``; numbers, booleans and dates written plainly.

    Raises ``_NotText`` for lists, dicts and other containers.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict, set, bytes, bytearray)):
        raise _NotText(type(value).__name__)
    try:  # numpy / pandas scalars
        import numpy as np

        if isinstance(value, np.generic):
            return scalar_text(value.item())
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _optional_text(value: Any) -> str | None:
    try:
        text = scalar_text(value)
    except _NotText:
        return None
    if text is None:
        return None
    text = text.strip()
    return text or None


def _raw(text: str) -> str:
    text = _LONE_SURROGATES.sub("\ufffd", text)
    return text if len(text) <= RAW_LIMIT else text[: RAW_LIMIT - 1] + "\u2026"


def _raw_fields(fields: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(fields), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(dict(fields))


# --------------------------------------------------------------------------------------------------------------
# labels


class Labeler(Protocol):
    """Turns a record's fields into ``(kind, value)``.

    kind is ``"label"`` (value: the task label), ``"unlabelled"`` (no label given), ``"excluded"`` (value: the
    raw label, left out on purpose) or ``"reject"`` (value: the reason).
    """

    columns: tuple[str, ...]

    def __call__(self, fields: Mapping[str, Any]) -> tuple[str, str | None]: ...


class NoLabels:
    """For sources without labels: every row is unlabelled."""

    columns: tuple[str, ...] = ()

    def __call__(self, fields: Mapping[str, Any]) -> tuple[str, str | None]:
        return "unlabelled", None


def label_key(value: Any) -> str | None:
    """A raw label cell as the text a mapping is keyed by (``1``, ``1.0`` and ``"1"`` are all ``"1"``)."""
    try:
        text = scalar_text(value)
    except _NotText:
        return json.dumps(value, default=str)
    if text is None:
        return None
    return text.strip() or None


class MappingLabeler:
    """The raw label in ``column`` through ``mapping``.

    - an empty or missing raw label: unlabelled;
    - ``mapping`` is None: the raw label must be one of ``task_labels`` (reject otherwise);
    - a raw label mapped to None: excluded;
    - a raw label not in the mapping: a reject, or excluded when ``unknown="exclude"``.
    """

    def __init__(
        self,
        column: str,
        mapping: LabelMap | None,
        task_labels: Collection[str] | None = None,
        unknown: str = "reject",
    ) -> None:
        self.column = column
        self.columns = (column,)
        self.mapping = mapping
        self.task_labels = None if task_labels is None else list(task_labels)
        self.unknown = unknown

    def __call__(self, fields: Mapping[str, Any]) -> tuple[str, str | None]:
        key = label_key(fields.get(self.column))
        if key is None:
            return "unlabelled", None
        if self.mapping is None:
            if self.task_labels is None or key in self.task_labels:
                return "label", key
            return "reject", (
                f"label {key!r} is not a task label ({', '.join(self.task_labels)}); "
                "add a `labels:` mapping to this source"
            )
        if key in self.mapping:
            value = self.mapping[key]
            return ("excluded", key) if value is None else ("label", value)
        if self.unknown == "exclude":
            return "excluded", key
        shown = ", ".join(repr(k) for k in list(self.mapping)[:12])
        return "reject", f"label {key!r} is not in the labels mapping (its keys: {shown})"


# --------------------------------------------------------------------------------------------------------------
# results


@dataclass
class ReadResult:
    """What reading one source (or file) gave."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)
    unlabelled: int = 0
    records: int = 0  # records met: rows + rejects + excluded
    files: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. {"encodings": {"utf-8": 2224, "cp1252": 1}}

    def extend(self, other: ReadResult) -> None:
        self.rows.extend(other.rows)
        self.rejects.extend(other.rejects)
        self.excluded.update(other.excluded)
        self.unlabelled += other.unlabelled
        self.records += other.records
        self.files.extend(other.files)
        for name, counts in other.notes.items():
            if isinstance(counts, dict):
                mine = self.notes.setdefault(name, {})
                for k, v in counts.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                self.notes[name] = counts


def make_reject(file: Path | str, line: int, reason: str, raw: str, position: str = "line") -> dict[str, Any]:
    return {"file": str(file), "line": int(line), "position": position, "reason": reason, "raw": _raw(raw)}


def check_reject_fraction(result: ReadResult, what: str, max_fraction: float | None) -> None:
    """Raise when more than ``max_fraction`` of the records met could not be read."""
    if max_fraction is None or result.records == 0:
        return
    n_bad = len(result.rejects)
    if n_bad / result.records <= max_fraction:
        return
    shown = "\n".join(f"  {r['position']} {r['line']}: {r['reason']}: {r['raw'][:100]!r}" for r in result.rejects[:5])
    raise TailorkdError(
        f"{what}: {n_bad} of {result.records} records ({n_bad / result.records:.0%}) could not be read, more "
        f"than data.max_reject_fraction={max_fraction}; check the format, separator, encoding and column "
        f"mapping. First rejects:\n{shown}"
    )


# --------------------------------------------------------------------------------------------------------------
# formats: each iterator yields the header (list of column names, or None when not known upfront), then
# (line, fields, error, raw) for each record: fields is None when error says why the record is unreadable.

RawItem = tuple[int, "dict[str, Any] | None", "str | None", str]


def _undecodable(encoding: str) -> str:
    return f"undecodable bytes for encoding {encoding}"


def _text_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) for each line; only ``\\n`` ends a line. Undecodable bytes are
    kept as surrogates (errors=surrogateescape) so that a record can be told bad on its own."""
    with open(path, encoding=encoding, errors="surrogateescape", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield number, line.rstrip("\n").rstrip("\r")


def _iter_jsonl(path: Path, encoding: str) -> Iterator[Any]:
    yield None
    for number, line in _text_lines(path, encoding):
        if not line.strip():
            continue
        if _SURROGATES.search(line):
            yield number, None, _undecodable(encoding), line
            continue
        obj, problem = json_object(line)
        yield number, obj, problem, line


def json_object(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object on ``line``, None), or (None, why it is not one) in the reject reasons' words."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:  # json's decoder recurses once per level of nesting
        return None, "malformed JSON: nested too deeply"
    if not isinstance(obj, dict):
        return None, f"not a JSON object but a {type(obj).__name__}"
    return obj, None


def _iter_lines(path: Path, encoding: str, separator: str, split_label: bool) -> Iterator[Any]:
    yield ["text", "label"] if split_label else ["text"]
    for number, line in _text_lines(path, encoding):
        if not line.strip():
            continue
        if _SURROGATES.search(line):
            yield number, None, _undecodable(encoding), line
            continue
        if not split_label:
            yield number, {"text": line}, None, line
            continue
        text, sep, label = line.rpartition(separator)
        if not sep:
            reason = f"wrong number of fields: no separator {separator!r} (expected text{separator}label)"
            yield number, None, reason, line
            continue
        yield number, {"text": text, "label": label}, None, line


def csv_records(stream: Iterable[str], delimiter: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line where the record starts, its cells, None) for each non-blank CSV record of ``stream`` (lines
    counted from 1, a record may span several), or (line, None, the csv module's message) for one it cannot
    read; a byte-order mark before the first line is dropped. Fields of any size are read."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    consumed = 0

    def physical_lines() -> Iterator[str]:
        nonlocal consumed
        for line in stream:
            consumed += 1
            if consumed == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line

    reader = csv.reader(physical_lines(), delimiter=delimiter)
    while True:
        start = consumed + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, None, str(exc)
            continue
        if cells and any(cell.strip() for cell in cells):
            yield start, cells, None


def _iter_csv(path: Path, encoding: str, delimiter: str, what: str) -> Iterator[Any]:
    with open(path, encoding=encoding, errors="surrogateescape", newline="\n") as f:
        header: list[str] | None = None
        for start, row, error in csv_records(f, delimiter):
            if row is None:
                if header is None:
                    raise TailorkdError(f"{what}: cannot read the header row of {path}: {error}") from None
                yield start, None, f"malformed CSV: {error}", ""
                continue
            raw = delimiter.join(row)
            if header is None:
                if _SURROGATES.search(raw):
                    raise TailorkdError(
                        f"{what}: the header row of {path} has {_undecodable(encoding)}; set `encoding`"
                    )
                header = [name.strip() for name in row]
                yield header
                continue
            if _SURROGATES.search(raw):
                yield start, None, _undecodable(encoding), raw
                continue
            if len(row) != len(header):
                yield start, None, f"wrong number of fields: expected {len(header)}, got {len(row)}", raw
                continue
            yield start, dict(zip(header, row, strict=True)), None, raw
        if header is None:
            yield []  # an empty file: no header, no records


def _iter_parquet(path: Path, columns: Collection[str], what: str) -> Iterator[Any]:
    import pyarrow.parquet as pq

    def first_line(exc: Exception) -> str:
        return _raw((str(exc).strip().splitlines() or [type(exc).__name__])[0])

    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise TailorkdError(f"{what}: cannot read {path} as Parquet: {first_line(exc)}") from None
    names = list(pfile.schema_arrow.names)
    yield names
    wanted = [c for c in dict.fromkeys(columns) if c in names]
    index = 0
    try:
        for batch in pfile.iter_batches(batch_size=8192, columns=wanted):
            for row in batch.to_pylist():
                index += 1
                yield index, row, None, _raw_fields(row)
    except (OSError, ValueError) as exc:  # a page damaged past the footer (pyarrow's errors are both)
        raise TailorkdError(f"{what}: cannot read {path} as Parquet after {index} rows: {first_line(exc)}") from None


# --------------------------------------------------------------------------------------------------------------
# the reader


def read_file(
    path: Path,
    fmt: str,
    *,
    columns: ColumnMap,
    labeler: Labeler,
    source_name: str,
    encoding: str = "utf-8",
    separator: str | None = None,
    make_id: Callable[[str | None, int], str] | None = None,
    constants: Mapping[str, str | None] | None = None,
    max_reject_fraction: float | None = None,
    key: str = "data.sources",
) -> ReadResult:
    """Read one file into rows, rejects and excluded counts.

    ``make_id(raw_id, line)`` builds the row id (``raw_id`` is the id column's text, or None without one);
    default: the id column's text, else ``<source_name>:<line>``. ``constants`` sets fields that the file
    lacks (e.g. a date known from the file name); a mapped column wins over a constant. ``key`` names the
    recipe entry in error messages (e.g. ``data.sources.0``).
    """
    path = Path(path)
    what = f"{key} ({path})"
    if not path.is_file():
        raise TailorkdError(f"{key}.path: file not found: {path}")
    position = "row" if fmt == "parquet" else "line"
    mapped = columns.mapped()
    if fmt == "lines":
        sep = separator if separator is not None else "@"
        items: Iterator[Any] = _iter_lines(path, encoding, sep, split_label=columns.label is not None)
    elif fmt == "jsonl":
        items = _iter_jsonl(path, encoding)
    elif fmt in ("csv", "tsv"):
        sep = separator if separator is not None else ("," if fmt == "csv" else "\t")
        items = _iter_csv(path, encoding, sep, what)
    elif fmt == "parquet":
        items = _iter_parquet(path, [*mapped.values(), *labeler.columns], what)
    else:
        raise TailorkdError(f"{key}.format: unknown format {fmt!r}")

    needed = {**{f"columns.{f}": c for f, c in mapped.items()}, **{f"label column {c!r}": c for c in labeler.columns}}

    def check_columns(present: Collection[str], seen_in: str) -> None:
        for setting, column in needed.items():
            if column not in present:
                hint = " (set columns.label: null if the file has no labels)" if setting == "columns.label" else ""
                listed = ", ".join(repr(c) for c in present) or "none"
                raise TailorkdError(
                    f"{what}: column {column!r} ({setting}) is not in the file{hint}; "
                    f"the {seen_in} has these columns: {listed}"
                )

    header = next(items)
    if header is not None:
        check_columns(header, "header" if fmt != "parquet" else "Parquet schema")

    result = ResultBuilder(path, position, columns, labeler, source_name, make_id, constants)
    seen_keys: dict[str, None] = {}  # JSONL: the keys met, in first-seen order
    for line, fields, error, raw in items:
        if fields is None:
            result.reject(line, error or "unreadable", raw)
            continue
        if header is None:
            seen_keys.update(dict.fromkeys(fields))
        result.add(line, fields, raw)

    out = result.result
    if header is None and seen_keys:  # (when no line was a JSON object, the rejects tell why)
        check_columns(list(seen_keys), "file (all lines together)")
    if out.records == 0:
        raise TailorkdError(f"{what}: the file has no records")
    check_reject_fraction(out, what, max_reject_fraction)
    return out


class ResultBuilder:
    """Turns mapped fields into rows, rejects and excluded counts (shared by the file and folder readers)."""

    def __init__(
        self,
        path: Path,
        position: str,
        columns: ColumnMap,
        labeler: Labeler,
        source_name: str,
        make_id: Callable[[str | None, int], str] | None = None,
        constants: Mapping[str, str | None] | None = None,
    ) -> None:
        self.path = path
        self.position = position
        self.columns = columns
        self.labeler = labeler
        self.source_name = source_name
        self.make_id = make_id
        self.constants = dict(constants or {})
        self.result = ReadResult(files=[str(path)])

    def reject(self, line: int, reason: str, raw: str, path: Path | None = None) -> None:
        self.result.records += 1
        self.result.rejects.append(make_reject(path or self.path, line, reason, raw, self.position))

    def add(self, line: int, fields: Mapping[str, Any], raw: str, path: Path | None = None) -> None:
        """One record: a row, a reject or an exclusion."""
        cols = self.columns
        try:
            text = scalar_text(fields.get(cols.text))
        except _NotText as exc:
            self.reject(line, f"text (column {cols.text!r}) is a {exc}, not a string", raw, path)
            return
        if text is None:
            self.reject(line, f"missing text (column {cols.text!r})", raw, path)
            return
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
        if not text:
            self.reject(line, f"empty text (column {cols.text!r})", raw, path)
            return
        if _LONE_SURROGATES.search(text):  # e.g. a JSON string with an escaped lone surrogate
            self.reject(line, "text holds a lone surrogate (not valid Unicode)", raw, path)
            return
        raw_id: str | None = None
        if cols.id is not None:
            raw_id = _optional_text(fields.get(cols.id))
            if raw_id is None:
                self.reject(line, f"missing id (column {cols.id!r})", raw, path)
                return
            if _LONE_SURROGATES.search(raw_id):
                self.reject(line, f"id (column {cols.id!r}) holds a lone surrogate (not valid Unicode)", raw, path)
                return
        kind, value = self.labeler(fields)
        if kind == "reject":
            self.reject(line, value or "bad label", raw, path)
            return
        self.result.records += 1
        if kind == "excluded":
            self.result.excluded[value or ""] += 1
            return
        if kind == "unlabelled":
            self.result.unlabelled += 1
        if self.make_id is not None:
            row_id = self.make_id(raw_id, line)
        else:
            row_id = raw_id if raw_id is not None else f"{self.source_name}:{line}"
        row: dict[str, Any] = {"id": row_id, "text": text}
        for name in ("title", "language", "date"):
            column = getattr(cols, name)
            value_text = _optional_text(fields.get(column)) if column is not None else None
            if value_text is not None:  # a lone surrogate (escaped in JSON) cannot be written: shown as U+FFFD
                value_text = _LONE_SURROGATES.sub("\ufffd", value_text)
            row[name] = value_text if value_text is not None else self.constants.get(name)
        row["label"] = value if kind == "label" else None
        row["source"] = self.constants.get("source") or self.source_name
        row["origin"] = f"{path or self.path}:{line}"
        self.result.rows.append(row)
