"""A daily feed: adding one day's file to a built corpus, against building the whole corpus again, in one run.

The corpus comes from ``make_scale_corpus.py`` (``--articles`` real texts recombined, with injected duplicates,
languages, HTML and mojibake), cut into ``--days`` JSONL files in order (``day-000.jsonl`` ...). The stage
(every cleaning step, language identification, exact and near dedup: the recipe defaults) first builds the
corpus of all days but the last; then, timed:

- **append**: the last day's file is added to that corpus (the stage reads only it, against the restored
  dedup indexes, see ``tailorkd.corpus.build``);
- **full**: the same stage builds a corpus of every day from nothing, in another folder.

Both must give the same pool, duplicates and funnel (checked). Reported: seconds of each and their ratio, and
the size of the saved state per kept text. Wall-clock seconds in this process (the stage's worker processes
included), so both runs share whatever load the machine has.

    .venv/bin/python benchmarks/corpus_append.py --articles 50000 --days 10 --work /tmp/corpus_append
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def split_into_days(corpus: Path, days: int, out: Path) -> list[Path]:
    """The generated corpus's JSONL rows cut into ``days`` files of consecutive rows, in order."""
    rows = [line for shard in sorted((corpus / "raw").glob("*.jsonl.gz"))
            for line in gzip.open(shard, "rt", encoding="utf-8")]
    rows += [json.dumps(r, ensure_ascii=False) + "\n" for shard in sorted((corpus / "raw").glob("*.parquet"))
             for r in pq.read_table(shard).to_pylist()]
    out.mkdir(parents=True, exist_ok=True)
    per_day = -(-len(rows) // days)
    files = []
    for day in range(days):
        path = out / f"day-{day:03d}.jsonl"
        path.write_text("".join(rows[day * per_day:(day + 1) * per_day]), encoding="utf-8")
        files.append(path)
    return files


def section(feed: Path, workers: int) -> Any:
    from tailorkd.recipe.corpus import CorpusConfig

    return CorpusConfig.model_validate({
        "inputs": [{"path": str(feed / "day-*.jsonl"),
                    "columns": {"id": "id", "title": "title", "date": "date", "topic": "topic", "source": "source"}}],
        "dedup": {"exact": True, "near": True}, "engine": "local", "workers": workers})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--articles", type=int, default=50_000)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/corpus_append"))
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "corpus_append.json")
    args = p.parse_args(argv)
    from tailorkd.corpus import build_corpus, iter_pool
    from tailorkd.resources import describe_machine

    corpus = args.work / f"scale-{args.articles}-seed{args.seed}"
    if not (corpus / "manifest.json").is_file():
        subprocess.run([sys.executable, str(HERE / "make_scale_corpus.py"), "--articles", str(args.articles),
                        "--out", str(corpus), "--seed", str(args.seed)], check=True, cwd=ROOT)
    feed = args.work / "feed"
    shutil.rmtree(feed, ignore_errors=True)
    files = split_into_days(corpus, args.days, feed)
    last = files[-1]
    held_back = last.with_name("held-back.jsonl.later")
    last.rename(held_back)
    daily, whole = args.work / "daily", args.work / "whole"
    for folder in (daily, whole):
        shutil.rmtree(folder, ignore_errors=True)
    config = section(feed, args.workers)

    t0 = time.perf_counter()
    before = build_corpus(config, daily, base_dir=feed)
    first_seconds = time.perf_counter() - t0
    held_back.rename(last)
    t0 = time.perf_counter()
    appended = build_corpus(config, daily, base_dir=feed)
    append_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = build_corpus(config, whole, base_dir=feed)
    full_seconds = time.perf_counter() - t0

    def pool(out: Path) -> pa.Table:
        table = pa.concat_tables([pa.Table.from_batches([b]) for b in iter_pool(out)])
        return table.sort_by("id")

    duplicates = [pq.read_table(folder / "duplicates.parquet") for folder in (daily, whole)]
    same = {"pool": pool(daily).equals(pool(whole)), "duplicates": duplicates[0].equals(duplicates[1]),
            "funnel": all(appended[k] == full[k] for k in ("overall", "per_topic", "per_language", "dedup", "kept")),
            "fingerprint": appended["fingerprint"] == full["fingerprint"]}
    state_bytes = sum(f.stat().st_size for f in (daily / "state").iterdir())
    results = {
        "machine": describe_machine(packages=("pyarrow", "datasketch", "rensa", "ftfy", "py3langid")),
        "settings": {"articles": args.articles, "days": args.days, "seed": args.seed, "workers": args.workers},
        "definitions": __doc__,
        "first_days": {"texts_read": before["this_run"]["texts_read"], "seconds": round(first_seconds, 2)},
        "append_last_day": {"texts_read": appended["this_run"]["texts_read"], "seconds": round(append_seconds, 2),
                            "stage_seconds": appended["seconds"]},
        "full_build": {"texts_read": full["this_run"]["texts_read"], "seconds": round(full_seconds, 2)},
        "append_vs_full_seconds": round(append_seconds / full_seconds, 3),
        "kept": full["kept"], "state_bytes": state_bytes,
        "state_bytes_per_kept_text": round(state_bytes / max(1, full["kept"]), 1),
        "same_as_full_build": same,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("machine", "definitions")}, indent=1))
    if not all(same.values()):
        raise SystemExit(f"the appended corpus differs from the full build: {same}")
    return results


if __name__ == "__main__":
    main()
