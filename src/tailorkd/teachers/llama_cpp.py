"""A GGUF causal LM run in-process by llama.cpp (llama-cpp-python) as teacher: class probabilities from label
likelihoods, as the local teacher computes them, on the quantized weights as they are.

The prompt is what ``LocalTeacher`` builds (``PromptBuilder``/``PromptEncoder``), tokenized by the tokenizer
in the GGUF's own metadata (``models.gguf.tokenizer``); its token ids go to llama.cpp as they are. A class's
score is the log-likelihood of its answer tokens after the prompt (the mean per token with
``length_normalize``), and the class probabilities are their softmax (``scoring.LabelScorer``'s definition).

One context, texts one at a time, so the KV cache holds the last prompt: the next one keeps the longest
common prefix of its tokens with it (the few-shot part, at least) and evaluates only the rest. An answer of
several tokens is evaluated after the prompt token by token, and the cache rolled back to the prompt's end
for the next class. A context that cannot be rolled back (a sliding-window cache that is not kept full size,
a recurrent model: llama.cpp refuses, or no longer holds the window) is cleared and the prompt evaluated
whole instead (``LlamaRunner.full_evaluations`` counts it).
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tailorkd.errors import TailorkdError

if TYPE_CHECKING:  # reading a recipe imports this module for LlamaCppOptions: nothing heavy at import time
    from tqdm.auto import tqdm

    from tailorkd.labels import LabelStore, StoredLabels
    from tailorkd.prompts import KnnShotSelector
    from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig

log = logging.getLogger(__name__)

PACKAGE = "llama-cpp-python"
# Room left for what the estimate of the longest prompt cannot see (a template's tail, the answer tokens).
_CTX_MARGIN = 64
_CTX_STEP = 256


class LlamaCppOptions(BaseModel):
    """``teacher.options`` of the llama_cpp kind."""

    model_config = ConfigDict(extra="forbid")

    n_threads: int | None = Field(default=None, ge=1, description="CPU threads (default: every core this "
                                  "process may use).")
    n_ctx: int | None = Field(default=None, ge=16, description="Context size in tokens (default: enough for the "
                              "longest prompt, grown when a prompt needs more); a prompt that does not fit is an "
                              "error.")
    n_batch: int = Field(default=512, ge=1, description="Tokens llama.cpp evaluates in one step.")
    reuse_prefix: bool = Field(default=True, description="Keep the tokens a prompt shares with the previous one "
                               "in the KV cache (false: every text from an empty context; slower, for checks).")


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise TailorkdError(f"teacher.kind: llama_cpp needs the pip package {PACKAGE} "
                            f"(pip install {PACKAGE})") from None
    return llama_cpp


def gguf_path(model: str) -> Path:
    """The GGUF file ``teacher.model`` names: a packaged model's (joined into the cache once) or a .gguf file."""
    from tailorkd.models import REGISTRY, gguf_file
    from tailorkd.models.gguf.sources import has_gguf

    if model in REGISTRY:
        if not has_gguf(model):
            raise TailorkdError(f"teacher.model: {model!r} ships no GGUF; packaged GGUF models: "
                                f"{', '.join(n for n in REGISTRY if has_gguf(n))}")
        return gguf_file(model)
    path = Path(model).expanduser()
    if path.is_file() and _is_gguf(path):
        return path
    raise TailorkdError(f"teacher.model: {model!r} is neither a packaged GGUF model "
                        f"({', '.join(n for n in REGISTRY if has_gguf(n))}) nor a GGUF file")


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"GGUF"


def gguf_weights(model: str) -> str:
    """The fingerprint of the weights ``teacher.model`` names (``models.file_fingerprint`` of its GGUF)."""
    from tailorkd.models import file_fingerprint

    return file_fingerprint(gguf_path(model))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(logits.max())
    return shifted - math.log(float(np.exp(shifted).sum()))


