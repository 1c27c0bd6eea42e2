"""Render a task prompt for one model: its chat template when it has one, else a plain template.

The prompt always ends where the answer begins, so a class is scored as the likelihood of its
verbalizer right after the prompt (``label_continuations``). Teacher and causal-LM student use the
same parts, each through its own tokenizer's format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.recipe import PromptConfig, TaskConfig
from tailorkd.scoring import continuation_token_ids, shared_prefix


def clip_text(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters at a word boundary, marking the cut with '...'."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 3]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut + "..."


def choose_shots(seeds: Sequence[dict[str, Any]], label_names: list[str], k: int, seed: int) -> list[dict[str, Any]]:
    """Pick ``k`` seed examples balanced across classes (round-robin), in a seeded, interleaved order."""
    if k == 0:
        return []
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[dict[str, Any]]] = {name: [] for name in label_names}
    for row in sorted(seeds, key=lambda r: str(r["id"])):
        if row.get("label") in by_label:
            by_label[row["label"]].append(row)
    for rows in by_label.values():
        rng.shuffle(rows)
    order = list(label_names)
    rng.shuffle(order)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < k and any(by_label.values()):
        for name in order:
            if by_label[name] and len(chosen) < k:
                chosen.append(by_label[name].pop())
    return chosen


def _input_text(title: str | None, text: str, max_chars: int) -> str:
    body = f"{title.strip()}. {text}" if title and title.strip() else text
    return clip_text(body, max_chars)


# Where a JSON answer (prompt.response_format: json) starts: the label is scored right after it.
JSON_ANSWER_OPENING = '{"label": "'
MULTILINGUAL_NOTE = "The text may be in any language; answer in English."


@dataclass
class PromptBuilder:
    """The prompt for one model. ``shots`` are the fixed few-shot examples; with a ``selector``
    (prompt.shot_selection: knn) each text gets its own, chosen by ``selector.select(row)``."""

    task: TaskConfig
    config: PromptConfig
    tokenizer: Any
    shots: list[dict[str, Any]] = field(default_factory=list)
    selector: Any = None
    # The last line of the task text for label answers.
    label_answer_instruction: ClassVar[str] = "Answer with the label only."

    def __post_init__(self) -> None:
        has_chat = bool(getattr(self.tokenizer, "chat_template", None))
        if self.config.template == "chat" and not has_chat:
            raise TailorkdError(f"prompt.template: 'chat', but the tokenizer of "
                                f"{getattr(self.tokenizer, 'name_or_path', 'the model') or 'the model'} has no chat "
                                "template; use auto or plain")
        self.use_chat = self.config.template == "chat" or (self.config.template == "auto" and has_chat)
        self.json_answers = self.config.response_format == "json"

    @property
    def answer_instruction(self) -> str:
        if not self.json_answers:
            return self.label_answer_instruction
        choices = ", ".join(json.dumps(label.answer) for label in self.task.labels)
        return f'Answer with a JSON object only: {{"label": one of {choices}, "reason": "<a few words why>"}}.'

    def shots_for(self, text: str, title: str | None = None) -> list[dict[str, Any]]:
        """The few-shot examples of one input: the selector's choice, else the fixed shots."""
        if self.selector is not None:
            return self.selector.select({"text": text, "title": title})
        return self.shots

    # -- parts ---------------------------------------------------------------------------------
    def _task_text(self) -> str:
        lines = [self.config.instruction.strip()]
        if self.config.multilingual:
            lines.append(MULTILINGUAL_NOTE)
        if self.config.describe_labels:
            lines.append("")
            lines.append("Labels:")
            for label in self.task.labels:
                desc = f": {label.description}" if label.description else ""
                lines.append(f"- {label.answer}{desc}")
        lines.append("")
        lines.append(self.answer_instruction)
        return "\n".join(lines)

    def _answer_of(self, label_name: str) -> str:
        return next(label.answer for label in self.task.labels if label.name == label_name)

    def answer_of(self, label_name: str) -> str:
        """The answer text of a class (what a shot's answer turn and the teacher's own answer say)."""
        return self._shot_answer(label_name)

    def _shot_answer(self, label_name: str) -> str:
        """What a few-shot example's answer turn says (a JSON object when answers are JSON)."""
        if self.json_answers:
            return json.dumps({"label": self._answer_of(label_name)})
        return self._answer_of(label_name)

    def _answer_opening(self) -> str:
        """What the prompt ends with after the answer cue: the start of a JSON answer, or nothing."""
        return JSON_ANSWER_OPENING if self.json_answers else ""

    def _input_block(self, title: str | None, text: str, max_chars: int) -> str:
        return f"{self.config.input_prefix} {_input_text(title, text, max_chars)}".strip()

    # -- rendering -----------------------------------------------------------------------------
    def render(self, text: str, title: str | None = None, shots: list[dict[str, Any]] | None = None) -> str:
        """The full prompt for one input, ending exactly where the answer starts. ``shots``: these
        examples instead of the input's own (``shots_for``)."""
        shots = self.shots_for(text, title) if shots is None else shots
        if self.use_chat:
            return self._render_chat(text, title, shots) + self._answer_opening()
        return self._render_plain(text, title, shots)

    def _render_plain(self, text: str, title: str | None, shots: list[dict[str, Any]]) -> str:
        parts = []
        if self.config.system:
            parts.append(self.config.system.strip())
        parts.append(self._task_text())
        for shot in shots:
            parts.append(
                self._input_block(shot.get("title"), shot["text"], self.config.max_shot_chars)
                + f"\n{self.config.answer_prefix} {self._shot_answer(shot['label'])}"
            )
        cue = self.config.answer_prefix + (" " + self._answer_opening() if self.json_answers else "")
        parts.append(self._input_block(title, text, self.config.max_text_chars) + f"\n{cue}")
        return "\n\n".join(parts)

    def messages(self, text: str, title: str | None = None, shots: list[dict[str, Any]] | None = None
                 ) -> list[dict[str, str]]:
        """The prompt as chat messages: system (if any), the task with each few-shot example as a user turn
        answered by an assistant turn, then the input. The one source of the chat format: a local chat
        template renders these, a served teacher sends them as they are."""
        shots = self.shots_for(text, title) if shots is None else shots
        messages: list[dict[str, str]] = []
        if self.config.system:
            messages.append({"role": "system", "content": self.config.system.strip()})
        preamble = self._task_text() + "\n\n"
        for shot in shots:
            block = self._input_block(shot.get("title"), shot["text"], self.config.max_shot_chars)
            messages.append({"role": "user", "content": preamble + block})
            messages.append({"role": "assistant", "content": self._shot_answer(shot["label"])})
            preamble = ""
        content = preamble + self._input_block(title, text, self.config.max_text_chars)
        messages.append({"role": "user", "content": content})
        return messages

    def _render_chat(self, text: str, title: str | None, shots: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(self.messages(text, title, shots), tokenize=False,
                                                  add_generation_prompt=True)

    def label_continuations(self) -> list[str]:
        """The text of each class's answer as it follows the prompt (a leading space after a cue; inside a
        JSON answer, the label and its closing quote)."""
        if self.json_answers:
            return [label.answer + '"' for label in self.task.labels]
        tail = self.render("x", shots=[])
        sep = "" if tail[-1:].isspace() else " "
        return [sep + label.answer for label in self.task.labels]

    def fingerprint(self) -> str:
        """A hash of everything that changes the rendered prompts: parts, shots, format and template."""
        payload = {
            "task": self.task.model_dump(mode="json"),
            "prompt": self.config.model_dump(mode="json"),
            "shots": (self.selector.describe() if self.selector is not None
                      else [[s["id"], s["label"]] for s in self.shots]),
            "chat": self.use_chat,
            "template": getattr(self.tokenizer, "chat_template", None) if self.use_chat else None,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What the report records about the prompt used."""
        return {
            "format": "chat" if self.use_chat else "plain",
            "shot_selection": "knn" if self.selector is not None else "fixed",
            "shots": ([] if self.selector is not None else [{"id": s["id"], "label": s["label"]} for s in self.shots]),
            **({"knn": {k: v for k, v in self.selector.describe().items() if k != "seeds"}}
               if self.selector is not None else {}),
            "fingerprint": self.fingerprint(),
            "example": self.render("<input text>"),
        }


class PromptEncoder:
    """A PromptBuilder bound to its tokenizer: rows -> prompt token ids, and the classes' answer token ids."""

    def __init__(self, builder: PromptBuilder):
        self.builder = builder
        self.tokenizer = builder.tokenizer
        self.add_special_tokens = not builder.use_chat  # a chat template writes its own BOS

    def encode(self, row: dict[str, Any]) -> list[int]:
        prompt = self.builder.render(row["text"], row.get("title"))
        return self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]

    def label_token_ids(self) -> list[list[int]]:
        return continuation_token_ids(self.tokenizer, self.builder.render("x", shots=[]),
                                      self.builder.label_continuations(), self.add_special_tokens)

    def _encode_with(self, text: str, shots: list[dict[str, Any]]) -> list[int]:
        rendered = self.builder.render(text, shots=shots)
        return self.tokenizer(rendered, add_special_tokens=self.add_special_tokens)["input_ids"]

    def shared_prefix_ids(self) -> list[int]:
        """The tokens every prompt starts with, found from two unlike inputs; the last common token is left
        to the texts, since a text's first word may merge with it. With per-text shots, only what comes
        before the shots is shared (found from inputs without shots and with unlike ones)."""
        b = self.builder
        if b.selector is None:
            return shared_prefix([self.encode({"text": t}) for t in ("alpha beta", "7 Zulu!")])[:-1]
        seeds = b.selector.seeds
        variants = [[], seeds[:1], seeds[-1:]] if seeds else [[]]
        return shared_prefix([self._encode_with(t, shots) for t, shots in zip(("alpha beta", "7 Zulu!", "Quo?"),
                                                                                variants)]
                             + [self._encode_with("alpha beta", [])])[:-1]
