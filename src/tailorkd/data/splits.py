"""Loading every source into one table, and the three deterministic splits written to disk.

- **seed**: ``seed_per_class`` rows of each task label: the small expert-labelled set for few-shot prompts;
- **test**: ``test_size`` rows, stratified by label: proportional to each label's share of the labelled rows
  left after the seed set (largest remainders; each label gets at least one when ``test_size`` allows):
  the human-labelled test set;
- **pool**: every other row, **without its label column**: the unlabelled texts the teacher labels. Rows
  without a label only ever go to the pool. ``pool_size`` caps it with a seeded random sample.

Determinism: with ``dedupe`` on, a text seen before (in source order, then file order, then line order) is
dropped first. The rows are then sorted by ``id`` (ids are unique) and drawn with
``numpy.random.default_rng(seed)``, label by label in sorted label order, so the same records and seed give
the same splits whatever the order of the sources' rows or of ``task.labels``. Each split comes out in a
seeded random order (so any prefix of the pool is a random sample of it).

On disk (``prepare_data``): ``seed.parquet``, ``pool.arrow``, ``test.parquet``, ``rejects.jsonl`` and
``stats.json``, each written to a temporary file then moved into place; ``stats.json`` is removed first and
written last, so a folder with a ``stats.json`` is complete. The pool is an uncompressed Arrow IPC (Feather
v2) file that later stages read memory-mapped, a window at a time (``tailorkd.data.pool_rows``): it may be
large, the seed and test splits are small.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tailorkd.data.config import DataConfig, FileSource, SplitConfig
from tailorkd.data.pool_rows import PoolRows, damaged_split, text_table, write_pool
from tailorkd.data.readers import RECORD_FIELDS, make_reject
from tailorkd.data.sources import read_source, source_display_name
from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write, write_text_atomic

# 2: the pool is pool.arrow (memory-mapped by later stages), not pool.parquet.
SCHEMA_VERSION = 2
SPLIT_NAMES: tuple[str, ...] = ("seed", "pool", "test")
POOL_FIELDS: tuple[str, ...] = tuple(f for f in RECORD_FIELDS if f != "label")
FILES = {
    "seed": "seed.parquet",
    "pool": "pool.arrow",
    "test": "test.parquet",
    "rejects": "rejects.jsonl",
    "stats": "stats.json",
}


@dataclass
class PreparedData:
    """The three splits (the pool has no ``label`` column and is read from its file a window at a time),
    the rejects and the stats of a data run."""

    seed: pd.DataFrame
    pool: PoolRows
    test: pd.DataFrame
    rejects: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def rows(self, split: str) -> Sequence[dict[str, Any]]:
        """The rows of ``split`` (seed, pool or test) as dicts, a missing value as None: a list for seed and
        test, the memory-mapped ``PoolRows`` for the pool (walk a big one by ``windows()``)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; one of {SPLIT_NAMES}")
        return self.pool if split == "pool" else frame_rows(getattr(self, split))

    def frame(self, split: str) -> pd.DataFrame:
        """The rows of ``split`` as a DataFrame (the pool read whole: for small pools and inspection)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; one of {SPLIT_NAMES}")
        return self.pool.to_pandas() if split == "pool" else getattr(self, split)


def frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a split's frame as dicts, a missing value as None."""
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


# --------------------------------------------------------------------------------------------------------------
# loading


def _label_counts(labels: pd.Series, task_labels: Sequence[str] | None = None) -> dict[str, int]:
    """Rows per label: every task label (0 when absent), then any other label met, sorted."""
    return _ordered_counts(Counter(str(v) for v in labels.dropna()), task_labels)


def _ordered_counts(counts: dict[str, int], task_labels: Sequence[str] | None = None) -> dict[str, int]:
    order = list(task_labels or []) + sorted(set(counts) - set(task_labels or []))
    return {label: int(counts.get(label, 0)) for label in order}