class LlamaRunner:
    """One GGUF loaded in llama.cpp with one context, shared by the teachers of several prompts.

    The context is made when first needed, sized for the longest prompt asked for so far; a longer prompt
    makes it again, larger, unless ``teacher.options.n_ctx`` fixes the size (then it is an error).
    ``swa_full``: keep a sliding-window model's cache full size, so it can be rolled back to any prefix (as
    llama.cpp's default does); without it a roll-back behind the window evaluates the prompt whole.
    """

    def __init__(self, path: Path, options: LlamaCppOptions, context_length: int, swa_full: bool = True):
        self.path, self.options, self.swa_full = path, options, swa_full
        self.context_length = context_length  # what the model was trained for: no context is made larger
        self.llm: Any = None
        self.n_ctx = 0
        self.full_evaluations = 0  # roll-backs llama.cpp could not do: the prompt was evaluated whole
        self.evaluated_tokens = 0

    def _threads(self) -> int:
        if self.options.n_threads is not None:
            return self.options.n_threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def ensure_room(self, tokens: int) -> None:
        """A context of at least ``tokens`` tokens: an error naming ``teacher.options.n_ctx`` when the size is
        fixed and too small, or the model's context length is."""
        fixed = self.options.n_ctx
        if fixed is not None and tokens > fixed:
            raise TailorkdError(f"teacher.options.n_ctx: a prompt with its answer needs {tokens} tokens, more than "
                                f"n_ctx={fixed}; raise it (the model allows {self.context_length})")
        if tokens > self.context_length:
            raise TailorkdError(f"teacher.model: a prompt with its answer needs {tokens} tokens, more than the "
                                f"{self.context_length} of {self.path.name}; lower prompt.shots or "
                                "prompt.max_text_chars")
        if self.llm is not None and tokens <= self.n_ctx:
            return
        size = fixed or min(self.context_length, -(-tokens // _CTX_STEP) * _CTX_STEP)
        self.close()
        llama_cpp = _llama_cpp()
        threads = self._threads()
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=size, n_batch=self.options.n_batch,
                                   n_ubatch=self.options.n_batch, n_threads=threads, n_threads_batch=threads,
                                   swa_full=self.swa_full, verbose=False)
        # Closed at the latest when the interpreter exits, before llama_cpp's own teardown (its __del__ then fails).
        self._finalizer = weakref.finalize(self, self.llm.close)
        self.n_ctx = size
        self.n_vocab = self.llm.n_vocab()
        self.n_swa = int(llama_cpp.llama_model_n_swa(self.llm.model))
        log.info("llama.cpp: %s with a context of %d tokens, %d threads", self.path.name, size, threads)

    def close(self) -> None:
        """Free the model and its context (a later prompt loads them again)."""
        if self.llm is not None:
            self._finalizer()
            self.llm, self.n_ctx = None, 0

    def clear(self) -> None:
        """An empty context (the next prompt is evaluated whole)."""
        if self.llm is not None:
            self._roll_back(0)

    def _common(self, ids: Sequence[int]) -> int:
        held = self.llm.input_ids[: self.llm.n_tokens]
        n = min(len(held), len(ids))
        differ = np.flatnonzero(held[:n] != np.asarray(ids[:n]))
        return int(differ[0]) if differ.size else n

    def _roll_back(self, keep: int) -> int:
        """Keep the first ``keep`` tokens in the KV cache; how many it could keep (``keep`` or 0)."""
        llama_cpp, llm = _llama_cpp(), self.llm
        memory = llama_cpp.llama_get_memory(llm.ctx)
        if keep < llm.n_tokens or keep == 0:
            kept = bool(llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1))
            if kept and keep > 0 and self.n_swa > 0:
                # A sliding-window cache drops what falls out of the window: the window before ``keep`` must
                # still be there (llama.cpp's server checks the same).
                kept = llama_cpp.llama_memory_seq_pos_min(memory, 0) <= max(0, keep - self.n_swa)
            if not kept:
                llama_cpp.llama_memory_clear(memory, True)
                self.full_evaluations += 1
                keep = 0
        llm.n_tokens = keep
        return keep

    def next_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """Log-probabilities of the token after ``ids``, evaluating only what the context does not hold."""
        llama_cpp, llm = _llama_cpp(), self.llm
        keep = self._roll_back(min(self._common(ids), len(ids) - 1))
        llm.eval(list(ids[keep:]))
        self.evaluated_tokens += len(ids) - keep
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
        return _log_softmax(logits)

    def class_scores(self, prompt: Sequence[int], label_ids: Sequence[Sequence[int]], length_normalize: bool
                     ) -> np.ndarray:
        """[M] each class's answer log-likelihood after ``prompt`` (the mean per token with ``length_normalize``)."""
        prompt = list(prompt)
        self.ensure_room(len(prompt) + max(len(label) for label in label_ids) - 1)
        if not self.options.reuse_prefix:
            self.clear()
        first = self.next_logprobs(prompt)
        scores = np.array([first[label[0]] for label in label_ids], dtype=np.float64)
        for c, label in enumerate(label_ids):
            for i in range(1, len(label)):  # the context keeps the answer's tokens a class shares with the last
                scores[c] += self.next_logprobs(prompt + list(label[:i]))[label[i]]
        if length_normalize:
            scores /= np.array([len(label) for label in label_ids], dtype=np.float64)
        return scores


def _gguf_tokenizer(path: Path) -> tuple[Any, int]:
    """The Hugging Face tokenizer in a GGUF's metadata (as the converter builds it) and its context length."""
    from tailorkd.models.gguf.reader import GGUFFile
    from tailorkd.models.gguf.tokenizer import gguf_tokenizer

    fields = GGUFFile(path).metadata
    tokenizer = gguf_tokenizer(fields)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.name_or_path = path.name
    arch = fields.get("general.architecture")
    return tokenizer, int(fields.get(f"{arch}.context_length", 2048))


