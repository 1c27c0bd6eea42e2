"""Student inference on the CPU: the PyTorch student vs its ONNX export (fp32, int8) vs the teacher.

The same trained student (a finished run's adaptive-KD student, default the demo recipe's MiniLM-L6 + LoRA) on
the same texts (the run's test split), in one process, at the same thread count:

  pytorch           tailorkd's own path: ``load_student`` (base + LoRA adapter, as ``tailorkd classify`` runs it)
                    and ``predict_probs`` over the texts in input order;
  sentence-transformers  the export folder loaded by ``SentenceTransformer`` (adapter merged; PyTorch), its
                    ``encode`` + softmax: what a user of the export without ONNX gets;
  onnx_fp32 / onnx_int8  ``tailorkd.onnx_student.OnnxClassifier`` on the export's graphs: texts tokenized once,
                    sorted by length into batches, results put back in input order;
  teacher           the recipe's teacher scoring a sample of the texts (``LocalTeacher.score``: its prompt with the
                    run's few-shot examples, shared-prefix cache), for the texts/s ratio only.

Per system and repeat: a throughput pass (all texts in one call, the system's own batching; texts/s = texts /
wall-clock seconds, tokenization included) and a latency pass (the same batches of ``--batch-size`` texts in input
order for every system, each timed from texts to probabilities: p50 / p95 over all batches of all repeats). The
systems take turns within each repeat, so load from other jobs on a shared machine falls on all of them alike;
compare ratios from one run only. Agreement: the share of texts whose predicted class equals the PyTorch
student's.

    .venv/bin/python benchmarks/student_inference.py     # from the repository root: the demo run (runs/bbc-news/...)
    .venv/bin/python benchmarks/student_inference.py --repeats 1 --teacher-texts 4   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would be timed with the student

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "bbc-news" / "gemma3-270m_to_minilm-l6_lora.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "student_inference.json"
DEFAULT_EXPORT = Path("/tmp") / "tailorkd_bench_student_inference" / "export"
TARGETS = {"onnx_int8_over_pytorch": 3.0, "onnx_int8_over_teacher": 50.0}  # issue 16, texts/s

DEFINITIONS = {
    "texts_per_s": "texts / wall-clock seconds of one call over all texts (the system's own batching, tokenization "
                   "included), summed over the repeats",
    "latency_ms": "wall-clock milliseconds of one batch of batch_size texts (input order, the same batches for every "
                  "system), texts to probabilities; p50 / p95 over all batches of all repeats",
    "agreement_with_pytorch": "share of texts whose predicted class equals the PyTorch student's",
    "ratios": "texts/s of one system divided by another's, from this run",
    "teacher": "LocalTeacher.score on the first teacher_texts texts (its prompt and the run's few-shot examples)",
}


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="a recipe whose run has a trained student")
    parser.add_argument("--export-dir", default=str(DEFAULT_EXPORT),
                        help="the student's `tailorkd export` folder: reused if it holds one, else written")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's evaluation.batch_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher-texts", type=int, default=16, help="texts the teacher scores per repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    parser.add_argument("--output", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    from sentence_transformers import SentenceTransformer

    from tailorkd import pipeline
    from tailorkd.onnx_student import OnnxClassifier
    from tailorkd.prompts import fixed_shots
    from tailorkd.recipe import load_recipe
    from tailorkd.resources import describe_machine
    from tailorkd.run_dir import RunDir
    from tailorkd.students import load_student, predict_probs, student_temperature
    from tailorkd.teachers import LocalTeacher

    info = describe_machine(packages=("onnxruntime", "sentence_transformers"))
    recipe = pipeline.resolve_prompt(load_recipe(args.recipe))
    batch_size = args.batch_size or recipe.evaluation.batch_size
    data = pipeline.load_data(recipe)
    rows = data.rows("test")
    folder = RunDir(recipe).student_dir()
    temperature = student_temperature(folder)
    export_dir = Path(args.export_dir)
    if not (export_dir / "tailorkd.json").is_file():
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        pipeline.export(recipe, str(export_dir))
    about = json.loads((export_dir / "tailorkd.json").read_text())

    shots = fixed_shots(recipe.prompt, data.rows("seed"), recipe.task.label_names, recipe.seed)
    student = load_student(folder, recipe.task, recipe.prompt, shots, recipe.student)
    texts = [student.input_text(r) for r in rows]
    sentence_model = SentenceTransformer(str(export_dir), device="cpu")
    onnx = {precision: OnnxClassifier(export_dir / about["onnx"]["files"][precision], student.tokenizer,
                                      about["max_length"], threads) for precision in ("fp32", "int8")}
    teacher = LocalTeacher(recipe.teacher, recipe.task, recipe.prompt, shots)
    teacher_rows = rows[: args.teacher_texts]

    def st_probs(part: list[str]) -> np.ndarray:
        return softmax(sentence_model.encode(part, batch_size=batch_size, convert_to_numpy=True))

    # texts -> probabilities, per system; rows for the PyTorch student (it builds its own input text).
    systems: dict[str, Callable[[slice], np.ndarray]] = {
        "pytorch": lambda s: predict_probs(student, rows[s], batch_size, temperature=temperature),
        "sentence_transformers": lambda s: st_probs(texts[s]),
        "onnx_fp32": lambda s: onnx["fp32"].probs(texts[s], batch_size),
        "onnx_int8": lambda s: onnx["int8"].probs(texts[s], batch_size),
    }
    everything = slice(0, len(texts))
    batches = [slice(i, i + batch_size) for i in range(0, len(texts), batch_size)]
    for fn in systems.values():  # warm-up: first calls allocate and pick kernels
        fn(slice(0, batch_size))
    teacher.score(teacher_rows[:2])

    seconds = {name: 0.0 for name in systems}
    latencies: dict[str, list[float]] = {name: [] for name in systems}
    predicted: dict[str, np.ndarray] = {}
    teacher_seconds, teacher_texts = 0.0, 0
    start_all = time.perf_counter()
    for repeat in range(args.repeats):
        for name, fn in systems.items():
            took, probs = timed(lambda fn=fn: fn(everything))
            seconds[name] += took
            predicted[name] = probs.argmax(1)
            for part in batches:
                took, _ = timed(lambda fn=fn, part=part: fn(part))
                latencies[name].append(1000 * took)
        took, _ = timed(lambda: teacher.score(teacher_rows))
        teacher_seconds += took
        teacher_texts += len(teacher_rows)
        print(f"repeat {repeat + 1}/{args.repeats} done ({time.perf_counter() - start_all:.0f}s)", flush=True)

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    results: dict[str, Any] = {}
    for name in systems:
        results[name] = {
            "texts_per_s": args.repeats * len(texts) / seconds[name],
            "seconds": seconds[name],
            "latency_ms_p50": pct(latencies[name], 50),
            "latency_ms_p95": pct(latencies[name], 95),
            "latency_ms_mean": statistics.fmean(latencies[name]),
            "batches_timed": len(latencies[name]),
            "agreement_with_pytorch": float((predicted[name] == predicted["pytorch"]).mean()),
        }
    results["teacher"] = {"texts_per_s": teacher_texts / teacher_seconds, "seconds": teacher_seconds,
                          "texts": teacher_texts, "model": recipe.teacher.model, "shots": len(shots)}
    tps = {name: r["texts_per_s"] for name, r in results.items()}
    ratios = {
        "onnx_int8_over_pytorch": tps["onnx_int8"] / tps["pytorch"],
        "onnx_fp32_over_pytorch": tps["onnx_fp32"] / tps["pytorch"],
        "onnx_int8_over_onnx_fp32": tps["onnx_int8"] / tps["onnx_fp32"],
        "onnx_int8_over_sentence_transformers": tps["onnx_int8"] / tps["sentence_transformers"],
        "onnx_int8_over_teacher": tps["onnx_int8"] / tps["teacher"],
        "pytorch_over_teacher": tps["pytorch"] / tps["teacher"],
        "latency_p50_pytorch_over_onnx_int8": results["pytorch"]["latency_ms_p50"]
        / results["onnx_int8"]["latency_ms_p50"],
    }
    info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "student_inference",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "recipe": str(Path(args.recipe).resolve().relative_to(ROOT)) if Path(args.recipe).resolve().is_relative_to(
            ROOT) else args.recipe,
        "student": {"folder": str(folder), "base_model": recipe.student.model, "adapter": recipe.adapter.method,
                    "max_length": recipe.student.max_length, "temperature": temperature},
        "export_check": about["onnx"].get("check"),
        "texts": len(texts),
        "data": f"the run's test split ({len(texts)} texts, as the student reads them: title. text, "
                f"cut to {recipe.prompt.max_text_chars} characters)",
        "mean_tokens_per_text": float(np.mean([len(ids) for ids in student.tokenizer(
            texts, truncation=True, max_length=recipe.student.max_length)["input_ids"]])),
        "batch_size": batch_size,
        "repeats": args.repeats,
        "threads": threads,
        "systems": results,
        "ratios": ratios,
        "targets": {name: {"target": target, "measured": ratios[name], "met": ratios[name] >= target}
                    for name, target in TARGETS.items()},
        "definitions": DEFINITIONS,
    }

    print(f"\n{'system':<24}{'texts/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'agree':>8}")
    for name, r in results.items():
        lat = (f"{r['latency_ms_p50']:>10.1f}{r['latency_ms_p95']:>10.1f}{100 * r['agreement_with_pytorch']:>7.1f}%"
               if name != "teacher" else f"{'-':>10}{'-':>10}{'-':>8}")
        print(f"{name:<24}{r['texts_per_s']:>10.2f}{lat}")
    print()
    for name, value in ratios.items():
        target = TARGETS.get(name)
        print(f"{name:<40}{value:>8.2f}x" + (f"  (target {target:g}x: {'met' if value >= target else 'MISSED'})"
                                            if target else ""))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
