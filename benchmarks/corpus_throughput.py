"""The corpus stage at scale: articles per second and peak memory at 50k, 200k and 1M articles, against the naive
path measured in the same run, and its deduplication and language identification against the known truth.

The corpora come from ``make_scale_corpus.py`` (real BBC News, CrisisLexT26 and Financial PhraseBank texts
recombined, with exact and near duplicates, other languages, HTML, mojibake and noise injected; a truth file
per article). Made once per size and seed under ``--work`` and reused.

Each measured run is a fresh Python process (``--child``), so that no run inherits another's peak memory:

- **naive**: pandas reads every shard (``read_json(lines=True)`` / ``read_parquet``), concatenates them and
  drops exact duplicate texts (``drop_duplicates("text")``), then writes the rest as one Parquet file;
- **stage, near off**: ``tailorkd.corpus.build_corpus`` with every cleaning step, length filter, language
  identification, exact dedup; no near-dup detection, no relevance stage;
- **stage, near on**: the same with MinHash-LSH near-dup detection (the recipe defaults: 128 permutations,
  word 3-shingles, threshold 0.7);
- **stage, near on + relevance**: the same plus the relevance stage (MiniLM embeddings of every text
  reaching it, against the held-out seed tweets, threshold ``auto``); only at ``--relevance-sizes``.

Times are wall-clock seconds of the work in the child (imports and interpreter start excluded; the stage's
worker processes' start included). Peak memory: the child's own peak RSS (Linux ``VmHWM``: the driver, which
holds the dedup indexes) and the largest peak RSS of its worker processes (``getrusage(RUSAGE_CHILDREN)``,
read after the stage has waited for them); ``peak_total_mib`` adds the driver's and ``workers`` x the
workers' peak (an upper bound: workers peak at different times). The LSH index's cost per article is the
driver's peak with near-dup detection on minus off, divided by the articles.

Deduplication against the truth: the stage's ``duplicates.parquet`` names each dropped text and the kept text
it repeats (by file and row, mapped back to the generator's ids). A drop is right when both are copies of the
same original (or one is the original), or both have the same clean text. Precision = right drops / drops;
recall = injected copies dropped rightly / injected copies; also per injected kind (exact; near, by its recorded
word 5-shingle Jaccard) and per step of the stage. Language: the stage's language of each kept text against
the injected one.

    .venv/bin/python benchmarks/corpus_throughput.py --sizes 50000,200000,1000000 --work /tmp/corpus_bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MODES = ("naive", "near_off", "near_on", "relevance")
CHILD_TIMEOUT_S = 6 * 3600


# --------------------------------------------------------------------------------------------------------------
# one measured run (in its own process)


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in used)


def _children_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kB


def stage_config(corpus: Path, mode: str, workers: int, batch_size: int,
                 identifier: str = "py3langid") -> dict[str, Any]:
    """The corpus section a stage run uses (as a recipe would write it)."""
    config: dict[str, Any] = {
        "inputs": [{"path": str(corpus / "raw"),
                    "columns": {"id": "id", "title": "title", "date": "date", "topic": "topic", "source": "source"}}],
        "dedup": {"exact": True, "near": mode != "near_off"},
        "language": {"identifier": identifier},
        "engine": "local", "workers": workers, "batch_size": batch_size,
    }
    if mode == "relevance":
        config["relevance"] = {"against": "seeds", "threshold": "auto"}
    return config


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    corpus, out, mode = Path(spec["corpus"]), Path(spec["out"]), spec["mode"]
    out.mkdir(parents=True, exist_ok=True)
    load0 = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    result: dict[str, Any] = {"mode": mode}
    if mode == "naive":
        frames = []
        for path in sorted((corpus / "raw").iterdir()):
            if path.name.endswith(".jsonl.gz"):
                frames.append(pd.read_json(path, lines=True, compression="gzip", dtype=False))
            elif path.suffix == ".parquet":
                frames.append(pd.read_parquet(path))
        frame = pd.concat(frames, ignore_index=True)
        del frames
        kept = frame.drop_duplicates("text")
        kept.to_parquet(out / "naive.parquet")
        result.update(read=len(frame), kept=len(kept))
    else:
        from tailorkd.corpus import build_corpus
        from tailorkd.recipe.corpus import CorpusConfig

        config = CorpusConfig.model_validate(spec["config"])
        seeds = [json.loads(line)["text"] for line in (corpus / "seeds.jsonl").read_text().splitlines()]
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        funnel = build_corpus(config, out, base_dir=corpus, seeds=seeds, force=True)
        result.update(read=funnel["overall"]["read"], kept=funnel["kept"],
                      funnel={k: funnel[k] for k in ("overall", "dropped", "cleaning", "dedup", "relevance", "seconds",
                                                     "workers", "batch_size", "per_language") if k in funnel})
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = _cpu_seconds() - cpu0
    result["load_average_1min"] = [load0, round(os.getloadavg()[0], 2)]
    result["driver_peak_mib"] = _vm_hwm_mib()
    result["workers_peak_mib"] = _children_peak_mib()
    return result


# --------------------------------------------------------------------------------------------------------------
# the truth


def _truth(corpus: Path):
    import pandas as pd

    truth = pd.read_parquet(corpus / "truth.parquet", columns=["id", "shard", "kind", "dup_of", "jaccard", "language",
                                                               "relevant", "short", "clean_hash"])
    truth["row"] = truth.groupby("shard").cumcount() + 1  # the stage's row: 1-based line / Parquet row
    truth["root"] = truth["dup_of"].fillna(truth["id"])
    return truth


def _position(text_id: str) -> tuple[str, int]:
    """(shard file name, row) of a stage id ``corpus:<file>:<row>``."""
    file, row = text_id.removeprefix("corpus:").rsplit(":", 1)
    return Path(file).name, int(row)


def dedup_quality(corpus: Path, out: Path, truth) -> dict[str, Any]:
    import pandas as pd

    dups = pd.read_parquet(out / "duplicates.parquet", columns=["id", "kind", "duplicate_of"])
    index = {(s, r): i for s, r, i in zip(truth["shard"], truth["row"], truth["id"])}
    root = dict(zip(truth["id"], truth["root"]))
    clean = dict(zip(truth["id"], truth["clean_hash"]))
    dropped = [index[_position(x)] for x in dups["id"]]
    kept = [index[_position(x)] for x in dups["duplicate_of"]]
    # Right: copies of one original, or two texts that are the same before any debris (a recombination that
    # happened to draw the same pieces twice is a real duplicate, whatever the generator meant).
    right = [root[d] == root[k] or clean[d] == clean[k] for d, k in zip(dropped, kept)]
    dups = dups.assign(dropped=dropped, kept=kept, right=right)
    copies = truth[truth["kind"] != "original"]
    found = set(dups.loc[dups["right"], "dropped"])

    def recall(frame) -> dict[str, Any]:
        n = len(frame)
        hit = int(frame["id"].isin(found).sum())
        return {"copies": n, "dropped": hit, "recall": round(hit / n, 4) if n else None}

    near = copies[copies["kind"] == "near"]
    bins = {}
    for low, high in ((0.7, 0.8), (0.8, 0.9), (0.9, 1.01)):
        in_bin = near[(near["jaccard"] >= low) & (near["jaccard"] < high)]
        bins[f"jaccard {low:.1f}-{min(high, 1.0):.1f}"] = recall(in_bin)
    wrong = dups[~dups["right"]]
    per_step = {}
    for kind in ("exact", "near"):
        step = dups[dups["kind"] == kind]
        per_step[kind] = {"drops": len(step), "right": int(step["right"].sum()),
                          "precision": round(float(step["right"].mean()), 4) if len(step) else None}
    return {
        "drops": len(dups),
        "precision": round(float(dups["right"].mean()), 4) if len(dups) else None,
        **{k: v for k, v in recall(copies).items()},
        "by_injected_kind": {"exact": recall(copies[copies["kind"] == "exact"]), "near": recall(near),
                             "near_by_jaccard": bins},
        "by_stage_step": per_step,
        "wrong_drops_examples": [{"dropped": d, "kept": k} for d, k in zip(wrong["dropped"][:5], wrong["kept"][:5])],
    }


def _pool(out: Path, columns: list[str]):
    """The kept texts' columns, with ``shard`` as the raw file's name."""
    import pandas as pd

    pool = pd.concat([pd.read_parquet(p, columns=columns) for p in sorted(out.glob("pool-*.parquet"))],
                     ignore_index=True)
    pool["shard"] = [Path(s).name for s in pool["shard"]]
    return pool


def language_quality(out: Path, truth) -> dict[str, Any]:
    pool = _pool(out, ["shard", "row", "language"])
    merged = pool.merge(truth[["shard", "row", "language", "short"]], on=["shard", "row"], suffixes=("", "_true"))
    merged = merged[~merged["short"]]
    per = {}
    for lang, group in merged.groupby("language_true"):
        per[lang] = {"texts": len(group), "identified_as_it": round(float((group["language"] == lang).mean()), 4)}
    return {"texts": len(merged), "agreement": round(float((merged["language"] == merged["language_true"]).mean()), 4),
            "per_injected_language": per}


def relevance_quality(out: Path, truth) -> dict[str, Any]:
    pool = _pool(out, ["shard", "row"])
    merged = pool.merge(truth[["shard", "row", "relevant", "kind", "short"]], on=["shard", "row"])
    originals = truth[(truth["kind"] == "original") & ~truth["short"]]
    kept_originals = merged[(merged["kind"] == "original") & ~merged["short"]]
    relevant_kept, relevant = kept_originals["relevant"].sum(), originals["relevant"].sum()
    return {"kept": len(merged), "precision": round(float(merged["relevant"].mean()), 4) if len(merged) else None,
            "recall_of_relevant_originals": round(float(relevant_kept / relevant), 4),
            "off_topic_originals_kept": int((~kept_originals["relevant"]).sum())}


# --------------------------------------------------------------------------------------------------------------
# the runs


def ensure_corpus(size: int, seed: int, work: Path) -> Path:
    corpus = work / f"scale-{size}"
    manifest = corpus / "manifest.json"
    if manifest.is_file():
        made = json.loads(manifest.read_text())
        if made.get("articles") == size and made.get("seed") == seed:
            return corpus
    print(f"generating {size} articles -> {corpus}", flush=True)
    subprocess.run([sys.executable, str(HERE / "make_scale_corpus.py"), "--articles", str(size), "--out", str(corpus),
                    "--seed", str(seed)], check=True, cwd=ROOT)
    return corpus


def measure(corpus: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    out = args.work / f"out-{corpus.name}-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    spec = {"corpus": str(corpus), "out": str(out), "mode": mode,
            "config": stage_config(corpus, mode, args.workers, args.batch_size, args.language_identifier)}
    spec_path = args.work / f"spec-{corpus.name}-{mode}.json"
    spec_path.write_text(json.dumps(spec))
    result_path = spec_path.with_suffix(".result.json")
    result_path.unlink(missing_ok=True)
    log_path = spec_path.with_suffix(".log")
    wall = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path),
                               "--child-result", str(result_path)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              timeout=CHILD_TIMEOUT_S, check=False)
    if done.returncode != 0 or not result_path.is_file():
        raise SystemExit(f"{mode} on {corpus.name} failed (exit {done.returncode}); see {log_path}")
    result = json.loads(result_path.read_text())
    result["process_wall_seconds"] = round(time.perf_counter() - wall, 2)
    result["articles_per_second"] = round(result["read"] / result["seconds"], 1)
    result["articles_per_cpu_second"] = round(result["read"] / result["cpu_seconds"], 1)
    workers = 0 if mode == "naive" else args.workers
    result["peak_total_mib"] = round(result["driver_peak_mib"] + workers * result["workers_peak_mib"], 1)
    if mode != "naive":
        truth = _truth(corpus)
        result["dedup_quality"] = dedup_quality(corpus, out, truth)
        result["language_quality"] = language_quality(out, truth)
        if mode == "relevance":
            result["relevance_quality"] = relevance_quality(out, truth)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return result


def summarise(size: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    naive = runs.get("naive")
    out: dict[str, Any] = {}
    for mode, r in runs.items():
        row = {"articles_per_second": r["articles_per_second"], "seconds": round(r["seconds"], 2),
               "articles_per_cpu_second": r["articles_per_cpu_second"], "load_average_1min": r["load_average_1min"],
               "driver_peak_mib": round(r["driver_peak_mib"], 1), "workers_peak_mib": round(r["workers_peak_mib"], 1),
               "peak_total_mib": r["peak_total_mib"], "kept": r["kept"]}
        if naive is not None and mode != "naive":
            row["throughput_vs_naive"] = round(r["articles_per_second"] / naive["articles_per_second"], 3)
            row["cpu_throughput_vs_naive"] = round(r["articles_per_cpu_second"] / naive["articles_per_cpu_second"], 3)
            row["peak_total_vs_naive"] = round(r["peak_total_mib"] / naive["peak_total_mib"], 3)
        out[mode] = row
    if "near_on" in runs and "near_off" in runs:
        delta = runs["near_on"]["driver_peak_mib"] - runs["near_off"]["driver_peak_mib"]
        out["lsh_index_bytes_per_article"] = round(delta * 2**20 / size, 1)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| articles | run | articles/s | vs naive | articles/CPU-s | vs naive | driver peak MiB | worker peak MiB "
             "| total peak MiB | load (start, end) |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size, runs in results["summary"].items():
        for mode in MODES:
            r = runs.get(mode)
            if r is None:
                continue
            ratio = f"{r['throughput_vs_naive']:.2f}x" if "throughput_vs_naive" in r else "1.00x"
            cpu_ratio = f"{r['cpu_throughput_vs_naive']:.2f}x" if "cpu_throughput_vs_naive" in r else "1.00x"
            load = ", ".join(f"{x:.1f}" for x in r["load_average_1min"])
            lines.append(f"| {int(size):,} | {mode} | {r['articles_per_second']:,.0f} | {ratio} | "
                         f"{r['articles_per_cpu_second']:,.0f} | {cpu_ratio} | {r['driver_peak_mib']:,.0f} | "
                         f"{r['workers_peak_mib']:,.0f} | {r['peak_total_mib']:,.0f} | {load} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="50000,200000,1000000", help="articles per corpus, comma-separated")
    p.add_argument("--modes", default="naive,near_off,near_on", help=f"runs at every size, of {','.join(MODES)}")
    p.add_argument("--relevance-sizes", default="50000", help="sizes that also run the relevance stage ('' none)")
    p.add_argument("--relevance-only-sizes", default="",
                   help="sizes (also listed in --sizes) that run only the naive path and the relevance stage")
    p.add_argument("--work", type=Path, default=Path("/tmp/tailorkd_corpus_bench"), help="corpora and outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="the stage's worker processes")
    p.add_argument("--batch-size", type=int, default=1000, help="the stage's rows per batch")
    p.add_argument("--language-identifier", default="py3langid", choices=["py3langid", "cld2"],
                   help="the stage's corpus.language.identifier")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "corpus_throughput.json")
    p.add_argument("--append", action="store_true", help="add these sizes to the results already in --output")
    p.add_argument("--keep-outputs", action="store_true", help="keep the stage's outputs under --work")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured run from this spec file
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        result = child(json.loads(Path(args.child).read_text()))
        Path(args.child_result).write_text(json.dumps(result))
        return result
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    relevance_only = {int(s) for s in args.relevance_only_sizes.split(",") if s}
    relevance_sizes = {int(s) for s in args.relevance_sizes.split(",") if s} | relevance_only
    args.work.mkdir(parents=True, exist_ok=True)
    from tailorkd.resources import describe_machine

    packages = ("pandas", "pyarrow", "datasketch", "rensa", "ftfy", "py3langid", "regex")
    results: dict[str, Any] = {"machine": describe_machine(packages=packages),
                               "settings": {"sizes": sizes, "modes": modes, "relevance_sizes": sorted(relevance_sizes),
                                            "seed": args.seed, "workers": args.workers,
                                            "language_identifier": args.language_identifier,
                                            "batch_size": args.batch_size},
                               "definitions": __doc__, "runs": {}, "summary": {}, "corpora": {}}
    if args.append and args.output.is_file():  # more sizes into an earlier run's results (its machine kept)
        earlier = json.loads(args.output.read_text())
        earlier.setdefault("machine_of_appended_runs", []).append(results["machine"])
        earlier["settings"]["sizes"] = [*earlier["settings"]["sizes"],
                                        *(s for s in sizes if s not in earlier["settings"]["sizes"])]
        results = earlier
    for size in sizes:
        corpus = ensure_corpus(size, args.seed, args.work)
        manifest = json.loads((corpus / "manifest.json").read_text())
        results["corpora"][str(size)] = {"counts": manifest["counts"], "generator_seconds": manifest["seconds"],
                                         "bytes_on_disk": sum(p.stat().st_size for p in (corpus / "raw").iterdir())}
        runs = {}
        size_modes = ["naive"] if size in relevance_only else [m for m in modes if m != "relevance"]
        for mode in [*size_modes, *(["relevance"] if size in relevance_sizes else [])]:
            print(f"{size}: {mode} ...", flush=True)
            runs[mode] = measure(corpus, mode, args)
            print(f"{size}: {mode}: {runs[mode]['articles_per_second']:,.0f} articles/s, "
                  f"driver peak {runs[mode]['driver_peak_mib']:,.0f} MiB, "
                  f"workers peak {runs[mode]['workers_peak_mib']:,.0f} MiB", flush=True)
            if "dedup_quality" in runs[mode]:
                q = runs[mode]["dedup_quality"]
                print(f"    dedup precision {q['precision']}, recall {q['recall']}", flush=True)
            results["runs"][str(size)] = runs
            results["summary"][str(size)] = summarise(size, runs)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1) + "\n")  # after every run: a partial one counts
    summary = results["summary"]
    measured = sorted(int(k) for k, v in summary.items() if "near_off" in v)
    base = 50_000 if 50_000 in measured else (measured[0] if measured else None)
    first, last = str(base), str(measured[-1]) if measured else None
    if base is not None and int(last) > base:
        results["targets"] = {
            "near_off_peak_total_ratio_largest_to_smallest": round(
                summary[last]["near_off"]["peak_total_mib"] / summary[first]["near_off"]["peak_total_mib"], 3),
            "near_off_driver_peak_ratio_largest_to_smallest": round(
                summary[last]["near_off"]["driver_peak_mib"] / summary[first]["near_off"]["driver_peak_mib"], 3),
            "sizes_compared": [base, int(last)], "target_peak_ratio": 1.2, "target_throughput_vs_naive": 1.0,
        }
    results["table_markdown"] = markdown(results)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(results["table_markdown"])
    return results


if __name__ == "__main__":
    main()
