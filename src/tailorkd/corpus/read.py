"""Reading the corpus shards as a stream of bounded batches.

``corpus_files`` lists the files of ``corpus.inputs`` (a file, a folder or a glob each) in a fixed order;
``read_shard`` yields one file's rows as Arrow tables of at most ``batch_size`` rows, so memory never holds
more than one batch of a file whatever the corpus size. JSONL (optionally gzipped) and CSV (optionally
gzipped) are read line by line, Parquet by ``ParquetFile.iter_batches``.

Each row carries where it came from: ``file`` and ``row`` (the 1-based line for JSONL and CSV, where a quoted
CSV field may span lines and ``row`` is the line the record starts on; the 1-based row index for Parquet;
``position`` says which). A row that cannot be read (malformed JSON, not an object, undecodable bytes, a
missing or non-text text field, a CSV row with the wrong number of fields) is kept as a *reject*: ``reject``
holds the reason and ``raw`` the start of the line, and the funnel counts it. Whole-file problems (a file
that is not gzip or Parquet, a gzip stream cut short, a file that cannot be opened, a text column missing
from the CSV header or Parquet schema, a file none of whose rows can be read) are a one-line TailorkdError
naming the file and the recipe key. An empty file, or one of blank lines only, has no rows and is no error.

`tailorkd signals` reads its feed files with ``read_shard`` too (``key="signals"``), so a feed row and a
corpus row are read, rejected and numbered by one rule.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from tailorkd.data.readers import RAW_LIMIT, csv_records, json_object, scalar_text
from tailorkd.errors import TailorkdError
from tailorkd.recipe.corpus import CORPUS_SUFFIXES, CorpusInput

#: The columns of a raw batch, in order.
RAW_SCHEMA = pa.schema([
    ("file", pa.string()), ("position", pa.string()), ("row", pa.int64()), ("source", pa.string()),
    ("doc_id", pa.string()), ("title", pa.string()), ("date", pa.string()), ("topic", pa.string()),
    ("language_given", pa.string()), ("text", pa.string()), ("reject", pa.string()), ("raw", pa.string()),
])
_FIELDS = ("doc_id", "title", "date", "topic", "source", "language_given")
_COLUMN_OF = {"doc_id": "id", "title": "title", "date": "date", "topic": "topic", "source": "source",
              "language_given": "language"}


def file_format(path: Path, given: str | None) -> str | None:
    """The input format of ``path``: ``given``, else from its suffix (None when unknown)."""
    if given:
        return given
    name = path.name.lower()
    for suffix in sorted(CORPUS_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return CORPUS_SUFFIXES[suffix]
    return None


def corpus_files(inputs: list[CorpusInput], base_dir: Path) -> list[tuple[int, Path, str]]:
    """(input index, file, format) for every file of every input: a folder's files of known suffixes
    (recursively) and a glob's matches, each sorted; a file listed by two inputs is read once."""
    out: list[tuple[int, Path, str]] = []
    seen: set[Path] = set()
    for index, spec in enumerate(inputs):
        key = f"corpus.inputs.{index}.path"
        raw = os.path.expandvars(os.path.expanduser(spec.path))
        unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", raw)
        if unset:
            raise TailorkdError(f"{key}: {spec.path!r} names the environment variable {unset[0]}, which is not set")
        path = Path(raw) if Path(raw).is_absolute() else Path(base_dir) / raw
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and file_format(p, spec.format)
                           and not p.name.startswith("."))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise TailorkdError(f"{key}: no corpus file at {path} (a file, a folder of "
                                f"{', '.join(sorted(CORPUS_SUFFIXES))} files, or a glob; relative to {base_dir})")
        for file in found:
            fmt = file_format(file, spec.format)
            if fmt is None:
                raise TailorkdError(f"{key}: cannot tell the format of {file} from its suffix; set "
                                    f"corpus.inputs.{index}.format (jsonl, csv or parquet)")
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append((index, file, fmt))
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _cut(text: str) -> str:
    text = _SURROGATE.sub("\ufffd", text)  # undecodable bytes kept as surrogates (Arrow strings are UTF-8)
    return text if len(text) <= RAW_LIMIT else text[: RAW_LIMIT - 1] + "\u2026"


