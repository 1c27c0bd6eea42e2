"""Teacher labelling throughput: naive generate-and-parse vs tailorkd's label scorer, and the floor.

The same real model, the same k-shot prompt (tailorkd's PromptBuilder) and the same BBC News texts, run
three ways:

(a) naive:  one ``model.generate()`` per text over the whole rendered prompt (greedy, a few new tokens),
            decode, take the first label name/answer that appears in the output (case-insensitive).
(b) scorer: ``LocalTeacher.score(rows)`` -- shared-prefix KV cache computed once; on a CPU each text runs
            alone on it (no padding, no copies) and multi-token labels are finished in one answer-tree
            pass; with --batched, texts are batched by length on copies of the cache (the GPU way).
floor:      the cost of only the tokens that are new per text: the text's own tokens plus the answer
            tokens that must be fed to score every class (the distinct non-final tokens of the answers).
            Sequential: one unpadded forward pass over exactly those per text on the shared cache.
            Batched: the per-token time of one batched forward over the texts' own tokens (cache copies
            made outside the timer) times those tokens, padding excluded.

Times are wall-clock (time.perf_counter), after warm-up, at the same torch thread count; the three are
interleaved one batch of texts at a time (so (b) scores each batch of ``--batch-size`` texts in its own
``score`` call) and summed, so that load from other work on a shared machine falls on all alike. Run:

    .venv/bin/python benchmarks/label_throughput.py            # defaults: smollm2-135m-instruct, 20 shots
    .venv/bin/python benchmarks/label_throughput.py --n-naive 8 --n-scorer 32 --repeats 1   # quicker

With ``--backend llama_cpp`` the model is the packaged GGUF ``--model`` names, run by llama.cpp
(``tailorkd.teachers.llama_cpp``), and the three ways are, on the same texts and the same prompt tokens:

(a) tailorkd:  ``LlamaCppTeacher.score(rows)`` -- the few-shot prefix stays in llama.cpp's KV cache, each text
               evaluates only what is new, multi-token answers are scored on the same cache;
(b) llama.cpp: llama.cpp's own throughput on the same new tokens: ``Llama.eval`` over each text's own tokens
               plus the answer tokens the scorer must feed (the distinct non-final answer tokens), on a context
               holding the shared prefix (rolled back to it before each text, outside the timer) -- the floor;
(c) generate:  per-text generation, ``Llama.create_completion`` (greedy, longest answer + 3 tokens) over the
               whole prompt, the context emptied first (``--generate-reuse-prefix``: llama-cpp-python keeps
               the prefix it shares with the last prompt), the label parsed from the output as in (a) above.

Labelling tokens/s is the texts' new tokens (own + answer tokens fed) per second, the same count for all three;
reported with the ratios (a)/(b) (1.0: at llama.cpp's own speed) and (a)/(c). Interleaved a batch at a time:

    .venv/bin/python benchmarks/label_throughput.py --backend llama_cpp --n-naive 16 --threads 1 \
        --output benchmarks/results/label_throughput_llamacpp.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tailorkd.resources import describe_machine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "bbc-news" / "gemma3-270m_to_minilm-l6_lora.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "label_throughput.json"


# -- setup -----------------------------------------------------------------------------------------
def build(args: argparse.Namespace):
    from tailorkd import pipeline
    from tailorkd.prompts import choose_shots
    from tailorkd.recipe import load_recipe
    from tailorkd.teachers import LocalTeacher

    overrides = [
        f"output_dir={args.work_dir}",
        f"teacher.model={args.model}",
        f"teacher.batch_size={args.batch_size}",
        "teacher.device=cpu",
        f"prompt.shots={args.shots}",
    ]
    recipe = load_recipe(args.recipe, overrides)
    data = pipeline.prepare(recipe)
    seeds = data.rows("seed")
    shots = choose_shots(seeds, recipe.task.label_names, recipe.prompt.shots, recipe.seed)
    t0 = time.perf_counter()
    teacher = LocalTeacher(recipe.teacher, recipe.task, recipe.prompt, shots)
    setup_s = time.perf_counter() - t0
    rows = data.rows("test")
    return recipe, teacher, rows, shots, setup_s


# -- (a) naive -------------------------------------------------------------------------------------
def label_parser(task):
    """Map free text to the label whose name or answer appears first (case-insensitive); None if none."""
    words = {}
    for label in task.labels:
        for w in {label.name, label.answer}:
            words[w.lower()] = label.name
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)

    def parse(text: str) -> str | None:
        m = pattern.search(text)
        return words[m.group(0).lower()] if m else None

    return parse


def naive_one(teacher, row: dict[str, Any], max_new_tokens: int) -> str:
    model, tok = teacher.scorer.model, teacher.prompts.tokenizer
    prompt = teacher.builder.render(row["text"], row.get("title"))
    enc = tok(prompt, add_special_tokens=teacher.prompts.add_special_tokens, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=teacher.scorer.pad_id,
        )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def run_naive(teacher, rows, max_new_tokens: int, parse) -> tuple[float, list[str], list[str | None]]:
    answers, parsed = [], []
    t0 = time.perf_counter()
    for row in rows:
        text = naive_one(teacher, row, max_new_tokens)
        answers.append(text)
        parsed.append(parse(text))
    return time.perf_counter() - t0, answers, parsed


# -- (b) scorer ------------------------------------------------------------------------------------
def run_scorer(teacher, rows) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    probs, _ = teacher.score(rows)
    elapsed = time.perf_counter() - t0
    names = teacher.task.label_names
    return elapsed, [names[i] for i in probs.argmax(1)]


# -- floor -----------------------------------------------------------------------------------------
def answer_tokens_needed(label_ids: list[list[int]]) -> int:
    """Tokens that must be fed after the prompt to score every class: the distinct non-final answer prefixes."""
    return len({tuple(ids[: i + 1]) for ids in label_ids for i in range(len(ids) - 1)})


def batches_like_scorer(teacher, rows) -> list[list[list[int]]]:
    """The batches ``LocalTeacher.score`` forms: prompts sorted by token length, ``batch_size`` at a time."""
    encoded = [teacher.encode(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
    bs = teacher.config.batch_size
    return [[encoded[i] for i in order[s : s + bs]] for s in range(0, len(order), bs)]


@torch.no_grad()
def run_floor(teacher, batches, n_answer: int) -> dict[str, float]:
    """The cost of only the tokens new per text, run the way the scorer runs them.

    Sequential scorer (the CPU default): per text, one unpadded forward pass over its own tokens followed
    by the answer-tree tokens, on the shared prefix cache itself (put back afterwards) -- the same tokens
    the scorer feeds, in one pass instead of two. Batched scorer: one batched forward over the texts' own
    tokens on copies of the cache (copies made outside the timer), its per-token time times the tokens
    new per text (own + answer tokens), padding excluded.
    """
    from tailorkd.scoring import repeat_cache, restore_cache, snapshot_cache

    scorer = teacher.scorer
    prefix_ids, prefix_cache = scorer.prefix
    n = len(prefix_ids)
    forward_s = floor_s = copy_s = 0.0
    if scorer.sequential:
        tree_tokens = scorer.tree[0]
        for prompts in batches:
            for p in prompts:
                ids = torch.tensor([list(p[n:]) + tree_tokens])
                positions = torch.arange(n, n + ids.shape[1])[None]
                mask = torch.ones(1, n + ids.shape[1], dtype=torch.long)
                snap = snapshot_cache(prefix_cache)
                t0 = time.perf_counter()
                scorer.forward(ids, mask, positions, keep=1, use_cache=True, **{scorer.cache_kwarg: prefix_cache})
                t = time.perf_counter() - t0
                restore_cache(prefix_cache, snap)
                forward_s += t
                floor_s += t
        return {"forward_s": forward_s, "floor_s": floor_s, "cache_copy_s": copy_s}
    for prompts in batches:
        c0 = time.perf_counter()
        cache = repeat_cache(prefix_cache, len(prompts))
        copy_s += time.perf_counter() - c0
        own = [p[n:] for p in prompts]
        ids, own_mask = scorer.left_pad(own)
        positions = n + (own_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones(len(own), n, dtype=own_mask.dtype), own_mask], dim=1)
        t0 = time.perf_counter()
        scorer.forward(ids, mask, positions, keep=1, use_cache=True, **{scorer.cache_kwarg: cache})
        t = time.perf_counter() - t0
        forward_s += t
        new_tokens = sum(len(o) for o in own) + n_answer * len(own)
        floor_s += t * new_tokens / ids.numel()
    return {"forward_s": forward_s, "floor_s": floor_s, "cache_copy_s": copy_s}


# -- llama.cpp -------------------------------------------------------------------------------------
def build_llama_cpp(args: argparse.Namespace):
    """The recipe's task, data and prompt with the GGUF ``args.model`` as a llama_cpp teacher."""
    from tailorkd import pipeline
    from tailorkd.prompts import choose_shots
    from tailorkd.recipe import load_recipe
    from tailorkd.teachers import make_teacher

    overrides = [f"output_dir={args.work_dir}", "teacher.kind=llama_cpp", f"teacher.model={args.model}",
                 f"prompt.shots={args.shots}"]
    if args.threads:
        overrides.append(f"teacher.options.n_threads={args.threads}")
    recipe = load_recipe(args.recipe, overrides)
    data = pipeline.prepare(recipe)
    shots = choose_shots(data.rows("seed"), recipe.task.label_names, recipe.prompt.shots, recipe.seed)
    t0 = time.perf_counter()
    teacher = make_teacher(recipe.teacher, recipe.task, recipe.prompt, shots)
    return recipe, teacher, data.rows("test"), shots, time.perf_counter() - t0


