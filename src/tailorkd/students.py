"""Students: a small model that outputs a distribution over the task's M classes.

- ``CausalLMStudent`` answers through the same prompt as the teacher (its own chat format); its class
  scores are the likelihoods of the label tokens, as for the teacher.
- ``EncoderStudent`` reads the text with a classification head (e.g. MiniLM).

Both expose ``collate(rows)`` and ``class_logits(model, batch)`` so that one trainer and one predictor
serve both. A trained student is a folder: ``student.json``, the adapter (``adapter/``: PEFT's files for
lora/qlora, ``bottleneck.safetensors`` + ``bottleneck_config.json`` for bottleneck) or all weights
(``model/``), and for an encoder its head (``head.safetensors``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tailorkd.adapters.bottleneck import load_bottleneck, save_bottleneck
from tailorkd.adapters.qlora import quantization_config
from tailorkd.devices import resolve_device, resolve_dtype
from tailorkd.errors import TailorkdError
from tailorkd.models import load_causal_lm, load_encoder, model_kind
from tailorkd.prompts import PromptBuilder, PromptEncoder, clip_text
from tailorkd.recipe import PromptConfig, StudentConfig, TaskConfig
from tailorkd.scoring import LabelScorer

log = logging.getLogger(__name__)

STUDENT_FILE = "student.json"
HEAD_FILE = "head.safetensors"


class CausalLMStudent:
    kind = "causal_lm"

    def __init__(self, model: Any, tokenizer: Any, task: TaskConfig, prompt: PromptConfig,
                 shots: list[dict[str, Any]], max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.builder = PromptBuilder(task, prompt, tokenizer, shots)
        self.prompts = PromptEncoder(self.builder)
        self.scorer = LabelScorer(model, tokenizer, self.prompts.label_token_ids())
        self._warned_too_long = False

    def encode(self, row: dict[str, Any]) -> list[int]:
        ids = self.prompts.encode(row)
        if len(ids) > self.max_length:
            # Keep the end: it holds the input and the answer cue the classes are scored after.
            if not self._warned_too_long:
                log.warning("student prompts longer than student.max_length=%d tokens are cut from the start "
                            "(first seen: %d tokens); raise max_length or shorten the prompt", self.max_length, len(ids))
                self._warned_too_long = True
            ids = ids[-self.max_length :]
        return ids

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"prompts": [self.encode(r) for r in rows]}

    def class_logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        self.scorer.model = model  # the trainer may hand us a wrapped model
        return self.scorer.class_logits(batch["prompts"])

    def class_logits_and_pooled(self, model: Any, batch: dict[str, Any], layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and the hidden state ``layer`` (0 = embeddings, -1 = last) at the answer position,
        the last prompt token, where the class is read: one forward pass when the classes' first tokens differ."""
        scorer = self.scorer
        scorer.model = model
        ids, mask = scorer._left_pad(batch["prompts"])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = scorer._forward(ids, mask, positions, keep=1, use_cache=False, output_hidden_states=True)
        pooled = out.hidden_states[layer][:, -1].float()
        if scorer.first_tokens_distinct:
            logits = out.logits[:, -1].float()[:, [label[0] for label in scorer.label_ids]]
        else:  # the classes are scored over their whole continuations: a second pass
            logits = scorer.class_logits(batch["prompts"])
        return logits, pooled


