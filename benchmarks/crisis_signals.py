"""Crisis signals on real data: CrisisLexT26's 26 events as topics, each tweet's day from its id, scored by a
finished crisis run's student with `tailorkd signals`, and checked against the crowd's labels of the same
tweets.

The feed: every tweet the recipe's CrisisLexT26 source gives (its label mapping: risk / caution / safe),
topic = the event, day = the tweet's creation day decoded from its Twitter snowflake id
((id >> 22) + 1288834974657 ms since the epoch), source = "twitter". The student never saw these labels; it
trained on the teacher's labels of the run's pool. So that no trained-on text flatters the comparison, the
fidelity figures leave out the run's seed and pool texts ("unseen" tweets).

Fidelity, per topic and day with at least ``--min-count`` unseen tweets, for the raw count and each
quantifier of ``tailorkd.quantify`` (the student's stored probabilities are read once; each method only
re-aggregates them): the estimated daily risk share against the crowd's (mean absolute error, Pearson and
Spearman correlation, how often the interval covers the crowd's share), and the alerts the recipe's rules raise
on it (on the estimate, and on the interval) against those the same rules raise on the crowd's labels
(precision, recall, F1). The confusion comes from the seed guard's cross-fitted seed predictions (what a user
run has) and, as a reference only, from the run's test split (crowd-labelled tweets of the same feed, which a
user run has not; so these are left out of the tweets compared). The default is the method with the lowest
error among those a user run has. Writes the results JSON and a markdown table of the shipped alerts.

    TAILORKD_DATA_DIR=../shared/data .venv/bin/python benchmarks/crisis_signals.py \\
        recipes/crisis-signals/gemma3-270m_to_minilm-l6_lora.yaml --out benchmarks/results/crisis_signals.json \\
        --alerts-md docs/crisis_signals_alerts.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("crisis_signals")
TWITTER_EPOCH_MS = 1288834974657


def tweet_day(tweet_id: str) -> str:
    """The UTC creation day of a tweet, from its snowflake id."""
    ms = (int(tweet_id) >> 22) + TWITTER_EPOCH_MS
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def alert_scores(fired: set, truth: set) -> dict:
    """Precision, recall and F1 of the alerts ``fired`` against those the crowd's labels raise (``truth``)."""
    both = len(fired & truth)
    precision = both / len(fired) if fired else None
    recall = both / len(truth) if truth else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"raised": len(fired), "crowd": len(truth), "both": both, "precision": precision, "recall": recall,
            "f1": f1}


