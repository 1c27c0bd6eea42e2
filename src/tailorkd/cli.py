"""The ``tailorkd`` command. Each subcommand is a plain function; its docstring is its help.

Every recipe command takes ``key.sub=value`` overrides after the recipe path, e.g.
``tailorkd run recipes/bbc-news/x.yaml teacher.batch_size=4 data.splits.test_size=50``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tailorkd.errors import TailorkdError
from tailorkd.serve.command import add_serve_command


def _recipe(path: str, overrides: list[str]):
    from tailorkd.recipe import load_recipe

    return load_recipe(path, overrides)


def _summary_number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def print_summary(report: dict[str, Any], console: Any = None) -> None:
    """The test-set results at the end of a run, fitting an 80-column terminal: short system names and numbers
    only, then a legend (short name: the paper's name, model) wrapped to the terminal's width."""
    from rich.console import Console
    from rich.table import Table

    from tailorkd.evaluation import systems  # as a module: cli.py has a `label` command

    console = console or Console()
    # The model descriptions (one of them a sentence long) live in the legend: in the table they wrapped each
    # row over many lines and squeezed the headers to "sensitiv…". Cells fold rather than cut when narrower.
    table = Table(title=f"{report['recipe']['name']}: test set",
                  caption="percent, except texts/s (test texts per second)")
    table.add_column("system", overflow="fold")
    for col in ("accuracy", "macro-F1", "sensitivity", "specificity", "texts/s"):
        table.add_column(col, justify="right", overflow="fold")
    legend = Table.grid(padding=(0, 1))
    legend.add_column(no_wrap=True)
    legend.add_column(overflow="fold")
    for name, sys_ in report["systems"].items():
        m = sys_["metrics"]
        tps = (sys_.get("cost") or {}).get("texts_per_second")
        table.add_row(systems.short(name), *(_summary_number(None if m.get(k) is None else 100 * m[k], "{:.2f}")
                                     for k in ("accuracy", "macro_f1", "sensitivity", "specificity")),
                      _summary_number(tps, "{:.1f}"))
        legend.add_row(f"{systems.short(name)}:", f"{systems.label(name)}, {sys_['model']}")
    console.print(table)
    console.print(legend)
    guard = report.get("seed_guard")
    if guard and guard.get("reason"):
        console.print(f"seed guard: {guard['reason']}", soft_wrap=True)


def run(recipe: str, overrides: list[str], force: bool = False) -> None:
    """Run every stage of RECIPE: prepare data, label with the teacher, distil the student, evaluate.

    Work already done and still valid for the recipe is skipped (use --force to redo it).
    """
    from tailorkd import pipeline

    r = _recipe(recipe, overrides)
    report = pipeline.run(r, force=force)
    if report is None:  # a process other than the main one under a launcher: it reports nothing
        return
    print_summary(report)
    print(f"report: {r.output_dir}/report.md")


def validate(recipe: str, overrides: list[str]) -> None:
    """Check RECIPE (keys, types, files) and print it resolved, without running anything."""
    r = _recipe(recipe, overrides)
    print(r.to_yaml(), end="")
    print(f"# {recipe}: valid", file=sys.stderr)


def corpus(recipe: str, overrides: list[str], force: bool = False) -> None:
    """Build RECIPE's corpus: read the raw shards of its corpus section as a stream, clean, filter (rules,
    then relevance to the seeds), deduplicate (exact and MinHash LSH) and write the pool shards with their
    provenance and the funnel (<output_dir>/corpus/). Skipped when up to date.
    """
    from tailorkd import pipeline
    from tailorkd.stages.corpus import print_funnel

    funnel = pipeline.corpus(_recipe(recipe, overrides), force=force)
    if funnel is not None:
        print_funnel(funnel)


def prepare(recipe: str, overrides: list[str], force: bool = False) -> None:
    """Read RECIPE's data sources and write the seed / pool / test splits."""
    from tailorkd import pipeline

    data = pipeline.prepare(_recipe(recipe, overrides), force=force)
    print(json.dumps({"seed": len(data.seed), "pool": len(data.pool), "test": len(data.test),
                      "rejects": len(data.rejects)}))


