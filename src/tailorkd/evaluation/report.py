"""report.json (machine-readable, versioned) and report.md (for people) of one run."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tailorkd.evaluation.figures import write_figures
from tailorkd.evaluation.metrics import DEFINITIONS, HEADLINE
from tailorkd.evaluation.systems import KNOWN_SYSTEMS, current_key, label
from tailorkd.files import write_text_atomic

# 2: per-system "cost" block (texts_per_second moved there), bootstrap "intervals" and "calibration" (ECE) in
# each system's metrics, "vs_teacher" per system (was "student_vs_teacher"), "figures", "definitions".
# 3: the adaptive-KD system is keyed "adaptive_kd" (was "student") in systems, vs_teacher, by_language, figures
# and predictions/.
REPORT_SCHEMA_VERSION = 3
_PACKAGES = ("tailorkd", "torch", "transformers", "peft", "accelerate", "scikit-learn", "numpy", "matplotlib")


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


def _with_interval(metrics: dict[str, Any], key: str) -> str:
    """"81.00 [75.50, 86.00]": the value and its bootstrap interval, in percent."""
    ci = (metrics.get("intervals") or {}).get(key)
    value = _pct(metrics.get(key))
    return value if ci is None else f"{value} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]"


def _count(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _quality_table(systems: dict[str, Any]) -> list[str]:
    lines = ["| system | model | accuracy | macro-F1 | sensitivity | specificity | ECE | n |",
             "|---|---|---|---|---|---|---|---|"]
    for name, sys in systems.items():
        m = sys["metrics"]
        ece = (m.get("calibration") or {}).get("ece")
        lines.append(f"| {label(name)} | {sys['model']} | " + " | ".join(_with_interval(m, k) for k in HEADLINE)
                     + f" | {_pct(ece)} | {m['n']} |")
    return lines


def _cost_table(systems: dict[str, Any]) -> list[str]:
    lines = ["| system | texts/s | latency median (s/text) | latency p95 (s/text) | trainable parameters | "
             "peak training memory (GB) | training time (s) |", "|---|---|---|---|---|---|---|"]
    for name, sys in systems.items():
        c = sys.get("cost") or {}
        latency = c.get("latency_seconds") or {}
        memory = c.get("peak_training_memory_gb")
        memory_text = "-" if memory is None else f"{memory:.2f} ({c.get('memory_source', '?')})"
        lines.append(f"| {label(name)} | {_num(c.get('texts_per_second'))} | {_seconds(latency.get('median'))} | "
                     f"{_seconds(latency.get('p95'))} | {_count(c.get('trainable_parameters'))} | {memory_text} | "
                     f"{_num(c.get('training_seconds'))} |")
    return lines


def _systems_section(systems: dict[str, Any]) -> list[str]:
    """What each system is, under the paper's name, with the key its predictions file and report.json use."""
    lines = ["## Systems", ""]
    for name in systems:
        known = KNOWN_SYSTEMS.get(current_key(name))
        lines.append(f"- **{label(name)}** (`{name}`)" + (f": {known.description}" if known else ""))
    return lines + [""]


def _teacher_check_section(check: dict[str, Any] | None) -> list[str]:
    """The teacher judged on the seeds and a pool sample before it labelled the pool (teacher_check.json)."""
    if not check:
        return []

    def judged(j: dict[str, Any] | None, key: str) -> str:
        if not j or j.get(key) is None:
            return "-"
        ci = j[f"{key}_interval"]
        return f"{_pct(j[key])} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]"

    seeds = check["seeds"]
    lines = ["## Teacher check", "",
             f"Verdict: **{check['verdict']}** (judged {check['judged_on']}; on failure: {check['on_failure']}). "
             f"Seeds judged: {seeds['n']} of {seeds['of']}, each by a prompt that does not show it; chance "
             f"{_pct(seeds['chance'])}, majority class {_pct(seeds['majority_rate'])}. Percent; brackets: 95% "
             "interval (accuracy: Wilson; macro-F1: bootstrap over the seeds).", "",
             "| judged | accuracy | macro-F1 | seeds |", "|---|---|---|---|"]
    rows = [("teacher, raw", seeds["raw"]), ("teacher, calibrated", seeds.get("calibrated")),
            ("seed classifier (balanced folds)", check.get("seed_classifier"))]
    lines += [f"| {name} | {judged(j, 'accuracy')} | {judged(j, 'macro_f1')} | {j['n']} |" for name, j in rows if j]
    sample = check["pool_sample"]
    lines += ["", f"Predicted classes of a pool sample ({sample['n']} texts): " + "; ".join(
        f"{kind} " + ", ".join(f"{c} {n}" for c, n in mix.items()) for kind, mix in sample["predicted_counts"].items())
        + ".", ""]
    notes = [f"- {reason}" for reason in check.get("reasons", [])]
    if check.get("fallback"):
        notes.append("- The seed classifier labelled pool and test in the teacher's place: "
                     f"{check['fallback']['model']}.")
    return lines + (notes + [""] if notes else [])


