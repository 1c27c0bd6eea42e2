"""Training cost by adapter method: peak memory, seconds per step and trainable parameters.

The same student, the same data and the same batches are trained a few steps under each adapter method
(full, lora, qlora, and bottleneck where this tailorkd has it) through tailorkd's own path:
``build_student`` (4-bit NF4 base for qlora) then ``distill_student`` (attach_adapter + the transformers
Trainer with tailorkd's soft cross-entropy; one stage, no validation split, no checkpoint, no final save).
Each method runs in its own fresh Python process, because a process' peak resident set size is a
high-water mark that an earlier method would leave behind.

The texts are BBC News articles from the shipped recipe, rendered as the causal-LM student's k-shot prompt
and cut to exactly ``--seq-len`` tokens (the student keeps a prompt's end), so every step has the same shape.
The soft targets are class distributions drawn uniformly at random (Dirichlet(1)): this measures cost, not
quality, and the teacher would not change the cost of a step.

Per method:
  after_load_gb     memory right after the student was loaded (before the adapter and optimizer):
                    the process RSS on CPU, tensors held by the CUDA allocator on CUDA;
  peak_gb           the peak during training (Trainer.train(), adapter attached before it): on CPU the
                    kernel's peak RSS of the process (VmHWM, reset when training starts), on CUDA
                    torch.cuda.max_memory_allocated; on CUDA the paged optimizer states that bitsandbytes
                    keeps in unified memory are not in that figure and are added (paged_optimizer_gb);
  added_by_training_gb  peak_gb - after_load_gb;
  seconds_per_step  the median wall-clock time of the steps after ``--warmup`` (optimizer step included);
  trainable / total parameters as ``tailorkd.adapters.count_parameters`` counts them after attaching
                    (PEFT's 4-bit weights count packed, two values per element);
and the paper's Table 3 estimate (``tailorkd.resources.estimate_training_memory``: weights, gradients,
optimizer states, fp32 gradient copy; no activations) of the same model for full, lora and qlora.

    .venv/bin/python benchmarks/train_memory.py            # SmolLM2-135M-Instruct on the CPU (~10 min, 2 cores)
    .venv/bin/python benchmarks/train_memory.py --quick    # a 1-2 minute smoke run
    .venv/bin/python benchmarks/train_memory.py --device cuda --arch llama-2-7b --dtype bfloat16 \\
        --seq-len 512 --batch-size 1 --r 64               # LLaMA-2-7B architecture, random weights
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tailorkd.resources import describe_machine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "bbc-news" / "gemma3-270m_to_minilm-l6_lora.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_memory.json"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "tailorkd_bench_train_memory"
GB = 1e9  # the unit of tailorkd.resources (and the paper)
ESTIMATED_METHODS = ("full", "lora", "qlora")  # the methods Table 3's estimate covers
CANDIDATE_METHODS = ("full", "lora", "qlora", "bottleneck")
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFINITIONS = {
    "after_load_gb": "memory right after the student was loaded, before adapter and optimizer: process RSS "
                     "(CPU) or tensors held by the CUDA allocator (CUDA)",
    "peak_gb": "peak during Trainer.train() (adapter attached just before): CPU: the process' peak RSS "
               "(Linux VmHWM, reset when training starts); CUDA: torch.cuda.max_memory_allocated plus the "
               "bitsandbytes paged optimizer states held in unified memory (paged_optimizer_gb)",
    "added_by_training_gb": "peak_gb - after_load_gb",
    "seconds_per_step": "median wall-clock seconds of the optimizer steps after the warm-up steps",
    "cpu_seconds_per_step": "median CPU seconds (user + system, all threads of the process) of the same steps: "
                            "less sensitive than wall-clock time to other jobs on a shared machine",
    "trainable_params": "parameters with requires_grad after attaching the adapter (tailorkd count_parameters)",
    "total_params": "all parameters after attaching (4-bit weights count packed: two values per element)",
    "ratios_to_full": "the method's value divided by full fine-tuning's, from the same run",
    "estimate_gb": "tailorkd.resources.estimate_training_memory (the paper's Table 3: weights, gradients, "
                   "optimizer states, fp32 gradient copy; activations not counted) for the same model config",
    "soft_targets": "class distributions drawn uniformly at random (Dirichlet(1)): cost is measured, not quality",
    "GB": "1e9 bytes",
}


def available_methods() -> list[str]:
    """The adapter methods registered in this tailorkd, of those the benchmark knows ("none" trains nothing)."""
    from tailorkd.adapters import adapter_methods

    return [method for method in CANDIDATE_METHODS if method in adapter_methods()]


# -- one method, in its own process ------------------------------------------------------------------
def recipe_overrides(spec: dict[str, Any], method: str) -> list[str]:
    return [
        f"output_dir={spec['work_dir']}/recipe",
        f"student.model={spec['model']}",
        "student.kind=causal_lm",
        f"student.max_length={spec['seq_len']}",
        f"student.dtype={spec['dtype']}",
        f"student.device={spec['device']}",
        f"adapter.method={method}",
        f"adapter.r={spec['r']}",
        f"adapter.alpha={spec['r']}",
        f"distill.batch_size={spec['batch_size']}",
        "distill.epochs=1",
        "distill.gradient_accumulation_steps=1",
        # Only training steps: no held-out split to evaluate, and no checkpoint within the few steps run.
        "distill.validation_fraction=0",
        f"distill.checkpoint_steps={10 * spec['steps']}",
    ]


def _memory_now(device: str) -> int:
    import psutil
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return psutil.Process().memory_info().rss


def _optimizer_state_bytes(optimizer: Any) -> tuple[int, int]:
    """(all, paged) bytes of the optimizer's state tensors; bitsandbytes marks paged ones ``is_paged``."""
    import torch

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    total = paged = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                size = value.numel() * value.element_size()
                total += size
                paged += size if getattr(value, "is_paged", False) else 0
    return total, paged