def label(recipe: str, overrides: list[str], engine: str = "local", workers: int | None = None,
          ray_address: str | None = None, endpoint: list[str] | None = None, force: bool = False) -> None:
    """Label RECIPE's unlabelled pool and test set with the teacher (resumes where it stopped).

    Skipped when the labels are up to date; --force makes the teacher check, calibration, ensemble and
    summary again (the teacher's stored distributions are reused: delete labels.sqlite to score afresh).

    --engine ray: the texts are scored by --workers Ray actors, each holding one teacher (one GPU each when the
    cluster has GPUs; default: one actor per GPU, else 2), on the cluster at --ray-address (default: a running
    Ray, else a new local one); a served teacher's actors can ask several servers (--endpoint URL, repeated;
    one actor each by default). This process alone writes the label store, as the results arrive; then
    calibration, ensemble and summary follow here as usual. Needs `pip install 'tailorkd[ray]'`."""
    from tailorkd import distributed, pipeline

    ray_engine = None
    if engine == "ray":
        from tailorkd.ray_label import RayEngine

        if workers is not None and workers < 1:
            raise TailorkdError(f"tailorkd label: --workers must be at least 1, not {workers}")
        if distributed.is_distributed():
            raise TailorkdError("tailorkd label --engine ray runs in one process; start it without a launcher "
                                "(torchrun / accelerate launch)")
        ray_engine = RayEngine(workers=workers, address=ray_address, endpoints=tuple(endpoint or ()))
    elif workers is not None or ray_address is not None or endpoint:
        raise TailorkdError("tailorkd label: --workers, --ray-address and --endpoint go with --engine ray")
    summary = pipeline.label(_recipe(recipe, overrides), engine=ray_engine, force=force)
    if summary is None:  # not the main process
        return
    print(json.dumps({k: summary[k] for k in ("teacher", "pool_labelled", "test_labelled", "pool_predicted_counts")}))


def check_teacher(recipe: str, overrides: list[str]) -> None:
    """Judge RECIPE's teacher before it labels the pool: its accuracy and macro-F1 on the seeds (each scored by a
    prompt that does not show it) with 95% intervals, raw and calibrated, against chance, the majority class and
    the seed classifier (judged on balanced folds), and the class mix it gives a pool sample; a verdict (ok /
    weak / collapsed) with causes and remedies. Writes <output_dir>/teacher_check.json; the teacher's answers go
    into the label store, so a later `tailorkd label` reuses them. Runs the prompt search first when the recipe
    has one that is not done."""
    from tailorkd.stages.label import check_teacher as judge

    record = judge(_recipe(recipe, overrides))
    if record is None:  # not the main process
        return
    seeds = record["seeds"][record["judged_on"]]
    print(json.dumps({"verdict": record["verdict"], "seed_accuracy": seeds["accuracy"],
                      "seed_accuracy_interval": seeds["accuracy_interval"], "seed_macro_f1": seeds["macro_f1"],
                      "seed_classifier_accuracy": (record["seed_classifier"] or {}).get("accuracy"),
                      "pool_sample": record["pool_sample"]["predicted_counts"], "reasons": record["reasons"]}))


def distill(recipe: str, overrides: list[str], force: bool = False) -> None:
    """Train RECIPE's student on the teacher's labels; the seed guard then chooses what ships. Prints its folder
    and the guard's reason."""
    from tailorkd import pipeline
    from tailorkd.run_dir import RunDir

    r = _recipe(recipe, overrides)
    shipped = pipeline.distill(r, force=force)
    if shipped is None:  # a process other than the main one under a launcher
        return
    print(shipped)
    guard = RunDir(r).seed_guard_record()
    if guard and guard.get("reason"):
        print(f"seed guard: {guard['reason']}", file=sys.stderr)


def evaluate(recipe: str, overrides: list[str]) -> None:
    """Evaluate teacher and student on RECIPE's human-labelled test set; write report.md and report.json."""
    from tailorkd import pipeline

    report = pipeline.evaluate(_recipe(recipe, overrides))
    if report is not None:  # None: not the main process
        print_summary(report)


def compare(run_dirs: list[str], output: str | None = None) -> None:
    """Line up the systems of several runs from their report.json: run, system, accuracy and macro-F1 with
    their 95% bootstrap intervals, texts per second, trainable parameters. Printed as a markdown table;
    --output also writes it to a file.
    """
    from tailorkd.evaluation.compare import compare_rows, render_comparison
    from tailorkd.files import write_text_atomic

    table = render_comparison(compare_rows(run_dirs))
    print(table, end="")
    if output:
        write_text_atomic(Path(output), table)
        print(f"-> {output}", file=sys.stderr)


