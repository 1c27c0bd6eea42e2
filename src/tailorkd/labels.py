"""The label store: the teacher's class distributions, durable in SQLite.

A row is keyed by (teacher identity, prompt fingerprint, text hash), so rerunning a stage skips what is
done, and changing the teacher or the prompt labels afresh instead of mixing results. Each batch is one
transaction: a run killed at any moment (kill -9 included) loses at most the batch in flight and never
leaves a partial or duplicated row (tests/test_label_store_kill.py). The database is in WAL mode with
``synchronous=NORMAL``: a committed batch survives a killed process; a power cut may undo the last few
commits, never corrupt the file.

Schema versions: 1 had no ``reason``; 2 adds the optional generated reason. Opening an older store
migrates it in place, one transaction per step (``_MIGRATIONS``); a newer one is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write

SCHEMA_VERSION = 2

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE labels (
    teacher TEXT NOT NULL,
    prompt TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    text_id TEXT NOT NULL,
    label_names TEXT NOT NULL,   -- JSON list: the order of probs
    probs TEXT NOT NULL,         -- JSON list of floats, sums to 1
    predicted TEXT NOT NULL,
    confidence REAL NOT NULL,
    entropy REAL NOT NULL,
    margin REAL NOT NULL,
    seconds REAL NOT NULL,       -- scoring time of the batch, divided among its texts
    created REAL NOT NULL,
    reason TEXT,                 -- the teacher's generated reason, when one was asked for (v2)
    PRIMARY KEY (teacher, prompt, text_hash)
)""",
)

# Statements that take a store from version v to v + 1 (each step one transaction with its version bump).
# New columns go last and are nullable or defaulted, so rows written before stay valid.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE labels ADD COLUMN reason TEXT",),
}

_COLUMNS = ("teacher", "prompt", "text_hash", "text_id", "label_names", "probs", "predicted", "confidence",
            "entropy", "margin", "seconds", "created", "reason")

EXPORT_FORMATS = (".jsonl", ".parquet")


SQLITE_IN_CHUNK = 500  # values per "IN (...)": well within SQLite's limit on bound parameters


def first_column_among(conn: sqlite3.Connection, sql: str, args: Sequence[Any], column: str,
                       among: Sequence[str] | None) -> set[Any]:
    """The first column of ``sql`` (a SELECT with a WHERE clause and its ``args``) as a set; with ``among``,
    only the rows whose ``column`` is one of those values, asked in chunks."""
    if among is None:
        return {r[0] for r in conn.execute(sql, list(args))}
    wanted, found = list(dict.fromkeys(among)), set()
    for start in range(0, len(wanted), SQLITE_IN_CHUNK):
        chunk = wanted[start : start + SQLITE_IN_CHUNK]
        found |= {r[0] for r in conn.execute(f"{sql} AND {column} IN ({','.join('?' * len(chunk))})",
                                             [*args, *chunk])}
    return found


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class LabelRecord:
    text_id: str
    text_hash: str
    probs: list[float]
    predicted: str
    confidence: float
    entropy: float
    margin: float
    seconds: float
    reason: str | None = None


def make_record(text_id: str, text: str, probs: Sequence[float], label_names: Sequence[str], seconds: float,
                reason: str | None = None) -> LabelRecord:
    probs = [float(p) for p in probs]
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    margin = probs[order[0]] - probs[order[1]] if len(probs) > 1 else 1.0
    return LabelRecord(text_id, text_hash(text), probs, label_names[order[0]], probs[order[0]], entropy, margin,
                       seconds, reason)


