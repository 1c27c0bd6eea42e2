"""``build_corpus``: the raw shards in, the clean pool out, with its funnel.

The driver reads the processed batches from the engine in input order and does the stateful steps itself:
exact and near dedup (``Deduplicator``), the relevance threshold (after dedup, so a repeated story is
counted once), then the pool shards. What it holds is bounded by ``batch_size`` x 2 x workers (batches in
flight) and ``shard_rows`` (the shard being filled), plus the dedup indexes, the one part that grows.

Writes into ``out_dir``:

    pool-00000.parquet ...   the kept texts with their provenance (POOL_SCHEMA), ``shard_rows`` each
    duplicates.parquet        every dropped duplicate: its id, file, row, kind (exact | near) and the kept
                              text it repeats (``duplicate_of``), so dedup precision / recall can be measured
    rejects.jsonl             unreadable rows: file, line (or row), reason, raw (the project's reject style)
    funnel.json               counts after every step, overall, per topic and per language; what cleaning
                              changed; the dedup index sizes; the relevance threshold; timings
    state/                    what a later run needs to add input files: the exact index (exact.npz), the
                              kept texts' MinHash signatures (signatures.bin, 4 bytes a permutation) and the
                              funnel's counts, file names and input listing (state.json)
    corpus.json               the stamp: fingerprint and shard list, written last

Each file is written to a temporary name and renamed; the stamp is removed first and written last, so a
run killed half way leaves no stamp and nothing of it is trusted (``read_stamp`` refuses the folder). A
rerun with the same fingerprint (the section's content, the input files' names, sizes and modification
times, the seed texts when the relevance stage uses them) returns the recorded funnel without work. A rerun
whose inputs only gained files after the ones already read (a daily feed) reads just those, against the
restored indexes (``appendable_state``); anything else is a full build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tailorkd.corpus.clean import CLEANING_STEPS
from tailorkd.corpus.dedup import EXACT, SIGNATURES, Deduplicator
from tailorkd.corpus.engines import cluster_cpus, local_batches, ray_batches, start_ray
from tailorkd.corpus.read import corpus_files
from tailorkd.corpus.relevance import choose_threshold, references
from tailorkd.corpus.steps import TIMED_STEPS, StepSettings
from tailorkd.data.readers import make_reject
from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write, fsync_dir, read_json, write_json_atomic
from tailorkd.recipe.corpus import CORPUS_EXECUTION_FIELDS, CorpusConfig

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
STAMP = "corpus.json"
FUNNEL = "funnel.json"
DUPLICATES = "duplicates.parquet"
REJECTS = "rejects.jsonl"
SHARD_GLOB = "pool-*.parquet"
STATE_DIR = "state"
STATE = "state.json"

#: The funnel's steps: the count *after* each. A text is lost at the step named by its drop reason.
FUNNEL_STEPS: tuple[str, ...] = ("read", "readable", "cleaned", "length", "language", "source", "topic",
                                 "exact_dedup", "near_dedup", "relevance")
DROP_STEP: dict[str, str] = {"unreadable": "readable", "empty": "cleaned", "too_short": "length",
                             "too_long": "length", "language": "language", "source": "source", "topic": "topic",
                             "exact_duplicate": "exact_dedup", "near_duplicate": "near_dedup",
                             "irrelevant": "relevance"}
NO_TOPIC = "(none)"

POOL_SCHEMA = pa.schema([
    ("id", pa.string()), ("doc_id", pa.string()), ("text", pa.string()), ("title", pa.string()),
    ("date", pa.string()), ("topic", pa.string()), ("source", pa.string()), ("language", pa.string()),
    ("language_confidence", pa.float32()), ("language_given", pa.string()), ("relevance", pa.float32()),
    ("shard", pa.string()), ("position", pa.string()), ("row", pa.int64()),
])
DUPLICATES_SCHEMA = pa.schema([
    ("id", pa.string()), ("doc_id", pa.string()), ("shard", pa.string()), ("row", pa.int64()),
    ("kind", pa.string()), ("duplicate_of", pa.string()), ("text", pa.string()),
])


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


# -- the fingerprint and the stamp ---------------------------------------------------------------------------
def corpus_fingerprint(config: CorpusConfig, files: Sequence[tuple[int, Path, str]], base_dir: Path,
                       seeds: Sequence[str] | None) -> str:
    """What the output depends on: the section (less how it runs), the input files, the seeds if used."""
    return _fingerprint(_content(config, seeds), file_listing(files, base_dir))


def _fingerprint(content: dict[str, Any], listing: list[list[Any]]) -> str:
    payload = {**content, "files": listing}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _content(config: CorpusConfig, seeds: Sequence[str] | None) -> dict[str, Any]:
    """What the output depends on besides the input files: the section (less how it runs), the seeds if used."""
    uses_seeds = config.relevance is not None and (config.relevance.against != "topics"
                                                   or config.relevance.threshold == "auto")
    seed_hash = hashlib.sha256("\0".join(seeds or []).encode()).hexdigest() if uses_seeds else None
    return {"version": CORPUS_VERSION,
            "config": config.model_dump(mode="json", exclude=set(CORPUS_EXECUTION_FIELDS) | {"pool"}),
            "seeds": seed_hash}


def file_listing(files: Sequence[tuple[int, Path, str]], base_dir: Path) -> list[list[Any]]:
    """[input index, file as recorded, format, size, modification time] of every input file, in order."""
    listing = []
    for index, path, fmt in files:
        stat = path.stat()
        listing.append([index, _shown(path, base_dir), fmt, stat.st_size, stat.st_mtime_ns])
    return listing


def appendable_state(out_dir: Path, stamp: dict[str, Any] | None, content: dict[str, Any],
                     listing: list[list[Any]]) -> dict[str, Any] | None:
    """The saved state of the finished corpus in ``out_dir`` when the new input files only add to its inputs
    (same section and seeds; its files, unchanged, are the first of the new listing): then only the added
    files need reading. None otherwise (a full build)."""
    if stamp is None or not (Path(out_dir) / STATE_DIR / STATE).is_file():
        return None
    state = read_json(Path(out_dir) / STATE_DIR / STATE, "corpus state")
    if not isinstance(state, dict) or state.get("content") != content or state.get("fingerprint") != \
            stamp.get("fingerprint"):
        return None
    earlier = state.get("files") or []
    if len(listing) <= len(earlier) or listing[: len(earlier)] != earlier:
        return None
    needed = [EXACT] + ([SIGNATURES] if content["config"]["dedup"]["near"] else [])
    if not all((Path(out_dir) / STATE_DIR / name).is_file() for name in needed):
        return None
    return state


def read_stamp(out_dir: Path) -> dict[str, Any] | None:
    """The stamp of a finished corpus in ``out_dir`` (None when there is none, or a shard it lists is gone)."""
    stamp = read_json(Path(out_dir) / STAMP, "corpus stamp") if (Path(out_dir) / STAMP).is_file() else None
    if not isinstance(stamp, dict) or stamp.get("version") != CORPUS_VERSION:
        return None
    if any(not (Path(out_dir) / shard["file"]).is_file() for shard in stamp.get("shards", [])):
        return None
    return stamp


def _shown(path: Path, base_dir: Path) -> str:
    """A file as recorded: relative to the recipe's folder when under it, else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path(base_dir).resolve()))
    except ValueError:
        return str(Path(path).resolve())