def _texts_from_jsonl(path: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file: one object a line with a non-empty string "text" (optional "id", "title")."""
    file = Path(path)
    if not file.is_file():
        raise TailorkdError(f"{file}: input file not found")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TailorkdError(f"{file}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise TailorkdError(f"{file}:{number}: expected an object with a non-empty string \"text\"")
        rows.append({"id": item.get("id", f"line-{number}"), "text": item["text"], "title": item.get("title")})
    if not rows:
        raise TailorkdError(f"{file}: no texts")
    return rows


def classify(recipe: str, overrides: list[str], text: list[str] | None = None, input_file: str | None = None,
             output: str | None = None) -> None:
    """Classify texts with RECIPE's trained student: per text its label, confidence (calibrated by the
    temperature fitted on the expert seeds after training), severity level (from the recipe's alerts.severity;
    "none" without it) and per-class probabilities, as JSON lines.

    Texts come from --text (repeatable) or --input FILE.jsonl (one {"text": ..., optional "id", "title"}
    a line). Printed, or with --output written to FILE.jsonl.
    """
    from tailorkd import pipeline
    from tailorkd.files import write_text_atomic

    if bool(text) == bool(input_file):
        raise TailorkdError("give the texts either with --text or with --input FILE.jsonl (one of them)")
    rows = [{"id": f"text-{i}", "text": t} for i, t in enumerate(text)] if text else _texts_from_jsonl(input_file)
    if any(not r["text"].strip() for r in rows):
        raise TailorkdError("--text: a text is empty")
    predictions = pipeline.classify(_recipe(recipe, overrides), rows)
    if predictions is None:  # not the main process
        return
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    if output:
        write_text_atomic(Path(output), lines)
        print(f"{len(predictions)} predictions -> {output}", file=sys.stderr)
    else:
        print(lines, end="")


def signals(recipe: str, inputs: list[str], overrides: list[str], out: str | None = None) -> None:
    """Score a feed of articles with RECIPE's trained student into crisis signals, aggregated per topic and day.

    INPUT: JSONL, JSONL.gz, Parquet or CSV files (or folders, or globs) with a text and a date per article,
    optionally a topic, a source and an id (column names: the recipe's signals.columns). Each article gets its
    label, calibrated confidence and severity; per topic and day: counts, the risk share and the severity
    index with their intervals, each label's estimated share with its interval (signals.quantifier), the
    trailing baseline, and alerts by the recipe's signals.rules (on the estimate or its interval:
    signals.alert_on), each saying how sure it is. Writes
    signals.sqlite, signals.parquet, daily.parquet, alerts.jsonl, rejects.jsonl and summary.json into --out
    (default: the run's signals/ folder). Rerunning adds nothing twice; a new day's file adds only its rows.
    """
    from tailorkd import pipeline

    summary = pipeline.signals(_recipe(recipe, overrides), inputs, out)
    if summary is not None:  # None: not the main process
        print(json.dumps({k: summary[k] for k in ("articles_read", "articles_scored_now", "articles_stored",
                                                  "rejected", "topics", "days", "alerts")}))


def export(recipe: str, out: str, overrides: list[str], check_input: str | None = None) -> None:
    """Write RECIPE's trained student to OUT as a standalone model folder that others load without tailorkd.

    lora: the adapter merged into the base; qlora: merged into the dequantised 4-bit base; full: the trained
    weights; none: the base. Always a Hugging Face folder (plain transformers loads it) with the tokenizer,
    tailorkd.json (labels, how their scores are read, the confidence temperature, the checks) and a model card
    README.md (labels, base model, teacher, data, the run's report.json results). An encoder student is also a
    sentence-transformers model (SentenceTransformer(OUT).encode(texts) gives the class logits; the head is in
    head.safetensors too) and ONNX graphs for ONNX Runtime, fp32 and int8 (onnx/); its fitted temperature is
    folded into the head. The ONNX graphs are checked against the PyTorch student on the run's test texts (or
    --check-input FILE.jsonl, one {"text": ..., optional "title"} a line): each must predict the same class
    for at least 99% (fp32) / 98% (int8) of them, or nothing is written. A causal-LM student gets no ONNX
    graph (tailorkd.json says why). A bottleneck student is refused: its adapters are non-linear and cannot be
    merged into the base.
    """
    from tailorkd import pipeline
    from tailorkd.model_card import agreement_text

    rows = _texts_from_jsonl(check_input) if check_input else None
    description = pipeline.export(_recipe(recipe, overrides), out, check_rows=rows)
    if description is None:  # not the main process
        return
    checks = (description.get("onnx") or {}).get("check") or {}
    agreement = "; ONNX agrees with the PyTorch student: " + ", ".join(
        f"{name} on {agreement_text(check)}" for name, check in checks.items()) if checks else ""
    print(f"{description['kind']} student ({description['adapter_method']}) -> {out}{agreement}")


def prompts_tune(recipe: str, overrides: list[str], force: bool = False) -> None:
    """Choose RECIPE's prompt on its expert seeds (the recipe's prompt_search section; defaults when absent).

    Candidates change one part of the best prompt so far (instruction wording, system prompt, label
    descriptions, number / draw / per-text kNN selection of shots, answer format); each is scored by the
    teacher's agreement with the seeds (a seed that is a shot is left out of its own prompt), until no
    change scores better or prompt_search.max_candidates are scored. Writes <output_dir>/prompts/
    (search.json, candidates.md, chosen_prompt.yaml) and recipe.tuned.yaml; later stages use the chosen
    prompt. Scores go into the label store: an interrupted search resumes.
    """
    from tailorkd import pipeline
    from tailorkd.recipe import PromptSearchConfig
    from tailorkd.run_dir import RunDir

    r = _recipe(recipe, overrides)
    if r.prompt_search is None:
        r = r.model_copy(update={"prompt_search": PromptSearchConfig()})
        print("the recipe has no prompt_search section: searching with the defaults (add the section so that "
              "`tailorkd run` uses the chosen prompt)")
    pipeline.prepare(r)
    payload = pipeline.tune_prompt(r, force=force)
    run_dir = RunDir(r)
    print(run_dir.search_table.read_text(encoding="utf-8"), end="")
    base, chosen = payload["base"]["metrics"], payload["chosen"]["metrics"]
    print(f"\nseeds ({payload['seeds']}): {payload['metric']} {base[payload['metric']]:.3f} (hand-written) -> "
          f"{chosen[payload['metric']]:.3f} (chosen); {len(payload['candidates'])} candidates, "
          f"{payload['teacher_calls']} teacher calls, {payload['seconds']:.0f}s; {payload['stopped_because']}")
    print(f"chosen prompt -> {run_dir.chosen_prompt}; recipe with it -> {run_dir.tuned_recipe}")


def models_list() -> None:
    """List the named offline models, whether their packages are installed and whether they are prepared."""
    from rich.console import Console
    from rich.table import Table

    from tailorkd.models import list_models

    table = Table(title="tailorkd models")
    for col in ("name", "kind", "installed", "prepared", "description"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m["name"], m["kind"], "yes" if m["installed"] else "no", "yes" if m["prepared"] else "no",
                      m["description"])
    Console().print(table)


def models_prepare(names: list[str], force: bool = False) -> None:
    """Convert the named packaged models once into the cache (when no name is given, every installed one: an
    optional model such as qwen2.5-coder-1.5b-instruct is installed by its own make target, or not)."""
    from tailorkd.models import REGISTRY, install_command, missing_requirements, prepare_model

    for name in names or list(REGISTRY):
        missing = missing_requirements(REGISTRY[name]) if not names else []
        if missing:
            print(f"{name}: not installed, skipped (`{install_command(missing)}` installs it)")
            continue
        print(f"{name}: {prepare_model(name, force=force)}")


def _run_label_store(recipe: str, overrides: list[str]) -> tuple[Path, dict[str, Any] | None]:
    """RECIPE's label store path and its labels_summary.json (None when the label stage has not finished)."""
    from tailorkd.run_dir import RunDir

    run_dir = RunDir(_recipe(recipe, overrides))
    if not run_dir.label_store.is_file():
        raise TailorkdError(f"{run_dir.label_store}: no label store yet; run `tailorkd label {recipe}` first")
    return run_dir.label_store, run_dir.read_json_if_exists(run_dir.labels_summary, "labels summary")


