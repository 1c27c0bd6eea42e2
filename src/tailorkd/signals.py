"""Crisis signals from a feed of articles: the store of scored articles, and their daily aggregation and alerts.

A signal is one article's label, calibrated confidence and severity level (``stages.signals`` scores them
with the run's student). Here:

- ``read_feed``: articles from JSONL / JSONL.gz / Parquet / CSV files, in bounded batches, each with the file
  and line it came from; a row without text or with a date that does not parse is rejected with its place.
- ``SignalStore``: SQLite, one row per article key, the model that scored it with it; rescoring with another
  model replaces the row, rescoring with the same one is skipped, so a rerun adds nothing twice and a new
  day's file adds only its rows. Each batch is one transaction: a killed run keeps what it stored.
- ``daily_signals``: per topic and day, the article count, counts per label, the risk share with its Wilson
  interval, the severity index (mean severity weight) with its normal interval, and the topic's trailing
  risk share over the days before.
- ``find_alerts``: the recipe's rules (``signals.rules``) on the daily table, each alert with its day's most
  confident risk articles.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from tailorkd.errors import TailorkdError
from tailorkd.labels import first_column_among

FEED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
SCHEMA_VERSION = 1


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


def _chunks(path: Path, batch_size: int) -> Iterator[pd.DataFrame]:
    name = path.name
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                yield batch.to_pandas()
        elif name.endswith(".csv"):
            yield from pd.read_csv(path, chunksize=batch_size, dtype=str, keep_default_na=False)
        else:  # JSON lines, gzipped or not
            yield from pd.read_json(path, lines=True, chunksize=batch_size, dtype=False,
                                    compression="infer")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise TailorkdError(f"{path}: cannot be read as a feed file ({str(exc).splitlines()[0]})") from exc


def read_feed(files: Sequence[Path], columns: Any, batch_size: int
              ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(articles, rejects) batch by batch. An article: key, id, text, day (YYYY-MM-DD), topic, source, file,
    line. A reject: file, line, reason. ``columns``: the recipe's ``signals.columns``."""
    for path in files:
        line = 0
        for chunk in _chunks(path, batch_size):
            if columns.text not in chunk.columns:
                raise TailorkdError(f"{path}: no column '{columns.text}' (signals.columns.text); it has "
                                    f"{list(chunk.columns)[:10]}")
            if columns.date not in chunk.columns:
                raise TailorkdError(f"{path}: no column '{columns.date}' (signals.columns.date); it has "
                                    f"{list(chunk.columns)[:10]}")
            days = pd.to_datetime(chunk[columns.date], errors="coerce", utc=True, format="mixed")

            def field(name: str | None, i: int) -> str:
                value = chunk[name].iloc[i] if name and name in chunk.columns else None
                return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

            articles, rejects = [], []
            for i in range(len(chunk)):
                line += 1
                text = field(columns.text, i).strip()
                if not text:
                    rejects.append({"file": str(path), "line": line, "reason": f"empty '{columns.text}'"})
                    continue
                if pd.isna(days.iloc[i]):
                    rejects.append({"file": str(path), "line": line,
                                    "reason": f"'{columns.date}' is not a date: {field(columns.date, i)[:40]!r}"})
                    continue
                day = days.iloc[i].strftime("%Y-%m-%d")
                topic, source = field(columns.topic, i) or "all", field(columns.source, i)
                given_id = field(columns.id, i)
                key = hashlib.sha256(("id\0" + given_id if given_id else
                                      "\0".join(("text", text, day, topic, source))).encode()).hexdigest()[:32]
                articles.append({"key": key, "id": given_id or key[:12], "text": text, "day": day, "topic": topic,
                                 "source": source, "file": str(path), "line": line})
            yield articles, rejects


# -- the store of scored articles -----------------------------------------------------------------------------
class SignalStore:
    """Scored articles in SQLite (``signals.sqlite``), keyed by article; see the module docstring."""

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

    def put(self, articles: Sequence[dict[str, Any]], model: str) -> None:
        """Store scored articles (each with label, confidence, severity, probabilities) in one transaction."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(a["key"], model, a["id"], a["day"], a["topic"], a["source"], a["text"], a["label"],
                  float(a["confidence"]), a["severity"], json.dumps(a["probabilities"]), a["file"], a["line"])
                 for a in articles])

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


def trailing_baseline(daily: pd.DataFrame, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``daily`` (topic, day, n, risk_share): the pooled risk share and the article count of the
    topic's calendar days [day - days, day - 1] (NaN share where they hold no article)."""
    share, count = np.full(len(daily), np.nan), np.zeros(len(daily), dtype=int)
    risk = (daily["risk_share"] * daily["n"]).round().to_numpy()
    n = daily["n"].to_numpy()
    dates = pd.to_datetime(daily["day"]).to_numpy()
    for _, rows in daily.groupby("topic", sort=False).indices.items():
        for i in rows:
            window = rows[(dates[rows] >= dates[i] - np.timedelta64(days, "D")) & (dates[rows] < dates[i])]
            count[i] = int(n[window].sum())
            if count[i]:
                share[i] = risk[window].sum() / count[i]
    return share, count


def find_alerts(daily: pd.DataFrame, signals: pd.DataFrame, rules: Sequence[Any], risk_labels: Sequence[str],
                top_articles: int) -> list[dict[str, Any]]:
    """The alerts the recipe's rules raise on ``daily``, in day and topic order, each with its day's most
    confident risk articles."""
    alerts = []
    risky = signals[signals["label"].isin(list(risk_labels))]
    baselines = {r.baseline_days: trailing_baseline(daily, r.baseline_days) for r in rules
                 if r.kind == "rise_over_baseline"}
    for i, row in enumerate(daily.itertuples(index=False)):
        for rule in rules:
            if row.n < rule.min_count:
                continue
            if rule.kind == "share_above":
                fired, detail = row.risk_share >= rule.threshold, {}
            else:
                base_share, base_n = baselines[rule.baseline_days][0][i], baselines[rule.baseline_days][1][i]
                if base_n < rule.min_baseline_count or not base_share > 0:
                    continue  # no baseline yet, or a zero one that any risk would multiply without bound
                ratio = row.risk_share / base_share
                fired = ratio >= rule.threshold
                detail = {"baseline_days": rule.baseline_days, "baseline_risk_share": float(base_share),
                          "baseline_n": int(base_n), "ratio": float(ratio)}
            if not fired:
                continue
            day = risky[(risky["topic"] == row.topic) & (risky["day"] == row.day)]
            top = day.sort_values("confidence", ascending=False).head(top_articles)
            alerts.append({
                "topic": row.topic, "day": row.day, "rule": rule.name, "kind": rule.kind,
                "threshold": rule.threshold, "n": int(row.n), "risk_share": float(row.risk_share),
                "risk_share_interval": [float(row.risk_share_low), float(row.risk_share_high)],
                "severity_index": float(row.severity_index), **detail,
                "top_articles": [{"id": a.id, "text": a.text[:500], "label": a.label,
                                  "confidence": float(a.confidence), "severity": a.severity, "source": a.source}
                                 for a in top.itertuples(index=False)],
            })
    return alerts