def _shared_prefix(prompts: list[list[int]]) -> int:
    n = min(len(p) for p in prompts)
    first = prompts[0]
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return n


def llama_floor(teacher, prompts: list[list[int]], n_prefix: int, tree_tokens: list[int]) -> float:
    """llama.cpp's own time for the tokens new per text: ``Llama.eval`` of each text's own tokens and the answer
    tokens after the shared prefix (the context rolled back to the prefix outside the timer)."""
    llm = teacher.runner.llm
    prefix = prompts[0][:n_prefix]
    seconds = 0.0
    for p in prompts:
        held = llm.input_ids[: llm.n_tokens]
        if len(held) < n_prefix or list(held[:n_prefix]) != prefix:
            llm.n_tokens = 0
            llm.eval(prefix)
        llm.n_tokens = n_prefix  # eval drops the cache from n_tokens on
        t0 = time.perf_counter()
        llm.eval(list(p[n_prefix:]) + tree_tokens)
        seconds += time.perf_counter() - t0
    return seconds


def llama_generate(teacher, rows, prompts: list[list[int]], max_new_tokens: int, parse, reuse_prefix: bool
                   ) -> tuple[float, list[str], list[str | None]]:
    """Per-text generation over the whole prompt (greedy), the label parsed from the output."""
    llm = teacher.runner.llm
    answers, parsed, seconds = [], [], 0.0
    for row, ids in zip(rows, prompts):
        if not reuse_prefix:
            llm.reset()  # n_tokens = 0: llama-cpp-python finds no common prefix and evaluates the whole prompt
        t0 = time.perf_counter()
        out = llm.create_completion(list(ids), max_tokens=max_new_tokens, temperature=0.0, top_k=1)
        seconds += time.perf_counter() - t0
        answers.append(out["choices"][0]["text"])
        parsed.append(parse(answers[-1]))
    return seconds, answers, parsed


