"""Crisis signals from a feed of articles: the store of scored articles, and their daily aggregation and alerts.

A signal is one article's label, calibrated confidence and severity level (``stages.signals`` scores them
with the run's student). Here:

- ``read_feed``: articles from JSONL / JSONL.gz / Parquet / CSV files, in bounded batches, each with the file
  and line it came from, read by the corpus stage's reader (one reading rule: a bad row is a reject with its
  file and line, a file that cannot be read a one-line error); ``feed_days``: the one rule for dates.
- ``SignalStore``: SQLite, one row per article key, the model that scored it with it; rescoring with another
  model replaces the row, rescoring with the same one is skipped, so a rerun adds nothing twice and a new
  day's file adds only its rows. It keeps the rejects of every file read (a file read again replaces its
  own) and the files in the order first read. Each batch is one transaction: a killed run keeps what it stored.
- ``daily_signals``: per topic and day, the article count, counts per label, the risk share with its Wilson
  interval, the severity index (mean severity weight) with its normal interval, and the topic's trailing
  risk share over the days before.
- ``find_alerts``: the recipe's rules (``signals.rules``) on the daily table, each alert with its day's most
  confident risk articles; on the estimated risk share (``tailorkd.quantify``) where the table has it, gated by
  the estimate or its interval (``signals.alert_on``), each alert saying how sure it is.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from tailorkd.errors import TailorkdError
from tailorkd.labels import first_column_among

FEED_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz", ".parquet", ".csv", ".csv.gz")
SCHEMA_VERSION = 2  # 2: the store keeps the rejects and the files read


# -- reading the feed ---------------------------------------------------------------------------------------
def feed_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files of ``inputs`` (files, folders or globs), sorted; an input that names nothing is an error."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FEED_SUFFIXES))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
        if not found:
            raise TailorkdError(f"{item}: no feed file there ({', '.join(FEED_SUFFIXES)})")
        files += found
    return files


def feed_format(path: Path) -> str:
    """jsonl, csv or parquet, from the file's suffix (the corpus stage's suffixes); JSON lines otherwise."""
    from tailorkd.corpus.read import file_format

    return file_format(path, None) or "jsonl"


# Unix time in seconds is read only in [1980, 2100): below, a number of eight digits or fewer is a date text
# (YYYYMMDD, a year), so the two readings never meet; milliseconds (13 digits) are beyond 2100 and rejected.
UNIX_SECONDS = (315532800, 4102444800)
FIRST_DAY, LAST_DAY = "1900-01-01", "2099-12-31"
_NUMBER = re.compile(r"\d+(\.\d+)?")
_RELATIVE = {"now", "today"}  # pandas reads these against the clock: not a date the feed gave


def feed_days(values: Sequence[str | None]) -> list[str | None]:
    """The UTC day (YYYY-MM-DD) of each date value of a feed, None where it is not a date. A number (a JSON
    number, or a text of digits with an optional fraction) between ``UNIX_SECONDS`` is Unix time in seconds;
    any other value is a date text pandas parses (ISO 8601 with or without a time and an offset, 20240301,
    'March 1, 2024', ...), taken to UTC (a value without an offset is UTC); a day outside
    [``FIRST_DAY``, ``LAST_DAY``] is not a date."""
    days: list[str | None] = [None] * len(values)
    texts: dict[int, str] = {}
    for i, value in enumerate(values):
        text = (value or "").strip()
        if not text or text.lower() in _RELATIVE:
            continue
        if _NUMBER.fullmatch(text) and UNIX_SECONDS[0] <= float(text) < UNIX_SECONDS[1]:
            days[i] = datetime.fromtimestamp(float(text), timezone.utc).strftime("%Y-%m-%d")
        else:
            texts[i] = text
    if texts:
        parsed = pd.to_datetime(pd.Series(list(texts.values()), dtype=object), errors="coerce", utc=True,
                                format="mixed")
        for i, stamp in zip(texts, parsed):
            day = None if pd.isna(stamp) else f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}"
            days[i] = day if day is not None and FIRST_DAY <= day <= LAST_DAY else None
    return days


def read_feed(files: Sequence[Path], columns: Any, batch_size: int
              ) -> Iterator[tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]]:
    """(file, articles, rejects) batch by batch, at least one batch per file (an empty file gives empty lists).
    An article: key, id, text, day (YYYY-MM-DD, ``feed_days``), topic, source, file, line. A reject: file, line
    (the 1-based line the record starts on; the row for Parquet), position, reason, raw. ``columns``: the
    recipe's ``signals.columns``.

    The rows are read by the corpus stage's reader (``corpus.read.read_shard``), so a feed row is rejected and
    numbered as a corpus row is: a row that cannot be read (malformed JSON or CSV, undecodable bytes, no text)
    is a reject and the run goes on; so is a row whose date is missing or not a date. A file that cannot be
    read at all (not gzip, a gzip stream cut short, not Parquet, the text or date column missing from a CSV
    header or Parquet schema, no row readable, no row with a date) is a one-line TailorkdError naming it."""
    from tailorkd.corpus.read import read_shard
    from tailorkd.data.readers import make_reject
    from tailorkd.recipe.corpus import CorpusColumns, CorpusInput

    spec = CorpusInput(path=".", source="", columns=CorpusColumns(
        text=columns.text, date=columns.date, topic=columns.topic, source=columns.source, id=columns.id))
    for path in files:
        readable = dated = 0
        batches = 0
        for table in read_shard(0, path, feed_format(path), spec, batch_size, key="signals",
                                required=("text", "date")):
            rows = table.to_pylist()
            days = iter(feed_days([row["date"] for row in rows if row["reject"] is None]))
            articles, rejects = [], []
            for row in rows:
                where = (path, row["row"])
                if row["reject"] is not None:
                    rejects.append(make_reject(*where, row["reject"], row["raw"] or "", row["position"]))
                    continue
                readable += 1
                day = next(days)
                text = row["text"].strip()
                if day is None:
                    dated += row["date"] is not None
                    given = row["date"] or ""
                    reason = f"'{columns.date}' is not a date: {given[:40]!r}" if given else f"no '{columns.date}'"
                    if _NUMBER.fullmatch(given):
                        reason += " (a number is Unix time in seconds, 1980 to 2100)"
                    rejects.append(make_reject(*where, reason, json.dumps({columns.text: text, columns.date: given},
                                                                          ensure_ascii=False), row["position"]))
                    continue
                dated += 1
                topic, source, given_id = row["topic"] or "all", row["source"] or "", row["doc_id"] or ""
                key = hashlib.sha256(("id\0" + given_id if given_id else
                                      "\0".join(("text", text, day, topic, source))).encode()).hexdigest()[:32]
                articles.append({"key": key, "id": given_id or key[:12], "text": text, "day": day, "topic": topic,
                                 "source": source, "file": str(path), "line": row["row"]})
            batches += 1
            yield path, articles, rejects
        if readable and not dated:
            raise TailorkdError(f"signals ({path}): none of its {readable} rows has a '{columns.date}' "
                                f"(signals.columns.date)")
        if not batches:
            yield path, [], []


# -- the store of scored articles -----------------------------------------------------------------------------
class SignalStore:
    """Scored articles in SQLite (``signals.sqlite``), keyed by article, with the rejects of every file read
    into it and the files in the order first read; see the module docstring."""

    def __init__(self, path: Path, label_names: Sequence[str]):
        self.path = Path(path)
        self.label_names = list(label_names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("""CREATE TABLE IF NOT EXISTS signals (
            key TEXT PRIMARY KEY, model TEXT NOT NULL, id TEXT, day TEXT NOT NULL, topic TEXT NOT NULL,
            source TEXT, text TEXT, label TEXT NOT NULL, confidence REAL NOT NULL, severity TEXT NOT NULL,
            probabilities TEXT NOT NULL, file TEXT, line INTEGER)""")
        self.db.execute("CREATE INDEX IF NOT EXISTS signals_topic_day ON signals (topic, day)")
        stored = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        #: A store of schema 1 kept its rejects and files only in rejects.jsonl and summary.json: the stage
        #: takes them over (``adopt``) once.
        self.upgraded = "schema_version" in stored and int(stored["schema_version"]) < 2
        self.db.execute("CREATE TABLE IF NOT EXISTS files (file TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        self.db.execute("""CREATE TABLE IF NOT EXISTS rejects (file TEXT NOT NULL, position TEXT NOT NULL,
            line INTEGER NOT NULL, reason TEXT NOT NULL, raw TEXT, PRIMARY KEY (file, position, line, reason))""")
        labels = json.dumps(self.label_names)
        if stored.get("labels", labels) != labels:
            raise TailorkdError(f"{self.path}: holds signals for the labels {stored['labels']}, not {labels}; "
                                "use another output folder")
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [("schema_version", str(SCHEMA_VERSION)), ("labels", labels)])

    def __enter__(self) -> SignalStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.db.close()

    def scored(self, keys: Sequence[str], model: str) -> set[str]:
        """The keys among ``keys`` already scored by ``model``."""
        return first_column_among(self.db, "SELECT key FROM signals WHERE model = ?", [model], "key", keys)

    def put(self, articles: Sequence[dict[str, Any]], model: str, rejects: Sequence[dict[str, Any]] = (),
            file: str | Path | None = None, first: bool = False) -> None:
        """Store scored articles (each with label, confidence, severity, probabilities) and rejects (file, line,
        position, reason, raw) of ``file`` in one transaction. ``first``: the batch starts reading ``file``
        (again): its earlier rejects are replaced by this reading's, so a row fixed since is no longer one."""
        with self.db:
            if file is not None:
                self._add_files([str(file)])
                if first:
                    self.db.execute("DELETE FROM rejects WHERE file = ?", [str(file)])
            self._add_files([*(str(a["file"]) for a in articles), *(str(r["file"]) for r in rejects)])
            self.db.executemany("INSERT OR REPLACE INTO rejects VALUES (?, ?, ?, ?, ?)",
                                [(str(r["file"]), r.get("position") or "line", int(r["line"]), str(r["reason"]),
                                  r.get("raw")) for r in rejects])
            self.db.executemany(
                "INSERT OR REPLACE INTO signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(a["key"], model, a["id"], a["day"], a["topic"], a["source"], a["text"], a["label"],
                  float(a["confidence"]), a["severity"], json.dumps(a["probabilities"]), a["file"], a["line"])
                 for a in articles])

    def _add_files(self, files: Sequence[str]) -> None:
        for file in dict.fromkeys(files):
            self.db.execute("INSERT OR IGNORE INTO files VALUES (?, (SELECT COALESCE(MAX(seq), -1) + 1 FROM files))",
                            [file])

    def adopt(self, rejects: Sequence[Any], files: Sequence[Any]) -> None:
        """Take over the rejects and files a store of schema 1 left in rejects.jsonl and summary.json (what is
        not a reject or a file name is left out)."""
        kept = [r for r in rejects if isinstance(r, dict) and {"file", "line", "reason"} <= set(r)
                and isinstance(r["line"], int)]
        with self.db:
            self._add_files([str(f) for f in files if isinstance(f, str)])
        self.put([], "", kept)

    def files(self) -> list[str]:
        """Every file read into this store, in the order first read."""
        return [row[0] for row in self.db.execute("SELECT file FROM files ORDER BY seq")]

    def rejects(self) -> list[dict[str, Any]]:
        """Every reject of the files read into this store, by file (in the order first read) and line."""
        query = ("SELECT r.file, r.line, r.position, r.reason, r.raw FROM rejects r LEFT JOIN files f "
                 "ON f.file = r.file ORDER BY f.seq, r.file, r.position, r.line, r.reason")
        return [dict(zip(("file", "line", "position", "reason", "raw"), row)) for row in self.db.execute(query)]

    def frame(self, model: str | None = None) -> pd.DataFrame:
        """Every stored signal (of ``model`` only, when given), one row per article, probabilities as p_<label>."""
        query = "SELECT key, model, id, day, topic, source, text, label, confidence, severity, probabilities, " \
                "file, line FROM signals" + (" WHERE model = ?" if model else "") + " ORDER BY day, topic, key"
        frame = pd.read_sql_query(query, self.db, params=[model] if model else None)
        probs = np.array([json.loads(p) for p in frame.pop("probabilities")], dtype=float).reshape(
            len(frame), len(self.label_names))
        for j, name in enumerate(self.label_names):
            frame[f"p_{name}"] = probs[:, j]
        return frame