# -- writers -------------------------------------------------------------------------------------------------
class ShardWriter:
    """Kept rows gathered into ``pool-NNNNN.parquet`` shards of ``shard_rows`` rows, each written atomically."""

    def __init__(self, out_dir: Path, shard_rows: int, shards: Sequence[dict[str, Any]] = ()):
        self.out_dir, self.shard_rows = out_dir, shard_rows
        self.rows: dict[str, list[Any]] = {name: [] for name in POOL_SCHEMA.names}
        self.shards: list[dict[str, Any]] = list(shards)  # an earlier run's, when this one adds input files
        self.seconds = 0.0

    def add(self, row: dict[str, Any]) -> None:
        for name in POOL_SCHEMA.names:
            self.rows[name].append(row[name])
        if len(self.rows["id"]) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows["id"]:
            return
        start = time.perf_counter()
        table = pa.Table.from_pydict(self.rows, schema=POOL_SCHEMA)
        name = f"pool-{len(self.shards):05d}.parquet"
        atomic_write(self.out_dir / name, lambda tmp: pq.write_table(table, tmp))
        self.shards.append({"file": name, "rows": table.num_rows})
        self.rows = {name: [] for name in POOL_SCHEMA.names}
        self.seconds += time.perf_counter() - start


class StreamWriter:
    """Rows appended to a hidden temporary file (Parquet in row groups, or JSON lines), renamed into place by
    ``close``: a killed run never leaves a complete-looking file. ``keep``: the rows of the file already at
    ``path`` come first (copied a row group or a line at a time)."""

    def __init__(self, path: Path, schema: pa.Schema | None = None, group_rows: int = 10_000, keep: bool = False):
        self.path, self.schema, self.group_rows = path, schema, group_rows
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._writer = pq.ParquetWriter(self.tmp, schema) if schema is not None else None
        self._lines = None if schema is not None else open(self.tmp, "w", encoding="utf-8")
        if keep and path.is_file():
            if self._writer is not None:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=group_rows):
                    self._writer.write_table(pa.Table.from_batches([batch], schema=schema))
            else:
                with open(path, encoding="utf-8") as earlier:
                    shutil.copyfileobj(earlier, self._lines)

    def add(self, row: dict[str, Any]) -> None:
        self.count += 1
        if self._lines is not None:
            self._lines.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self.rows.append(row)
        if len(self.rows) >= self.group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.rows and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
        else:
            assert self._lines is not None
            self._lines.flush()
            os.fsync(self._lines.fileno())
            self._lines.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            elif self._lines is not None:
                self._lines.close()
        finally:
            self.tmp.unlink(missing_ok=True)