def _seed_guard_section(guard: dict[str, Any] | None) -> list[str]:
    """What the seed guard chose to ship among the run's candidates, and why (students/seed_guard.json)."""
    if not guard or guard.get("version", 1) < 2:
        return []
    lines = ["## Seed guard", "", f"**{guard['reason']}.**", ""]
    folds = guard["folds"]
    lines += [f"Each candidate was judged on the seeds by cross-fitting: {folds['k']} folds, each seed predicted by "
              f"models refitted without it ({folds['refitted']}; not refitted: {folds['not_refitted']}); "
              f"{folds['judged_seeds']} of {folds['of']} seeds judged by every candidate. A candidate replaces the "
              f"first choice only when it scores higher in at least {100 * guard['switch_probability']:.0f}% of the "
              "paired bootstrap draws. Percent; brackets: 95% interval.", "",
              "| candidate | learns from | cross-fitted macro-F1 | accuracy | vs first choice (P higher) | collapsed |",
              "|---|---|---|---|---|---|"]
    for name, entry in guard["candidates"].items():
        j = entry.get("judgement")
        f1 = (f"{_pct(j['macro_f1'])} [{100 * j['macro_f1_interval']['low']:.1f}, "
              f"{100 * j['macro_f1_interval']['high']:.1f}]") if j else "-"
        accuracy = _pct(j["accuracy"]) if j else "-"
        c = guard.get("comparisons", {}).get(name)
        versus = f"{100 * c['macro_f1_difference']:+.1f} ({100 * c['probability_better']:.0f}%)" if c else "-"
        shipped = " (shipped)" if name == guard.get("shipped") else ""
        learns = entry.get("learns_from") or ("teacher" if entry["uses_teacher"] else "seeds")
        state = "; ".join(entry["collapsed"]) or "no"
        if name in (guard.get("vetoed") or {}):
            state += "; barred: the teacher check did not find the teacher ok (weak_teacher: seeds_only)"
        lines.append(f"| {entry['label']}{shipped} | {learns} | {f1} | {accuracy} | {versus} | {state} |")
    for name, why in (guard.get("left_out") or {}).items():
        lines.append(f"| {name} | - | - | - | - | left out: {why} |")
    seconds = guard.get("seconds") or {}
    if seconds:
        made = seconds.get("cross_fitting_when_made") or {}
        each = ", ".join(f"{n} {v:.0f} s" for n, v in made.items())
        lines += ["", f"The guard took {seconds['total']:.0f} s ({seconds['cross_fitting']:.0f} s cross-fitting"
                  + (f"; the cross-fitting of each candidate when it was made: {each}" if each else "") + ")."]
    return lines + [""]


