"""The label store: the teacher's class distributions, durable in SQLite.

A row is keyed by (teacher identity, prompt fingerprint, text hash), so rerunning a stage skips what is
done, and changing the teacher or the prompt labels afresh instead of mixing results. Each batch is one
transaction: a run killed at any moment loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
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
    PRIMARY KEY (teacher, prompt, text_hash)
);
"""


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


def make_record(text_id: str, text: str, probs: Sequence[float], label_names: Sequence[str], seconds: float) -> LabelRecord:
    probs = [float(p) for p in probs]
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    margin = probs[order[0]] - probs[order[1]] if len(probs) > 1 else 1.0
    return LabelRecord(text_id, text_hash(text), probs, label_names[order[0]], probs[order[0]], entropy, margin, seconds)


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_hashes(self, teacher: str, prompt: str) -> set[str]:
        rows = self.conn.execute("SELECT text_hash FROM labels WHERE teacher=? AND prompt=?", (teacher, prompt))
        return {r[0] for r in rows}

    def put_batch(self, teacher: str, prompt: str, label_names: Sequence[str], records: Iterable[LabelRecord]) -> None:
        names = json.dumps(list(label_names))
        now = time.time()
        with self.conn:  # one transaction per batch
            self.conn.executemany(
                "INSERT OR REPLACE INTO labels VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (teacher, prompt, r.text_hash, r.text_id, names, json.dumps(r.probs), r.predicted,
                     r.confidence, r.entropy, r.margin, r.seconds, now)
                    for r in records
                ],
            )

    def get(self, teacher: str, prompt: str, hashes: Sequence[str], label_names: Sequence[str]) -> dict[str, LabelRecord]:
        """Records for the given text hashes (those present), with probs in ``label_names`` order."""
        found: dict[str, LabelRecord] = {}
        wanted = list(dict.fromkeys(hashes))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self.conn.execute(
                f"SELECT text_hash, text_id, label_names, probs, predicted, confidence, entropy, margin, seconds "
                f"FROM labels WHERE teacher=? AND prompt=? AND text_hash IN ({','.join('?' * len(chunk))})",
                (teacher, prompt, *chunk),
            )
            for h, tid, names, probs, pred, conf, ent, margin, secs in rows:
                stored = dict(zip(json.loads(names), json.loads(probs)))
                if set(stored) != set(label_names):
                    raise ValueError(f"{self.path}: stored labels {sorted(stored)} differ from the task's {list(label_names)}")
                found[h] = LabelRecord(tid, h, [stored[n] for n in label_names], pred, conf, ent, margin, secs)
        return found

    def count(self, teacher: str | None = None, prompt: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM labels WHERE 1=1", []
        if teacher is not None:
            sql, args = sql + " AND teacher=?", [*args, teacher]
        if prompt is not None:
            sql, args = sql + " AND prompt=?", [*args, prompt]
        return int(self.conn.execute(sql, args).fetchone()[0])