class StoredLabels(Mapping[str, LabelRecord]):
    """The store's records of ``rows`` for one teacher and prompt, by text hash, read on demand: what a
    teacher's ``label`` returns, so that labelling a big pool never holds a record per text. Iterating (and
    ``len``, computed once) walks the rows a window at a time. Once the caller has closed its store, reads go
    through a connection of this mapping's own."""

    def __init__(self, store: LabelStore, teacher: str, prompt: str, rows: Sequence[dict[str, Any]],
                 label_names: Sequence[str]):
        self._store, self.key, self.rows, self.label_names = store, (teacher, prompt), rows, list(label_names)
        self._len: int | None = None

    @property
    def store(self) -> LabelStore:
        if self._store.closed:
            self._store = LabelStore(self._store.path)
        return self._store

    def __getitem__(self, text_hash_: str) -> LabelRecord:
        found = self.store.get(*self.key, [text_hash_], self.label_names)
        if text_hash_ not in found:
            raise KeyError(text_hash_)
        return found[text_hash_]

    def __contains__(self, text_hash_: object) -> bool:
        return isinstance(text_hash_, str) and bool(self.store.done_hashes(*self.key, among=[text_hash_]))

    def windows(self) -> Iterator[tuple[Sequence[dict[str, Any]], dict[str, LabelRecord]]]:
        """(rows, their records by hash) a window of rows at a time."""
        from tailorkd.data.pool_rows import windows

        for window in windows(self.rows):
            yield window, self.store.get(*self.key, [text_hash(r["text"]) for r in window], self.label_names)

    def _records(self) -> Iterator[LabelRecord]:
        # A text repeated in the rows is one record, as in a dict; the texts seen so far are kept as 64-bit
        # prefixes of their hashes (a collision among a million texts: about 3e-8), not as strings.
        seen: set[int] = set()
        for _, found in self.windows():
            for h, record in found.items():
                key = int(h[:16], 16)
                if key not in seen:
                    seen.add(key)
                    yield record

    def __iter__(self) -> Iterator[str]:
        return (record.text_hash for record in self._records())

    def values(self) -> Iterator[LabelRecord]:  # type: ignore[override]
        return self._records()

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self._records())
        return self._len

    def missing_ids(self) -> list[str]:
        """The ids of the rows without a record (e.g. texts a served teacher abstained on)."""
        return [r["id"] for window, found in self.windows() for r in window if text_hash(r["text"]) not in found]


def unlabelled_rows(store: LabelStore, key: tuple[str, str], rows: Sequence[dict[str, Any]],
                    also_stored_in: Any = None) -> list[dict[str, Any]]:
    """The rows whose label under ``key`` (teacher identity, prompt fingerprint) the store lacks, asked
    afresh (another process may have stored some since); with ``also_stored_in`` (e.g. a hidden-state
    writer, anything with ``done_hashes(among=...)``), also those it lacks."""
    hashes = [text_hash(r["text"]) for r in rows]
    stored = store.done_hashes(*key, among=hashes)
    if also_stored_in is not None:
        stored &= also_stored_in.done_hashes(among=hashes)
    return [r for r, h in zip(rows, hashes) if h not in stored]