#: Below this confidence py3langid's answer counts as 'unknown' (see recipe.corpus.LanguageFilter: on 4,450
#: CrisisLexT26 tweets its answers at 0.5 or more agreed with langdetect on 98%).
LANGUAGE_MIN_CONFIDENCE = 0.5
LANGUAGE_MAX_CHARS = 1000


def detect_languages(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each missing ``language`` identified from its text by py3langid (the corpus stage's
    identifier: its model ships in the package, deterministic, about 0.1 ms a tweet where langdetect took
    milliseconds and changed its mind on short texts), on the first 1,000 characters; 'unknown' below a
    confidence of 0.5 (e.g. a text that is only a link)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def one(text: str) -> str:
        code, confidence = identifier.classify(text[:LANGUAGE_MAX_CHARS])
        return code if confidence >= LANGUAGE_MIN_CONFIDENCE else "unknown"

    frame = frame.copy()
    missing = frame["language"].isna()
    frame.loc[missing, "language"] = [one(str(t)) for t in frame.loc[missing, "text"]]
    return frame


def records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts with the record fields) as a DataFrame with the columns of ``RECORD_FIELDS``."""
    frame = pd.DataFrame(rows, columns=list(RECORD_FIELDS))
    return frame.astype({c: "str" for c in RECORD_FIELDS}) if len(frame) == 0 else frame


def load_records(
    cfg: DataConfig, task_labels: list[str], base_dir: Path
) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, Any]]:
    """Read every source: (records, rejects, stats).

    records has the columns of ``RECORD_FIELDS``; ``label`` is a task label or missing. A label mapping that
    gives a label outside ``task_labels`` is a TailorkdError naming the source and the label. A row whose id
    was already seen (in an earlier row of any source) is a reject.
    """
    task_labels = list(task_labels)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    source_stats: list[dict[str, Any]] = []
    excluded_total: Counter[str] = Counter()
    for index, source in enumerate(cfg.sources):
        key = f"data.sources.{index}"
        result = read_source(
            source, base_dir, key=key, task_labels=task_labels, max_reject_fraction=cfg.max_reject_fraction
        )
        labels = Counter(row["label"] for row in result.rows if row["label"] is not None)
        entry: dict[str, Any] = {
            "key": key,
            "kind": source.kind,
            "name": source_display_name(source),
            "files": len(result.files),
            "records": result.records,
            "rows": len(result.rows),
            "rejects": len(result.rejects),
            "excluded": dict(sorted(result.excluded.items())),
            "unlabelled": result.unlabelled,
            "labels": {label: labels.get(label, 0) for label in task_labels},
        }
        if isinstance(source, FileSource):
            entry["format"] = source.format
        entry.update(result.notes)
        source_stats.append(entry)
        excluded_total.update(result.excluded)
        rows.extend(result.rows)
        rejects.extend(result.rejects)

    first_seen: dict[str, str] = {}
    kept: list[dict[str, Any]] = []
    duplicate_ids = 0
    for row in rows:
        seen_at = first_seen.get(row["id"])
        if seen_at is None:
            first_seen[row["id"]] = row["origin"]
            kept.append(row)
            continue
        duplicate_ids += 1
        file, _, line = row["origin"].rpartition(":")
        position = "row" if Path(file).suffix.lower() in (".parquet", ".pq") else "line"
        raw = json.dumps({k: row[k] for k in ("id", "text")}, ensure_ascii=False)
        rejects.append(
            make_reject(file, int(line), f"duplicate id {row['id']!r} (first seen at {seen_at})", raw, position)
        )
    if not kept:
        raise TailorkdError("data.sources: no usable rows in any source (see the rejects and exclusions)")
    records = records_frame(kept)
    stats: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task_labels": task_labels,
        "sources": source_stats,
        "rows": len(records),
        "rows_per_source": {str(k): int(v) for k, v in records["source"].value_counts(sort=False).items()},
        "labels": _label_counts(records["label"], task_labels),
        "unlabelled": int(records["label"].isna().sum()),
        "rejects": len(rejects),
        "duplicate_ids": duplicate_ids,
        "excluded": int(sum(excluded_total.values())),
        "excluded_by_raw_label": dict(sorted(excluded_total.items())),
    }
    return records, rejects, stats


def drop_duplicate_texts(records: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """(records without texts seen before, how many were dropped, how many of those had a different label
    from the kept row)."""
    duplicated = records["text"].duplicated(keep="first")
    n_dropped = int(duplicated.sum())
    if n_dropped == 0:
        return records, 0, 0
    first_label = records.loc[~duplicated].set_index("text")["label"]
    dropped = records.loc[duplicated]
    kept_label = dropped["text"].map(first_label)
    conflicting = dropped["label"].notna() & kept_label.notna() & (dropped["label"] != kept_label)
    return records.loc[~duplicated].reset_index(drop=True), n_dropped, int(conflicting.sum())


# --------------------------------------------------------------------------------------------------------------
# splitting


def allocate(total: int, available: dict[str, int], order: list[str]) -> dict[str, int]:
    """``total`` split over the labels in proportion to ``available`` (largest remainders, exact integer
    arithmetic, ties to the earlier label), then at least one per label that has rows when total allows."""
    quota = {c: 0 for c in order}
    pool = sum(available.values())
    if total <= 0 or pool == 0:
        return quota
    remainders = {}
    for c in order:
        quota[c], remainders[c] = divmod(total * available[c], pool)
    left = total - sum(quota.values())
    for c in sorted(order, key=lambda c: (-remainders[c], order.index(c)))[:left]:
        quota[c] += 1
    present = [c for c in order if available[c] > 0]
    if total >= len(present):
        for c in present:
            if quota[c] == 0:
                donor = max(order, key=lambda d: (quota[d], -order.index(d)))
                if quota[donor] > 1:
                    quota[donor] -= 1
                    quota[c] += 1
    return quota


def make_splits(
    records: pd.DataFrame, splits: SplitConfig, task_labels: list[str], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(seed, pool, test): disjoint, deterministic for the same records and seed; the pool has no label
    column. With ``splits.dedupe`` repeated texts are dropped first (keeping the first)."""
    missing = [c for c in RECORD_FIELDS if c not in records.columns]
    if missing:
        raise TailorkdError(f"records lack the column(s) {', '.join(missing)}")
    frame = records[list(RECORD_FIELDS)]
    if splits.dedupe:
        frame, _, _ = drop_duplicate_texts(frame)
    repeated = frame["id"][frame["id"].duplicated()]
    if len(repeated):
        raise TailorkdError(f"row ids must be unique; repeated: {sorted(set(repeated))[:5]}")
    unknown = sorted(set(frame["label"].dropna()) - set(task_labels))
    if unknown:
        raise TailorkdError(f"rows carry label(s) {unknown} that are not task labels ({', '.join(task_labels)})")

    frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    classes = sorted(set(task_labels))
    labels = frame["label"]
    k = splits.seed_per_class

    seed_parts: list[np.ndarray] = []
    rest: dict[str, np.ndarray] = {}
    for c in classes:
        members = np.flatnonzero(labels.eq(c).fillna(False).to_numpy(dtype=bool))
        if len(members) < k:
            raise TailorkdError(
                f"label {c!r} has {len(members)} labelled row(s), fewer than data.splits.seed_per_class={k}; "
                f"add labelled data for it or lower seed_per_class"
            )
        order = rng.permutation(members)
        seed_parts.append(order[:k])
        rest[c] = order[k:]

    available = {c: len(rest[c]) for c in classes}
    if splits.test_size > sum(available.values()):
        raise TailorkdError(
            f"data.splits.test_size={splits.test_size}, but only {sum(available.values())} labelled rows are "
            f"left after the seed set ({k} per label); lower test_size or add labelled data"
        )
    if splits.test_size >= len(classes):
        empty = [c for c in classes if available[c] == 0]
        if empty:
            raise TailorkdError(
                f"label(s) {empty} have no labelled rows left for the test set after the seed set "
                f"(data.splits.seed_per_class={k}); add labelled data or lower seed_per_class"
            )
    quota = allocate(splits.test_size, available, classes)
    test_parts = [rest[c][: quota[c]] for c in classes]
    leftover = [rest[c][quota[c] :] for c in classes]
    unlabelled = np.flatnonzero(labels.isna().to_numpy(dtype=bool))
    remaining = np.sort(np.concatenate([*leftover, unlabelled]).astype(np.int64))
    if splits.pool_size is not None and splits.pool_size < len(remaining):
        pool_idx = rng.choice(remaining, size=splits.pool_size, replace=False)
    else:
        pool_idx = rng.permutation(remaining)

    def take(parts: list[np.ndarray] | np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
        idx = np.concatenate(parts) if isinstance(parts, list) else parts
        idx = rng.permutation(np.asarray(idx, dtype=np.int64))
        return frame.iloc[idx][list(columns)].reset_index(drop=True)

    seed_df = take(seed_parts, RECORD_FIELDS)
    test_df = take(test_parts, RECORD_FIELDS)
    pool_df = frame.iloc[pool_idx][list(POOL_FIELDS)].reset_index(drop=True)
    return seed_df, pool_df, test_df


# --------------------------------------------------------------------------------------------------------------
# writing and reading


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a split with every column as (nullable) text, atomically."""
    import pyarrow.parquet as pq

    table = text_table(frame)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def prepare_data(cfg: DataConfig, task_labels: list[str], out_dir: Path, seed: int, base_dir: Path,
                 corpus_dir: Path | None = None, corpus_pool: str = "replace") -> PreparedData:
    """Read the sources, split them and write the splits, rejects and stats to ``out_dir``.

    With ``corpus_dir`` (a finished corpus stage) the pool is drawn from its shards, less the seed and test
    texts: instead of the sources' own pool rows (``corpus_pool="replace"``) or with them (``"add"``);
    ``pool_size`` then samples the combined pool."""
    records, rejects, stats = load_records(cfg, task_labels, base_dir)
    n_before = len(records)
    n_dup = n_conflict = 0
    if cfg.splits.dedupe:
        records, n_dup, n_conflict = drop_duplicate_texts(records)
    splits = cfg.splits if corpus_dir is None else cfg.splits.model_copy(update={"pool_size": None})
    seed_df, pool_df, test_df = make_splits(records, splits, task_labels, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_path = out_dir / FILES["stats"]
    if stats_path.exists():
        stats_path.unlink()  # the folder reads as incomplete until the new stats.json is written
    fill = detect_languages if cfg.detect_language else None
    if fill is not None:
        seed_df, test_df = fill(seed_df), fill(test_df)
    corpus_stats = None
    if corpus_dir is None:
        write_pool(pool_df if fill is None else fill(pool_df), out_dir / FILES["pool"])
    else:  # written a window at a time: the corpus may be far bigger than memory
        from tailorkd.corpus import write_pool_from_corpus

        others = pool_df if corpus_pool == "add" else pool_df.iloc[:0]
        corpus_stats = write_pool_from_corpus(corpus_dir, out_dir / FILES["pool"],
                                              exclude_texts=[*seed_df["text"], *test_df["text"]], others=others,
                                              size=cfg.splits.pool_size, seed=seed, fill=fill)
        corpus_stats["pool"] = corpus_pool
    pool = PoolRows.open(out_dir / FILES["pool"])

    labelled_ids = records.loc[records["label"].notna(), "id"].astype(str).tolist()
    pool_labelled = int(pc.sum(pc.is_in(pool.table.column("id"), value_set=pa.array(labelled_ids, pa.string())))
                        .as_py() or 0)
    pool_languages = {"unknown" if v["values"] is None else str(v["values"]): int(v["counts"])
                      for v in pc.value_counts(pool.table.column("language")).to_pylist()}
    stats.update(
        {
            **({"languages": {"seed": _label_counts(seed_df["language"].fillna("unknown")),
                              "pool": _ordered_counts(pool_languages),
                              "test": _label_counts(test_df["language"].fillna("unknown"))}}
               if cfg.detect_language or records["language"].notna().any() else {}),
            "seed": seed,
            "dedupe": cfg.splits.dedupe,
            "duplicates_dropped": n_dup,
            "duplicates_with_other_label": n_conflict,
            "rows_after_dedupe": len(records),
            "unused": len(records) - len(seed_df) - len(test_df) -
            (len(pool) if corpus_stats is None else corpus_stats["pool_from_sources"]),
            **({"corpus": corpus_stats} if corpus_stats is not None else {}),
            "splits": {
                "seed": {"rows": len(seed_df), "labels": _label_counts(seed_df["label"], task_labels)},
                "test": {"rows": len(test_df), "labels": _label_counts(test_df["label"], task_labels)},
                # The pool's labels are hidden from the pipeline: not even their counts are written.
                "pool": {"rows": len(pool), "unlabelled": len(pool) - pool_labelled},
            },
        }
    )
    assert n_before == stats["rows"]

    for name, frame in (("seed", seed_df), ("test", test_df)):
        write_parquet(frame, out_dir / FILES[name])
    write_text_atomic(out_dir / FILES["rejects"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    write_text_atomic(stats_path, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return PreparedData(seed=seed_df, pool=pool, test=test_df, rejects=rejects, stats=stats)


def load_prepared(out_dir: Path) -> PreparedData:
    """Read back what :func:`prepare_data` wrote to ``out_dir``."""
    out_dir = Path(out_dir)
    stats = _prepared_stats(out_dir)
    rejects = []
    path = out_dir / FILES["rejects"]
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                rejects.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise damaged_split(path, f"JSON lines (line {number})", exc) from None
    return PreparedData(seed=_read_split(out_dir / FILES["seed"]), pool=PoolRows.open(out_dir / FILES["pool"]),
                        test=_read_split(out_dir / FILES["test"]), rejects=rejects, stats=stats)


def _read_split(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise damaged_split(path, "a Parquet file", exc) from None


def load_split(out_dir: Path, split: str) -> pd.DataFrame:
    """One split of what :func:`prepare_data` wrote to ``out_dir``, without reading the others (the pool may
    be large; the few-shot examples need only the seeds)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; one of {SPLIT_NAMES}")
    _prepared_stats(Path(out_dir))
    if split == "pool":
        return PoolRows.open(Path(out_dir) / FILES[split]).to_pandas()
    return _read_split(Path(out_dir) / FILES[split])


def is_prepared(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds complete splits in this tailorkd's format (else they must be made again)."""
    try:
        _prepared_stats(Path(out_dir))
    except TailorkdError:
        return False
    return True


def _prepared_stats(out_dir: Path) -> dict[str, Any]:
    """stats.json of a complete prepared folder; a TailorkdError when the folder is incomplete or stale."""
    missing = [name for name in FILES.values() if not (out_dir / name).is_file()]
    if missing:
        raise TailorkdError(
            f"{out_dir}: the prepared data is missing or incomplete (no {', '.join(missing)}); run the data step again"
        )
    try:
        stats = json.loads((out_dir / FILES["stats"]).read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise TailorkdError(f"{out_dir / FILES['stats']}: not valid JSON ({exc}); run the data step again") from None
    if not isinstance(stats, dict):
        raise TailorkdError(f"{out_dir / FILES['stats']}: not a JSON object; run the data step again")
    if stats.get("schema_version") != SCHEMA_VERSION:
        raise TailorkdError(
            f"{out_dir / FILES['stats']}: schema_version {stats.get('schema_version')!r} is not "
            f"{SCHEMA_VERSION}; run the data step again"
        )
    return stats
