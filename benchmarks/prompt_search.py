"""What prompt search and per-text (kNN) shots buy a real small teacher, and what they cost.

For a recipe (its data, seeds, teacher): runs `tailorkd prompts tune` (the recipe's prompt_search section,
or the defaults), then scores four prompts on the seeds (leave-one-out) and on the human-labelled test
set, each with the raw teacher and after a per-class bias fitted on the seeds (calibration
seed_bias: small teachers have a strong label bias), so that only the prompt differs:

    hand-written        the recipe's prompt as written
    hand-written + kNN  the same parts, shots chosen per text (or fixed, when the recipe's are kNN)
    chosen              the search's choice
    chosen, other shots the choice with the other shot selection

The baseline of every ratio is the hand-written prompt, measured in the same run. Seed scores are what
the search sees; test scores are what a user gets. Run:

    TAILORKD_DATA_DIR=../shared/data .venv/bin/python benchmarks/prompt_search.py \\
        recipes/crisis-signals/smollm2-135m-instruct_to_minilm-l6_lora.yaml \
        --out benchmarks/results/prompt_search_crisis.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--output-dir", default=None, help="run folder (default: the recipe's + '-prompt-search')")
    parser.add_argument("--max-candidates", type=int, default=None, help="override prompt_search.max_candidates")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from tailorkd import pipeline
    from tailorkd.calibration import fit_bias, log_probs
    from tailorkd.evaluation import classification_metrics
    from tailorkd.labels import LabelStore, text_hash
    from tailorkd.recipe import PromptSearchConfig, load_recipe
    from tailorkd.stages.prompt_search import SeedScorer

    recipe = load_recipe(args.recipe, args.overrides)
    search = recipe.prompt_search or PromptSearchConfig()
    if args.max_candidates:
        search = search.model_copy(update={"max_candidates": args.max_candidates})
    out_dir = args.output_dir or f"{recipe.output_dir}-prompt-search"
    recipe = recipe.model_copy(update={"prompt_search": search, "output_dir": Path(out_dir)})
    pipeline.prepare(recipe)
    payload = pipeline.tune_prompt(recipe)

    data = pipeline.load_data(recipe)
    scorer = SeedScorer(recipe, data, calibrate=search.calibrate)
    names = recipe.task.label_names
    test_rows = data.rows("test")
    hand = recipe.prompt
    chosen = pipeline.resolve_prompt(recipe).prompt
    other = {"fixed": "knn", "knn": "fixed"}
    variants = {
        "hand-written": hand,
        f"hand-written, {other[hand.shot_selection]} shots": hand.model_copy(
            update={"shot_selection": other[hand.shot_selection]}),
        "chosen": chosen,
        f"chosen, {other[chosen.shot_selection]} shots": chosen.model_copy(
            update={"shot_selection": other[chosen.shot_selection]}),
    }
    results = {}
    for name, prompt in variants.items():
        if prompt.shots == 0 and "shots" in name.split(",")[-1]:
            continue  # no shots: selection changes nothing
        seed_metrics, _, _ = scorer(prompt)
        teacher = scorer.teacher(prompt)
        t0 = time.perf_counter()
        with LabelStore(Path(recipe.output_dir) / "labels.sqlite") as store:
            found = teacher.label(test_rows, store, desc=f"test: {name}")
        elapsed = time.perf_counter() - t0
        probs = np.array([found[text_hash(r["text"])].probs for r in test_rows])
        predicted = [names[i] for i in probs.argmax(1)]
        metrics = classification_metrics([r["label"] for r in test_rows], predicted, names)
        # The same teacher after a per-class bias fitted on all the seeds (what calibration seed_bias does).
        seed_probs, _, _ = scorer.probs(prompt)
        ok = ~np.isnan(seed_probs).any(axis=1)
        bias = fit_bias(log_probs(seed_probs[ok]), np.array([names.index(r["label"]) for r, k in
                                                             zip(scorer.seeds, ok) if k]), 0.1)
        biased = [names[i] for i in (log_probs(probs) + bias).argmax(1)]
        biased_metrics = classification_metrics([r["label"] for r in test_rows], biased, names)
        seconds = [found[text_hash(r["text"])].seconds for r in test_rows]
        results[name] = {
            "prompt": prompt.model_dump(mode="json"),
            "seeds": {k: seed_metrics[k] for k in ("accuracy", "macro_f1", "log_likelihood", "predicted_counts")}
            | ({"raw": seed_metrics["raw"]} if "raw" in seed_metrics else {}),
            "test": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                     "predicted_counts": {n: predicted.count(n) for n in names}},
            "test_seed_bias": {"accuracy": biased_metrics["accuracy"], "macro_f1": biased_metrics["macro_f1"],
                               "predicted_counts": {n: biased.count(n) for n in names}},
            "teacher_seconds_per_text": float(np.mean(seconds)),
            "wall_seconds_this_run": round(elapsed, 1),
        }
        logging.info("%s: seeds acc %.3f F1 %.3f | test acc %.3f F1 %.3f | seed-bias test acc %.3f F1 %.3f | "
                     "%.3f s/text", name, seed_metrics["accuracy"], seed_metrics["macro_f1"], metrics["accuracy"],
                     metrics["macro_f1"], biased_metrics["accuracy"], biased_metrics["macro_f1"], np.mean(seconds))
    base = results["hand-written"]
    table = ["| prompt | seeds acc | seeds macro-F1 | test acc raw | test macro-F1 raw | test acc seed-bias | "
             "test macro-F1 seed-bias | F1 vs hand-written (seed-bias) | s/text |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        t, b = r["test"], r["test_seed_bias"]
        table.append(f"| {name} | {100 * r['seeds']['accuracy']:.1f} | {100 * r['seeds']['macro_f1']:.1f} | "
                     f"{100 * t['accuracy']:.1f} | {100 * t['macro_f1']:.1f} | {100 * b['accuracy']:.1f} | "
                     f"{100 * b['macro_f1']:.1f} | {b['macro_f1'] / base['test_seed_bias']['macro_f1']:.2f}x | "
                     f"{r['teacher_seconds_per_text']:.3f} |")
    print("\n".join(table))
    report = {
        "benchmark": "prompt_search",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe": args.recipe,
        "overrides": args.overrides,
        "teacher": recipe.teacher.model,
        "seeds": payload["seeds"],
        "test_texts": len(test_rows),
        "search": {k: payload[k] for k in ("metric", "rounds", "stopped_because", "teacher_calls", "seconds")}
        | {"candidates": len(payload["candidates"]), "chosen_parts": payload["chosen"]["parts"],
           "ranked": [{"rank": c["rank"], "parts": c["parts"],
                       "seeds": {k: c["metrics"][k] for k in ("accuracy", "macro_f1", "log_likelihood")}}
                      for c in payload["candidates"]]},
        "prompts": results,
        "table": table,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "platform": platform.platform()},
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