class LlamaCppTeacher:
    """A GGUF model run by llama.cpp as teacher (implements ``tailorkd.teachers.base.Teacher``)."""

    def __init__(self, config: TeacherConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 selector: KnnShotSelector | None = None, runner: LlamaRunner | None = None,
                 tokenizer: Any = None, weights: str | None = None):
        """``runner``/``tokenizer``/``weights``: another prompt's teacher's, shared (``with_prompt``)."""
        from tailorkd.prompts import PromptBuilder, PromptEncoder
        from tailorkd.teachers.registry import get_teacher_kind

        self.config, self.task = config, task
        if runner is None:
            _llama_cpp()  # a missing package is told before anything is read
            options = get_teacher_kind("llama_cpp").parsed_options(config.options)
            path = gguf_path(config.model)
            tokenizer, context_length = _gguf_tokenizer(path)
            runner = LlamaRunner(path, options, context_length)
        self.runner, self.tokenizer = runner, tokenizer
        # New weights at the same path must not reuse the old labels: the identity names the weights.
        self.weights = weights or gguf_weights(config.model)
        self.builder = PromptBuilder(task, prompt, tokenizer, shots, selector)
        self.prompts = PromptEncoder(self.builder)
        self.label_ids = self.prompts.label_token_ids()
        self._sized = False  # the context is sized for this prompt on first use

    def longest_prompt(self) -> int:
        """About how many tokens this prompt takes at most with its answer: the prompt of a text as long as
        ``prompt.max_text_chars`` at two characters a token (with per-text shots, each shot as long as
        ``prompt.max_shot_chars``), plus a margin. A longer prompt grows the context when it comes."""
        b = self.builder
        shots, extra = (b.shots, 0) if b.selector is None else ([], b.config.shots * b.config.max_shot_chars // 2)
        rendered = b.render("x " * (b.config.max_text_chars // 2), shots=shots)
        ids = self.tokenizer(rendered, add_special_tokens=self.prompts.add_special_tokens)["input_ids"]
        return len(ids) + extra + max(len(label) for label in self.label_ids) + _CTX_MARGIN

    @property
    def identity(self) -> str:
        c = self.config
        return f"llama_cpp:{c.model}|likelihood|norm={int(c.length_normalize)}|weights={self.weights}"

    @property
    def prompt_fingerprint(self) -> str:
        return self.builder.fingerprint()

    def describe_prompt(self) -> dict[str, Any]:
        return self.builder.describe()

    def with_prompt(self, prompt: PromptConfig, shots: list[dict[str, Any]], selector: KnnShotSelector | None = None
                    ) -> LlamaCppTeacher:
        """This teacher under another prompt or other shots, sharing the loaded model."""
        return LlamaCppTeacher(self.config, self.task, prompt, shots, selector, self.runner, self.tokenizer,
                               self.weights)

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
              **options: Any) -> StoredLabels:
        """``local.label_rows`` with this teacher: resumable, a chunk of texts per store transaction."""
        from tailorkd.teachers.local import label_rows

        return label_rows(self, rows, store, desc=desc, **options)  # type: ignore[arg-type]

    def encode(self, row: dict[str, Any]) -> list[int]:
        return self.prompts.encode(row)

    def score(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, M] class probabilities and per-text seconds, in the order of ``rows``."""
        if not self._sized:  # a fixed n_ctx is checked against the real prompts, not this estimate
            runner = self.runner
            runner.ensure_room(min(self.longest_prompt(), runner.options.n_ctx or runner.context_length,
                                   runner.context_length))
            self._sized = True
        if self.builder.selector is not None:
            self.builder.selector.prepare(rows)
        probs = np.zeros((len(rows), len(self.task.labels)), dtype=np.float64)
        seconds = np.zeros(len(rows))
        for i, row in enumerate(rows):
            t0 = time.perf_counter()
            scores = self.runner.class_scores(self.encode(row), self.label_ids, self.config.length_normalize)
            probs[i] = np.exp(scores - scores.max())
            probs[i] /= probs[i].sum()
            seconds[i] = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
        return probs, seconds

    def score_states(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None,
                     hidden_layers: Sequence[int] = (), pooling: str = "last"
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """``score`` in the local teacher's form (``label_rows`` calls it); llama.cpp gives no hidden states."""
        if hidden_layers:
            raise TailorkdError("teacher.hidden_states: teacher kind 'llama_cpp' does not support it (local does)")
        probs, seconds = self.score(rows, bar)
        return probs, seconds, {}
