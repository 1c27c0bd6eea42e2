"""Reading a finished corpus back: its shards as a stream, and the pool the prepare stage takes from it.

Only a folder with a stamp (``corpus.json``, written last) is read, and only the shards it lists, so a
corpus stage killed half way is never trusted. The prepare stage's pool is drawn in streaming passes
over the shards (which texts may go to the pool, then the chosen rows) and written to the pool file a window
at a time, so neither the corpus nor the pool is ever held as Python objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailorkd.corpus.build import read_stamp
from tailorkd.corpus.dedup import exact_key, normalise
from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write

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


def write_pool_from_corpus(out_dir: Path, path: Path, *, exclude_texts: Iterable[str], others: pd.DataFrame,
                           size: int | None, seed: int,
                           fill: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> dict[str, Any]:
    """Write the pool file ``path`` (``tailorkd.data.pool_rows``: Arrow IPC, every column text) and return its
    stats: the corpus texts that are not seed or test texts (``exclude_texts``, compared as the dedup compares
    them), together with the ``others`` pool rows (the sources' own, or none), as one seeded random sample of
    ``size`` rows (all when None), in a seeded random order; ``fill`` (e.g. language identification) applied
    to each window of rows on the way.

    Three streaming passes: which corpus rows may go to the pool; the chosen rows, in corpus order, into a
    temporary file; that file memory-mapped, rewritten in the pool's order a window at a time. Only indices
    and one window of rows are ever held, never the pool."""
    from tailorkd.data.pool_rows import WINDOW, text_table

    stamp = finished_stamp(out_dir)
    path = Path(path)
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

    schema = pa.schema([(c, pa.string()) for c in POOL_COLUMNS])
    in_corpus_order = path.with_name(f".{path.name}.corpus-order")
    try:
        with pa.OSFile(str(in_corpus_order), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            start = cursor = 0
            for batch in iter_pool(out_dir, ["id", "text", "title", "language", "date", "source", "shard", "row"]):
                end = start + batch.num_rows
                stop = int(np.searchsorted(chosen_corpus, end, side="left"))
                if stop > cursor:
                    picked = batch.take(pa.array(chosen_corpus[cursor:stop] - start))
                    origin = pc.binary_join_element_wise(picked.column("shard"),
                                                         pc.cast(picked.column("row"), pa.string()), ":")
                    columns = {c: picked.column(c) for c in POOL_COLUMNS if c != "origin"}
                    writer.write_table(pa.table({**columns, "origin": origin}, schema=schema))
                    cursor = stop
                start = end
        corpus_rows = pa.ipc.open_file(pa.memory_map(str(in_corpus_order))).read_all()
        other_rows = text_table(others[list(POOL_COLUMNS)].reset_index(drop=True)) if len(others) else \
            schema.empty_table()
        n_others = len(other_rows)

        def write(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for begin in range(0, len(order), WINDOW):
                    at = order[begin : begin + WINDOW]
                    from_corpus = at >= n_others
                    # A corpus row's place in the temporary file: its rank among the chosen corpus rows.
                    ranks = np.searchsorted(chosen_corpus, corpus_index[at[from_corpus] - n_others])
                    window = pa.concat_tables([other_rows.take(pa.array(at[~from_corpus])),
                                               corpus_rows.take(pa.array(ranks))])
                    placed = np.concatenate([np.flatnonzero(~from_corpus), np.flatnonzero(from_corpus)])
                    window = window.take(pa.array(np.argsort(placed)))
                    if fill is not None:
                        window = text_table(fill(window.to_pandas()))
                    writer.write_table(window.cast(schema))

        atomic_write(path, write)
    finally:
        in_corpus_order.unlink(missing_ok=True)
    ids = pa.ipc.open_file(pa.memory_map(str(path))).read_all().column("id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        repeated = sorted(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        path.unlink()
        raise TailorkdError(f"pool ids must be unique; the corpus and data.sources share: {repeated[:5]}")
    return {"fingerprint": stamp["fingerprint"], "rows": int(len(eligible)),
            "left_out_as_seed_or_test_texts": int(len(eligible) - eligible.sum()),
            "pool_from_corpus": int(len(chosen_corpus)),
            "pool_from_sources": int((order < len(others)).sum())}