def _cell(value: Any) -> str | None:
    """A cell as stripped text (None when missing or empty; lists and dicts as JSON)."""
    try:
        text = scalar_text(value)
    except Exception:  # a container: keep it readable rather than losing it
        text = json.dumps(value, default=str, ensure_ascii=False)
    if text is None:
        return None
    text = text.strip()
    return text or None


class _Batch:
    """Rows of one file gathered as columns, emitted as an Arrow table every ``size`` rows."""

    def __init__(self, file: str, position: str, source: str, size: int):
        self.file, self.position, self.source, self.size = file, position, source, size
        self.columns: dict[str, list[Any]] = {name: [] for name in RAW_SCHEMA.names}

    def __len__(self) -> int:
        return len(self.columns["row"])

    def add(self, row: int, fields: dict[str, Any] | None, text_column: str, columns: Any,
            reject: str | None = None, raw: str = "") -> None:
        text = None
        values: dict[str, str | None] = dict.fromkeys(_FIELDS)
        if reject is None and fields is not None:
            value = fields.get(text_column)
            if value is None:
                reject = f"missing text (column {text_column!r})"
            elif not isinstance(value, str):
                reject = f"text (column {text_column!r}) is a {type(value).__name__}, not a string"
            elif not value.strip():
                reject = f"empty text (column {text_column!r})"
            elif _SURROGATE.search(value):  # e.g. an escaped lone surrogate in JSON: not valid Unicode
                reject = f"text (column {text_column!r}) holds a lone surrogate (not valid Unicode)"
            else:
                text = value
            for field in _FIELDS:
                column = getattr(columns, _COLUMN_OF[field])
                if column is not None:
                    values[field] = _cell(fields.get(column))
                    if values[field] is not None and _SURROGATE.search(values[field]):
                        values[field] = _SURROGATE.sub("\ufffd", values[field])
        c = self.columns
        c["file"].append(self.file)
        c["position"].append(self.position)
        c["row"].append(row)
        for field in _FIELDS:
            c[field].append(values[field])
        if c["source"][-1] is None:
            c["source"][-1] = self.source
        c["text"].append(text)
        c["reject"].append(reject)
        if reject is not None and not raw and fields is not None:
            raw = json.dumps(fields, default=str, ensure_ascii=False)
        c["raw"].append(_cut(raw) if reject is not None else None)

    def full(self) -> bool:
        return len(self) >= self.size

    def flush(self) -> pa.Table:
        table = pa.Table.from_pydict(self.columns, schema=RAW_SCHEMA)
        self.columns = {name: [] for name in RAW_SCHEMA.names}
        return table


def _binary_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        yield from f


def _iter_jsonl(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None, str]]:
    for number, data in enumerate(_binary_lines(path), start=1):
        data = data.rstrip(b"\n").rstrip(b"\r")  # the line end is not part of the record (nor of its raw)
        try:
            line = data.decode(encoding)
        except UnicodeDecodeError:
            yield number, None, f"undecodable bytes for encoding {encoding}", data.decode("latin-1")
            continue
        if number == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        obj, problem = json_object(line)
        yield number, obj, problem, line