def _step_timer(device: str):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock time of each optimizer step; optimizer state size once it exists."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.device_used: list[int] = []
            self.optimizer_bytes = (0, 0)
            self._start = self._cpu_start = 0.0

        def _sync(self) -> None:
            if device == "cuda":
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kwargs):
            self._sync()
            self._start, self._cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            self._sync()
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._cpu_start)
            if device == "cuda":
                free, total = torch.cuda.mem_get_info()
                self.device_used.append(total - free)
            if optimizer is not None:
                self.optimizer_bytes = _optimizer_state_bytes(optimizer)

    return StepTimer()


@contextlib.contextmanager
def _without_final_save():
    """Leave out ``distill_student``'s final save of the trained student: it is not training, and under full
    fine-tuning it would write a whole model."""
    from unittest import mock

    from tailorkd.distill import trainer as distill_trainer

    with mock.patch.object(distill_trainer, "save_student", lambda *args, **kwargs: None):
        yield


def measure_method(spec: dict[str, Any], method: str) -> dict[str, Any]:
    """Train ``spec['steps']`` steps of the student under ``method``; memory, times and parameter counts.

    Meant to run in a fresh process (see ``run_method``), so that the peak RSS belongs to this method.
    """
    import numpy as np
    import torch

    from tailorkd import pipeline
    from tailorkd.distill import distill_student
    from tailorkd.prompts import fixed_shots
    from tailorkd.recipe import load_recipe
    from tailorkd.students import build_student

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    recipe = load_recipe(spec["recipe"], recipe_overrides(spec, method))
    data = pipeline.prepare(recipe)
    pool = data.rows("pool")
    n_rows = spec["steps"] * spec["batch_size"]
    rows = [pool[i % len(pool)] for i in range(n_rows)]  # exactly `steps` full batches in one epoch
    rng = np.random.default_rng(spec["seed"])
    targets = rng.dirichlet(np.ones(len(recipe.task.labels)), size=n_rows)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    before_load = _memory_now(spec["device"])
    t0 = time.perf_counter()
    shots = fixed_shots(recipe.prompt, data.rows("seed"), recipe.task.label_names, recipe.seed)
    student = build_student(recipe.student, recipe.task, recipe.prompt, shots, method)
    load_s = time.perf_counter() - t0
    if spec["device"] == "cpu":
        # Weights may be memory-mapped from the safetensors file and only become resident when first read;
        # read them all now so that after_load_gb holds the loaded model, not part of it.
        with torch.no_grad():
            for param in student.model.parameters():
                param.sum()
    after_load = _memory_now(spec["device"])
    lengths = [len(student.encode(r)) for r in rows]

    timer = _step_timer(spec["device"])
    with _without_final_save(), tempfile.TemporaryDirectory() as out:
        summary = distill_student(student, rows, targets, recipe.adapter, recipe.distill, out, spec["seed"], info={},
                                  resume=False, callbacks=[timer])

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    warm = spec["warmup"]
    timed = timer.seconds[warm:] or timer.seconds
    optimizer_bytes, paged_bytes = timer.optimizer_bytes
    peak = summary["peak_memory"]["process_peak_gb"] * GB
    if spec["device"] == "cuda":
        peak += paged_bytes  # unified memory, invisible to the allocator's peak
    return {
        "method": method,
        "trainable_params": summary["parameters"]["trainable"],
        "total_params": summary["parameters"]["total"],
        "memory": {
            "source": summary["peak_memory"]["source"],
            "before_load_gb": before_load / GB,
            "after_load_gb": after_load / GB,
            "peak_gb": peak / GB,
            "added_by_training_gb": (peak - after_load) / GB,
            "optimizer_state_gb": optimizer_bytes / GB,
            "paged_optimizer_gb": paged_bytes / GB,
            "device_used_max_gb": max(timer.device_used) / GB if timer.device_used else None,
        },
        "seconds_per_step": statistics.median(timed),
        "cpu_seconds_per_step": statistics.median(timer.cpu_seconds[warm:] or timer.cpu_seconds),
        "step_seconds": timer.seconds,
        "step_cpu_seconds": timer.cpu_seconds,
        "warmup_steps": min(warm, len(timer.seconds) - len(timed)),
        "steps": summary["steps"],
        "load_seconds": load_s,
        "train_seconds": summary["train_seconds"],
        "train_loss": summary["train_loss"],
        "input_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "scores_first_answer_tokens": bool(student.scorer.first_tokens_distinct),
        "sequences_per_step": spec["batch_size"] * (1 if student.scorer.first_tokens_distinct
                                                    else len(recipe.task.labels)),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"before": load_before, "after": load_after},  # other jobs' load on the machine
    }