def _markdown(report: dict[str, Any], recipe_yaml: str) -> str:
    systems = report["systems"]
    figures = report.get("figures") or {}
    lines = [f"# tailorkd report: {report['recipe']['name']}", ""]
    lines += [f"Task: **{report['recipe']['task']}**. Recipe hash `{report['recipe']['hash']}`. "
              f"Report schema {report['schema_version']}.", ""]
    lines += _systems_section(systems)
    lines += _teacher_check_section(report.get("teacher_check"))
    lines += _seed_guard_section(report.get("seed_guard"))
    any_ci = next((s["metrics"]["intervals"] for s in systems.values() if s["metrics"].get("intervals")), None)
    lines += ["## Quality on the human-labelled test set (Table 2)", ""]
    if any_ci:
        lines += [f"Percent; brackets: {100 * any_ci['level']:g}% bootstrap interval ({any_ci['resamples']} "
                  f"resamples, seed {any_ci['seed']}). ECE: expected calibration error of the confidences.", ""]
    lines += _quality_table(systems) + [""]
    vs_teacher = report.get("vs_teacher") or {}
    if vs_teacher:
        lines += ["## Each system against the teacher", "",
                  "| system | agreement | Cohen's kappa | accuracy / teacher | macro-F1 / teacher | speed-up |",
                  "|---|---|---|---|---|---|"]
        for name, cmp in vs_teacher.items():
            m = systems[name]["metrics"]
            lines.append(f"| {label(name)} | {_pct(m.get('agreement_with_teacher'))} | "
                         f"{_num(m.get('kappa_with_teacher'), '{:.3f}')} | {_pct(cmp['accuracy_ratio'])}% | "
                         f"{_pct(cmp['macro_f1_ratio'])}% | {_num(cmp['speedup'], '{:.1f}x')} |")
        lines.append("")
    lines += ["## Cost (Table 3)", ""] + _cost_table(systems) + [""]
    if figures:
        lines += ["## Figures", ""]
        if figures.get("cost_quality"):
            lines += [f"![Cost vs quality]({figures['cost_quality']})", ""]
        if figures.get("reliability"):
            lines += [f"![Reliability diagram]({figures['reliability']})", ""]
        for name, path in (figures.get("confusion_matrix") or {}).items():
            lines.append(f"- [{label(name)}: confusion matrix]({path})")
        lines.append("")
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
    confident = {name: s for name, s in systems.items() if s.get("confidence")}
    if confident:
        lines += ["## Student confidence", "",
                  "Each student's logits are divided by a temperature fitted on the expert seeds it never saw "
                  "(temperature scaling, Laplace-smoothed); the predicted class, so accuracy, is unchanged.", "",
                  "| system | temperature | seeds | ECE before | ECE after |", "|---|---|---|---|---|"]
        for name, s in confident.items():
            c = s["confidence"]
            after = (s["metrics"].get("calibration") or {}).get("ece")
            lines.append(f"| {label(name)} | {_num(c.get('temperature'), '{:.3f}')} | {c.get('n')} | "
                         f"{_pct(c.get('uncalibrated_ece'))} | {_pct(after)} |")
        lines.append("")
        lines += [f"- **{label(name)}**: {s['confidence']['warning']}." for name, s in confident.items()
                  if s["confidence"].get("warning")]
        if any(s["confidence"].get("warning") for s in confident.values()):
            lines.append("")
    languages = report.get("by_language")
    if languages:
        names = [k for k in next(iter(languages.values())) if k != "n"]
        lines += ["## By language", "", "Accuracy (macro-F1) on the test texts of each language.", "",
                  "| language | texts | " + " | ".join(label(n) for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for lang, entry in languages.items():
            lines.append(f"| {lang} | {entry['n']} | " + " | ".join(
                f"{_pct(entry[n]['accuracy'])} ({_pct(entry[n]['macro_f1'])})" for n in names) + " |")
        lines.append("")
    search = report.get("prompt_search")
    if search:
        seeds, test = search["seeds"], search["test"]
        lines += ["## Prompt search", "",
                  f"{search['candidates']} candidate prompts in {search['rounds']} rounds, {search['teacher_calls']} "
                  f"teacher calls, {search['seconds']:.0f} s, ranked by seed {search['metric']} "
                  f"({search['stopped_because']}). Test scores: {search['test_note']}.", "",
                  "| prompt | seeds accuracy | seeds macro-F1 | test accuracy | test macro-F1 |",
                  "|---|---|---|---|---|"]
        for key, name in (("hand_written", "hand-written"), ("chosen", "chosen")):
            t = test.get(key) or {}
            lines.append(f"| {name} | {_pct(seeds[key]['accuracy'])} | {_pct(seeds[key]['macro_f1'])} | "
                         f"{_pct(t.get('accuracy'))} | {_pct(t.get('macro_f1'))} |")
        changed = {k: v for k, v in search["chosen_parts"].items() if search["hand_written_parts"].get(k) != v}
        lines += ["", "Changed parts: " + (", ".join(f"{k} = {json.dumps(v)}" for k, v in changed.items())
                                           if changed else "none (the hand-written prompt scored best)") + ".", ""]
    for name, sys in systems.items():
        tr = sys.get("training") or {}
        params = tr.get("parameters", {})
        if not params:
            continue
        lines += [f"## Training: {label(name)}", "",
                  f"- adapter: {sys.get('adapter', '-')}; trainable parameters {params['trainable']:,} of "
                  f"{params['total']:,} ({100 * params['trainable'] / max(params['total'], 1):.3f}%)",
                  f"- {tr.get('train_examples', '-')} teacher-labelled texts, {tr.get('steps', '-')} steps in "
                  f"{_num(tr.get('train_seconds'))} s, final training loss {_num(tr.get('train_loss'), '{:.4f}')}"]
        if tr.get("peak_memory"):
            pm = tr["peak_memory"]
            lines.append(f"- peak memory while training: {pm['process_peak_gb']:.2f} GB for the process, "
                         f"{pm['added_by_training_gb']:.2f} GB added by training ({pm['source']})")
        lines.append("")
    severity = {name: sys["severity_counts"] for name, sys in systems.items() if sys.get("severity_counts")}
    if severity:
        lines += ["## Alert severity", "", "Texts per severity level (rows) and human label (columns), from the "
                  "recipe's `alerts.severity` mapping of (predicted label, confidence).", ""]
        for name, counts in severity.items():
            truths = list(next(iter(counts.values())))
            lines += [f"**{label(name)}**", "", "| severity | " + " | ".join(truths) + " |",
                      "|---" * (len(truths) + 1) + "|"]
            lines += [f"| {level} | " + " | ".join(str(row[t]) for t in truths) + " |" for level, row in counts.items()]
            lines.append("")
    lines += ["## Per class", ""]
    for name, sys in systems.items():
        lines += [f"**{label(name)}**", "", "| class | precision | recall | F1 | specificity | support |",
                  "|---|---|---|---|---|---|"]
        for cls, c in sys["metrics"]["per_class"].items():
            lines.append(f"| {cls} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | "
                         f"{_pct(c['specificity'])} | {c['support']} |")
        cm = sys["metrics"]["confusion_matrix"]
        lines += ["", "Confusion matrix (rows: human label, columns: predicted):", "",
                  "| | " + " | ".join(cm["labels"]) + " |", "|---" * (len(cm["labels"]) + 1) + "|"]
        for cls, row in zip(cm["labels"], cm["rows_true_cols_predicted"]):
            lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()] + [""]
    lines += _corpus_section(report.get("corpus"))
    data = report.get("data") or {}
    if data:
        lines += ["## Data", "", "```json", json.dumps(data, indent=2, default=str), "```", ""]
    if report.get("prompt"):
        knn = report["prompt"].get("knn")
        shots = (f"{knn['k']} few-shot examples per text, the seeds nearest to it ({knn['encoder']})" if knn
                 else f"{len(report['prompt']['shots'])} few-shot examples")
        lines += ["## Teacher prompt", "", f"Format: {report['prompt']['format']}; "
                  f"{shots}; fingerprint `{report['prompt']['fingerprint']}`.",
                  "", "```", report["prompt"]["example"], "```", ""]
    if report.get("timings_seconds"):
        lines += ["## Time", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in report["timings_seconds"].items()] + [""]
    lines += ["## Versions", ""] + [f"- {k} {v}" for k, v in report["versions"].items()] + [""]
    lines += ["## Recipe", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def _corpus_section(funnel: dict[str, Any] | None) -> list[str]:
    """The corpus stage's funnel (corpus/funnel.json): texts after each step, overall and per topic, then
    per language."""
    if not funnel:
        return []
    from tailorkd.corpus.build import funnel_rows

    lines = ["## Corpus", "", f"{funnel['kept']:,} of {funnel['overall']['read']:,} texts kept "
             f"({100 * (funnel['kept_share'] or 0):.1f}%); texts after each step."]
    relevance = funnel.get("relevance")
    if relevance:
        lines[-1] += f" Relevance threshold {relevance['threshold']:.3f} ({relevance['chosen_by']})."
    for breakdown in ("topic", "language"):
        header, rows = funnel_rows(funnel, breakdown)
        lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def write_report(report: dict[str, Any], recipe: Any, out_dir: str | Path) -> dict[str, Any]:
    """Add schema version, definitions and versions, draw the figures (``<out_dir>/figures/``), write
    report.json and report.md into ``out_dir``; return the report."""
    out_dir = Path(out_dir)
    report = {"schema_version": REPORT_SCHEMA_VERSION, **report, "definitions": dict(DEFINITIONS),
              "versions": _versions()}
    funnel = out_dir / "corpus" / "funnel.json"  # RunDir.funnel of the run in out_dir
    if getattr(recipe, "corpus", None) is not None and funnel.is_file():
        report["corpus"] = json.loads(funnel.read_text(encoding="utf-8"))
    report["figures"] = write_figures(report, out_dir)
    recipe_yaml = recipe.to_yaml()
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out_dir / "report.md", _markdown(report, recipe_yaml))
    return report