def _iter_csv(path: Path, spec: CorpusInput, key: str, required: Collection[str]
              ) -> Iterator[tuple[int, dict[str, Any] | None, str | None, str]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    # Lines end at \n, as in JSONL and the data readers (a \r before it is part of the line end).
    with opener(path, "rt", encoding=spec.encoding, errors="surrogateescape", newline="\n") as stream:  # type: ignore
        header: list[str] | None = None
        for start, cells, error in csv_records(stream, spec.separator):
            if cells is None:
                if header is None:
                    raise TailorkdError(f"{key} ({path}): cannot read the CSV header: {error}") from None
                yield start, None, f"malformed CSV: {error}", ""
                continue
            raw = spec.separator.join(cells)
            if header is None:
                header = [name.strip() for name in cells]
                _check_columns(header, spec, path, key, "CSV header", required)
                continue
            if any("\udc80" <= ch <= "\udcff" for ch in raw):
                yield start, None, f"undecodable bytes for encoding {spec.encoding}", raw
                continue
            if len(cells) != len(header):
                yield start, None, f"wrong number of fields: expected {len(header)}, got {len(cells)}", raw
                continue
            yield start, dict(zip(header, cells, strict=True)), None, raw


def _check_columns(present: list[str], spec: CorpusInput, path: Path, key: str, where: str,
                   required: Collection[str]) -> None:
    mapped = {name: column for name, column in spec.columns.model_dump().items() if column is not None}
    for name, column in mapped.items():
        setting = f"columns.{name}"
        if column not in present:
            if name not in required:
                continue  # an optional field the file lacks: None on every row
            raise TailorkdError(f"{key} ({path}): column {column!r} ({key}.{setting}) is not in the {where}; "
                                f"it has {', '.join(repr(c) for c in present[:20]) or 'no columns'}")


def _iter_parquet(path: Path, spec: CorpusInput, key: str, batch_size: int, required: Collection[str]
                  ) -> Iterator[tuple[int, dict[str, Any] | None, str | None, str]]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise TailorkdError(f"{key} ({path}): cannot read it as Parquet: {_first_line(exc)}") from None
    names = list(pfile.schema_arrow.names)
    _check_columns(names, spec, path, key, "Parquet schema", required)
    wanted = [c for c in dict.fromkeys(v for v in spec.columns.model_dump().values() if v) if c in names]
    index = 0
    for batch in pfile.iter_batches(batch_size=batch_size, columns=wanted):
        for fields in batch.to_pylist():
            index += 1
            yield index, fields, None, ""  # the raw row is written out only for a reject


def read_shard(index: int, path: Path, fmt: str, spec: CorpusInput, batch_size: int, *, key: str | None = None,
               required: Collection[str] = ("text",)) -> Iterator[pa.Table]:
    """The rows of one corpus file (of ``corpus.inputs.<index>``) as tables of at most ``batch_size`` rows
    with the columns of :data:`RAW_SCHEMA`. ``key``: the recipe key errors name (default
    ``corpus.inputs.<index>``); ``required``: the fields (of ``spec.columns``) whose column a CSV header or
    Parquet schema must have (the others are None on every row of a file without them)."""
    key = key or f"corpus.inputs.{index}"
    source = spec.source if spec.source is not None else _stem(path)
    batch = _Batch(str(path), "row" if fmt == "parquet" else "line", source, batch_size)
    if fmt == "jsonl":
        items = _iter_jsonl(path, spec.encoding)
    elif fmt == "csv":
        items = _iter_csv(path, spec, key, required)
    else:
        items = _iter_parquet(path, spec, key, batch_size, required)
    seen_keys: set[str] = set()
    rows = readable = 0
    first_reject = None
    try:
        for row, fields, error, raw in items:
            batch.add(row, fields, spec.columns.text, spec.columns, error, raw)
            rows += 1
            if batch.columns["reject"][-1] is None:
                readable += 1
            elif first_reject is None:
                first_reject = f"{batch.position} {row}: {batch.columns['reject'][-1]}"
            if fmt == "jsonl" and fields is not None and len(seen_keys) < 1000:
                seen_keys.update(fields)
            if batch.full():
                yield batch.flush()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise TailorkdError(f"{key} ({path}): not a readable gzip file after {rows} rows ({exc})") from None
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:  # unreadable, or damaged past its footer
        raise TailorkdError(f"{key} ({path}): cannot be read after {rows} rows "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None
    if len(batch):
        yield batch.flush()
    if rows and not readable:
        hint = (f"; the lines have the keys {', '.join(sorted(seen_keys)[:12])}" if seen_keys else "")
        raise TailorkdError(f"{key} ({path}): none of its {rows} rows could be read (first: {first_reject})"
                            f"{hint}; check {key}.columns and format")


def _first_line(exc: BaseException) -> str:
    return _cut((str(exc).strip().splitlines() or [""])[0])


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(CORPUS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
