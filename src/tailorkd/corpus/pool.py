"""Reading a finished corpus back: its shards as a stream, and the pool the prepare stage takes from it.

Only a folder with a stamp (``corpus.json``, written last) is read, and only the shards it lists, so a
corpus stage killed half way is never trusted. The prepare stage's pool is drawn in two streaming passes
over the shards (which texts may go to the pool, then the chosen rows), so only the chosen rows are ever
held, never the whole corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tailorkd.corpus.build import read_stamp
from tailorkd.corpus.dedup import exact_key, normalise
from tailorkd.errors import TailorkdError

#: The prepare stage's pool columns (tailorkd.data.splits.POOL_FIELDS), from a corpus row.
POOL_COLUMNS = ("id", "text", "title", "language", "date", "source", "origin")


def finished_stamp(out_dir: Path) -> dict[str, Any]:
    """The stamp of the finished corpus in ``out_dir``; a TailorkdError when there is none."""
    stamp = read_stamp(Path(out_dir))
    if stamp is None:
        raise TailorkdError(f"{out_dir}: no finished corpus here (no valid corpus.json); run `tailorkd corpus "
                            "RECIPE` (a corpus run that was stopped half way is never used)")
    return stamp


def iter_pool(out_dir: Path, columns: Sequence[str] | None = None,
              batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """The corpus pool's rows as Arrow record batches of at most ``batch_size`` rows, shard by shard."""
    stamp = finished_stamp(out_dir)
    for shard in stamp["shards"]:
        yield from pq.ParquetFile(Path(out_dir) / shard["file"]).iter_batches(
            batch_size=batch_size, columns=list(columns) if columns else None)


def pool_from_corpus(out_dir: Path, *, exclude_texts: Iterable[str], others: pd.DataFrame, size: int | None,
                     seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(pool, stats): the corpus texts that are not seed or test texts (``exclude_texts``, compared as the
    dedup compares them), together with the ``others`` pool rows (the sources' own, or none), as one seeded
    random sample of ``size`` rows (all when None), in a seeded random order."""
    stamp = finished_stamp(out_dir)
    excluded = {exact_key(normalise(t)) for t in exclude_texts}
    eligible_parts = []
    for batch in iter_pool(out_dir, ["text"]):
        texts = batch.column(0).to_pylist()
        eligible_parts.append(np.fromiter((exact_key(normalise(t)) not in excluded for t in texts), dtype=bool,
                                          count=batch.num_rows))
    eligible = np.concatenate(eligible_parts) if eligible_parts else np.zeros(0, dtype=bool)
    corpus_index = np.flatnonzero(eligible)
    total = len(others) + len(corpus_index)
    rng = np.random.default_rng([seed, 15])
    order = rng.choice(total, size=size, replace=False) if size is not None and size < total else \
        rng.permutation(total)
    chosen_corpus = np.sort(corpus_index[order[order >= len(others)] - len(others)])
    picked: dict[int, dict[str, Any]] = {}
    start = 0
    cursor = 0
    for batch in iter_pool(out_dir, ["id", "text", "title", "language", "date", "source", "shard", "position", "row"]):
        end = start + batch.num_rows
        stop = int(np.searchsorted(chosen_corpus, end, side="left"))
        if stop > cursor:
            rows = batch.take(pa.array(chosen_corpus[cursor:stop] - start)).to_pylist()
            for position, row in zip(chosen_corpus[cursor:stop], rows):
                row["origin"] = f"{row.pop('shard')}:{row.pop('row')}"
                row.pop("position")
                picked[int(position)] = row
            cursor = stop
        start = end
    other_rows = others[list(POOL_COLUMNS)].to_dict("records") if len(others) else []
    rows = [other_rows[i] if i < len(others) else picked[int(corpus_index[i - len(others)])] for i in order]
    pool = pd.DataFrame(rows, columns=list(POOL_COLUMNS))
    repeated = pool["id"][pool["id"].duplicated()]
    if len(repeated):
        raise TailorkdError(f"pool ids must be unique; the corpus and data.sources share: {sorted(set(repeated))[:5]}")
    stats = {"fingerprint": stamp["fingerprint"], "rows": int(len(eligible)),
             "left_out_as_seed_or_test_texts": int(len(eligible) - eligible.sum()),
             "pool_from_corpus": int(len(chosen_corpus)), "pool_from_sources": int(len(pool) - len(chosen_corpus))}
    return pool, stats