def labels_export(recipe: str, out: str, overrides: list[str], teacher: str | None = None, prompt: str | None = None,
                  everything: bool = False) -> None:
    """Export the teacher labels of RECIPE's run (<output_dir>/labels.sqlite) to OUT, .jsonl or .parquet.

    One row per text: text_id, text_hash, teacher, prompt, p_<label> per class, predicted, confidence,
    entropy, margin, seconds, reason. By default the labels of the teacher and prompt the run used (from
    labels_summary.json); --teacher / --prompt select others (either alone: every match), --all exports
    the whole store.
    """
    from tailorkd.labels import LabelStore

    store_path, summary = _run_label_store(recipe, overrides)
    if not everything and teacher is None and prompt is None:
        if summary is None:
            raise TailorkdError(f"{store_path.parent}: no labels summary (the label stage did not finish); name the "
                                "labels with --teacher / --prompt, or export them --all")
        teacher, prompt = summary["teacher"], summary["prompt"]["fingerprint"]
    with LabelStore(store_path) as store:
        n = store.export(out, teacher=teacher, prompt=prompt)
    print(f"{n} labels -> {out}")


def labels_stats(recipe: str, overrides: list[str]) -> None:
    """Summarise RECIPE's label store, per teacher and prompt.

    For each: the texts labelled (and how many have a reason), the predicted-label histogram, and mean
    confidence, entropy, margin and seconds per text. "(run)" marks the labels the run currently uses.
    """
    from tailorkd.labels import LabelStore

    store_path, summary = _run_label_store(recipe, overrides)
    current = (summary["teacher"], summary["prompt"]["fingerprint"]) if summary else None
    with LabelStore(store_path) as store:
        groups = store.stats()
    print(f"{store_path}: {sum(g['texts'] for g in groups)} labels, {len(groups)} teacher x prompt")
    for g in groups:
        mark = "  (run)" if (g["teacher"], g["prompt"]) == current else ""
        print(f"\nteacher    {g['teacher']}{mark}\nprompt     {g['prompt']}")
        print(f"texts      {g['texts']} ({g['with_reason']} with a reason)")
        print(f"mean       confidence {g['mean_confidence']:.4f}  entropy {g['mean_entropy']:.4f}  "
              f"margin {g['mean_margin']:.4f}  seconds/text {g['mean_seconds']:.4g}")
        print("predicted  " + "  ".join(f"{name} {n}" for name, n in g["predicted_counts"].items()))