def stored_probs(store: LabelStore, teacher: str, prompt: str, rows: Sequence[dict[str, Any]],
                 label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The stored [N, M] distributions and [N] seconds of ``rows`` (NaN rows where there is no record),
    read a window of rows at a time."""
    names = list(label_names)
    probs = np.full((len(rows), len(names)), np.nan)
    seconds = np.full(len(rows), np.nan)
    start = 0
    for window, found in StoredLabels(store, teacher, prompt, rows, names).windows():
        for offset, row in enumerate(window):
            record = found.get(text_hash(row["text"]))
            if record is not None:
                probs[start + offset], seconds[start + offset] = record.probs, record.seconds
        start += len(window)
    return probs, seconds


# How long a process waits for another that holds the store (SQLite's busy timeout, and the open's retries).
_BUSY_SECONDS = 30


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every write goes through ``transaction()`` (BEGIN IMMEDIATE ... COMMIT), so what is
        # one transaction is explicit, schema changes included (Python's implicit transactions skip DDL).
        self.conn = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None)
        self.closed = False
        try:
            self._open_when_unlocked()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise TailorkdError(f"{self.path}: not a tailorkd label store ({exc})") from None
        except BaseException:
            self.conn.close()
            raise

    def _open_when_unlocked(self) -> None:
        """WAL mode and the schema, retried while another process holds the store: two processes that open a
        new store at once race to switch it to WAL, and SQLite answers the loser "database is locked" at once
        rather than through its busy handler."""
        deadline, pause = time.monotonic() + _BUSY_SECONDS, 0.05
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self._open_schema()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 1.0)

    def _schema_version(self) -> int | None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if "labels" in tables:
                raise TailorkdError(f"{self.path}: a labels table without a schema version; not a tailorkd label store")
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise TailorkdError(f"{self.path}: meta table without a schema_version; not a tailorkd label store")
        return int(row[0])

    def _open_schema(self) -> None:
        with self.transaction():
            version = self._schema_version()
            if version is None:
                for statement in _SCHEMA:
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
        if version > SCHEMA_VERSION:
            raise TailorkdError(f"{self.path}: label store schema version {version} is newer than this tailorkd "
                                f"reads ({SCHEMA_VERSION}); upgrade tailorkd")
        while version < SCHEMA_VERSION:
            with self.transaction():
                version = self._schema_version()  # another process may have migrated meanwhile
                if version is None or version >= SCHEMA_VERSION:
                    break
                for statement in _MIGRATIONS[version]:
                    self.conn.execute(statement)
                version += 1
                self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of its statements are committed together or not at all.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two writers wait for each other instead of
        failing half way. Not reentrant.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # also when COMMIT itself failed
                self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()
        self.closed = True

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_hashes(self, teacher: str, prompt: str, among: Sequence[str] | None = None) -> set[str]:
        """The labelled texts of (teacher, prompt); with ``among``, only those of these texts (a cheap
        re-read for a labeller that another process may be overtaking)."""
        return first_column_among(self.conn, "SELECT text_hash FROM labels WHERE teacher=? AND prompt=?",
                                  [teacher, prompt], "text_hash", among)

    def put_batch(self, teacher: str, prompt: str, label_names: Sequence[str], records: Iterable[LabelRecord]) -> None:
        """Write (or replace) the records of one batch in one transaction."""
        names = json.dumps(list(label_names))
        now = time.time()

        def rows() -> Iterator[tuple[Any, ...]]:
            for r in records:
                if len(r.probs) != len(label_names):
                    raise ValueError(f"{self.path}: record {r.text_id!r} has {len(r.probs)} probabilities for "
                                     f"{len(label_names)} labels {list(label_names)}")
                yield (teacher, prompt, r.text_hash, r.text_id, names, json.dumps(r.probs), r.predicted,
                       r.confidence, r.entropy, r.margin, r.seconds, now, r.reason)

        with self.transaction():  # one transaction per batch
            self.conn.executemany(
                f"INSERT OR REPLACE INTO labels ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                rows(),
            )

    def put_reasons(self, teacher: str, prompt: str, reasons: Mapping[str, str | None]) -> None:
        """Set the generated reason of already labelled texts (by text hash), all in one transaction.

        A text without a label row is an error and nothing is written: a reason belongs to a label.
        """
        for h, reason in reasons.items():
            if reason is not None and not isinstance(reason, str):
                raise TypeError(f"{self.path}: reason for text {h} is a {type(reason).__name__}, not a string")
        with self.transaction():
            missing = []
            for h, reason in reasons.items():
                cur = self.conn.execute("UPDATE labels SET reason=? WHERE teacher=? AND prompt=? AND text_hash=?",
                                        (reason, teacher, prompt, h))
                if cur.rowcount == 0:
                    missing.append(h)
            if missing:
                raise TailorkdError(f"{self.path}: {len(missing)} reasons are for texts without a label of teacher "
                                    f"{teacher!r}, prompt {prompt!r} (e.g. {missing[:3]}); none were written")

    def get(self, teacher: str, prompt: str, hashes: Sequence[str],
            label_names: Sequence[str]) -> dict[str, LabelRecord]:
        """Records for the given text hashes (those present), with probs in ``label_names`` order."""
        found: dict[str, LabelRecord] = {}
        wanted = list(dict.fromkeys(hashes))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self.conn.execute(
                f"SELECT text_hash, text_id, label_names, probs, predicted, confidence, entropy, margin, seconds, "
                f"reason FROM labels WHERE teacher=? AND prompt=? AND text_hash IN ({','.join('?' * len(chunk))})",
                (teacher, prompt, *chunk),
            )
            for h, tid, names, probs, pred, conf, ent, margin, secs, reason in rows:
                stored = dict(zip(json.loads(names), json.loads(probs)))
                if set(stored) != set(label_names):
                    raise ValueError(f"{self.path}: stored labels {sorted(stored)} differ from the task's "
                                     f"{list(label_names)}")
                found[h] = LabelRecord(tid, h, [stored[n] for n in label_names], pred, conf, ent, margin, secs, reason)
        return found

    @staticmethod
    def _where(teacher: str | None, prompt: str | None) -> tuple[str, list[str]]:
        sql, args = " WHERE 1=1", []
        if teacher is not None:
            sql, args = sql + " AND teacher=?", [*args, teacher]
        if prompt is not None:
            sql, args = sql + " AND prompt=?", [*args, prompt]
        return sql, args

    def count(self, teacher: str | None = None, prompt: str | None = None) -> int:
        where, args = self._where(teacher, prompt)
        return int(self.conn.execute("SELECT COUNT(*) FROM labels" + where, args).fetchone()[0])

    def stats(self, teacher: str | None = None, prompt: str | None = None) -> list[dict[str, Any]]:
        """Per (teacher, prompt): texts, texts with a reason, predicted-label histogram (in label order) and
        mean confidence / entropy / margin / seconds."""
        where, args = self._where(teacher, prompt)
        groups = self.conn.execute(
            "SELECT teacher, prompt, COUNT(*), COUNT(reason), AVG(confidence), AVG(entropy), AVG(margin), "
            "AVG(seconds), MIN(label_names) FROM labels" + where + " GROUP BY teacher, prompt ORDER BY teacher, prompt",
            args,
        ).fetchall()
        histogram: dict[tuple[str, str], dict[str, int]] = {}
        for t, p, predicted, n in self.conn.execute(
            "SELECT teacher, prompt, predicted, COUNT(*) FROM labels" + where + " GROUP BY teacher, prompt, predicted",
            args,
        ):
            histogram.setdefault((t, p), {})[predicted] = n
        out = []
        for t, p, n, with_reason, conf, ent, margin, secs, names in groups:
            counts = histogram.get((t, p), {})
            ordered = {name: counts.get(name, 0) for name in json.loads(names)}
            ordered.update({k: v for k, v in sorted(counts.items()) if k not in ordered})
            out.append({"teacher": t, "prompt": p, "texts": n, "with_reason": with_reason,
                        "predicted_counts": ordered, "mean_confidence": conf, "mean_entropy": ent,
                        "mean_margin": margin, "mean_seconds": secs})
        return out

    def export(self, path: str | Path, teacher: str | None = None, prompt: str | None = None,
               batch_rows: int = 5000) -> int:
        """Write the labels (of one teacher / prompt, or all) to ``path``: JSONL or Parquet by its suffix.

        One row per text: text_id, text_hash, teacher, prompt, ``p_<label>`` per class, predicted,
        confidence, entropy, margin, seconds, reason. Rows are streamed in batches from one read snapshot
        and the file is written under a temporary name and renamed. Returns the number of rows.
        """
        path = Path(path)
        fmt = path.suffix.lower()
        if fmt not in EXPORT_FORMATS:
            raise TailorkdError(f"{path}: cannot export labels to a {path.suffix or 'suffix-less'} file; "
                                f"use one of {', '.join(EXPORT_FORMATS)}")
        where, args = self._where(teacher, prompt)
        self.conn.execute("BEGIN")  # one read snapshot, even while a labeller goes on writing
        try:
            label_names: list[str] = []
            for (names,) in self.conn.execute("SELECT DISTINCT label_names FROM labels" + where, args):
                label_names += [n for n in json.loads(names) if n not in label_names]
            if not label_names:
                raise TailorkdError(f"{self.path}: no labels to export for teacher {teacher or '(any)'!r}, "
                                    f"prompt {prompt or '(any)'!r}")
            cursor = self.conn.execute(
                "SELECT text_id, text_hash, teacher, prompt, label_names, probs, predicted, confidence, entropy, "
                "margin, seconds, reason FROM labels" + where + " ORDER BY teacher, prompt, rowid", args)
            batches = self._export_batches(cursor, label_names, batch_rows)
            write = _write_jsonl if fmt == ".jsonl" else _write_parquet
            counted: list[int] = []
            atomic_write(path, lambda tmp: counted.append(write(tmp, batches, label_names)))
        finally:
            self.conn.execute("COMMIT")
        return counted[0]

    @staticmethod
    def _export_batches(cursor: sqlite3.Cursor, label_names: list[str],
                        batch_rows: int) -> Iterator[list[dict[str, Any]]]:
        while rows := cursor.fetchmany(batch_rows):
            batch = []
            for tid, h, t, p, names, probs, pred, conf, ent, margin, secs, reason in rows:
                stored = dict(zip(json.loads(names), json.loads(probs)))
                batch.append({"text_id": tid, "text_hash": h, "teacher": t, "prompt": p,
                              **{f"p_{n}": stored.get(n) for n in label_names},
                              "predicted": pred, "confidence": conf, "entropy": ent, "margin": margin,
                              "seconds": secs, "reason": reason})
            yield batch


def _write_jsonl(path: Path, batches: Iterable[list[dict[str, Any]]], label_names: list[str]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for batch in batches:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch)
            n += len(batch)
    return n


def _write_parquet(path: Path, batches: Iterable[list[dict[str, Any]]], label_names: list[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("text_id", pa.string()), ("text_hash", pa.string()), ("teacher", pa.string()), ("prompt", pa.string())]
        + [(f"p_{n}", pa.float64()) for n in label_names]
        + [("predicted", pa.string()), ("confidence", pa.float64()), ("entropy", pa.float64()),
           ("margin", pa.float64()), ("seconds", pa.float64()), ("reason", pa.string())],
        metadata={"tailorkd.label_store_schema_version": str(SCHEMA_VERSION),
                  "tailorkd.label_names": json.dumps(label_names)},
    )
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    return n