def main_llama_cpp(args: argparse.Namespace) -> dict[str, Any]:
    recipe, teacher, rows, shots, setup_s = build_llama_cpp(args)
    n = args.n_naive
    need = n + args.batch_size
    if need > len(rows):
        sys.exit(f"need {need} test texts, the test split has {len(rows)}")
    warm, texts = rows[: args.batch_size], rows[args.batch_size : args.batch_size + n]
    parse = label_parser(recipe.task)
    label_ids = teacher.label_ids
    max_new = max(len(ids) for ids in label_ids) + 3
    n_answer = answer_tokens_needed(label_ids)
    tree_tokens = sorted({tuple(ids[: i + 1]) for ids in label_ids for i in range(len(ids) - 1)})
    tree_tokens = [t[-1] for t in tree_tokens]
    prompts = [teacher.encode(r) for r in rows[: args.batch_size + n]]
    n_prefix = _shared_prefix(prompts)
    warm_prompts, text_prompts = prompts[: args.batch_size], prompts[args.batch_size :]
    teacher.score(warm)  # warm-up: the context made, the prefix evaluated
    threads = teacher.runner.llm.n_threads
    print(f"llama.cpp {args.model}, {len(shots)} shots, shared prefix {n_prefix} tokens, n_threads {threads}; "
          f"setup {setup_s:.1f}s", flush=True)
    llama_floor(teacher, warm_prompts[:2], n_prefix, tree_tokens)
    llama_generate(teacher, warm[:1], warm_prompts[:1], max_new, parse, args.generate_reuse_prefix)

    tot = {"a_s": 0.0, "b_s": 0.0, "c_s": 0.0}
    pred, answers, parsed = [], [], []
    a_evaluated = 0
    bs = args.batch_size
    for r0 in range(0, n, bs):
        chunk, chunk_prompts = texts[r0 : r0 + bs], text_prompts[r0 : r0 + bs]
        c_s, ans, par = llama_generate(teacher, chunk, chunk_prompts, max_new, parse, args.generate_reuse_prefix)
        tot["c_s"] += c_s
        answers += ans
        parsed += par
        runs = []
        for _ in range(args.repeats):
            before = teacher.runner.evaluated_tokens
            t0 = time.perf_counter()
            probs, _ = teacher.score(chunk)
            runs.append(time.perf_counter() - t0)
            a_evaluated += teacher.runner.evaluated_tokens - before
        tot["a_s"] += statistics.median(runs)
        pred += [recipe.task.label_names[i] for i in probs.argmax(1)]
        tot["b_s"] += statistics.median(llama_floor(teacher, chunk_prompts, n_prefix, tree_tokens)
                                        for _ in range(args.repeats))
        print(f"  {r0 + len(chunk)}/{n} texts: " + ", ".join(f"{k} {v:.2f}" for k, v in tot.items()), flush=True)

    own = [len(p) - n_prefix for p in text_prompts]
    new_tokens = sum(own) + n_answer * n
    gold = [r["label"] for r in texts]

    def way(seconds: float) -> dict[str, float]:
        return {"seconds": seconds, "texts_per_s": n / seconds, "tokens_per_s": new_tokens / seconds}

    a, b, c = way(tot["a_s"]), way(tot["b_s"]), way(tot["c_s"])
    result = {
        "benchmark": "label_throughput",
        "backend": "llama_cpp",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(packages=("llama-cpp-python",)),
        "load_average_1min": {"start": args.load_start, "end": round(os.getloadavg()[0], 2)},
        "model": args.model,
        "gguf": teacher.runner.path.name,
        "n_threads": threads,
        "task": recipe.task.name,
        "data": f"test split of recipe {Path(args.recipe).name}, seed {recipe.seed}",
        "texts": n,
        "shots": len(shots),
        "batch_size": bs,
        "repeats": args.repeats,
        "prompt_tokens": {
            "shared_prefix": n_prefix,
            "mean_full_prompt": sum(len(p) for p in text_prompts) / n,
            "mean_new_text_tokens": sum(own) / n,
            "answer_tokens_fed_per_text": n_answer,
            "new_tokens_total": new_tokens,
            "tokens_tailorkd_evaluated": a_evaluated // max(args.repeats, 1),
            "label_token_ids": label_ids,
        },
        "tailorkd": a,
        "llama_cpp_eval": b,
        "generate": {**way(tot["c_s"]), "max_new_tokens": max_new, "reuse_prefix": args.generate_reuse_prefix,
                     "unparseable": sum(p is None for p in parsed), "answers_sample": answers[:5]},
        "tailorkd_over_llama_cpp": b["seconds"] / a["seconds"],
        "tailorkd_over_generate": c["seconds"] / a["seconds"],
        "agreement": {
            "texts": n,
            "tailorkd_vs_generate": sum(x == y for x, y in zip(parsed, pred)) / n,
            "generate_accuracy_vs_gold": sum(x == g for x, g in zip(parsed, gold)) / n,
            "tailorkd_accuracy_vs_gold": sum(x == g for x, g in zip(pred, gold)) / n,
        },
        "definitions": {
            "tailorkd": "LlamaCppTeacher.score(rows), wall clock of the whole call (render, tokenize, roll back, eval, "
                        "answer scoring, softmax), the shared prefix kept in the KV cache",
            "llama_cpp_eval": "Llama.eval of each text's own tokens + the distinct non-final answer tokens on a "
                              "context holding the shared prefix (roll-back outside the timer)",
            "generate": "Llama.create_completion over the whole prompt, greedy, longest answer + 3 tokens; the "
                        "context emptied first unless reuse_prefix; the first label name/answer in the output",
            "tokens_per_s": "the texts' new tokens (own + answer tokens fed) per second, the same count for all",
            "timing": "wall clock after warm-up; (c), (a), (b) interleaved per batch of texts and summed",
        },
        "setup_s": setup_s,
    }
    print(f"\n{'way':<30}{'texts/s':>10}{'tokens/s':>11}")
    for name, w in (("(a) tailorkd score", a), ("(b) llama.cpp eval (floor)", b), ("(c) per-text generate", c)):
        print(f"{name:<30}{w['texts_per_s']:>10.2f}{w['tokens_per_s']:>11.1f}")
    print(f"(a)/(b) {result['tailorkd_over_llama_cpp']:.2f}, (a)/(c) {result['tailorkd_over_generate']:.2f}; "
          f"shared prefix {n_prefix}, new tokens/text {new_tokens / n:.1f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    teacher.runner.close()
    return result


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="teacher model (registry name, folder or hub id)")
    p.add_argument("--shots", type=int, default=20, help="few-shot examples (<= seed set size, 20 for BBC News)")
    p.add_argument("--n-naive", type=int, default=24, help="texts for (a); (b) and the floor run on these too")
    p.add_argument("--n-scorer", type=int, default=0, help="texts for an extra, larger (b)/floor run (0: none)")
    p.add_argument("--batch-size", type=int, default=8, help="scorer batch size")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats of (b) and floor per batch (median used)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--batched", action="store_true",
                   help="make the scorer batch padded texts on cache copies (its GPU way) instead of its CPU default")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe giving task, data and prompt")
    p.add_argument("--work-dir", default="/tmp/tailorkd_bench_label_throughput", help="where the data splits go")
    p.add_argument("--output", default=str(DEFAULT_OUT), help="JSON results path")
    p.add_argument("--backend", choices=["torch", "llama_cpp"], default="torch",
                   help="torch: the model in transformers; llama_cpp: the packaged GGUF --model names")
    p.add_argument("--generate-reuse-prefix", action="store_true",
                   help="llama_cpp: let per-text generation keep the prefix it shares with the last prompt")
    args = p.parse_args(argv)
    args.load_start = round(os.getloadavg()[0], 2)
    if args.backend == "llama_cpp":
        if args.threads:
            torch.set_num_threads(args.threads)
        return main_llama_cpp(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    recipe, teacher, rows, shots, setup_s = build(args)
    if args.batched:
        teacher.scorer.sequential = False
    need = args.n_naive + max(args.n_scorer, args.n_naive) + 2 * args.batch_size
    if need > len(rows):
        sys.exit(f"need {need} test texts, the test split has {len(rows)}")
    warm = rows[: args.batch_size]
    texts_a = rows[args.batch_size : args.batch_size + args.n_naive]
    texts_b = rows[args.batch_size : args.batch_size + max(args.n_scorer, args.n_naive)]  # starts with texts_a

    parse = label_parser(recipe.task)
    label_ids = teacher.scorer.label_ids
    max_new = max(len(ids) for ids in label_ids) + 3
    n_answer = answer_tokens_needed(label_ids)
    n_prefix = len(teacher.scorer.prefix[0]) if teacher.scorer.prefix else 0
    threads = torch.get_num_threads()
    print(f"model {args.model}, {len(shots)} shots, shared prefix {n_prefix} tokens, threads {threads}, "
          f"batch {args.batch_size}; setup {setup_s:.1f}s", flush=True)

    # Warm-up (texts not timed).
    naive_one(teacher, warm[0], max_new)
    teacher.score(warm)
    run_floor(teacher, batches_like_scorer(teacher, warm), n_answer)

    # Interleaved in rounds of one batch of texts -- (a) on them, then (b), then the floor -- so that load
    # from other work on a shared machine falls on all three alike; the sums over rounds are reported.
    bs = args.batch_size

    def measure(sub, with_naive):
        tot = {"a_s": 0.0, "b_s": 0.0, "floor_s": 0.0, "forward_s": 0.0, "cache_copy_s": 0.0, "encode_s": 0.0}
        answers, parsed, pred, own, padded = [], [], [], [], 0
        for r0 in range(0, len(sub), bs):
            chunk = sub[r0 : r0 + bs]
            if with_naive:
                a_s, ans, par = run_naive(teacher, chunk, max_new, parse)
                tot["a_s"] += a_s
                answers += ans
                parsed += par
            e0 = time.perf_counter()
            batches = batches_like_scorer(teacher, chunk)
            tot["encode_s"] += time.perf_counter() - e0
            b_runs = [run_scorer(teacher, chunk) for _ in range(args.repeats)]
            f_runs = [run_floor(teacher, batches, n_answer) for _ in range(args.repeats)]
            tot["b_s"] += statistics.median(r[0] for r in b_runs)
            pred += b_runs[0][1]
            for key in ("floor_s", "forward_s", "cache_copy_s"):
                tot[key] += statistics.median(r[key] for r in f_runs)
            own += [len(pr) - n_prefix for b in batches for pr in b]
            padded += sum(len(b) * (max(len(pr) for pr in b) - n_prefix) for b in batches)
            print(f"  {r0 + len(chunk)}/{len(sub)} texts: " + ", ".join(f"{k} {v:.1f}" for k, v in tot.items()),
                  flush=True)
        tot.update(answers=answers, parsed=parsed, pred=pred, mean_own_tokens=sum(own) / len(own),
                   padding_fraction=1 - sum(own) / padded)
        return tot

    print(f"(a) naive, (b) scorer and floor on {len(texts_a)} texts, interleaved per batch ...", flush=True)
    same = measure(texts_a, True)
    a_s, answers, parsed = same["a_s"], same["answers"], same["parsed"]
    big = None
    if args.n_scorer and args.n_scorer > args.n_naive:
        print(f"(b) scorer and floor on {len(texts_b)} texts ...", flush=True)
        big = measure(texts_b, False)

    pred_b = same["pred"]
    gold = [r["label"] for r in texts_a]
    agree = sum(x == y for x, y in zip(parsed, pred_b))
    unparsed = sum(x is None for x in parsed)
    n_a = len(texts_a)
    prompt_lens = [len(teacher.encode(r)) for r in texts_a]

    def rates(res, n):
        return {
            "texts": n,
            "scorer_texts_per_s": n / res["b_s"],
            "floor_texts_per_s": n / res["floor_s"],
            "prefill_forward_texts_per_s": n / res["forward_s"],
            "scorer_over_floor": res["floor_s"] / res["b_s"],
            "scorer_s": res["b_s"],
            "floor_s": res["floor_s"],
            "prefill_forward_s": res["forward_s"],
            "render_tokenize_s": res["encode_s"],
            "prefix_cache_copy_s": res["cache_copy_s"],
            "mean_new_text_tokens": res["mean_own_tokens"],
            "padding_fraction": res["padding_fraction"],
        }

    naive_tps = n_a / a_s
    same_r = rates(same, n_a)
    result = {
        "benchmark": "label_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "model": args.model,
        "task": recipe.task.name,
        "data": "BBC News test split (tailorkd.data, recipe " + Path(args.recipe).name + ", seed %d)" % recipe.seed,
        "shots": len(shots),
        "batch_size": args.batch_size,
        "scorer_mode": "sequential (each text alone on the shared cache)" if teacher.scorer.sequential
                       else "batched (padded texts on cache copies)",
        "repeats": args.repeats,
        "prompt_tokens": {
            "shared_prefix": n_prefix,
            "mean_full_prompt": sum(prompt_lens) / n_a,
            "mean_new_text_tokens": same["mean_own_tokens"],
            "answer_tokens_fed_per_text": n_answer,
            "mean_new_tokens_per_text": same["mean_own_tokens"] + n_answer,
            "label_token_ids": label_ids,
        },
        "naive": {
            "texts": n_a,
            "texts_per_s": naive_tps,
            "seconds": a_s,
            "max_new_tokens": max_new,
            "unparseable": unparsed,
            "answers_sample": answers[:5],
        },
        "same_texts": same_r,
        "scorer_over_naive": same_r["scorer_texts_per_s"] / naive_tps,
        "floor_over_naive": same_r["floor_texts_per_s"] / naive_tps,
        "agreement": {
            "texts": n_a,
            "agree": agree,
            "fraction": agree / n_a,
            "naive_accuracy_vs_gold": sum(x == g for x, g in zip(parsed, gold)) / n_a,
            "scorer_accuracy_vs_gold": sum(x == g for x, g in zip(pred_b, gold)) / n_a,
        },
        "larger_run": rates(big, len(texts_b)) if big else None,
        "definitions": {
            "naive": "per text: render the prompt with the same PromptBuilder, tokenize, model.generate(greedy, "
                     "max_new_tokens=longest label + 3), decode, first label name/answer in the output",
            "scorer": "LocalTeacher.score(rows), wall clock of the whole call (render, tokenize, batches, softmax)",
            "floor": ("per text: one unpadded forward pass over its own tokens + the answer-tree tokens (distinct "
                      "non-final answer tokens) on the shared-prefix KV cache" if teacher.scorer.sequential else
                      "for the scorer's own batches: per-token time of one batched forward pass over the texts' "
                      "own tokens on a ready shared-prefix KV cache (copies made outside the timer), times the "
                      "tokens new per text (own tokens + distinct non-final answer tokens); padding excluded"),
            "scorer_over_floor": "scorer texts/s divided by floor texts/s (1.0 = at the floor)",
            "timing": "wall clock after warm-up; (a), (b), floor interleaved per batch of texts and summed",
        },
        "setup_s": setup_s,
    }

    print()
    print(f"{'way':<34}{'texts':>6}{'texts/s':>10}{'vs naive':>10}{'vs floor':>10}")
    floor = naive_tps / same_r["floor_texts_per_s"]
    print(f"{'(a) naive generate()':<34}{n_a:>6}{naive_tps:>10.2f}{1:>10.1f}x{floor:>9.2f}")
    print(f"{'(b) tailorkd scorer':<34}{n_a:>6}{same_r['scorer_texts_per_s']:>10.2f}"
          f"{result['scorer_over_naive']:>10.1f}x{same_r['scorer_over_floor']:>9.2f}")
    print(f"{'floor (new tokens only)':<34}{n_a:>6}{same_r['floor_texts_per_s']:>10.2f}"
          f"{result['floor_over_naive']:>10.1f}x{1:>9.2f}")
    if big:
        lr = result["larger_run"]
        print(f"{'(b) tailorkd scorer':<34}{lr['texts']:>6}{lr['scorer_texts_per_s']:>10.2f}"
              f"{lr['scorer_texts_per_s'] / naive_tps:>10.1f}x{lr['scorer_over_floor']:>9.2f}")
        print(f"{'floor (new tokens only)':<34}{lr['texts']:>6}{lr['floor_texts_per_s']:>10.2f}"
              f"{lr['floor_texts_per_s'] / naive_tps:>10.1f}x{1:>9.2f}")
    print(f"\nshared prefix {n_prefix} tokens; mean new tokens/text {same['mean_own_tokens']:.1f} + {n_answer} answer; "
          f"agreement (a)/(b) {agree}/{n_a}, (a) unparseable {unparsed}; "
          f"accuracy vs gold (a) {result['agreement']['naive_accuracy_vs_gold']:.2f} "
          f"(b) {result['agreement']['scorer_accuracy_vs_gold']:.2f}")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