# -- aggregation -------------------------------------------------------------------------------------------
def wilson_interval(successes: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a binomial proportion (sound at small n and at 0 or 1)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + level / 2)
    n = np.asarray(n, dtype=float)
    p = np.asarray(successes, dtype=float) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def daily_signals(signals: pd.DataFrame, label_names: Sequence[str], risk_labels: Sequence[str],
                  severity_weights: dict[str, float], baseline_days: int, level: float = 0.95) -> pd.DataFrame:
    """One row per topic and day; see the module docstring. ``baseline_days``: the trailing window of the
    baseline risk share (the days before, not the day itself)."""
    from scipy.stats import t as student_t

    columns = ["topic", "day", "n", *[f"n_{name}" for name in label_names], "risk_share", "risk_share_low",
               "risk_share_high", "severity_index", "severity_index_low", "severity_index_high", "mean_confidence",
               "baseline_risk_share", "baseline_n"]
    if signals.empty:
        return pd.DataFrame(columns=columns)
    frame = signals.assign(risk=signals["label"].isin(list(risk_labels)).astype(int),
                           weight=signals["severity"].map(severity_weights).astype(float))
    if frame["weight"].isna().any():
        missing = sorted(set(frame.loc[frame["weight"].isna(), "severity"]))
        raise TailorkdError(f"signals.severity_weights: no weight for the severity levels {missing}")
    grouped = frame.groupby(["topic", "day"], sort=True)
    daily = grouped.agg(n=("key", "size"), risk=("risk", "sum"), severity_index=("weight", "mean"),
                        severity_sd=("weight", "std"), mean_confidence=("confidence", "mean")).reset_index()
    counts = frame.pivot_table(index=["topic", "day"], columns="label", values="key", aggfunc="size", fill_value=0)
    for name in label_names:
        daily[f"n_{name}"] = counts[name].to_numpy() if name in counts.columns else 0
    daily["risk_share"] = daily["risk"] / daily["n"]
    daily["risk_share_low"], daily["risk_share_high"] = wilson_interval(daily["risk"], daily["n"], level)
    # The severity index is a mean of bounded weights: a t interval, none from a single article.
    half = student_t.ppf(0.5 + level / 2, np.maximum(daily["n"] - 1, 1)) * daily["severity_sd"] / np.sqrt(daily["n"])
    top = max(severity_weights.values())
    daily["severity_index_low"] = np.where(daily["n"] > 1, np.clip(daily["severity_index"] - half, 0, top), np.nan)
    daily["severity_index_high"] = np.where(daily["n"] > 1, np.clip(daily["severity_index"] + half, 0, top), np.nan)
    daily["baseline_risk_share"], daily["baseline_n"] = trailing_baseline(daily, baseline_days)
    return daily[columns]