# -- the funnel ----------------------------------------------------------------------------------------------
class Funnel:
    """Counts of where each text was lost (or that it was kept), by topic and language; bounded in size by
    topics x languages x steps, not by the corpus."""

    def __init__(self) -> None:
        self.lost: Counter[tuple[str, str, str]] = Counter()  # (step lost at or "kept", topic, language)
        self.dropped: Counter[str] = Counter()
        self.cleaning: Counter[str] = Counter()
        self.boilerplate_lines = 0
        self.per_input: Counter[str] = Counter()
        self.relevance_histogram = np.zeros(200, dtype=np.int64)  # scores of the texts reaching stage 2

    def count(self, reason: str | None, topic: str | None, language: str) -> None:
        step = "kept" if reason is None else DROP_STEP[reason]
        self.lost[(step, topic or NO_TOPIC, language)] += 1
        if reason is not None:
            self.dropped[reason] += 1

    def state(self) -> dict[str, Any]:
        """The counts as JSON, for a later run that adds input files (``restore``)."""
        return {"lost": [[*key, n] for key, n in self.lost.items()], "dropped": dict(self.dropped),
                "cleaning": dict(self.cleaning), "boilerplate_lines": self.boilerplate_lines,
                "per_input": dict(self.per_input), "relevance_histogram": self.relevance_histogram.tolist()}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Funnel:
        funnel = cls()
        funnel.lost = Counter({(step, topic, language): n for step, topic, language, n in state["lost"]})
        funnel.dropped, funnel.cleaning = Counter(state["dropped"]), Counter(state["cleaning"])
        funnel.boilerplate_lines, funnel.per_input = state["boilerplate_lines"], Counter(state["per_input"])
        funnel.relevance_histogram = np.asarray(state["relevance_histogram"], dtype=np.int64)
        return funnel

    @staticmethod
    def _after(lost_at: Counter[str]) -> dict[str, int]:
        """Texts after each step, from how many were lost at each (or kept)."""
        out, left = {}, sum(lost_at.values())
        for step in FUNNEL_STEPS:
            left -= lost_at.get(step, 0)
            out[step] = left
        return out

    def report(self) -> dict[str, Any]:
        by_topic: dict[str, Counter[str]] = {}
        by_language: dict[str, Counter[str]] = {}
        everything: Counter[str] = Counter()
        for (step, topic, language), n in self.lost.items():
            by_topic.setdefault(topic, Counter())[step] += n
            by_language.setdefault(language, Counter())[step] += n
            everything[step] += n
        overall = self._after(everything)
        per_language = {lang: self._after(lost) for lang, lost in by_language.items()}
        per_language = dict(sorted(per_language.items(), key=lambda kv: (-kv[1]["read"], kv[0])))
        kept = overall[FUNNEL_STEPS[-1]]
        return {
            "steps": list(FUNNEL_STEPS),
            "overall": overall,
            "kept": kept,
            "kept_share": round(kept / overall["read"], 4) if overall["read"] else None,
            "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_STEP},
            "per_topic": {topic: self._after(by_topic[topic]) for topic in sorted(by_topic)},
            "per_language": per_language,
            "cleaning": {"texts_changed": {step: self.cleaning.get(step, 0) for step in CLEANING_STEPS},
                         "boilerplate_lines_removed": self.boilerplate_lines},
            "per_input_file": dict(self.per_input),
        }


