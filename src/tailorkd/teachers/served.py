"""A teacher served over an OpenAI-compatible chat-completions API (vLLM, llama.cpp server, Ollama, hosted).

Two ways to a class distribution, chosen by ``teacher.server.mode``:

- ``logprobs``: ask for one answer token with its ``top_logprobs`` and map those tokens to classes
  (:func:`class_probs_from_top_logprobs`);
- ``json``: ask for ``{"label": ..., "reason": ...}`` and give the parsed label the probability mass
  (:func:`parse_json_answer`);
- ``auto``: logprobs, switching to json for good once the server shows it gives none.

A text whose answer names no class is an *abstention*, not an error: :meth:`ServedTeacher.score` gives it a
row of NaN, and :func:`label_served_rows` leaves it out of the store (so a later run asks again) and counts
it. Transport faults are retried by the ``openai`` client (timeouts, connection errors, 429 honouring
Retry-After, 5xx; exponential backoff with jitter); what is still failing after ``max_retries`` stops the
run with a :class:`TailorkdError`. The API key is read from the environment variable the recipe names and
goes nowhere but the request header.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from tailorkd.data.pool_rows import windows
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, StoredLabels, make_record, unlabelled_rows
from tailorkd.prompts import KnnShotSelector, PromptBuilder
from tailorkd.recipe import PromptConfig, ServerConfig, TaskConfig, TeacherConfig

log = logging.getLogger(__name__)

# An unlisted class gets at most this much probability before renormalising (see class_probs_from_top_logprobs).
UNLISTED_CLASS_CAP = 1e-4
# Sent when the recipe names no key variable: the openai client would otherwise read OPENAI_API_KEY and send
# that key to whatever server base_url names.
NO_KEY = "no-key"


def _norm(text: str) -> str:
    """Case- and space-insensitive form of an answer or token; quotes, markdown and trailing punctuation go."""
    return " ".join(text.split()).lower().strip("\"'`*_ ").rstrip(".,:;!?").strip()


def class_probs_from_top_logprobs(top: dict[str, float], answers: Sequence[str]) -> np.ndarray | None:
    """Class probabilities from the top tokens (token -> logprob) of the answer's first position.

    - A token belongs to a class when, compared case- and space-insensitively (quotes, markdown and
      trailing punctuation stripped), it equals the class's answer text or is a prefix of it: ``"Sport"``
      and ``" sp"`` both count for ``sport``. A token equal to one class's answer counts for that class
      only; a token that is a prefix of several answers is split evenly among them. Tokens of no class
      (``"The"``, a newline) are dropped.
    - A class's mass is the summed probability of its tokens.
    - **Floor**: a class none of whose tokens is listed gets ``min(p_min, 1e-4)``, where ``p_min`` is the
      smallest listed probability: an unlisted token is no likelier than any listed one, and its true
      probability is unknown, so it gets a small non-zero share instead of an impossible zero.
    - The masses are renormalised over the classes (the mass of tokens of no class is left out).

    None (an abstention) when no listed token belongs to any class.
    """
    keys = [_norm(a) for a in answers]
    mass = np.zeros(len(answers))
    for token, logprob in top.items():
        t = _norm(token)
        if not t:
            continue
        exact = [i for i, k in enumerate(keys) if k == t]
        hits = exact or [i for i, k in enumerate(keys) if k.startswith(t)]
        for i in hits:
            mass[i] += math.exp(logprob) / len(hits)
    if mass.sum() <= 0:
        return None
    floor = min(min(math.exp(lp) for lp in top.values()), UNLISTED_CLASS_CAP)
    mass[mass == 0] = floor
    return mass / mass.sum()


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
_LABEL_FIELD = re.compile(r'"label"\s*:\s*"([^"]*)"')


@dataclass(frozen=True)
class JsonAnswer:
    index: int | None  # the class, or None: an abstention
    reason: str | None  # the model's reason, when it gave one
    problem: str | None  # why it is an abstention: "unparseable" or "unknown label"


def parse_json_answer(content: str | None, answers: Sequence[str], names: Sequence[str]) -> JsonAnswer:
    """The class named by a ``{"label": ..., "reason": ...}`` answer (its answer text or its name, compared
    case- and space-insensitively). An answer cut off by the token limit still counts when its label field
    is complete. Anything else is an abstention."""
    text = _FENCE.sub("", (content or "").strip())
    label: Any = None
    reason = None
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            label, reason = parsed.get("label"), parsed.get("reason")
    except json.JSONDecodeError:
        found = _LABEL_FIELD.search(text)
        label = found.group(1) if found else None
    if not isinstance(label, str):
        return JsonAnswer(None, None, "unparseable")
    wanted = _norm(label)
    for i, (answer, name) in enumerate(zip(answers, names)):
        if wanted in (_norm(answer), _norm(name)):
            return JsonAnswer(i, reason if isinstance(reason, str) else None, None)
    return JsonAnswer(None, None, "unknown label")


class _NoLogprobs(Exception):
    """auto mode: the server gives no logprobs, so JSON answers are asked for instead."""


class ServedPromptBuilder(PromptBuilder):
    """The prompt parts as chat messages (:meth:`PromptBuilder.messages`); the server applies its own chat
    template, so there is no tokenizer here and ``prompt.template`` does not apply."""

    def __init__(self, task: TaskConfig, config: PromptConfig, shots: list[dict[str, Any]],
                 selector: KnnShotSelector | None = None):
        super().__init__(task, config, None, shots, selector)

    def __post_init__(self) -> None:
        self.use_chat = True
        self.json_answers = False  # the server's mode decides the answer format (JsonAnswerPromptBuilder)

    def render(self, text: str, title: str | None = None, shots: list[dict[str, Any]] | None = None) -> str:
        """The messages as JSON text (what the report shows as the prompt)."""
        return json.dumps(self.messages(text, title, shots), ensure_ascii=False, indent=1)

    def fingerprint(self) -> str:
        return "served-" + super().fingerprint()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "format": "messages"}


class JsonAnswerPromptBuilder(ServedPromptBuilder):
    """The same messages, asking for a JSON object; the few-shot answers are written as JSON too."""

    @property
    def answer_instruction(self) -> str:  # type: ignore[override]
        choices = ", ".join(json.dumps(label.answer) for label in self.task.labels)
        return (f'Answer with a JSON object only: {{"label": one of {choices}, '
                f'"reason": "<a few words why>"}}.')

    def _shot_answer(self, label_name: str) -> str:
        return json.dumps({"label": self._answer_of(label_name)})


class ServedTeacher:
    """A teacher behind an OpenAI-compatible server (implements ``tailorkd.teachers.base.Teacher``)."""

    def __init__(self, config: TeacherConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 selector: KnnShotSelector | None = None):
        if config.server is None:
            raise ValueError("ServedTeacher needs teacher.server")
        import openai

        self.config = config
        self.server: ServerConfig = config.server
        self.task = task
        self.model_name = self.server.model or config.model
        self.builder = ServedPromptBuilder(task, prompt, shots, selector)
        self.json_builder = JsonAnswerPromptBuilder(task, prompt, shots, selector)
        self._key = self._read_key()
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.server.base_url, api_key=self._key or NO_KEY,
                                    timeout=self.server.timeout_s, max_retries=self.server.max_retries)
        # auto mode learns once whether the server gives logprobs, json mode whether it takes response_format.
        self._use_logprobs = self.server.mode in ("auto", "logprobs")
        self._use_response_format = True
        self._lock = threading.Lock()
        self.abstentions: Counter[str] = Counter()
        self.answers_by_method: Counter[str] = Counter()

    def _read_key(self) -> str | None:
        name = self.server.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "")
        if not key:
            raise TailorkdError(f"teacher.server.api_key_env: the environment variable {name} is not set or empty")
        return key

    @property
    def identity(self) -> str:
        s = self.server
        parts = [f"served:{self.model_name}", f"mode={s.mode}", f"temp={s.temperature:g}"]
        if s.mode != "json":
            parts.append(f"top={s.top_logprobs}")
        if s.mode != "logprobs":
            parts.append(f"smooth={s.json_smoothing:g}")
        return "|".join(parts)

    @property
    def prompt_fingerprint(self) -> str:
        return self.builder.fingerprint()

    def describe_prompt(self) -> dict[str, Any]:
        return self.builder.describe()

    def with_prompt(self, prompt: PromptConfig, shots: list[dict[str, Any]], selector: KnnShotSelector | None = None
                    ) -> ServedTeacher:
        """This teacher (same server and model) under another prompt or other shots."""
        return ServedTeacher(self.config, self.task, prompt, shots, selector)

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
              **options: Any) -> StoredLabels:
        """``label_served_rows`` with this teacher; a served model has no hidden states to store."""
        if options:
            raise TailorkdError(f"teacher.server: a served teacher cannot give {', '.join(sorted(options))}")
        return label_served_rows(self, rows, store, desc=desc)

    def _count_abstention(self, why: str) -> None:
        with self._lock:
            self.abstentions[why] += 1

    # -- one request ---------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _create(self, **request: Any) -> Any:
        """One chat completion, the client retrying transport faults; a fault that remains is a TailorkdError."""
        openai = self._openai
        where = f"teacher server {self.server.base_url} (model {self.model_name!r})"
        try:
            response = self.client.chat.completions.create(model=self.model_name,
                                                           temperature=self.server.temperature, **request)
        except ValueError as exc:  # a body that is not JSON although it says so
            raise TailorkdError(f"{where}: the response is not JSON ({exc})") from None
        except openai.BadRequestError:
            raise  # the caller decides: an unsupported option is a reason to fall back
        except openai.APITimeoutError:
            raise TailorkdError(f"{where}: no answer within {self.server.timeout_s:g}s, "
                                f"{self.server.max_retries} retries included") from None
        except openai.APIStatusError as exc:
            raise TailorkdError(f"{where}: HTTP {exc.status_code}"
                                f"{' after retries' if exc.status_code == 429 or exc.status_code >= 500 else ''}: "
                                f"{self._redact(str(exc.message))}") from None
        except openai.APIConnectionError as exc:
            raise TailorkdError(f"{where}: cannot connect ({self._redact(str(exc))}), "
                                f"{self.server.max_retries} retries included") from None
        except openai.APIError as exc:
            raise TailorkdError(f"{where}: unusable response: {self._redact(str(exc))}") from None
        # The client returns a non-JSON body as text, and JSON of another shape unvalidated.
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            shown = self._redact(str(response)[:200])
            raise TailorkdError(f"{where}: the response is not a chat completion: {shown!r}")
        return response

    def _ask_logprobs(self, row: dict[str, Any]) -> np.ndarray | None:
        """Class probabilities, or None for an abstention; _NoLogprobs in auto mode when the server gives none."""
        try:
            response = self._create(messages=self.builder.messages(row["text"], row.get("title")), max_tokens=1,
                                    logprobs=True, top_logprobs=self.server.top_logprobs)
        except self._openai.BadRequestError as exc:
            if self.server.mode == "auto":
                raise _NoLogprobs(f"it refused the request ({self._redact(str(exc.message))})") from None
            raise TailorkdError(f"teacher server {self.server.base_url}: refused the logprobs request "
                                f"({self._redact(str(exc.message))}); set teacher.server.mode to json or auto"
                                ) from None
        content = getattr(getattr(response.choices[0], "logprobs", None), "content", None)
        if not content:
            if self.server.mode == "auto":
                raise _NoLogprobs("its answer had none")
            raise TailorkdError(f"teacher server {self.server.base_url} gives no logprobs for model "
                                f"{self.model_name!r}; set teacher.server.mode to json or auto")
        first = content[0]
        top = {t.token: t.logprob for t in (first.top_logprobs or [])}
        top.setdefault(first.token, first.logprob)
        probs = class_probs_from_top_logprobs(top, [label.answer for label in self.task.labels])
        if probs is None:
            self._count_abstention("no class among the top tokens")
            log.debug("abstention: top tokens %s", sorted(top, key=top.get, reverse=True)[:5])
        return probs

    def _ask_json(self, row: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        request: dict[str, Any] = {"messages": self.json_builder.messages(row["text"], row.get("title")),
                                   "max_tokens": self.server.max_tokens_json}
        response = None
        if self._use_response_format:
            try:
                response = self._create(**request, response_format={"type": "json_object"})
            except self._openai.BadRequestError as exc:
                with self._lock:
                    if self._use_response_format:
                        log.warning("teacher server refused response_format json_object (%s); asking for JSON in "
                                    "the prompt only", self._redact(str(exc.message)))
                    self._use_response_format = False
        if response is None:
            try:
                response = self._create(**request)
            except self._openai.BadRequestError as exc:
                raise TailorkdError(f"teacher server {self.server.base_url}: HTTP 400: "
                                    f"{self._redact(str(exc.message))}") from None
        content = response.choices[0].message.content
        names = self.task.label_names
        answer = parse_json_answer(content, [label.answer for label in self.task.labels], names)
        if answer.index is None:
            self._count_abstention(answer.problem or "unparseable")
            log.debug("abstention (%s): %r", answer.problem, (content or "")[:200])
            return None, None
        m, eps = len(names), self.server.json_smoothing
        probs = np.full(m, eps / (m - 1))
        probs[answer.index] = 1.0 - eps
        reason = " ".join(answer.reason.split()) if answer.reason else None
        return probs, reason or None

    def _ask(self, row: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        """The class distribution (None: abstained) and, in JSON mode, the model's reason."""
        if self._use_logprobs:
            try:
                probs = self._ask_logprobs(row)
                with self._lock:
                    self.answers_by_method["logprobs"] += 1
                return probs, None
            except _NoLogprobs as exc:
                with self._lock:
                    if self._use_logprobs:
                        log.warning("teacher server %s gives no logprobs (%s): answering in JSON from now on",
                                    self.server.base_url, exc)
                    self._use_logprobs = False
        answer = self._ask_json(row)
        with self._lock:
            self.answers_by_method["json"] += 1
        return answer

    # -- many ------------------------------------------------------------------------------------------
    def score(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[N, M] class probabilities (a row of NaN: the teacher abstained) and per-text seconds (the
        wall time of all N divided among them), at most ``concurrency`` requests in flight."""
        probs, seconds, _ = self.score_with_reasons(rows, bar)
        return probs, seconds

    def score_with_reasons(self, rows: Sequence[dict[str, Any]], bar: tqdm | None = None
                           ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """As ``score``, plus the reason of each JSON answer (None for logprobs answers and abstentions)."""
        probs = np.full((len(rows), len(self.task.labels)), np.nan)
        reasons: list[str | None] = [None] * len(rows)
        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=self.server.concurrency, thread_name_prefix="teacher")
        try:
            futures = {pool.submit(self._ask, row): i for i, row in enumerate(rows)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when="FIRST_COMPLETED")
                for future in done:
                    result, reason = future.result()  # a failed request stops the whole batch
                    if result is not None:
                        probs[futures[future]] = result
                        reasons[futures[future]] = reason
                    if bar is not None:
                        bar.update(1)
        finally:
            # On an error the queued requests are dropped; those in flight end within the timeout.
            pool.shutdown(wait=False, cancel_futures=True)
        seconds = np.full(len(rows), (time.perf_counter() - t0) / max(len(rows), 1))
        return probs, seconds, reasons


def label_served_rows(teacher: ServedTeacher, rows: Sequence[dict[str, Any]], store: LabelStore,
                      desc: str = "teacher", chunk: int = 64) -> StoredLabels:
    """Label the rows not yet in the store, chunk by chunk (each one transaction), a window of rows at a
    time; return the records of all rows that have one (read from the store on demand). Like
    :func:`~tailorkd.teachers.local.label_rows`, except that abstentions are not stored (a NaN row cannot be a
    label): they are counted and logged, are missing from the result, and are asked again on the next run."""
    names = teacher.task.label_names
    key = (teacher.identity, teacher.prompt_fingerprint)
    abstained = asked = skipped = 0
    with tqdm(total=len(rows), desc=desc, unit="text", dynamic_ncols=True, disable=not rows) as bar:
        for window in windows(rows):
            todo = unlabelled_rows(store, key, window)
            skipped += len(window) - len(todo)
            bar.update(len(window) - len(todo))
            if todo and teacher.builder.selector is not None:
                teacher.builder.selector.prepare(todo)  # embed in batches here, not one by one in the request threads
            for start in range(0, len(todo), chunk):
                # Another process labelling the same rows may have stored some since: do not ask for them again.
                part = unlabelled_rows(store, key, todo[start : start + chunk])
                bar.update(min(chunk, len(todo) - start) - len(part))
                if not part:
                    continue
                asked += len(part)
                probs, secs, reasons = teacher.score_with_reasons(part, bar)
                answered = ~np.isnan(probs).any(axis=1)
                abstained += int((~answered).sum())
                records = [make_record(r["id"], r["text"], p, names, s, reason)
                           for r, p, s, reason, ok in zip(part, probs, secs, reasons, answered) if ok]
                if records:
                    store.put_batch(*key, names, records)
    if skipped:
        log.info("%s: %d of %d texts already labelled in %s", desc, skipped, len(rows), store.path)
    if asked:
        log.info("%s: answers by method %s", desc, dict(teacher.answers_by_method))
    if abstained:
        log.warning("%s: the teacher abstained on %d of %d texts (%s); they are not stored", desc, abstained,
                    asked, dict(teacher.abstentions))
    return StoredLabels(store, *key, rows, names)