def write_alerts_md(args, result: dict, alerts: list, crowd_share) -> None:
    """The shipped configuration's alerts as a markdown table, with the methods' figures above it."""
    fid, shipped, raw = result["fidelity"], result["shipped"], result["methods"]["raw"]
    lines = [f"# CrisisLexT26 as a feed: the student's alerts ({args.recipe})", "",
             f"Written by `benchmarks/crisis_signals.py` ({result['measured_at']}). {result['feed']['tweets']:,} "
             f"tweets of {result['feed']['events']} events, each event a topic, each tweet's day from its id, "
             f"scored by the run's student with `tailorkd signals` and the default rules; only the "
             f"{result['feed']['unseen_tweets']:,} tweets the run never trained on (nor tested on) count below. "
             f"Daily risk share against the crowd's labels over {fid['topic_days_compared']} topic-days of at "
             f"least {fid['min_count']} tweets (crowd's mean share {100 * fid['crowd_mean_risk_share']:.0f}%); "
             f"alerts against the {fid['crowd_alerts']} the crowd's labels raise under the same rules.", "",
             "| shares | labelled texts | MAE (points) | Pearson r | interval covers crowd | alerts on estimate "
             "P / R / F1 | alerts on interval P / R / F1 |", "|---|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        cells = [" / ".join("–" if m["alerts"][on][k] is None else f"{m['alerts'][on][k]:.2f}"
                            for k in ("precision", "recall", "f1")) for on in ("estimate", "interval")]
        lines.append(f"| {name} | {m['labelled_from'] or '–'} | {100 * m['risk_share_mae']:.1f} | "
                     f"{m['risk_share_pearson']:.2f} | {100 * m['interval_coverage']:.0f}% | {cells[0]} | {cells[1]} |")
    lines += ["", f"Shipped: `signals.quantifier: {shipped['quantifier']}`, `signals.alert_on: "
              f"{shipped['alert_on']}`: mean absolute error {100 * shipped['risk_share_mae']:.1f} points, "
              f"{100 * shipped['risk_share_mae_vs_raw']:.0f}% of the raw count's ({100 * raw['risk_share_mae']:.1f}).",
              "", "| event | day | rule | tweets | raw share | estimated share (95% interval) | sure | crowd's share "
              "| top tweet |", "|---|---|---|---|---|---|---|---|---|"]
    for a in alerts:
        top = a["top_articles"][0]["text"].replace("|", "/").replace("\n", " ")[:90] if a["top_articles"] else ""
        low, high = a.get("risk_share_estimate_interval", a["risk_share_interval"])
        sure = "–" if a["sure"] is None else f"{100 * a['sure']:.0f}%"
        lines.append(f"| {a['topic']} | {a['day']} | {a['rule']} | {a['n']} | {100 * a['risk_share']:.0f}% | "
                     f"{100 * a.get('risk_share_estimate', a['risk_share']):.0f}% ({100 * low:.0f}-{100 * high:.0f}) "
                     f"| {sure} | {100 * crowd_share[(a['topic'], a['day'])]:.0f}% | {top} |")
    args.alerts_md.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--alerts-md", type=Path, help="write the student's alerts as a markdown table here")
    parser.add_argument("--min-count", type=int, default=20, help="topic-days compared need this many tweets")
    parser.add_argument("--replicates", type=int, default=200, help="bootstrap replicates per topic-day")
    parser.add_argument("--feed-out", type=Path, help="also keep the feed here (JSONL: id, text, date, topic, "
                        "source), for `tailorkd signals` by hand")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from scipy.stats import pearsonr, spearmanr

    from tailorkd import pipeline
    from tailorkd.data.sources import read_source
    from tailorkd.quantify import (
        NEEDS_LABELLED,
        QUANTIFIERS,
        LabelledPredictions,
        ShareEstimator,
        corrected_shares,
        labelled_from_guard,
    )
    from tailorkd.recipe import SignalsConfig, load_recipe
    from tailorkd.resources import describe_machine
    from tailorkd.run_dir import RunDir
    from tailorkd.signals import ALERT_ON, daily_signals, find_alerts
    from tailorkd.stages.prompt_search import resolve_prompt

    recipe = resolve_prompt(load_recipe(args.recipe, args.overrides))
    config = recipe.signals or SignalsConfig()
    names = recipe.task.label_names
    risk_labels = config.risk_labels or names[:1]
    rows = []
    for i, source in enumerate(recipe.data.sources):
        result = read_source(source, recipe.base_dir, key=f"data.sources.{i}", task_labels=names)
        rows += [r for r in result.rows if str(r["id"]).startswith("crisislex:")]
    if not rows:
        raise SystemExit(f"{args.recipe}: no CrisisLexT26 source; this benchmark needs one")
    seen = {r["id"] for split in ("seed", "pool") for r in pipeline.load_data(recipe).rows(split)}
    feed = pd.DataFrame({
        "id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
        "date": [tweet_day(r["id"].rsplit("/", 1)[1]) for r in rows],
        "topic": [r["id"].split(":", 1)[1].split("/", 1)[0] for r in rows], "source": "twitter",
        "human": [r["label"] for r in rows],
    })
    with tempfile.TemporaryDirectory() as tmp:
        feed_file = Path(tmp) / "crisislex_feed.jsonl"
        feed.drop(columns="human").to_json(feed_file, orient="records", lines=True, force_ascii=False)
        if args.feed_out:
            args.feed_out.parent.mkdir(parents=True, exist_ok=True)
            feed.drop(columns="human").to_json(args.feed_out, orient="records", lines=True, force_ascii=False)
        out = Path(recipe.output_dir) / "signals-crisislex"
        summary = pipeline.signals(recipe, [feed_file], out)
    signals = pd.read_parquet(out / "signals.parquet")
    human = feed.drop_duplicates("id").set_index("id")["human"]
    signals["human"] = signals["id"].map(human)
    test_ids = {r["id"] for r in pipeline.load_data(recipe).rows("test")}
    # The run's test split is the benchmark's labelled reference below: left out of the feed compared too.
    unseen = signals[~signals["id"].isin(seen | test_ids)].reset_index(drop=True)

    student_daily = daily_signals(unseen, names, risk_labels, config.severity_weights, 7)
    crowd = unseen.assign(label=unseen["human"], severity="none", confidence=1.0)
    crowd_daily = daily_signals(crowd, names, risk_labels, {"none": 0.0}, 7)
    crowd_alerts = find_alerts(crowd_daily, crowd, config.rules, risk_labels, 0)
    truth = {(a["topic"], a["day"], a["rule"]) for a in crowd_alerts}
    crowd_share = crowd_daily.set_index(["topic", "day"])["risk_share"]
    compared = student_daily["n"].to_numpy() >= args.min_count
    crowd_compared = crowd_share.loc[list(zip(student_daily["topic"], student_daily["day"]))].to_numpy()[compared]

    run = RunDir(recipe)
    temperature = summary["temperature"]
    sources = {"seeds": labelled_from_guard(run.seed_guard_record(), names, temperature)}
    # Not a source a user run has (its test labels are not the user's): how far a labelled sample of 200 texts
    # from the same feed would take each method, to tell the seeds' few labels from the student's limits.
    test = signals[signals["id"].isin(test_ids)]
    if len(test):
        sources["test_split_reference"] = LabelledPredictions(
            test[[f"p_{n}" for n in names]].to_numpy(dtype=float),
            np.array([names.index(h) for h in test["human"]]), f"the run's test split ({len(test)} texts)")
        # The other source a run could have: the teacher's labels on texts the student never trained on (a
        # held-out share of the pool); stood in for by the teacher's labels of the same test texts.
        teacher_file = run.root / "predictions" / "teacher.parquet"
        if teacher_file.is_file():
            said = pd.read_parquet(teacher_file).set_index("id")["predicted"]
            by_teacher = test[test["id"].isin(said.index)]
            sources["teacher_labels_reference"] = LabelledPredictions(
                by_teacher[[f"p_{n}" for n in names]].to_numpy(dtype=float),
                np.array([names.index(said[i]) for i in by_teacher["id"]]),
                f"the teacher's labels of the run's test split ({len(by_teacher)} texts)")

    def scored(method: str, source: str | None) -> tuple[dict, pd.DataFrame, np.ndarray]:
        estimator = ShareEstimator(method, len(names), sources[source] if source else None, args.replicates, 0)
        daily, replicates = corrected_shares(unseen, student_daily, names, risk_labels, estimator,
                                             config.interval_level)
        share = daily["risk_share_estimate"].to_numpy()[compared]
        low = daily["risk_share_estimate_low"].to_numpy()[compared]
        high = daily["risk_share_estimate_high"].to_numpy()[compared]
        entry = {"method": method, "labelled_from": sources[source].source if source else None,
                 "risk_share_mae": float(np.abs(share - crowd_compared).mean()),
                 "risk_share_pearson": float(pearsonr(share, crowd_compared)[0]),
                 "risk_share_spearman": float(spearmanr(share, crowd_compared)[0]),
                 "mean_risk_share": float(share.mean()),
                 "interval_coverage": float(((low <= crowd_compared) & (crowd_compared <= high)).mean()),
                 "interval_mean_width": float((high - low).mean()), "alerts": {}}
        for alert_on in ALERT_ON:
            fired = {(a["topic"], a["day"], a["rule"]) for a in find_alerts(
                daily, unseen, config.rules, risk_labels, 0, replicates, alert_on, config.interval_level)}
            entry["alerts"][alert_on] = alert_scores(fired, truth)
        return entry, daily, replicates

    methods = {}
    for method in QUANTIFIERS:
        for source in ([None] if method not in NEEDS_LABELLED else [s for s in sources if sources[s] is not None]):
            name = method if source is None else f"{method}@{source}"
            log.info("crisis signals: %s", name)
            methods[name] = scored(method, source)[0]
    # The default: the method with the lowest error among those a user run has (the seeds' labels, or none).
    usable = {k: v for k, v in methods.items() if "reference" not in k}
    best = min(usable, key=lambda k: usable[k]["risk_share_mae"])
    shipped = f"{config.quantifier}@seeds" if config.quantifier in NEEDS_LABELLED else config.quantifier
    shipped_entry, shipped_daily, shipped_replicates = scored(
        config.quantifier, "seeds" if config.quantifier in NEEDS_LABELLED else None)
    student_alerts = find_alerts(shipped_daily, unseen, config.rules, risk_labels, config.top_articles,
                                 shipped_replicates, config.alert_on, config.interval_level)
    raw = methods["raw"]
    result = {
        "benchmark": "crisis_signals", "recipe": args.recipe, "overrides": args.overrides,
        "feed": {"tweets": len(feed), "events": int(feed["topic"].nunique()), "days": int(feed["date"].nunique()),
                 "unseen_tweets": len(unseen)},
        "signals_summary": summary,
        "fidelity": {
            "topic_days_compared": int(compared.sum()), "min_count": args.min_count,
            "crowd_mean_risk_share": float(crowd_compared.mean()),
            "tweet_accuracy": float((unseen["label"] == unseen["human"]).mean()),
            "crowd_alerts": len(truth), "replicates": args.replicates, "interval_level": config.interval_level,
        },
        "methods": methods,
        "best_usable_by_mae": best,
        "shipped": {"quantifier": config.quantifier, "alert_on": config.alert_on, "name": shipped,
                    "risk_share_mae_vs_raw": shipped_entry["risk_share_mae"] / raw["risk_share_mae"],
                    **shipped_entry},
        "rules": [r.model_dump() for r in config.rules],
        "machine": describe_machine(),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.alerts_md:
        write_alerts_md(args, result, student_alerts, crowd_share)
    print(json.dumps({name: {k: v for k, v in entry.items() if k not in ("labelled_from",)}
                      for name, entry in result["methods"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