# -- the build -----------------------------------------------------------------------------------------------
def build_corpus(config: CorpusConfig, out_dir: Path, *, base_dir: Path = Path("."), seeds: Sequence[str] | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Read ``config.inputs`` as a stream, clean, filter, deduplicate and write the pool shards to ``out_dir``;
    returns the funnel (also written to ``out_dir/funnel.json``). ``seeds``: the expert seed texts, the
    relevance stage's references. Skipped (the recorded funnel returned) when ``out_dir`` holds a finished
    corpus of the same fingerprint, unless ``force``.

    When the inputs only gained files after the ones the finished corpus read (a daily feed's new file), only
    those are read: the dedup indexes and the funnel's counts are restored from ``state/``, the new texts are
    checked against every text kept so far, and new shards follow the old ones (``force``: a full build)."""
    out_dir = Path(out_dir)
    files = corpus_files(config.inputs, Path(base_dir))
    content, listing = _content(config, seeds), file_listing(files, Path(base_dir))
    fingerprint = _fingerprint(content, listing)
    stamp = read_stamp(out_dir)
    if not force and stamp is not None and stamp.get("fingerprint") == fingerprint and (out_dir / FUNNEL).is_file():
        log.info("corpus: %s is up to date (%d texts in %d shards)", out_dir, stamp["rows"], len(stamp["shards"]))
        return read_json(out_dir / FUNNEL, "corpus funnel")
    started = time.perf_counter()
    earlier = None if force else appendable_state(out_dir, stamp, content, listing)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP).unlink(missing_ok=True)  # nothing below is trusted until the new stamp is written
    if earlier is None:
        for old in [*out_dir.glob(SHARD_GLOB), out_dir / FUNNEL, out_dir / DUPLICATES, out_dir / REJECTS]:
            old.unlink(missing_ok=True)
        shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
    else:
        log.info("corpus: %d new input file(s) after the %d of the corpus in %s; reading only those",
                 len(files) - len(earlier["files"]), len(earlier["files"]), out_dir)
        files = files[len(earlier["files"]):]

    threshold = None
    relevance_report = None
    seed_matrix, topic_matrix = None, {}
    if config.relevance is not None:
        ref_start = time.perf_counter()
        seed_matrix, topic_matrix = references(config, seeds)
        threshold, relevance_report = choose_threshold(config, seed_matrix, topic_matrix)
        relevance_report["reference_seconds"] = round(time.perf_counter() - ref_start, 3)
        log.info("corpus: relevance threshold %.4f (%s)", threshold, relevance_report["chosen_by"])
    ray_started = start_ray(config.ray_address) if config.engine == "ray" else False
    workers = config.workers or (cluster_cpus() if config.engine == "ray" else default_workers())
    settings = StepSettings(config.model_dump_json(), seed_matrix if config.relevance and
                            config.relevance.against != "topics" else None, topic_matrix,
                            torch_threads=max(1, (os.cpu_count() or 1) // workers))
    if config.engine == "ray":
        batches = ray_batches(files, settings, workers, shutdown=ray_started)
    else:
        batches = local_batches(files, settings, workers)

    funnel = Funnel() if earlier is None else Funnel.restore(earlier["funnel"])
    dedup = Deduplicator(config.dedup, out_dir / STATE_DIR)
    if earlier is not None:
        dedup.restore()
    shards = ShardWriter(out_dir, config.shard_rows, stamp["shards"] if earlier else ())
    duplicates = StreamWriter(out_dir / DUPLICATES, DUPLICATES_SCHEMA, keep=earlier is not None)
    rejects = StreamWriter(out_dir / REJECTS, keep=earlier is not None)
    shown: dict[str, str] = {}
    file_numbers: dict[str, int] = {}  # a text's dedup ref: its file's number << 40 | its row
    file_names: list[str] = list(earlier["file_names"]) if earlier else []
    read_now = 0
    step_seconds = dict.fromkeys(TIMED_STEPS, 0.0)
    dedup_seconds = 0.0
    progress = tqdm(desc="corpus", unit=" texts", disable=None)
    try:
        for batch in batches:
            progress.update(batch.num_rows)
            read_now += batch.num_rows
            for step in TIMED_STEPS:
                step_seconds[step] += float(pc.sum(batch.column(f"t_{step}")).as_py() or 0.0)
            dedup_start = time.perf_counter()
            for row in batch.to_pylist():
                file = shown.get(row["file"])
                if file is None:
                    file = shown[row["file"]] = _shown(Path(row["file"]), Path(base_dir))
                    file_numbers[row["file"]] = len(file_names)
                    file_names.append(file)
                funnel.per_input[file] += 1
                text_id = f"corpus:{file}:{row['row']}"
                reason = row["dropped"]
                mask = row["cleaning_mask"]
                if mask:
                    funnel.cleaning.update(step for bit, step in enumerate(CLEANING_STEPS) if mask >> bit & 1)
                funnel.boilerplate_lines += row["boilerplate_lines"]
                if reason == "unreadable":
                    rejects.add(make_reject(file, row["row"], row["reject"], row["raw"] or "", row["position"]))
                if reason is None:
                    ref = file_numbers[row["file"]] << 40 | row["row"]
                    duplicate = dedup.check(ref, row["exact_key"], row["signature"])
                    if duplicate is not None:
                        kind, first_ref = duplicate
                        first = f"corpus:{file_names[first_ref >> 40]}:{first_ref & (1 << 40) - 1}"
                        reason = f"{kind}_duplicate"
                        duplicates.add({"id": text_id, "doc_id": row["doc_id"], "shard": file, "row": row["row"],
                                        "kind": kind, "duplicate_of": first, "text": row["text"]})
                if reason is None and threshold is not None:
                    score = row["relevance"]
                    funnel.relevance_histogram[min(199, max(0, int((score + 1) * 100)))] += 1
                    if score < threshold:
                        reason = "irrelevant"
                funnel.count(reason, row["topic"], row["language"])
                if reason is None:
                    shards.add({"id": text_id, "doc_id": row["doc_id"], "text": row["text"], "title": row["title"],
                                "date": row["date"], "topic": row["topic"], "source": row["source"],
                                "language": row["language"], "language_confidence": row["language_confidence"],
                                "language_given": row["language_given"], "relevance": row["relevance"],
                                "shard": file, "position": row["position"], "row": row["row"]})
            dedup_seconds += time.perf_counter() - dedup_start
        shards.flush()
        duplicates.close()
        rejects.close()
        dedup.save()
    except BaseException:
        duplicates.discard()
        rejects.discard()
        dedup.discard()
        raise
    finally:
        progress.close()
    if not funnel.lost:
        raise TailorkdError("corpus.inputs: the input files hold no rows")

    seconds = round(time.perf_counter() - started, 3)
    report = funnel.report()
    report.update({
        "schema_version": CORPUS_VERSION,
        "fingerprint": fingerprint,
        "engine": config.engine,
        "workers": workers,
        "batch_size": config.batch_size,
        "files": len(listing),
        "shards": shards.shards,
        "dedup": {"exact": funnel.dropped.get("exact_duplicate", 0), "near": funnel.dropped.get("near_duplicate", 0),
                  "num_perm": config.dedup.num_perm, "shingle_size": config.dedup.shingle_size,
                  "threshold": config.dedup.threshold, "index": dedup.sizes()},
        "relevance": None if relevance_report is None else {
            **relevance_report, "pool_scores": _histogram_quantiles(funnel.relevance_histogram)},
        "seconds": {"total": seconds, **{f"{step} (workers)": round(v, 3) for step, v in step_seconds.items()},
                    "dedup and relevance (driver)": round(dedup_seconds, 3),
                    "writing shards": round(shards.seconds, 3)},
        "rows_per_second": round(read_now / seconds, 1) if seconds else None,
        "this_run": {"files_read": len(files), "texts_read": read_now,
                     "added_to": None if earlier is None else {"files": len(earlier["files"]),
                                                               "fingerprint": earlier["fingerprint"]}},
    })
    write_json_atomic(out_dir / STATE_DIR / STATE, {"fingerprint": fingerprint, "content": content, "files": listing,
                                                    "file_names": file_names, "funnel": funnel.state()})
    write_json_atomic(out_dir / FUNNEL, report)
    write_json_atomic(out_dir / STAMP, {"version": CORPUS_VERSION, "fingerprint": fingerprint, "rows": report["kept"],
                                        "shards": shards.shards, "funnel": FUNNEL, "duplicates": DUPLICATES,
                                        "rejects": REJECTS})
    log.info("corpus: %d of %d texts kept (%.1f%%) in %d shard(s) -> %s (%.1fs)", report["kept"],
             report["overall"]["read"], 100 * (report["kept_share"] or 0), len(shards.shards), out_dir, seconds)
    return report


def funnel_rows(funnel: dict[str, Any], breakdown: str | None = None,
                limit: int = 8) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the funnel: each step's count overall, then per topic (``breakdown="topic"``) or per
    language (the ``limit`` largest), as text cells for the terminal and the report."""
    groups: dict[str, dict[str, int]] = {"all": funnel["overall"]}
    if breakdown == "topic":
        groups.update(funnel["per_topic"])
    elif breakdown == "language":
        groups.update(dict(list(funnel["per_language"].items())[:limit]))
    header = ["step", *groups]
    rows = [[step, *(f"{counts.get(step, 0):,}" for counts in groups.values())] for step in funnel["steps"]]
    return header, rows


def _histogram_quantiles(histogram: np.ndarray) -> dict[str, float] | None:
    """Quantiles of the stage-2 scores from their 0.01-wide histogram over [-1, 1] (bounded memory)."""
    total = int(histogram.sum())
    if not total:
        return None
    cumulative = np.cumsum(histogram)
    edges = np.linspace(-1, 1, 201)
    return {name: round(float(edges[int(np.searchsorted(cumulative, q * total, side="left")) + 1]), 2)
            for name, q in (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))}
