"""Student bodies compared on the CPU: training time and ONNX int8 throughput of the same student on other encoders.

For each body (default: minilm-l6, all-MiniLM-L6-v2, 22M parameters, and mpnet-base, all-mpnet-base-v2, 110M), in
one process at the same thread count, with the recipe's task, adapter and distill settings (default: the
financial-tone mpnet recipe: LoRA, batch 16, learning rate 1e-3, max_length 96):

  train      an encoder student on the first ``--train-texts`` pool texts for ``--epochs`` epochs (no validation
             split), on the same targets for every body: the seed classifier's decisions (logistic regression
             on ``--target-encoder`` embeddings of the seeds, the recipe's ensemble member), 0.9 on its class
             and the rest spread evenly. Not the teacher: it would take minutes, and the time does not depend
             on the targets. Not the classifier's soft distributions either: one epoch on those leaves students
             too unsure to judge int8 rounding on (MPNet's median top-two margin 0.08, against 0.24 on these);
             ``distill_student``'s own ``train_seconds``;
  export     the adapter merged, ``onnx_student.export_onnx`` (fp32 + int8, as ``tailorkd export`` writes them),
             and the graphs' agreement with the PyTorch student on ``--check-texts`` test texts, measured as the
             export's check does, without refusing: whether ``tailorkd export`` would accept them is recorded;
  onnx_int8 / onnx_fp32  ``OnnxClassifier`` on the run's test texts (texts tokenized once, sorted by length
             into batches of the recipe's evaluation.batch_size): texts / wall-clock seconds;
  teacher    the recipe's teacher scoring the first ``--teacher-texts`` test texts (``LocalTeacher.score``: its
             prompt with the recipe's few-shot examples), for the texts/s ratio the issue sets (int8 >= 50x).

The inference systems take turns within each repeat (the bodies' graphs, then the teacher), so load from other
jobs on a shared machine falls on all of them alike; compare ratios from one run only.

    .venv/bin/python benchmarks/student_body.py                      # needs `make install-mpnet`; ~20 min on 2 cores
    .venv/bin/python benchmarks/student_body.py --train-texts 64 --repeats 1 --teacher-texts 4   # a smoke run
    .venv/bin/python benchmarks/student_body.py --reuse-students   # the students an earlier run trained
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would be timed with the student

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "financial-tone" / "gemma3-270m_to_mpnet-base_lora.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "student_body.json"
DEFAULT_WORK = Path("/tmp") / "tailorkd_bench_student_body"
TARGETS = {"onnx_int8_over_teacher": 50.0}  # issue 29 (as issue 16 for MiniLM), texts/s

DEFINITIONS = {
    "train_seconds": "distill_student's train_seconds: the Trainer's wall-clock time over train_texts texts for "
                     "epochs epochs (adapter attached, no validation split), model loading and saving excluded",
    "train_texts_per_s": "train_texts * epochs / train_seconds",
    "texts_per_s": "texts / wall-clock seconds of one call over all test texts (tokenization included), summed "
                   "over the repeats",
    "agreement_with_pytorch": "export check: share of check texts whose predicted class equals the PyTorch "
                              "student's",
    "ratios": "from this run only: one body's number divided by the other's, or a body's int8 texts/s over the "
              "teacher's",
    "teacher": "LocalTeacher.score on the first teacher_texts test texts (its prompt and the recipe's few-shot "
               "examples)",
}


def timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def train_and_export(body: str, recipe, rows, targets, test, check_texts: int | None, shots, epochs: float, work: Path,
                     reuse: bool) -> tuple[dict[str, Any], list[str], dict[str, Path], Any]:
    """Train a student on ``body`` (or, with ``reuse``, load the one an earlier run left) and write its ONNX graphs:
    (what was measured, the test texts as the student reads them, {precision: graph}, the tokenizer).

    The graphs are ``onnx_student.export_onnx``'s (the adapter merged first, as ``tailorkd export`` does); their
    agreement with the PyTorch student is measured as ``check_export`` does, without refusing: whether ``tailorkd
    export`` would accept them is recorded (``passes_export_check``)."""
    from transformers import set_seed

    from tailorkd.distill import distill_student
    from tailorkd.onnx_student import MIN_AGREEMENT, OnnxClassifier, agreement, export_onnx
    from tailorkd.students import build_student, load_student, predict_probs, read_student_info

    config = recipe.student.model_copy(update={"model": body, "kind": "encoder"})
    folder = work / body.replace("/", "_") / "student"
    reused = reuse and (folder / "student.json").is_file()
    if reused:
        student = load_student(folder, recipe.task, recipe.prompt, shots, config)
        summary = read_student_info(folder)["summary"]
    else:
        distill = recipe.distill.model_copy(update={"epochs": epochs, "validation_fraction": 0.0,
                                                    "early_stopping_patience": None})
        shutil.rmtree(folder.parent, ignore_errors=True)
        set_seed(recipe.seed)
        student = build_student(config, recipe.task, recipe.prompt, shots, adapter_method=recipe.adapter.method)
        summary = distill_student(student, rows, targets, recipe.adapter, distill, folder, seed=recipe.seed,
                                  info={"base_model": body}, resume=False)
    if hasattr(student.transformer, "merge_and_unload"):  # LoRA: folded into the weights, as an export does
        student.transformer = student.transformer.merge_and_unload()
    encoder = student.transformer
    check = test[:check_texts]
    expected = predict_probs(student, check, 16, desc=f"{body}: check")
    export_dir = folder.parent / "onnx_graphs"
    shutil.rmtree(export_dir, ignore_errors=True)
    export_seconds, files = timed(lambda: export_onnx(student.model, student.tokenizer, export_dir))
    graphs = {precision: export_dir / rel for precision, rel in files.items()}
    texts = [student.input_text(row) for row in check]
    checks = {}
    for precision, path in graphs.items():
        probs = OnnxClassifier(path, student.tokenizer, config.max_length).probs(texts, 16)
        share = agreement(expected, probs)
        checks[precision] = {"agreement": share, "agreed": int(round(share * len(texts))), "texts": len(texts),
                             "max_abs_probability_difference": float(np.abs(probs - expected).max()),
                             "passes_export_check": share >= MIN_AGREEMENT[precision]}
    ranked = np.sort(expected, 1)
    return {
        "model": body,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "hidden_size": encoder.config.hidden_size,
        "layers": encoder.config.num_hidden_layers,
        "train_texts": summary["train_examples"],
        "epochs": epochs,
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "train_texts_per_s": summary["train_examples"] * epochs / summary["train_seconds"],
        "train_loss": summary.get("train_loss"),
        "trained_in_an_earlier_run": reused,
        "export_seconds": export_seconds,
        "export_check": checks,
        "check_top_two_margin_median": float(np.median(ranked[:, -1] - ranked[:, -2])),
        "onnx_int8_mb": round(graphs["int8"].stat().st_size / 1e6, 1),
    }, [student.input_text(row) for row in test], graphs, student.tokenizer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="task, data, teacher, adapter, distill settings")
    parser.add_argument("--bodies", nargs="+", default=["minilm-l6", "mpnet-base"],
                        help="student encoders (registry names or folders); ratios are against the first")
    parser.add_argument("--train-texts", type=int, default=400)
    parser.add_argument("--target-encoder", default="minilm-l6", help="the seed classifier's encoder (the targets)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--check-texts", type=int, default=None,
                        help="test texts the graphs are checked on (default: all, as `tailorkd export` checks a run)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--teacher-texts", type=int, default=16, help="texts the teacher scores per repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK), help="run data, students and exports go here")
    parser.add_argument("--reuse-students", action="store_true",
                        help="load the students an earlier run left in --work-dir (their training time is that run's)")
    parser.add_argument("--output", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    from tailorkd import pipeline
    from tailorkd.onnx_student import OnnxClassifier
    from tailorkd.prompts import fixed_shots
    from tailorkd.recipe import load_recipe
    from tailorkd.resources import describe_machine
    from tailorkd.teachers import LocalTeacher
    from tailorkd.teachers.seed_classifier import LogisticSeedModel

    info = describe_machine(packages=("onnxruntime", "sentence_transformers"))
    work = Path(args.work_dir)
    recipe = pipeline.resolve_prompt(load_recipe(args.recipe, [f"output_dir={work / 'run'}"]))
    data = pipeline.prepare(recipe)
    names = recipe.task.label_names
    rows = data.rows("pool")[: args.train_texts]
    test = data.rows("test")
    seeds = data.rows("seed")
    shots = fixed_shots(recipe.prompt, seeds, names, recipe.seed)
    decided = LogisticSeedModel(seeds, args.target_encoder, names, recipe.seed).fit()(rows).argmax(1)
    targets = np.full((len(rows), len(names)), 0.1 / (len(names) - 1))
    targets[np.arange(len(rows)), decided] = 0.9

    batch_size = recipe.evaluation.batch_size
    bodies, graphs = {}, {}
    for body in args.bodies:
        bodies[body], texts, files, tokenizer = train_and_export(body, recipe, rows, targets, test, args.check_texts,
                                                                 shots, args.epochs, work, args.reuse_students)
        for precision in ("int8", "fp32"):
            graphs[(body, precision)] = (OnnxClassifier(files[precision], tokenizer, recipe.student.max_length,
                                                        threads), texts)
    teacher = LocalTeacher(recipe.teacher, recipe.task, recipe.prompt, shots)
    teacher_rows = test[: args.teacher_texts]
    for graph, texts in graphs.values():  # warm-up: first calls allocate and pick kernels
        graph.probs(texts[:batch_size], batch_size)
    teacher.score(teacher_rows[:2])

    seconds = {key: 0.0 for key in graphs}
    teacher_seconds, teacher_texts = 0.0, 0
    start_all = time.perf_counter()
    for repeat in range(args.repeats):
        for key, (graph, texts) in graphs.items():
            took, _ = timed(lambda graph=graph, texts=texts: graph.probs(texts, batch_size))
            seconds[key] += took
        took, _ = timed(lambda: teacher.score(teacher_rows))
        teacher_seconds += took
        teacher_texts += len(teacher_rows)
        print(f"repeat {repeat + 1}/{args.repeats} done ({time.perf_counter() - start_all:.0f}s)", flush=True)

    teacher_tps = teacher_texts / teacher_seconds
    for (body, precision), total in seconds.items():
        bodies[body][f"onnx_{precision}"] = {"texts_per_s": args.repeats * len(test) / total, "seconds": total}
    base = args.bodies[0]
    ratios: dict[str, float] = {}
    targets_met: dict[str, Any] = {}
    for body, measured in bodies.items():
        int8 = measured["onnx_int8"]["texts_per_s"]
        ratios[f"onnx_int8_over_teacher[{body}]"] = int8 / teacher_tps
        targets_met[f"onnx_int8_over_teacher[{body}]"] = {
            "target": TARGETS["onnx_int8_over_teacher"], "measured": int8 / teacher_tps,
            "met": int8 / teacher_tps >= TARGETS["onnx_int8_over_teacher"]}
        if body != base:
            ratios[f"train_seconds[{body}]_over[{base}]"] = measured["train_seconds"] / bodies[base]["train_seconds"]
            ratios[f"onnx_int8_texts_per_s[{base}]_over[{body}]"] = bodies[base]["onnx_int8"]["texts_per_s"] / int8
    info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "student_body",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "recipe": _shown(Path(args.recipe)),
        "settings": {"targets": f"the seed classifier's class (logistic regression on {args.target_encoder} "
                                f"embeddings of {len(seeds)} seeds), 0.9 on it",
                     "target_classes": {name: int((decided == i).sum()) for i, name in enumerate(names)},
                     "adapter": recipe.adapter.method, "max_length": recipe.student.max_length,
                     "batch_size": recipe.distill.batch_size, "learning_rate": recipe.distill.learning_rate,
                     "epochs": args.epochs, "train_texts": len(rows), "test_texts": len(test),
                     "inference_batch_size": batch_size, "repeats": args.repeats, "threads": threads,
                     "mean_tokens_per_test_text": {body: float(np.mean([len(ids) for ids in graph.tokenizer(
                         texts, truncation=True, max_length=graph.max_length)["input_ids"]]))
                         for (body, precision), (graph, texts) in graphs.items() if precision == "int8"}},
        "bodies": bodies,
        "teacher": {"model": recipe.teacher.model, "texts_per_s": teacher_tps, "seconds": teacher_seconds,
                    "texts": teacher_texts, "shots": len(shots)},
        "ratios": ratios,
        "targets": targets_met,
        "definitions": DEFINITIONS,
    }

    print(f"\n{'body':<14}{'params':>8}{'train s':>9}{'int8 t/s':>10}{'fp32 t/s':>10}{'int8 agree':>12}")
    for body, m in bodies.items():
        print(f"{body:<14}{m['parameters'] / 1e6:>7.0f}M{m['train_seconds']:>9.1f}"
              f"{m['onnx_int8']['texts_per_s']:>10.1f}{m['onnx_fp32']['texts_per_s']:>10.1f}"
              f"{100 * m['export_check']['int8']['agreement']:>11.1f}%")
    print(f"teacher {recipe.teacher.model}: {teacher_tps:.2f} texts/s")
    for name, value in ratios.items():
        print(f"{name:<52}{value:>8.2f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return result


def _shown(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    main()