def trailing_windows(daily: pd.DataFrame, days: int) -> list[np.ndarray]:
    """Per row of ``daily`` (topic, day): the rows of the topic's calendar days [day - days, day - 1]."""
    windows: list[np.ndarray] = [np.array([], dtype=int)] * len(daily)
    dates = pd.to_datetime(daily["day"]).to_numpy()
    for _, rows in daily.groupby("topic", sort=False).indices.items():
        for i in rows:
            windows[i] = rows[(dates[rows] >= dates[i] - np.timedelta64(days, "D")) & (dates[rows] < dates[i])]
    return windows


def trailing_baseline(daily: pd.DataFrame, days: int, column: str = "risk_share") -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``daily`` (topic, day, n, ``column``): the pooled share (``column`` weighted by n) and the
    article count of the topic's calendar days [day - days, day - 1] (NaN share where they hold no article)."""
    share, count = np.full(len(daily), np.nan), np.zeros(len(daily), dtype=int)
    # The raw share pools counts (whole articles); an estimated share pools as it is.
    risk = daily[column] * daily["n"]
    risk = (risk.round() if column == "risk_share" else risk).to_numpy(dtype=float)
    n = daily["n"].to_numpy()
    for i, window in enumerate(trailing_windows(daily, days)):
        count[i] = int(n[window].sum())
        if count[i]:
            share[i] = risk[window].sum() / count[i]
    return share, count


