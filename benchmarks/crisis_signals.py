"""Crisis signals on real data: CrisisLexT26's 26 events as topics, each tweet's day from its id, scored by a
finished crisis run's student with `tailorkd signals`, and checked against the crowd's labels of the same
tweets.

The feed: every tweet the recipe's CrisisLexT26 source gives (its label mapping: risk / caution / safe),
topic = the event, day = the tweet's creation day decoded from its Twitter snowflake id
((id >> 22) + 1288834974657 ms since the epoch), source = "twitter". The student never saw these labels; it
trained on the teacher's labels of the run's pool. So that no trained-on text flatters the comparison, the
fidelity figures leave out the run's seed and pool texts ("unseen" tweets).

Fidelity, per topic and day with at least ``--min-count`` unseen tweets: the student's daily risk share
against the crowd's (Pearson and Spearman correlation, mean absolute difference), and the alerts the
recipe's rules raise on the student's signals against those the same rules raise on the crowd's labels
(precision, recall). Writes the results JSON and a markdown table of the student's alerts.

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

import pandas as pd

TWITTER_EPOCH_MS = 1288834974657


def tweet_day(tweet_id: str) -> str:
    """The UTC creation day of a tweet, from its snowflake id."""
    ms = (int(tweet_id) >> 22) + TWITTER_EPOCH_MS
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--alerts-md", type=Path, help="write the student's alerts as a markdown table here")
    parser.add_argument("--min-count", type=int, default=20, help="topic-days compared need this many tweets")
    parser.add_argument("--feed-out", type=Path, help="also keep the feed here (JSONL: id, text, date, topic, "
                        "source), for `tailorkd signals` by hand")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from scipy.stats import pearsonr, spearmanr

    from tailorkd import pipeline
    from tailorkd.data.sources import read_source
    from tailorkd.recipe import SignalsConfig, load_recipe
    from tailorkd.resources import describe_machine
    from tailorkd.signals import daily_signals, find_alerts
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
    unseen = signals[~signals["id"].isin(seen)]

    student_daily = daily_signals(unseen, names, risk_labels, config.severity_weights, 7)
    crowd = unseen.assign(label=unseen["human"], severity="none", confidence=1.0)
    crowd_daily = daily_signals(crowd, names, risk_labels, {"none": 0.0}, 7)
    both = student_daily.merge(crowd_daily[["topic", "day", "risk_share"]], on=["topic", "day"],
                               suffixes=("", "_crowd"))
    compared = both[both["n"] >= args.min_count]
    student_alerts = find_alerts(student_daily, unseen, config.rules, risk_labels, config.top_articles)
    crowd_alerts = find_alerts(crowd_daily, crowd, config.rules, risk_labels, 0)
    fired = {(a["topic"], a["day"], a["rule"]) for a in student_alerts}
    truth = {(a["topic"], a["day"], a["rule"]) for a in crowd_alerts}
    result = {
        "benchmark": "crisis_signals", "recipe": args.recipe, "overrides": args.overrides,
        "feed": {"tweets": len(feed), "events": int(feed["topic"].nunique()), "days": int(feed["date"].nunique()),
                 "unseen_tweets": len(unseen)},
        "signals_summary": summary,
        "fidelity": {
            "topic_days_compared": len(compared), "min_count": args.min_count,
            "risk_share_pearson": float(pearsonr(compared["risk_share"], compared["risk_share_crowd"])[0]),
            "risk_share_spearman": float(spearmanr(compared["risk_share"], compared["risk_share_crowd"])[0]),
            "risk_share_mean_abs_diff": float((compared["risk_share"] - compared["risk_share_crowd"]).abs().mean()),
            "student_mean_risk_share": float(compared["risk_share"].mean()),
            "crowd_mean_risk_share": float(compared["risk_share_crowd"].mean()),
            "tweet_accuracy": float((unseen["label"] == unseen["human"]).mean()),
        },
        "alerts": {"student": len(fired), "crowd": len(truth), "both": len(fired & truth),
                   "precision": len(fired & truth) / len(fired) if fired else None,
                   "recall": len(fired & truth) / len(truth) if truth else None,
                   "rules": [r.model_dump() for r in config.rules]},
        "machine": describe_machine(),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.alerts_md:
        fid, al = result["fidelity"], result["alerts"]
        lines = [f"# CrisisLexT26 as a feed: the student's alerts ({args.recipe})", "",
                 f"Written by `benchmarks/crisis_signals.py` ({result['measured_at']}). {result['feed']['tweets']:,} "
                 f"tweets of {result['feed']['events']} events, each event a topic, each tweet's day from its id, "
                 f"scored by the run's adaptive-KD student with `tailorkd signals` and the default rules; only "
                 f"the {result['feed']['unseen_tweets']:,} tweets the run never trained on count below. Against the "
                 f"crowd's labels of the same tweets: daily risk share Pearson r = {fid['risk_share_pearson']:.2f} "
                 f"over {fid['topic_days_compared']} topic-days of at least {fid['min_count']} tweets (mean absolute "
                 f"difference {100 * fid['risk_share_mean_abs_diff']:.0f} points; the student's mean share "
                 f"{100 * fid['student_mean_risk_share']:.0f}% vs the crowd's "
                 f"{100 * fid['crowd_mean_risk_share']:.0f}%); "
                 f"alerts: the student raises {al['student']}, the crowd's labels {al['crowd']}, {al['both']} both "
                 f"(precision {al['precision']:.2f}, recall {al['recall']:.2f}).", "",
                 "| event | day | rule | tweets | risk share (95% interval) | crowd's risk share | top tweet |",
                 "|---|---|---|---|---|---|---|"]
        crowd_share = crowd_daily.set_index(["topic", "day"])["risk_share"]
        for a in student_alerts:
            top = a["top_articles"][0]["text"].replace("|", "/").replace("\n", " ")[:90] if a["top_articles"] else ""
            low, high = a["risk_share_interval"]
            lines.append(f"| {a['topic']} | {a['day']} | {a['rule']} | {a['n']} | {100 * a['risk_share']:.0f}% "
                         f"({100 * low:.0f}-{100 * high:.0f}) | {100 * crowd_share[(a['topic'], a['day'])]:.0f}% | "
                         f"{top} |")
        args.alerts_md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps({"fidelity": result["fidelity"], "alerts": {k: v for k, v in result["alerts"].items()
                                                                  if k != "rules"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