class MeanPoolClassifier(torch.nn.Module):
    """An encoder with a linear head over the mean of its token states.

    Mean pooling is how sentence encoders such as all-MiniLM-L6-v2 were trained, so the head starts from
    good text features (their [CLS] pooler is untrained); the LoRA adapter then tunes the encoder.
    """

    def __init__(self, encoder: Any, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_labels)
        self.head.to(device=next(encoder.parameters()).device)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """[B, H] the mean of the last hidden states over the real tokens: what the head reads."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(pooled.to(self.head.weight.dtype)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.classify(self.pooled(input_ids, attention_mask, **kwargs))


class EncoderStudent:
    kind = "encoder"

    def __init__(self, model: MeanPoolClassifier, tokenizer: Any, task: TaskConfig, prompt: PromptConfig, max_length: int):
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
        return model(**inputs).float()

    def class_logits_and_pooled(self, model: Any, batch: dict[str, Any], layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and the pooled representation the head reads (``layer`` is not used: the head reads
        the last layer's mean-pooled states)."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        pooled = model.pooled(**inputs)
        return model.classify(pooled).float(), pooled.float()


Student = CausalLMStudent | EncoderStudent


def student_kind(config: StudentConfig) -> str:
    return model_kind(config.model) if config.kind == "auto" else config.kind


def build_student(config: StudentConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                  adapter_method: str = "lora") -> Student:
    """The untrained student (base weights; 4-bit for qlora), ready for an adapter to be attached."""
    kind = student_kind(config)
    dtype, device = resolve_dtype(config.dtype), resolve_device(config.device)
    quantization = quantization_config() if adapter_method == "qlora" else None
    if kind == "causal_lm":
        model, tokenizer = load_causal_lm(config.model, dtype=dtype, device=device, quantization=quantization)
        return CausalLMStudent(model, tokenizer, task, prompt, shots, config.max_length)
    if kind == "encoder":
        encoder, tokenizer = load_encoder(config.model, dtype=dtype, device=device, quantization=quantization)
        return EncoderStudent(MeanPoolClassifier(encoder, len(task.labels)), tokenizer, task, prompt, config.max_length)
    raise TailorkdError(f"student.kind: unknown kind {kind!r} (expected causal_lm or encoder)")


@torch.no_grad()
def predict_probs(student: Student, rows: Sequence[dict[str, Any]], batch_size: int, desc: str = "student") -> np.ndarray:
    """[N, M] class probabilities of the student for ``rows``."""
    model = student.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(rows), len(student.task.labels)))
    with tqdm(total=len(rows), desc=desc, unit="text", dynamic_ncols=True) as bar:
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in student.collate(part).items()}
            out[start : start + len(part)] = torch.softmax(student.class_logits(model, batch), -1).cpu().double().numpy()
            bar.update(len(part))
    model.train(was_training)
    return out


# -- a trained student on disk ------------------------------------------------------------------------
def _transformer(student: Student) -> Any:
    """The (possibly adapter-wrapped) transformer of a student: what PEFT adapts and what is saved."""
    return student.model.encoder if isinstance(student, EncoderStudent) else student.model


def save_student(student: Student, method: str, folder: Path, info: dict[str, Any]) -> None:
    """Write the adapter (lora, qlora, bottleneck) or all weights (full), the encoder's head, and ``student.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    if method in ("lora", "qlora"):
        _transformer(student).save_pretrained(str(folder / "adapter"))
    elif method == "bottleneck":
        save_bottleneck(_transformer(student), folder / "adapter")
    elif method == "full":
        _transformer(student).save_pretrained(str(folder / "model"))
        student.tokenizer.save_pretrained(str(folder / "model"))
    if isinstance(student, EncoderStudent):
        # The head trains under every method but none, and even then is saved so the baseline is reproducible.
        save_file(student.model.head.state_dict(), str(folder / HEAD_FILE))
    payload = {**info, "kind": student.kind, "label_names": student.task.label_names, "adapter_method": method}
    (folder / STUDENT_FILE).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def _set_transformer(student: Student, transformer: Any) -> None:
    if isinstance(student, EncoderStudent):
        student.model.encoder = transformer
    else:
        student.model = transformer


def _dequantized(model: Any, folder: Path) -> Any:
    try:
        return model.dequantize()
    except (ValueError, NotImplementedError, AttributeError, RuntimeError) as exc:
        raise TailorkdError(f"{folder}: cannot dequantise the 4-bit base of this qlora student ({exc}); export from "
                            "a lora run, or keep the adapter folder and load it with tailorkd") from exc


def load_student(folder: str | Path, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 config: StudentConfig, dequantize: bool = False) -> Student:
    """Rebuild a trained student from its folder (base model + saved adapter, or full weights).

    ``dequantize``: for a qlora student, put the adapter on the 4-bit base dequantised (for merging).
    """
    folder = Path(folder)
    info_path = folder / STUDENT_FILE
    if not info_path.is_file():
        raise TailorkdError(f"{folder}: not a trained student folder (no {STUDENT_FILE}); run `tailorkd distill` first")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info["label_names"] != task.label_names:
        raise TailorkdError(f"{info_path}: trained for labels {info['label_names']}, the recipe has {task.label_names}")
    method = info["adapter_method"]
    config = config.model_copy(update={"kind": info["kind"]})
    if method == "full":
        config = config.model_copy(update={"model": str(folder / "model")})
    student = build_student(config, task, prompt, shots, adapter_method=method)
    if method == "qlora" and dequantize:
        _set_transformer(student, _dequantized(_transformer(student), folder))
    if method in ("lora", "qlora"):
        from peft import PeftModel

        _set_transformer(student, PeftModel.from_pretrained(_transformer(student), str(folder / "adapter")))
    elif method == "bottleneck":
        load_bottleneck(_transformer(student), folder / "adapter")
    if isinstance(student, EncoderStudent):
        student.model.head.load_state_dict(load_file(str(folder / HEAD_FILE), device=str(next(student.model.parameters()).device)))
    return student