ALERT_ON = ("estimate", "interval")


def find_alerts(daily: pd.DataFrame, signals: pd.DataFrame, rules: Sequence[Any], risk_labels: Sequence[str],
                top_articles: int, replicates: np.ndarray | None = None, alert_on: str = "estimate",
                level: float = 0.95) -> list[dict[str, Any]]:
    """The alerts the recipe's rules raise on ``daily``, in day and topic order, each with its day's most
    confident risk articles.

    The rules read the corrected risk share (``risk_share_estimate``, ``tailorkd.quantify``) when the table has
    it, else the raw count's. ``replicates`` [rows, B]: the risk share's bootstrap replicates; with them each
    alert says how sure it is (``sure``: the share of replicates in which the rule holds; a rise is judged
    against the baseline made of the same replicates) and ``alert_on`` chooses what must clear the rule:
    ``estimate`` (the point estimate) or ``interval`` (the whole ``level`` interval: its lower end)."""
    if alert_on not in ALERT_ON:
        raise TailorkdError(f"signals.alert_on: {alert_on!r} is not one of {', '.join(ALERT_ON)}")
    if alert_on == "interval" and replicates is None:
        raise TailorkdError("signals.alert_on: interval needs the risk share's replicates (signals.quantifier)")
    alerts = []
    column = "risk_share_estimate" if "risk_share_estimate" in daily.columns else "risk_share"
    shares = daily[column].to_numpy(dtype=float)
    low_tail = (1 - level) / 2
    n = daily["n"].to_numpy(dtype=float)
    risky = signals[signals["label"].isin(list(risk_labels))]
    rising = {r.baseline_days for r in rules if r.kind == "rise_over_baseline"}
    baselines = {days: trailing_baseline(daily, days, column) for days in rising}
    windows = {days: trailing_windows(daily, days) for days in rising} if replicates is not None else {}
    for i, row in enumerate(daily.itertuples(index=False)):
        for rule in rules:
            if row.n < rule.min_count:
                continue
            if rule.kind == "share_above":
                value, detail = shares[i], {}
                held = replicates[i] >= rule.threshold if replicates is not None else None
                low = float(np.quantile(replicates[i], low_tail)) if replicates is not None else value
            else:
                base_share, base_n = baselines[rule.baseline_days][0][i], baselines[rule.baseline_days][1][i]
                if base_n < rule.min_baseline_count or not base_share > 0:
                    continue  # no baseline yet, or a zero one that any risk would multiply without bound
                value = shares[i] / base_share
                detail = {"baseline_days": rule.baseline_days, "baseline_risk_share": float(base_share),
                          "baseline_n": int(base_n), "ratio": float(value)}
                held, low = None, value
                if replicates is not None:
                    window = windows[rule.baseline_days][i]
                    base = n[window] @ replicates[window] / n[window].sum()
                    ratios = np.divide(replicates[i], base, out=np.where(replicates[i] > 0, np.inf, 0.0),
                                       where=base > 0)
                    held, low = ratios >= rule.threshold, float(np.quantile(ratios, low_tail))
            if not (low if alert_on == "interval" else value) >= rule.threshold:
                continue
            day = risky[(risky["topic"] == row.topic) & (risky["day"] == row.day)]
            top = day.sort_values("confidence", ascending=False).head(top_articles)
            estimate = {"risk_share_estimate": float(shares[i]),
                        "risk_share_estimate_interval": [float(row.risk_share_estimate_low),
                                                         float(row.risk_share_estimate_high)]
                        } if column == "risk_share_estimate" else {}
            alerts.append({
                "topic": row.topic, "day": row.day, "rule": rule.name, "kind": rule.kind,
                "threshold": rule.threshold, "n": int(row.n), "risk_share": float(row.risk_share),
                "risk_share_interval": [float(row.risk_share_low), float(row.risk_share_high)], **estimate,
                "sure": float(held.mean()) if held is not None else None, "alert_on": alert_on,
                "severity_index": float(row.severity_index), **detail,
                "top_articles": [{"id": a.id, "text": a.text[:500], "label": a.label,
                                  "confidence": float(a.confidence), "severity": a.severity, "source": a.source}
                                 for a in top.itertuples(index=False)],
            })
    return alerts
