"""report.json (machine-readable, versioned) and report.md (for people) of one run."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tailorkd.evaluation.metrics import DEFINITIONS
from tailorkd.files import write_text_atomic

REPORT_SCHEMA_VERSION = 1
_PACKAGES = ("tailorkd", "torch", "transformers", "peft", "accelerate", "scikit-learn")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _markdown(report: dict[str, Any], recipe_yaml: str) -> str:
    systems = report["systems"]
    lines = [f"# tailorkd report: {report['recipe']['name']}", ""]
    lines += [f"Task: **{report['recipe']['task']}**. Recipe hash `{report['recipe']['hash']}`.", ""]
    lines += ["## Quality on the human-labelled test set", ""]
    lines += ["| system | model | accuracy | macro-F1 | sensitivity | specificity | texts/s |",
              "|---|---|---|---|---|---|---|"]
    for name, sys in systems.items():
        m = sys["metrics"]
        lines.append(f"| {name} | {sys['model']} | {_pct(m['accuracy'])} | {_pct(m['macro_f1'])} | "
                     f"{_pct(m['sensitivity'])} | {_pct(m['specificity'])} | {_num(sys.get('texts_per_second'))} |")
    lines.append("")
    if "student_vs_teacher" in report:
        cmp = report["student_vs_teacher"]
        agreement = systems["student"]["metrics"].get("agreement_with_teacher")
        lines += [f"Student / teacher: accuracy {_pct(cmp['accuracy_ratio'])}%, macro-F1 {_pct(cmp['macro_f1_ratio'])}%, "
                  f"speed {_num(cmp['speedup'], '{:.1f}')}x; the student agrees with the teacher on {_pct(agreement)}% of test texts.", ""]
    calibration = systems.get("teacher", {}).get("calibration")
    if calibration:
        raw = calibration["uncalibrated_metrics"]
        lines += ["## Teacher calibration", "",
                  f"Method **{calibration['method']}** ({calibration['chosen_because']}). Without it the teacher "
                  f"scores accuracy {_pct(raw['accuracy'])}, macro-F1 {_pct(raw['macro_f1'])} on the test set.", ""]
        if calibration.get("held_out_seeds"):
            lines += ["Held-out expert seeds (not few-shot examples), per method:", "",
                      "| method | accuracy | macro-F1 | seeds |", "|---|---|---|---|"]
            for name, c in calibration["held_out_seeds"].items():
                lines.append(f"| {name} | {_pct(c['accuracy'])} | {_pct(c['macro_f1'])} | {c['held_out_seeds']} |")
            lines.append("")
    if "student" in systems:
        tr = systems["student"].get("training", {})
        params = tr.get("parameters", {})
        if params:
            lines += ["## Student training", "",
                      f"- adapter: {systems['student']['adapter']}; trainable parameters {params['trainable']:,} of "
                      f"{params['total']:,} ({100 * params['trainable'] / max(params['total'], 1):.3f}%)",
                      f"- {tr.get('train_examples', '-')} teacher-labelled texts, {tr.get('steps', '-')} steps in "
                      f"{_num(tr.get('train_seconds'))} s, final training loss {_num(tr.get('train_loss'), '{:.4f}')}"]
            if tr.get("peak_memory"):
                pm = tr["peak_memory"]
                lines.append(f"- peak memory while training: {pm['process_peak_gb']:.2f} GB for the process, "
                             f"{pm['added_by_training_gb']:.2f} GB added by training ({pm['source']})")
            lines.append("")
    lines += ["## Per class", ""]
    for name, sys in systems.items():
        lines += [f"**{name}**", "", "| class | precision | recall | F1 | specificity | support |", "|---|---|---|---|---|---|"]
        for cls, c in sys["metrics"]["per_class"].items():
            lines.append(f"| {cls} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | "
                         f"{_pct(c['specificity'])} | {c['support']} |")
        cm = sys["metrics"]["confusion_matrix"]
        lines += ["", "Confusion matrix (rows: human label, columns: predicted):", "",
                  "| | " + " | ".join(cm["labels"]) + " |", "|---" * (len(cm["labels"]) + 1) + "|"]
        for cls, row in zip(cm["labels"], cm["rows_true_cols_predicted"]):
            lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()] + [""]
    data = report.get("data") or {}
    if data:
        lines += ["## Data", "", "```json", json.dumps(data, indent=2, default=str), "```", ""]
    if report.get("prompt"):
        lines += ["## Teacher prompt", "", f"Format: {report['prompt']['format']}; "
                  f"{len(report['prompt']['shots'])} few-shot examples; fingerprint `{report['prompt']['fingerprint']}`.",
                  "", "```", report["prompt"]["example"], "```", ""]
    if report.get("timings_seconds"):
        lines += ["## Time", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in report["timings_seconds"].items()] + [""]
    lines += ["## Versions", ""] + [f"- {k} {v}" for k, v in report["versions"].items()] + [""]
    lines += ["## Recipe", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], recipe: Any, out_dir: str | Path) -> dict[str, Any]:
    """Add schema version and versions, write report.json and report.md into ``out_dir``; return the report."""
    out_dir = Path(out_dir)
    report = {"schema_version": REPORT_SCHEMA_VERSION, **report, "versions": _versions()}
    recipe_yaml = recipe.to_yaml()
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out_dir / "report.md", _markdown(report, recipe_yaml))
    return report
