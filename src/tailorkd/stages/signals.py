"""Signals: score a feed of articles with the run's trained student and aggregate them per topic and day.

    feed files ──> read_feed (bounded batches; rejects with file and line)
               ──> new or rescored articles only ──> student (calibrated) ──> signals.sqlite
               ──> signals.parquet, daily.parquet, alerts.jsonl, rejects.jsonl, summary.json
               ──> dashboard.html (tailorkd.dashboard: one page, nothing from the network)

Resumable and idempotent: every batch is stored before the next is read, an article already scored by this
student is not scored again, and the outputs are rewritten from the store, so rerunning on the same files
adds nothing and a new day's file adds only its rows. The store also keeps the rejects of every file read
into it (a file read again replaces its own) and the files in the order first read, so rejects.jsonl and
summary.json's ``files`` cover every run, not only the last. The aggregation and the rules are
``tailorkd.signals``; how a feed is read (rejects, line numbers, dates) is ``tailorkd.signals.read_feed``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from tailorkd import distributed
from tailorkd.recipe import NO_ALERT, SignalsConfig
from tailorkd.run_dir import RunDir
from tailorkd.stages.classify import student_shots
from tailorkd.stages.prompt_search import resolve_prompt

log = logging.getLogger(__name__)


@distributed.on_main
def signals(recipe, inputs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Score the articles of ``inputs`` (files, folders, globs) into ``out`` (default: the run's signals/
    folder) and write the daily signals and alerts; returns summary.json."""
    from tailorkd.dashboard import write_dashboard
    from tailorkd.files import write_json_atomic, write_text_atomic
    from tailorkd.quantify import corrected_shares
    from tailorkd.signals import SignalStore, daily_signals, feed_files, find_alerts, read_feed
    from tailorkd.students import load_student, predict_probs, read_student_info, student_file_hash, student_temperature

    recipe = resolve_prompt(recipe)
    config = recipe.signals or SignalsConfig()
    names = recipe.task.label_names
    risk_labels = config.risk_labels or names[:1]
    run = RunDir(recipe)
    folder = Path(out) if out else run.signals_dir
    files = feed_files(inputs)
    student_dir = run.student_dir()
    read_student_info(student_dir)  # a missing or damaged student.json is named as such, before its hash is used
    temperature = student_temperature(student_dir)
    model = f"{student_file_hash(student_dir)}-T{temperature:.6g}"  # a retrained or refitted student rescores
    student = None  # loaded when the first article needs scoring: a rerun with nothing new never loads it

    t0, read, scored, rejected_now = time.perf_counter(), 0, 0, 0
    with SignalStore(folder / "signals.sqlite", names) as store:
        if store.upgraded:  # a store of an older tailorkd: its rejects and files were only in the files
            store.adopt(_jsonl_records(folder / "rejects.jsonl"), _summary_files(folder / "summary.json"))
        started: set[Path] = set()
        for path, articles, rejected in read_feed(files, config.columns, config.batch_size):
            read += len(articles)
            rejected_now += len(rejected)
            first = path not in started
            started.add(path)
            done = store.scored([a["key"] for a in articles], model)
            unique: dict[str, dict[str, Any]] = {}
            for article in articles:  # a repeat counts once, as it was first seen
                if article["key"] not in done:
                    unique.setdefault(article["key"], article)
            todo = list(unique.values())
            if todo:
                # Sorted by length, so each batch pads little (each article keeps its own result).
                todo.sort(key=lambda a: len(a["text"]))
                if student is None:
                    student = load_student(student_dir, recipe.task, recipe.prompt, student_shots(recipe),
                                           recipe.student)
                probs = predict_probs(student, todo, recipe.evaluation.batch_size, desc="signals: articles",
                                      temperature=temperature)
                for article, p in zip(todo, probs):
                    best = int(p.argmax())
                    article.update(label=names[best], confidence=float(p[best]),
                                   severity=recipe.alerts.level(names[best], float(p[best])) if recipe.alerts
                                   else NO_ALERT,
                                   probabilities=[float(v) for v in p])
            store.put(todo, model, rejected, file=path, first=first)
            scored += len(todo)
        frame = store.frame(model)
        rejects, all_files = store.rejects(), store.files()
    # The table's baseline column uses the first rise rule's window; each rule reads its own (find_alerts).
    baseline_days = next((r.baseline_days for r in config.rules if r.kind == "rise_over_baseline"), 7)
    daily = daily_signals(frame, names, risk_labels, config.severity_weights, baseline_days, config.interval_level)
    estimator, quantifier = share_estimator(config, names, run, temperature)
    daily, replicates = corrected_shares(frame, daily, names, risk_labels, estimator, config.interval_level)
    alerts = find_alerts(daily, frame, config.rules, risk_labels, config.top_articles, replicates, config.alert_on,
                         config.interval_level)

    _write_parquet(folder / "signals.parquet", frame)
    _write_parquet(folder / "daily.parquet", daily)
    write_text_atomic(folder / "alerts.jsonl", "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in alerts))
    write_text_atomic(folder / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects))
    summary = {
        "title": f"{recipe.name}: {recipe.task.name}", "labels": names,
        "model": model, "student": str(student_dir), "temperature": temperature, "files": all_files,
        "files_now": [str(f) for f in files], "articles_read": read, "articles_scored_now": scored,
        "articles_stored": len(frame), "rejected": len(rejects), "rejected_now": rejected_now,
        "topics": int(daily["topic"].nunique()) if len(daily) else 0, "days": int(daily["day"].nunique()) if len(daily)
        else 0, "alerts": len(alerts), "risk_labels": list(risk_labels), "quantifier": quantifier,
        "alert_on": config.alert_on, "interval_level": config.interval_level,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(folder / "summary.json", summary)
    write_dashboard(folder)  # last: it reads the files above
    log.info("signals: %d articles read, %d scored now, %d stored, %d rejected now (%d in all); %d topic-days, "
             "%d alerts -> %s", read, scored, len(frame), rejected_now, len(rejects), len(daily), len(alerts), folder)
    return summary


def share_estimator(config: SignalsConfig, names: Sequence[str], run: RunDir, temperature: float
                    ) -> tuple[Any, dict[str, Any]]:
    """The estimator of each topic-day's shares that ``signals.quantifier`` names, and what summary.json says of
    it. A method that needs the student's predictions on labelled texts reads the seed guard's cross-fitted
    ones; a run without them (no seed guard, or one that judged another student) falls back to raw counts."""
    from tailorkd.quantify import NEEDS_LABELLED, ShareEstimator, labelled_from_guard

    method, labelled, note = config.quantifier, None, None
    if method in NEEDS_LABELLED:
        labelled = labelled_from_guard(run.seed_guard_record(), names, temperature, str(run.seed_guard))
        if labelled is None:
            note = (f"signals.quantifier {method} needs the student's cross-fitted predictions on the seeds, and "
                    f"{run.seed_guard} has none for the student that ships: the shares are raw counts")
            log.warning("signals: %s", note)
            method = "raw"
    estimator = ShareEstimator(method, len(names), labelled, config.replicates, seed=0)
    return estimator, {"method": method, "asked": config.quantifier, "replicates": config.replicates,
                       "labelled": labelled.source if labelled is not None else None, "note": note}


def _jsonl_records(path: Path) -> list[Any]:
    """The JSON values of the lines of ``path`` (none when it is missing; a line that is not JSON is left out)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _summary_files(path: Path) -> list[Any]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else None
    except json.JSONDecodeError:
        return []
    files = summary.get("files") if isinstance(summary, dict) else None
    return files if isinstance(files, list) else []


def _write_parquet(path: Path, frame) -> None:
    from tailorkd.files import atomic_write

    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
