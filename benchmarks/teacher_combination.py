"""How far can combining a run's teachers go? Each member, the recipe's combination, and the best weights a
labelled development set would choose, against the seed-only baseline measured in the same run.

For a finished run of a recipe with `teacher.ensemble` (`tailorkd run` or `tailorkd label`; labelling here
resumes and costs nothing when it is done), this reads the pool's human labels back from the data source
(the toolkit never does: the pool is unlabelled for it) and uses the pool as a development set:

    member, raw / calibrated       each member's distribution, before and after its calibration
    recipe                         the combination the run used (its weights and combine rule)
    equal                          equal weights
    dev-chosen weights             the weight grid (step 0.1, weighted mean and product) searched on the
                                   labelled pool, then scored on test: what weights resting on a labelled
                                   development set of pool size, not on ~20 seeds, would give
    test ceiling                   the best grid point on test itself (tuned on test: an upper bound for any
                                   weighting of these members, not a result)

Every macro-F1 ratio is against the seed-only baseline (logistic regression on sentence embeddings of the
seeds), refitted in the same run. Run:

    TAILORKD_DATA_DIR=../shared/data .venv/bin/python benchmarks/teacher_combination.py RECIPE \\
        [key.sub=value ...] --out benchmarks/results/teacher_combination_crisis.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np


def weight_grid(members: int, steps: int = 10) -> list[list[float]]:
    """Every weight vector on the simplex with coordinates in multiples of 1/steps."""
    grid = []
    for head in itertools.product(range(steps + 1), repeat=members - 1):
        if sum(head) <= steps:
            grid.append([h / steps for h in head] + [(steps - sum(head)) / steps])
    return grid


def pool_labels(recipe, pool_ids: list[str]) -> list[str]:
    """The human labels of the pool texts, read back from the recipe's sources by text id."""
    from tailorkd.data.sources import read_source

    found: dict[str, str] = {}
    for i, source in enumerate(recipe.data.sources):
        result = read_source(source, recipe.base_dir, key=f"data.sources.{i}", task_labels=recipe.task.label_names)
        found.update({str(r["id"]): str(r["label"]) for r in result.rows if r.get("label") is not None})
    missing = [i for i in pool_ids if i not in found]
    if missing:
        raise SystemExit(f"{len(missing)} pool texts have no human label in the sources (first: {missing[0]}); "
                         "this benchmark needs a labelled source")
    return [found[i] for i in pool_ids]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from tailorkd import pipeline
    from tailorkd.evaluation import classification_metrics
    from tailorkd.evaluation.baselines import seed_only_baseline
    from tailorkd.labels import LabelStore
    from tailorkd.recipe import load_recipe
    from tailorkd.run_dir import RunDir
    from tailorkd.stages.ensemble import ensemble_probs
    from tailorkd.teachers.ensemble import COMBINES, combine

    recipe = pipeline.resolve_prompt(load_recipe(args.recipe, args.overrides))
    if recipe.teacher.ensemble is None:
        raise SystemExit(f"{args.recipe}: teacher.ensemble is not set; this benchmark compares ensemble members")
    pipeline.label(recipe)  # resumes: nothing to do when the run is labelled
    data = pipeline.load_data(recipe)
    names = recipe.task.label_names
    splits = {"dev": data.rows("pool"), "test": data.rows("test")}
    truth = {"dev": pool_labels(recipe, [str(r["id"]) for r in splits["dev"]]),
             "test": [str(r["label"]) for r in splits["test"]]}
    payload = json.loads(RunDir(recipe).ensemble.read_text())
    members = [m["model"] for m in payload["members"]]

    def score(probs: np.ndarray, split: str) -> dict[str, float]:
        predicted = [names[i] for i in np.nan_to_num(probs, nan=-1.0).argmax(1)]
        metrics = classification_metrics(truth[split], predicted, names)
        return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4)}

    probs: dict[str, dict[str, list[np.ndarray]]] = {"raw": {}, "calibrated": {}}
    recipes_combination: dict[str, np.ndarray] = {}  # what the pipeline gives the student
    with LabelStore(Path(recipe.output_dir) / "labels.sqlite") as store:
        for kind in probs:
            for split, rows in splits.items():
                combined, _, probs[kind][split] = ensemble_probs(recipe, rows, store,
                                                                 calibrated=kind == "calibrated")
                if kind == "calibrated":
                    recipes_combination[split] = combined
    seed_only = seed_only_baseline(data.rows("seed"), splits["test"], names,
                                   recipe.evaluation.seed_only_encoder, recipe.seed)
    baseline = score(seed_only["probs"], "test")

    systems: dict[str, dict] = {}
    for k, model in enumerate(members):
        for kind in probs:
            systems[f"member {k + 1} ({model}), {kind}"] = {
                split: score(probs[kind][split][k], split) for split in splits}
    weights = [m["weight"] for m in payload["members"]]
    cal = probs["calibrated"]
    systems[f"recipe: {payload['combine']}, weights {[round(w, 2) for w in weights]}"] = {
        split: score(recipes_combination[split], split) for split in splits}
    equal = [1.0 / len(members)] * len(members)
    for how in COMBINES:
        systems[f"equal weights, {how}"] = {split: score(combine(cal[split], equal, how), split) for split in splits}
    grid = [(how, w, {split: score(combine(cal[split], w, how), split) for split in splits})
            for how in COMBINES for w in weight_grid(len(members))]
    how, w, scores = max(grid, key=lambda g: (g[2]["dev"]["macro_f1"], g[2]["dev"]["accuracy"]))
    systems[f"dev-chosen weights: {how}, {w}"] = scores
    how, w, scores = max(grid, key=lambda g: (g[2]["test"]["macro_f1"], g[2]["test"]["accuracy"]))
    systems[f"test ceiling (tuned on test): {how}, {w}"] = scores
    systems["seed-only baseline"] = {"test": baseline}

    table = ["| system | dev acc | dev macro-F1 | test acc | test macro-F1 | test macro-F1 / seed-only |",
             "|---|---|---|---|---|---|"]
    for name, s in systems.items():
        dev = [f"{100 * s['dev'][k]:.1f}" if "dev" in s else "-" for k in ("accuracy", "macro_f1")]
        table.append(f"| {name} | {dev[0]} | {dev[1]} | {100 * s['test']['accuracy']:.1f} | "
                     f"{100 * s['test']['macro_f1']:.1f} | {s['test']['macro_f1'] / baseline['macro_f1']:.2f}x |")
    print("\n".join(table))
    report = {
        "benchmark": "teacher_combination",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe": args.recipe,
        "overrides": args.overrides,
        "members": members,
        "dev": {"split": "pool (human labels read back from the source)", "texts": len(splits["dev"]),
                "label_counts": {n: truth["dev"].count(n) for n in names}},
        "test_texts": len(splits["test"]),
        "systems": systems,
        "table": table,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
