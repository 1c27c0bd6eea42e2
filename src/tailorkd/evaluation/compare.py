"""Several runs' reports side by side (`tailorkd compare`): one row per (run, system), systems named as the paper
names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tailorkd.errors import TailorkdError
from tailorkd.evaluation.systems import current_key, label

# Report schemas this module reads: 1 (no intervals, texts_per_second on the system), 2 (cost block) and 3
# (adaptive KD keyed adaptive_kd; before, student).
READABLE_SCHEMAS = (1, 2, 3)


def load_report(run_dir: str | Path) -> dict[str, Any]:
    """The report.json of a run folder; a clear error naming the folder when it is missing, unreadable or of a
    schema this version cannot read."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise TailorkdError(f"{run_dir}: no report.json (not a run folder, or `tailorkd evaluate` has not run there)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TailorkdError(f"{path}: not readable JSON ({exc})") from exc
    schema = report.get("schema_version") if isinstance(report, dict) else None
    if schema not in READABLE_SCHEMAS:
        raise TailorkdError(f"{path}: report schema_version {schema!r} is unknown to this tailorkd (it reads "
                            f"{', '.join(map(str, READABLE_SCHEMAS))}); compare with the tailorkd that wrote it")
    if not isinstance(report.get("systems"), dict):
        raise TailorkdError(f"{path}: no systems in the report")
    return report


def _row(run: str, name: str, system: dict[str, Any]) -> dict[str, Any]:
    metrics = system["metrics"]
    cost = system.get("cost") or {}
    trainable = cost.get("trainable_parameters")
    if "cost" not in system:  # schema 1
        trainable = ((system.get("training") or {}).get("parameters") or {}).get("trainable")
    intervals = metrics.get("intervals") or {}
    # "system" is today's key, so rows of old and new reports line up; "label" is what people read.
    return {"run": run, "system": current_key(name), "label": label(name), "model": system.get("model"),
            "n": metrics.get("n"), "accuracy": metrics["accuracy"], "accuracy_ci": intervals.get("accuracy"),
            "macro_f1": metrics["macro_f1"], "macro_f1_ci": intervals.get("macro_f1"),
            "texts_per_second": cost.get("texts_per_second", system.get("texts_per_second")),
            "trainable_parameters": trainable}


def compare_rows(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per system of each run, runs in the given order. A run is named by its folder's name, or by
    the path as given when two folders share a name."""
    if not run_dirs:
        raise TailorkdError("name at least one run folder")
    reports = [(str(d), load_report(d)) for d in run_dirs]
    short = [Path(d).name or d for d, _ in reports]
    names = [s if short.count(s) == 1 else d for s, (d, _) in zip(short, reports)]
    return [_row(run, name, system) for run, (_, report) in zip(names, reports)
            for name, system in report["systems"].items()]


def _pct_ci(value: float, ci: dict[str, float] | None) -> str:
    return f"{100 * value:.2f}" + ("" if ci is None else f" [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]")


def render_comparison(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (percent; brackets: the 95% bootstrap interval where the report has one)."""
    lines = ["| run | system | accuracy [95% CI] | macro-F1 [95% CI] | texts/s | trainable parameters | n |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = "-" if r["texts_per_second"] is None else f"{r['texts_per_second']:.1f}"
        params = "-" if r["trainable_parameters"] is None else f"{r['trainable_parameters']:,}"
        lines.append(f"| {r['run']} | {r['label']} | {_pct_ci(r['accuracy'], r['accuracy_ci'])} | "
                     f"{_pct_ci(r['macro_f1'], r['macro_f1_ci'])} | {speed} | {params} | {r['n']} |")
    return "\n".join(lines) + "\n"