def memory(model: str, adapter: str = "qlora", r: int = 64, target_modules: list[str] | None = None,
           weights_rule: str = "bnb") -> None:
    """Estimate the training memory of student MODEL (the paper's Table 3): full KD next to ADAPTER.

    MODEL is a shipped config (llama-2-7b, llama-2-13b, opt-1.3b, opt-13b, gpt2, gpt2-xl), a config.json,
    a model folder, a packaged model name or a Hub id. Only the config is read: the model is built on the
    meta device, so no weights are loaded. Weights, gradients, optimizer states and the fp32 copy are
    counted; activations are not.
    """
    from tailorkd.resources import compare_training_memory, render_memory_table

    full, other = compare_training_memory(model, adapter, r=r, target_modules=target_modules,
                                          weights_rule=weights_rule)
    print(render_memory_table(full, other, title=model), end="")


def _help(fn: Callable[..., Any]) -> tuple[str, str]:
    doc = inspect.getdoc(fn) or ""
    return doc.splitlines()[0], doc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailorkd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    for fn in (run, validate, corpus, prepare, label, distill, evaluate):
        short, long = _help(fn)
        p = sub.add_parser(fn.__name__, help=short, description=long,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("recipe", help="path to a recipe YAML")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
        if "force" in inspect.signature(fn).parameters:
            p.add_argument("--force", action="store_true", help="redo work even if it is up to date")
        if fn is label:
            p.add_argument("--engine", choices=["local", "ray"], default="local",
                           help="where the teacher scores the texts (default: local, this process)")
            p.add_argument("--workers", type=int, metavar="N",
                           help="ray: actors, one teacher each (default: one per GPU of the cluster, else 2)")
            p.add_argument("--ray-address", metavar="ADDR",
                           help="ray: the cluster to join (e.g. auto, ray://host:10001; default: a running "
                                "Ray, else a new local one)")
            p.add_argument("--endpoint", action="append", metavar="URL",
                           help="ray, served teacher: a server's base URL; repeat for several (actor i asks "
                                "endpoint i mod n)")
        p.set_defaults(func=fn)

    short, long = _help(check_teacher)
    ct = sub.add_parser("check-teacher", help=short, description=long,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ct.add_argument("recipe", help="path to a recipe YAML")
    ct.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    ct.set_defaults(func=check_teacher)

    short, long = _help(compare)
    cmp = sub.add_parser("compare", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (each with report.json)")
    cmp.add_argument("--output", metavar="FILE.md", help="also write the table to this file")
    cmp.set_defaults(func=compare)

    short, long = _help(classify)
    cl = sub.add_parser("classify", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    cl.add_argument("recipe", help="path to a recipe YAML (its run holds the trained student)")
    cl.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    cl.add_argument("--text", action="append", metavar="TEXT", help="a text to classify (repeatable)")
    cl.add_argument("--input", dest="input_file", metavar="FILE.jsonl",
                    help="texts to classify, one JSON object a line")
    cl.add_argument("--output", metavar="FILE.jsonl", help="write the predictions here instead of printing them")
    cl.set_defaults(func=classify)

    short, long = _help(signals)
    sg = sub.add_parser("signals", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    sg.add_argument("recipe", help="path to a recipe YAML (its run holds the trained student)")
    sg.add_argument("inputs", nargs="+", metavar="INPUT", help="feed files, folders or globs")
    sg.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
                    help="a recipe override (repeatable)")
    sg.add_argument("--out", metavar="DIR", help="output folder (default: <output_dir>/signals)")
    sg.set_defaults(func=signals)

    short, long = _help(export)
    ex = sub.add_parser("export", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("recipe", help="path to a recipe YAML")
    ex.add_argument("out", help="output folder (new or empty)")
    ex.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    ex.add_argument("--check-input", metavar="FILE.jsonl",
                    help="texts to check the ONNX export on (default: the run's test texts)")
    ex.set_defaults(func=export)

    add_serve_command(sub, _help)

    prompts = sub.add_parser("prompts", help="the teacher's prompt: search on the seeds")
    psub = prompts.add_subparsers(dest="prompts_command", required=True)
    short, long = _help(prompts_tune)
    pt = psub.add_parser("tune", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    pt.add_argument("recipe", help="path to a recipe YAML")
    pt.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    pt.add_argument("--force", action="store_true", help="search again even if the search is up to date")
    pt.set_defaults(func=prompts_tune)

    models = sub.add_parser("models", help="named offline models")
    msub = models.add_subparsers(dest="models_command", required=True)
    short, long = _help(models_list)
    msub.add_parser("list", help=short, description=long).set_defaults(func=models_list)
    short, long = _help(models_prepare)
    mp = msub.add_parser("prepare", help=short, description=long)
    mp.add_argument("names", nargs="*", help="registry names (default: all installed)")
    mp.add_argument("--force", action="store_true", help="convert again even if cached")
    mp.set_defaults(func=models_prepare)

    labels = sub.add_parser("labels", help="the run's teacher labels: export, statistics")
    lsub = labels.add_subparsers(dest="labels_command", required=True)
    short, long = _help(labels_export)
    le = lsub.add_parser("export", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    le.add_argument("recipe", help="path to a recipe YAML")
    le.add_argument("out", help="output file: .jsonl or .parquet")
    le.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    le.add_argument("--teacher", help="teacher identity (default: the run's)")
    le.add_argument("--prompt", help="prompt fingerprint (default: the run's)")
    le.add_argument("--all", dest="everything", action="store_true", help="every teacher and prompt in the store")
    le.set_defaults(func=labels_export)
    short, long = _help(labels_stats)
    ls = lsub.add_parser("stats", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("recipe", help="path to a recipe YAML")
    ls.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    ls.set_defaults(func=labels_stats)

    short, long = _help(memory)
    mem = sub.add_parser("memory", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    mem.add_argument("model", help="shipped config name, config.json, model folder, packaged model or Hub id")
    mem.add_argument("--adapter", choices=["full", "lora", "qlora"], default="qlora",
                     help="what to compare with full KD (default: qlora)")
    mem.add_argument("--r", type=int, default=64, help="LoRA rank (default: 64)")
    mem.add_argument("--target-modules", nargs="+", metavar="NAME",
                     help="modules to adapt, as PEFT names them, or all-linear (default: the attention projections)")
    mem.add_argument("--weights-rule", choices=["bnb", "paper"], default="bnb",
                     help="qlora weights as bitsandbytes holds them (default) or the paper's 0.5 byte/parameter")
    mem.set_defaults(func=memory)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.logging import RichHandler

    from tailorkd import distributed

    level = logging.DEBUG if args.verbose else logging.INFO
    if not distributed.is_main():
        # Under a launcher the main process reports; the others say only what goes wrong, and print nothing.
        level, sys.stdout = logging.WARNING, open(os.devnull, "w")
    logging.basicConfig(level=level, format="%(message)s" if distributed.world_size() == 1 else
                        f"[{distributed.rank()}] %(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=True)])
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes says at import that an optional CPU kernel package is missing: nothing to act on.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    kwargs = {k: v for k, v in vars(args).items() if k in inspect.signature(args.func).parameters}
    try:
        args.func(**kwargs)
    except TailorkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