# -- a trained student as a standalone model ------------------------------------------------------------
EXPORT_FILE = "tailorkd.json"
EXPORT_FORMAT_VERSION = 1


def export_student(folder: str | Path, out: str | Path, task: TaskConfig, prompt: PromptConfig,
                   shots: list[dict[str, Any]], config: StudentConfig) -> dict[str, Any]:
    """Write the trained student in ``folder`` to ``out`` as a standalone Hugging Face model folder that
    plain transformers loads: weights with the adapter merged, tokenizer, ``tailorkd.json`` (labels and how
    the classes are read) and, for an encoder, the head (``head.safetensors``). Returns tailorkd.json.

    A bottleneck student is refused: its series adapters are non-linear, so they cannot be folded into the
    base weights, and transformers would silently drop extra modules it does not know.
    """
    folder, out = Path(folder), Path(out)
    info_path = folder / STUDENT_FILE
    if not info_path.is_file():
        raise TailorkdError(f"{folder}: not a trained student folder (no {STUDENT_FILE}); run `tailorkd distill` first")
    method = json.loads(info_path.read_text(encoding="utf-8"))["adapter_method"]
    if method == "bottleneck":
        raise TailorkdError(
            f"{folder}: a bottleneck student cannot be exported as a standalone model: its series adapters "
            "(h + up(act(down(h)))) are non-linear and cannot be merged into the base weights; use the student "
            "folder with tailorkd (its adapter/ holds the adapters), or train with adapter.method=lora to export"
        )
    if out.exists() and any(out.iterdir()):
        raise TailorkdError(f"{out}: the export folder exists and is not empty; choose a new folder")
    # qlora: merged into the weights the student computed with, the 4-bit base dequantised (merging into the
    # 4-bit layers would requantise, and the export would need bitsandbytes).
    student = load_student(folder, task, prompt, shots, config, dequantize=method == "qlora")
    merged = _transformer(student)
    if method in ("lora", "qlora"):
        merged = merged.merge_and_unload()
        _set_transformer(student, merged)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    student.tokenizer.save_pretrained(str(out))
    description: dict[str, Any] = {
        "format_version": EXPORT_FORMAT_VERSION,
        "kind": student.kind,
        "label_names": task.label_names,
        "adapter_method": method,
        "merged": method in ("lora", "qlora"),
        "exported_from": str(folder),
        "max_length": student.max_length,
    }
    if isinstance(student, EncoderStudent):
        head = student.model.head
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
        description["head"] = {
            "file": HEAD_FILE, "in_features": head.in_features, "out_features": head.out_features,
            "pooling": "mean of last_hidden_state over the tokens where attention_mask is 1",
        }
        description["how_to_load"] = (
            "encoder = AutoModel.from_pretrained(folder); head = torch.nn.Linear(in_features, out_features) with "
            "load_state_dict(safetensors.torch.load_file(folder/head.safetensors)); class logits = head(mean-pooled "
            "last_hidden_state), in label_names order; input: the text (title + '. ' + text when there is a title)"
        )
    else:
        builder = student.builder
        description.update({
            "prompt_format": "chat" if builder.use_chat else "plain",
            "prompt_example": builder.render("<input text>"),
            "add_special_tokens": student.prompts.add_special_tokens,
            "answers": builder.label_continuations(),
            "answer_token_ids": student.prompts.label_token_ids(),
        })
        description["how_to_load"] = (
            "model = AutoModelForCausalLM.from_pretrained(folder); render prompt_example with the input in place of "
            "<input text>; a class's score is the log-likelihood of its answer_token_ids right after the prompt "
            "(the first token's next-token logit where the classes' first tokens differ); softmax over classes"
        )
    (out / EXPORT_FILE).write_text(json.dumps(description, indent=2), encoding="utf-8")
    return description
