"""Students: a small model that outputs a distribution over the task's M classes.

- ``CausalLMStudent`` answers through the same prompt as the teacher (its own chat format); its class
  scores are the likelihoods of the label tokens, as for the teacher.
- ``EncoderStudent`` reads the text with a classification head (e.g. MiniLM).

Both expose ``collate(rows)`` and ``class_logits(model, batch)`` so that one trainer and one predictor
serve both. A trained student is a folder: ``student.json`` plus the adapter (or full weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tailorkd.devices import resolve_device, resolve_dtype
from tailorkd.errors import TailorkdError
from tailorkd.models import load_causal_lm, load_encoder_classifier, model_kind
from tailorkd.prompts import PromptBuilder, clip_text
from tailorkd.recipe import PromptConfig, StudentConfig, TaskConfig
from tailorkd.scoring import LabelScorer, continuation_token_ids

log = logging.getLogger(__name__)

STUDENT_FILE = "student.json"


class CausalLMStudent:
    kind = "causal_lm"

    def __init__(self, model: Any, tokenizer: Any, task: TaskConfig, prompt: PromptConfig,
                 shots: list[dict[str, Any]], max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.builder = PromptBuilder(task, prompt, tokenizer, shots)
        self.add_special_tokens = not self.builder.use_chat
        label_ids = continuation_token_ids(
            tokenizer, self.builder.render("x"), self.builder.label_continuations(), self.add_special_tokens
        )
        self.scorer = LabelScorer(model, tokenizer, label_ids)
        self._too_long = 0

    def encode(self, row: dict[str, Any]) -> list[int]:
        ids = self.tokenizer(self.builder.render(row["text"], row.get("title")), add_special_tokens=self.add_special_tokens)["input_ids"]
        if len(ids) > self.max_length:
            # Keep the end: it holds the input and the answer cue the classes are scored after.
            self._too_long += 1
            ids = ids[-self.max_length :]
        return ids

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"prompts": [self.encode(r) for r in rows]}

    def class_logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        self.scorer.model = model  # the trainer may hand us a wrapped model
        return self.scorer.class_logits(batch["prompts"])


class EncoderStudent:
    kind = "encoder"

    def __init__(self, model: Any, tokenizer: Any, task: TaskConfig, prompt: PromptConfig, max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.max_chars = prompt.max_text_chars

    def _text(self, row: dict[str, Any]) -> str:
        title = row.get("title")
        body = f"{title.strip()}. {row['text']}" if title and str(title).strip() else row["text"]
        return clip_text(body, self.max_chars)

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.tokenizer([self._text(r) for r in rows], truncation=True, max_length=self.max_length,
                                   padding=True, return_tensors="pt"))

    def class_logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return model(**inputs).logits.float()


Student = CausalLMStudent | EncoderStudent


def student_kind(config: StudentConfig) -> str:
    return model_kind(config.model) if config.kind == "auto" else config.kind


def build_student(config: StudentConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                  model: Any = None, tokenizer: Any = None) -> Student:
    """The untrained student (base weights), ready for an adapter to be attached."""
    kind = student_kind(config)
    dtype, device = resolve_dtype(config.dtype), resolve_device(config.device)
    if kind == "causal_lm":
        if model is None:
            model, tokenizer = load_causal_lm(config.model, dtype=dtype, device=device)
        return CausalLMStudent(model, tokenizer, task, prompt, shots, config.max_length)
    if kind == "encoder":
        if model is None:
            model, tokenizer = load_encoder_classifier(config.model, task.label_names, dtype=dtype, device=device)
        return EncoderStudent(model, tokenizer, task, prompt, config.max_length)
    raise TailorkdError(f"student.kind: unknown kind {kind!r} (expected causal_lm or encoder)")


@torch.no_grad()
def predict_probs(student: Student, rows: Sequence[dict[str, Any]], batch_size: int, desc: str = "student") -> np.ndarray:
    """[N, M] class probabilities of the student for ``rows``."""
    model = student.model
    was_training = model.training
    model.eval()
    out = np.zeros((len(rows), len(student.task.labels)))
    with tqdm(total=len(rows), desc=desc, unit="text", dynamic_ncols=True) as bar:
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            batch = student.collate(part)
            batch = {k: (v.to(next(model.parameters()).device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out[start : start + len(part)] = torch.softmax(student.class_logits(model, batch), -1).cpu().double().numpy()
            bar.update(len(part))
    model.train(was_training)
    return out


def save_student_info(folder: Path, info: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STUDENT_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def load_student(folder: str | Path, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 config: StudentConfig) -> Student:
    """Rebuild a trained student from its folder (base model + saved adapter, or full weights)."""
    folder = Path(folder)
    info_path = folder / STUDENT_FILE
    if not info_path.is_file():
        raise TailorkdError(f"{folder}: not a trained student folder (no {STUDENT_FILE}); run `tailorkd distill` first")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info["label_names"] != task.label_names:
        raise TailorkdError(f"{info_path}: trained for labels {info['label_names']}, the recipe has {task.label_names}")
    method = info["adapter"]["method"]
    if method == "full":
        config = config.model_copy(update={"model": str(folder / "model"), "kind": info["kind"]})
        return build_student(config, task, prompt, shots)
    student = build_student(config.model_copy(update={"kind": info["kind"]}), task, prompt, shots)
    if method == "lora":
        from peft import PeftModel

        student.model = PeftModel.from_pretrained(student.model, str(folder / "adapter"))
        if isinstance(student, CausalLMStudent):
            student.scorer.model = student.model
    return student