def run_child(mode: str, spec: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """Run ``mode`` for ``spec`` in a fresh Python process; its log goes to ``work/<name>.log``."""
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps({**spec, "mode": mode, "result_path": str(result_path)}), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), check=False)
    if done.returncode != 0 or not result_path.is_file():
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}); last lines of {log_path}:\n{tail}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec["mode"] == "random_checkpoint":
        result = make_random_checkpoint(spec)
    else:
        result = measure_method(spec, spec["mode"])
    Path(spec["result_path"]).write_text(json.dumps(result, indent=2), encoding="utf-8")


# -- a shipped architecture with random weights ----------------------------------------------------------
def arch_name(name: str) -> str:
    """A shipped config name; ``llama2-7b`` is taken for ``llama-2-7b`` (hyphens are not compared)."""
    from tailorkd.resources import shipped_configs

    shipped = shipped_configs()
    if name in shipped:
        return name
    for candidate in shipped:
        if candidate.replace("-", "") == name.replace("-", ""):
            return candidate
    raise SystemExit(f"--arch {name}: not a shipped config; shipped: {', '.join(shipped)}")


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the benchmark's own texts, with a ChatML template.

    The architecture's own tokenizer is not available offline; a random-weight model only needs token ids
    below its vocabulary size, and the prompts are cut to a fixed length anyway.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def make_random_checkpoint(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the shipped config ``spec['arch']`` with random weights (and a tokenizer) to ``spec['folder']``."""
    import torch
    from transformers import AutoModelForCausalLM

    from tailorkd import pipeline
    from tailorkd.devices import resolve_dtype
    from tailorkd.recipe import load_recipe
    from tailorkd.resources import load_config

    folder = Path(spec["folder"])
    recipe = load_recipe(spec["recipe"], [f"output_dir={spec['work_dir']}/recipe"])
    data = pipeline.prepare(recipe)
    texts = [r["text"] for r in data.rows("pool") + data.rows("seed")]
    config = load_config(spec["arch"])
    tokenizer = train_tokenizer(texts, min(config.vocab_size, 8000))
    config.bos_token_id = config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    if spec.get("layers"):
        config.num_hidden_layers = spec["layers"]
    torch.manual_seed(spec["seed"])
    t0 = time.perf_counter()
    with torch.device(spec["device"]):  # initialise where it is fast (a 7B model on the GPU)
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(spec["dtype"]))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    info = {"arch": spec["arch"], "layers": config.num_hidden_layers, "vocab_size": config.vocab_size,
            "tokenizer_vocab": len(tokenizer), "dtype": spec["dtype"], "seconds": time.perf_counter() - t0}
    (folder / "random_checkpoint.json").write_text(json.dumps(info), encoding="utf-8")
    return info


def random_checkpoint(args: argparse.Namespace, spec: dict[str, Any], work: Path) -> Path:
    folder = work / (f"random-{args.arch}" + (f"-{args.layers}layers" if args.layers else "") + f"-{args.dtype}")
    if not (folder / "random_checkpoint.json").is_file():
        print(f"writing {args.arch} with random weights to {folder} ...", flush=True)
        run_child("random_checkpoint", {**spec, "arch": args.arch, "layers": args.layers, "folder": str(folder)},
                  work, "random_checkpoint")
    return folder


# -- the comparison ----------------------------------------------------------------------------------
def estimates(model: str, r: int) -> dict[str, dict[str, Any]]:
    """Table 3's estimate of the same model under full, lora and qlora (rank r, the attention projections)."""
    from tailorkd.resources import estimate_training_memory, load_config

    config = load_config(model)
    out = {}
    for method in ESTIMATED_METHODS:
        est = estimate_training_memory(config, method, r=r)
        out[method] = {"total_gb": est["gb"]["total"], "gb": est["gb"], "trainable_params": est["trainable_params"],
                       "total_params": est["total_params"]}
    return out


def with_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Add each method's ratios to full fine-tuning's (when full was measured)."""
    full = results.get("full")
    if full is None:
        return
    for res in results.values():
        mem, ref = res["memory"], full["memory"]
        res["ratios_to_full"] = {
            "peak_gb": mem["peak_gb"] / ref["peak_gb"],
            "added_by_training_gb": (mem["added_by_training_gb"] / ref["added_by_training_gb"]
                                     if ref["added_by_training_gb"] > 0 else None),
            "seconds_per_step": res["seconds_per_step"] / full["seconds_per_step"],
            "cpu_seconds_per_step": res["cpu_seconds_per_step"] / full["cpu_seconds_per_step"],
            "trainable_params": res["trainable_params"] / full["trainable_params"],
        }


def table(results: dict[str, dict[str, Any]], estimate: dict[str, dict[str, Any]]) -> str:
    """The Markdown table the README carries."""
    lines = ["| method | trainable params | after load GB | peak GB | added by training GB | peak vs full "
             "| s/step | s/step vs full | CPU s/step vs full | Table-3 estimate GB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ratio(res: dict[str, Any], key: str) -> str:
        value = res.get("ratios_to_full", {}).get(key)
        return "n/a" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"

    for method, res in results.items():
        mem = res["memory"]
        share = 100 * res["trainable_params"] / res["total_params"]
        est = f"{estimate[method]['total_gb']:.2f}" if method in estimate else "n/a"
        lines.append(f"| {method} | {res['trainable_params']:,} ({share:.3g}%) | {mem['after_load_gb']:.2f} | "
                     f"{mem['peak_gb']:.2f} | {mem['added_by_training_gb']:.2f} | {ratio(res, 'peak_gb')} | "
                     f"{res['seconds_per_step']:.2f} | {ratio(res, 'seconds_per_step')} | "
                     f"{ratio(res, 'cpu_seconds_per_step')} | {est} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="causal-LM student: registry name or model folder (ignored with --arch)")
    p.add_argument("--arch", default=None,
                   help="a shipped config (tailorkd memory --list), e.g. llama-2-7b, built with random weights")
    p.add_argument("--layers", type=int, default=None, help="with --arch: keep only this many layers (smoke runs)")
    p.add_argument("--methods", default=None,
                   help="comma-separated adapter methods (default: full, lora, qlora and, where available, bottleneck)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="student weights (qlora: its 16/32-bit parts; the 4-bit layers compute in bf16)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per input (prompts are cut to this)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per method, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of seconds per step")
    p.add_argument("--r", type=int, default=64, help="LoRA/QLoRA rank (the paper's 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each method's process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: seq 64, batch 1, 3 steps (1 warm-up)")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe giving task, data and prompt")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="data splits, logs and random checkpoints")
    p.add_argument("--output", default=str(DEFAULT_OUT), help="JSON results path")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one method from this spec file
    args = p.parse_args(argv)
    if args.quick:
        args.seq_len, args.batch_size, args.steps, args.warmup = 64, 1, 3, 1
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    known = available_methods() if args.child is None else list(CANDIDATE_METHODS)
    methods = args.methods.split(",") if args.methods else known
    unknown = [m for m in methods if m not in known]
    if unknown:
        p.error(f"--methods: {', '.join(unknown)} not available here (available: {', '.join(known)})")
    args.methods = methods
    if args.arch:
        args.arch = arch_name(args.arch)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return {}
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec = {"model": args.model, "recipe": str(Path(args.recipe).resolve()), "work_dir": str(work),
            "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
            "r": args.r, "dtype": args.dtype, "device": args.device, "threads": args.threads, "seed": args.seed}
    checkpoint = None
    if args.arch:
        folder = random_checkpoint(args, spec, work)
        checkpoint = json.loads((folder / "random_checkpoint.json").read_text(encoding="utf-8"))
        spec["model"] = str(folder)
    student = f"{args.arch} (random weights)" if args.arch else args.model
    print(f"student {student}, {args.device} {args.dtype}, seq {args.seq_len}, batch {args.batch_size}, "
          f"{args.steps} steps ({args.warmup} warm-up), r {args.r}; methods {', '.join(args.methods)}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        t0 = time.perf_counter()
        res = run_child(method, spec, work, method)
        results[method] = res
        mem = res["memory"]
        print(f"  {method:<10} peak {mem['peak_gb']:.2f} GB (after load {mem['after_load_gb']:.2f}), "
              f"{res['seconds_per_step']:.2f} s/step, trainable {res['trainable_params']:,} of "
              f"{res['total_params']:,}  [{time.perf_counter() - t0:.0f}s]", flush=True)
    with_ratios(results)
    estimate = estimates(spec["model"], args.r)
    rendered = table(results, estimate)
    print()
    print(rendered)

    first = next(iter(results.values()))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or None
    report = {
        "benchmark": "train_memory",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(args.device, packages=("peft", "bitsandbytes")),
        "tailorkd_commit": commit,
        "settings": {"student": student, "model": spec["model"] if not args.arch else None,
                     "arch": args.arch, "random_checkpoint": checkpoint, "device": args.device, "dtype": args.dtype,
                     "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
                     "warmup": args.warmup, "r": args.r, "lora_alpha": args.r,
                     "lora_targets": "the family's attention projections (tailorkd default)",
                     "threads": args.threads, "seed": args.seed, "quick": args.quick,
                     "recipe": os.path.relpath(spec["recipe"], ROOT),
                     "input_tokens": first["input_tokens"], "sequences_per_step": first["sequences_per_step"]},
        "results": results,
        "estimate_table3": estimate,
        "table_markdown": rendered,
        "definitions": DEFINITIONS,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
