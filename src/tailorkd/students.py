"""Students: a small model that outputs a distribution over the task's M classes.

- ``CausalLMStudent`` answers through the same prompt as the teacher (its own chat format); its class
  scores are the likelihoods of the label tokens, as for the teacher.
- ``EncoderStudent`` reads the text with a classification head (e.g. MiniLM).

Both follow the ``Student`` protocol, so that one trainer, one predictor and one folder format serve both.
A trained student is a folder: what its adapter method saves (``adapter/``: PEFT's files for lora/qlora,
``bottleneck.safetensors`` + ``bottleneck_config.json`` for bottleneck; ``model/``: all weights for full),
the student's extras (an encoder's ``head.safetensors`` and ``head.json``) and, written last, ``student.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tailorkd.adapters import ADAPTER_DIR, MODEL_DIR, AdapterMethod, get_adapter_method
from tailorkd.devices import resolve_device, resolve_dtype
from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write, fsync_dir, read_json, write_json_atomic
from tailorkd.models import load_causal_lm, load_encoder, model_kind
from tailorkd.prompts import PromptBuilder, PromptEncoder, clip_text
from tailorkd.recipe import PromptConfig, StudentConfig, TaskConfig
from tailorkd.scoring import LabelScorer

log = logging.getLogger(__name__)

STUDENT_FILE = "student.json"
HEAD_FILE = "head.safetensors"
# How the encoder's head reads the pooled states ({"normalize": bool}); a folder without it predates it: False.
HEAD_CONFIG_FILE = "head.json"
# The temperature that calibrates a trained student's confidence, fitted after training (stages.distill).
CONFIDENCE_FILE = "confidence.json"


@runtime_checkable
class Student(Protocol):
    """What the trainer, the predictor and the student folder need of a student, whatever its kind."""

    kind: str  # causal_lm or encoder, as in student.json
    model: Any  # the module the trainer trains and the predictor runs
    tokenizer: Any
    task: TaskConfig
    max_length: int

    @property
    def transformer(self) -> Any:
        """The (possibly adapter-wrapped) transformer inside ``model``: what an adapter wraps and what is saved."""

    @transformer.setter
    def transformer(self, value: Any) -> None: ...

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]: ...

    def class_logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor: ...

    def class_logits_and_pooled(self, model: Any, batch: dict[str, Any], layer: int = -1
                                ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def save_extras(self, folder: Path) -> None:
        """Write what the student has beyond its transformer into ``folder``."""

    def load_extras(self, folder: Path) -> None:
        """Read back what ``save_extras`` wrote."""

    def export_description(self) -> dict[str, Any]:
        """The kind-specific part of an export's tailorkd.json: how plain transformers reads the classes."""


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

    @classmethod
    def from_pretrained(cls, config: StudentConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                        **load: Any) -> CausalLMStudent:
        model, tokenizer = load_causal_lm(config.model, **load)
        return cls(model, tokenizer, task, prompt, shots, config.max_length)

    @property
    def transformer(self) -> Any:
        return self.model

    @transformer.setter
    def transformer(self, value: Any) -> None:
        self.model = value

    def encode(self, row: dict[str, Any]) -> list[int]:
        ids = self.prompts.encode(row)
        if len(ids) > self.max_length:
            # Keep the end: it holds the input and the answer cue the classes are scored after.
            if not self._warned_too_long:
                log.warning("student prompts longer than student.max_length=%d tokens are cut from the start "
                            "(first seen: %d tokens); raise max_length or shorten the prompt", self.max_length,
                            len(ids))
                self._warned_too_long = True
            ids = ids[-self.max_length :]
        return ids

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"prompts": [self.encode(r) for r in rows]}

    def class_logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        self.scorer.model = model  # the trainer may hand us a wrapped model
        return self.scorer.class_logits(batch["prompts"])

    def class_logits_and_pooled(self, model: Any, batch: dict[str, Any], layer: int = -1
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and the hidden state ``layer`` (0 = embeddings, -1 = last) at the answer position,
        the last prompt token, where the class is read: one forward pass when the classes' first tokens differ."""
        scorer = self.scorer
        scorer.model = model
        ids, mask = scorer.left_pad(batch["prompts"])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = scorer.forward(ids, mask, positions, keep=1, use_cache=False, output_hidden_states=True)
        pooled = out.hidden_states[layer][:, -1].float()
        if scorer.first_tokens_distinct:
            logits = out.logits[:, -1].float()[:, [label[0] for label in scorer.label_ids]]
        else:  # the classes are scored over their whole continuations: a second pass
            logits = scorer.class_logits(batch["prompts"])
        return logits, pooled

    def save_extras(self, folder: Path) -> None:
        return None  # the LM is the whole student

    def load_extras(self, folder: Path) -> None:
        return None

    def export_description(self) -> dict[str, Any]:
        builder = self.builder
        return {
            "prompt_format": "chat" if builder.use_chat else "plain",
            "prompt_example": builder.render("<input text>"),
            "add_special_tokens": self.prompts.add_special_tokens,
            "answers": builder.label_continuations(),
            "answer_token_ids": self.prompts.label_token_ids(),
            "input": {"max_chars": builder.config.max_text_chars,
                      "text": "whitespace collapsed, cut to max_chars characters at a word boundary (marked '...'), "
                              "in place of <input text>; a prompt longer than max_length tokens loses its start"},
            "how_to_load": (
                "model = AutoModelForCausalLM.from_pretrained(folder); render prompt_example with the input in place "
                "of <input text>; a class's score is the log-likelihood of its answer_token_ids right after the prompt "
                "(the first token's next-token logit where the classes' first tokens differ), divided by "
                "temperature.value; softmax over classes"
            ),
        }


class MeanPoolClassifier(torch.nn.Module):
    """An encoder with a linear head over the mean of its token states.

    Mean pooling is how sentence encoders such as all-MiniLM-L6-v2 were trained, so the head starts from
    good text features (their [CLS] pooler is untrained); the LoRA adapter then tunes the encoder.
    ``normalize``: the mean is L2-normalised before the head, as a sentence-transformers model with a Normalize
    module embeds (what a SetFit or seed-classifier head was fitted on: ``seed_students``).
    """

    def __init__(self, encoder: Any, num_labels: int, dropout: float = 0.1, normalize: bool = False):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_labels)
        self.head.to(device=next(encoder.parameters()).device)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """[B, H] the mean of the last hidden states over the real tokens (L2-normalised when ``normalize``): what
        the head reads."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        mean = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(mean, dim=-1) if self.normalize else mean

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(pooled.to(self.head.weight.dtype)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.classify(self.pooled(input_ids, attention_mask, **kwargs))


class EncoderStudent:
    kind = "encoder"

    def __init__(self, model: MeanPoolClassifier, tokenizer: Any, task: TaskConfig, prompt: PromptConfig,
                 max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.max_chars = prompt.max_text_chars

    @classmethod
    def from_pretrained(cls, config: StudentConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                        **load: Any) -> EncoderStudent:
        encoder, tokenizer = load_encoder(config.model, **load)
        return cls(MeanPoolClassifier(encoder, len(task.labels)), tokenizer, task, prompt, config.max_length)

    @property
    def transformer(self) -> Any:
        return self.model.encoder

    @transformer.setter
    def transformer(self, value: Any) -> None:
        self.model.encoder = value

    def input_text(self, row: dict[str, Any]) -> str:
        """The text the encoder reads for ``row``: what an export's user must give it (see tailorkd.json input)."""
        return self._text(row)

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

    def class_logits_and_pooled(self, model: Any, batch: dict[str, Any], layer: int = -1
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and the pooled representation the head reads (``layer`` is not used: the head reads
        the last layer's mean-pooled states)."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        pooled = model.pooled(**inputs)
        return model.classify(pooled).float(), pooled.float()

    def save_extras(self, folder: Path) -> None:
        # The head trains under every method but none, and even then is saved so the baseline is reproducible.
        save_file({k: v.contiguous() for k, v in self.model.head.state_dict().items()}, str(folder / HEAD_FILE))
        write_json_atomic(folder / HEAD_CONFIG_FILE, {"normalize": bool(self.model.normalize)})

    def load_extras(self, folder: Path) -> None:
        path = folder / HEAD_FILE
        if not path.is_file():
            raise TailorkdError(f"{folder}: no {HEAD_FILE}, the encoder student's head; run `tailorkd distill` again")
        self.model.head.load_state_dict(load_file(str(path), device=str(next(self.model.parameters()).device)))
        config = folder / HEAD_CONFIG_FILE
        settings = read_json(config, "encoder head settings") if config.is_file() else {"normalize": False}
        normalize = settings.get("normalize") if isinstance(settings, dict) else settings
        if not isinstance(normalize, bool):
            raise TailorkdError(f"{config}: normalize must be true or false, got {normalize!r}; run `tailorkd "
                                "distill` again")
        self.model.normalize = normalize

    def export_description(self) -> dict[str, Any]:
        head, normalize = self.model.head, self.model.normalize
        pooled = "mean-pooled last_hidden_state"
        return {
            "head": {"file": HEAD_FILE, "in_features": head.in_features, "out_features": head.out_features,
                     "pooling": "mean of last_hidden_state over the tokens where attention_mask is 1"
                                + (", then L2-normalised" if normalize else ""), "normalize": normalize},
            "input": {"max_chars": self.max_chars,
                      "text": "title + '. ' + text when there is a title, whitespace collapsed, cut to max_chars "
                              "characters at a word boundary (marked '...'); the tokenizer cuts to max_length tokens"},
            "how_to_load": (
                "SentenceTransformer(folder).encode(texts, convert_to_tensor=True) gives the class logits "
                f"(Transformer, mean Pooling,{' Normalize,' if normalize else ''} Dense head with identity activation: "
                "modules.json); softmax for the probabilities. Or by hand: encoder = AutoModel.from_pretrained("
                "folder); head = torch.nn.Linear(in_features, out_features) with load_state_dict("
                "safetensors.torch.load_file(folder/head.safetensors)); class logits = "
                f"head({f'torch.nn.functional.normalize({pooled}, dim=-1)' if normalize else pooled}), in label_names "
                "order. Any fitted temperature is already folded into the head"
            ),
        }


STUDENT_KINDS: dict[str, type[CausalLMStudent] | type[EncoderStudent]] = {
    cls.kind: cls for cls in (CausalLMStudent, EncoderStudent)}


def student_kind(config: StudentConfig) -> str:
    return model_kind(config.model) if config.kind == "auto" else config.kind


def build_student(config: StudentConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                  adapter_method: str = "lora") -> Student:
    """The untrained student (base weights; quantised where the adapter method asks, e.g. 4-bit for qlora),
    ready for an adapter to be attached."""
    kind = student_kind(config)
    if kind not in STUDENT_KINDS:
        raise TailorkdError(f"student.kind: unknown kind {kind!r} (expected {' or '.join(STUDENT_KINDS)})")
    return STUDENT_KINDS[kind].from_pretrained(config, task, prompt, shots, dtype=resolve_dtype(config.dtype),
                                               device=resolve_device(config.device),
                                               quantization=get_adapter_method(adapter_method).quantization())


@torch.no_grad()
def predict_probs(student: Student, rows: Sequence[dict[str, Any]], batch_size: int,
                  desc: str = "student", temperature: float = 1.0) -> np.ndarray:
    """[N, M] class probabilities of the student for ``rows``: softmax(logits / ``temperature``)."""
    model = student.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(rows), len(student.task.labels)))
    with tqdm(total=len(rows), desc=desc, unit="text", dynamic_ncols=True) as bar:
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in student.collate(part).items()}
            probs = torch.softmax(student.class_logits(model, batch) / temperature, -1)
            out[start : start + len(part)] = probs.cpu().double().numpy()
            bar.update(len(part))
    model.train(was_training)
    return out


# -- a trained student on disk ------------------------------------------------------------------------
def save_student(student: Student, method: str, folder: Path, info: dict[str, Any],
                 extra_tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
    """Write what adapter ``method`` saves, the student's extras, ``extra_tensors`` ({file name: tensors}, e.g.
    the hidden-state projection) and, last, ``student.json`` (``info`` with the student's kind, labels, adapter
    method and max_length, which a reload keeps whatever the recipe's student says).

    student.json marks the folder finished: it is removed before anything else is written and written (atomically)
    only after everything it vouches for, so a kill at any moment never leaves it beside a half-written student.
    """
    adapter = get_adapter_method(method)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / STUDENT_FILE
    if marker.exists():
        marker.unlink()
        fsync_dir(folder)
    adapter.save(student.transformer, student.tokenizer, folder)
    student.save_extras(folder)
    for name, tensors in (extra_tensors or {}).items():
        atomic_write(folder / name, lambda tmp, tensors=tensors: save_file(dict(tensors), str(tmp)))
    payload = {**info, "kind": student.kind, "label_names": student.task.label_names, "adapter_method": method,
               "max_length": student.max_length}
    write_json_atomic(marker, payload)


def student_file_hash(folder: str | Path) -> str:
    """A short hash of the student's student.json: what a fitted temperature (or a scored signal) belongs to."""
    import hashlib

    return hashlib.sha256((Path(folder) / STUDENT_FILE).read_bytes()).hexdigest()[:16]


def student_temperature(folder: str | Path) -> float:
    """The temperature that calibrates the confidence of the student in ``folder`` (its confidence.json,
    ``{"temperature": T, "student_file": hash, ...}``), 1.0 when none was fitted. Probabilities are
    softmax(logits / T). A file fitted for another student.json (retrained since) is an error, not a guess."""
    path = Path(folder) / CONFIDENCE_FILE
    if not path.is_file():
        return 1.0
    fitted = read_json(path, "student confidence calibration")
    value = fitted.get("temperature") if isinstance(fitted, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise TailorkdError(f"{path}: temperature must be a positive number, got {value!r}; delete the file or run "
                            "`tailorkd distill` again")
    if "student_file" in fitted and fitted["student_file"] != student_file_hash(folder):
        read_json(Path(folder) / STUDENT_FILE, "student file")  # a damaged one is to blame, not the calibration
        raise TailorkdError(f"{path}: fitted for a student that has been retrained since; run `tailorkd distill` "
                            "again to refit it")
    return float(value)


def read_student_info(folder: str | Path) -> dict[str, Any]:
    """The ``student.json`` of a trained student folder; a TailorkdError naming the file when there is none or
    it cannot be read (e.g. cut short by a kill while an older tailorkd wrote it): then the student is not done."""
    folder = Path(folder)
    path = folder / STUDENT_FILE
    if not path.is_file():
        raise TailorkdError(f"{folder}: not a trained student folder (no {STUDENT_FILE}); run `tailorkd distill` first")
    info = read_json(path, "student file")
    missing = [k for k in ("kind", "label_names", "adapter_method") if not isinstance(info, dict) or k not in info]
    if missing:
        raise TailorkdError(f"{path}: not a student file (no {', '.join(missing)}); run `tailorkd distill` again")
    return info


def _base_student(folder: Path, info: dict[str, Any], task: TaskConfig, prompt: PromptConfig,
                  shots: list[dict[str, Any]], config: StudentConfig) -> tuple[Student, AdapterMethod]:
    """The student of ``folder`` built as before training (no adapter yet), and its adapter method."""
    if info["label_names"] != task.label_names:
        raise TailorkdError(f"{folder / STUDENT_FILE}: trained for labels {info['label_names']}, "
                            f"the recipe has {task.label_names}")
    method = get_adapter_method(info["adapter_method"])
    update = {"kind": info["kind"]}
    if "max_length" in info:  # the token limit it was trained (or converted) at; older folders: the recipe's
        value = info["max_length"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TailorkdError(f"{folder / STUDENT_FILE}: max_length must be a positive integer, got {value!r}")
        update["max_length"] = value
    if method.saves == MODEL_DIR:  # all weights were saved: they are the base
        update["model"] = str(folder / MODEL_DIR)
    return build_student(config.model_copy(update=update), task, prompt, shots, adapter_method=method.name), method


def load_student(folder: str | Path, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 config: StudentConfig) -> Student:
    """Rebuild a trained student from its folder (base model + saved adapter, or full weights)."""
    folder = Path(folder)
    student, method = _base_student(folder, read_student_info(folder), task, prompt, shots, config)
    student.transformer = method.load(student.transformer, folder)
    student.load_extras(folder)
    return student


# -- a trained student as a standalone model ------------------------------------------------------------
EXPORT_FILE = "tailorkd.json"
EXPORT_FORMAT_VERSION = 2  # 2: onnx/, sentence-transformers modules, temperature, input, README.md
CARD_FILE = "README.md"
CAUSAL_LM_ONNX_REASON = (
    "not supported yet for causal-LM students: a class's score is the log-likelihood of its whole answer after the "
    "whole prompt (few-shot examples included), a further pass for each answer token after the first; run it "
    "with transformers as how_to_load says")


def export_student(folder: str | Path, out: str | Path, task: TaskConfig, prompt: PromptConfig,
                   shots: list[dict[str, Any]], config: StudentConfig,
                   check_rows: Sequence[dict[str, Any]] | None = None, check_source: str = "the given texts",
                   batch_size: int = 32, card: Mapping[str, Any] | None = None,
                   alerts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the trained student in ``folder`` to ``out`` as a standalone model folder; returns its tailorkd.json.

    Every kind: a Hugging Face model folder that plain transformers loads (weights with the adapter merged,
    tokenizer), ``tailorkd.json`` (labels, how the classes are read, the confidence temperature, the input the
    student expects) and a model card ``README.md`` (``card``: what the run knows, see ``model_card.render``).
    An encoder student is also a sentence-transformers model (Transformer, mean Pooling, Dense head with
    identity activation: ``encode`` gives the class logits; the head is also in ``head.safetensors``) and an
    ONNX graph, fp32 and int8 (``onnx_student``), that are checked against the PyTorch student on
    ``check_rows`` (needed for an encoder): each must predict the same class for at least
    ``onnx_student.MIN_AGREEMENT`` of them, or nothing is written. The fitted temperature (confidence.json)
    is folded into the encoder's head, so every format gives calibrated probabilities.

    The folder is written beside ``out`` and renamed into place when complete. Methods that cannot be merged
    refuse (bottleneck: its series adapters are non-linear, and transformers would silently drop extra
    modules it does not know).
    """
    from tailorkd import model_card

    folder, out = Path(folder), Path(out)
    info = read_student_info(folder)
    get_adapter_method(info["adapter_method"]).check_export(folder)
    if out.exists() and any(out.iterdir()):
        raise TailorkdError(f"{out}: the export folder exists and is not empty; choose a new folder")
    temperature = student_temperature(folder)
    student, method = _base_student(folder, info, task, prompt, shots, config)
    if student.kind == "encoder" and not check_rows:
        raise TailorkdError(f"{folder}: no texts to check the ONNX export against the PyTorch student on; give "
                            "some (tailorkd export --check-input FILE.jsonl)")
    student.transformer = method.merge(student.transformer, folder)
    student.load_extras(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside ``out`` (so the final rename stays on one file system); named by process, so a folder left by a
    # killed export of another process is not touched, and our own leftover is replaced.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        description: dict[str, Any] = {
            "format_version": EXPORT_FORMAT_VERSION,
            "kind": student.kind,
            "label_names": task.label_names,
            "adapter_method": method.name,
            "merged": method.saves == ADAPTER_DIR,  # an adapter saved apart from the base was folded into it
            "exported_from": str(folder),
            "max_length": student.max_length,
            "temperature": {"value": temperature, "folded_into_head": student.kind == "encoder",
                            "from": CONFIDENCE_FILE if (folder / CONFIDENCE_FILE).is_file() else "none fitted"},
            # What `tailorkd serve EXPORT` tells clients: the recipe's name, the student's version, severities.
            "name": str((card or {}).get("name") or task.name),
            "base_model": str(info.get("base_model") or config.model),
            "version": str(info.get("recipe_hash", "unknown")),
            "alerts": dict(alerts) if alerts else None,
        }
        if isinstance(student, EncoderStudent):
            description.update(_export_encoder(student, staging, temperature, check_rows or [], check_source,
                                               batch_size, out))
        else:
            student.transformer.save_pretrained(str(staging))
            student.tokenizer.save_pretrained(str(staging))
            description["onnx"] = {"exported": False, "reason": CAUSAL_LM_ONNX_REASON}
        description.update(student.export_description())
        about = {"name": task.name, "task": task.name, "task_description": task.description,
                 "label_descriptions": {label.name: label.description for label in task.labels},
                 "base_model": str(info.get("base_model") or config.model), "teacher": "(not recorded)",
                 "data": "(not recorded)", "data_kind": "text", "report": None, **(card or {})}
        (staging / CARD_FILE).write_text(model_card.render(description, about), encoding="utf-8")
        write_json_atomic(staging / EXPORT_FILE, description)
        if out.exists():
            out.rmdir()  # empty (checked above): rename needs the name free
        staging.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return description


def _export_encoder(student: EncoderStudent, staging: Path, temperature: float, rows: Sequence[dict[str, Any]],
                    check_source: str, batch_size: int, out: Path) -> dict[str, Any]:
    """The encoder student into ``staging`` as a sentence-transformers model (which is also the plain Hugging Face
    folder), head.safetensors and ONNX graphs checked on ``rows``; returns its part of tailorkd.json."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    from tailorkd import onnx_student

    # The reference: the student as it computes (its device and dtype), with the temperature it predicts with.
    expected = predict_probs(student, rows, batch_size, desc="student: export check", temperature=temperature)
    head = student.model.head
    with torch.no_grad():  # softmax(W x / T + b / T) = softmax((W x + b) / T): calibrated in every format
        head.weight.div_(temperature)
        head.bias.div_(temperature)
    encoder = student.transformer
    encoder.config.id2label = dict(enumerate(student.task.label_names))
    encoder.config.label2id = {name: i for i, name in enumerate(student.task.label_names)}
    # sentence-transformers builds its Transformer module from a folder; it then saves it at the export's root.
    plain = staging / ".transformer"
    encoder.save_pretrained(str(plain))
    student.tokenizer.save_pretrained(str(plain))
    dense = Dense(head.in_features, head.out_features, bias=True, activation_function=torch.nn.Identity())
    dense.linear.load_state_dict({k: v.detach().float().cpu() for k, v in head.state_dict().items()})
    modules = [Transformer(str(plain), max_seq_length=student.max_length), Pooling(head.in_features, "mean")]
    normalize = student.model.normalize
    if normalize:  # the head reads the L2-normalised mean (a seed classifier's, see seed_students)
        modules.append(Normalize())
    SentenceTransformer(modules=[*modules, dense], device="cpu").save(str(staging))
    shutil.rmtree(plain)
    student.save_extras(staging)
    names = onnx_student.input_names(student.tokenizer)
    files = onnx_student.export_onnx(student.model, student.tokenizer, staging)
    texts = [student.input_text(row) for row in rows]
    checks = onnx_student.check_export(staging, files, student.tokenizer, student.max_length, texts, expected,
                                       batch_size, shown_as=out)
    return {
        "sentence_transformers": {
            "modules": f"modules.json: Transformer (this folder), Pooling (mean), "
                       f"{'Normalize (L2), ' if normalize else ''}Dense ({len(modules)}_Dense: the head, identity "
                       "activation)",
            "how_to_load": "SentenceTransformer(folder).encode(texts, convert_to_tensor=True).softmax(-1): the class "
                           "probabilities, in label_names order",
        },
        "onnx": {
            "files": files,
            "inputs": names,
            "output": onnx_student.OUTPUT_NAME,
            "opset": onnx_student.OPSET,
            "graph": f"encoder, mean pooling over attention_mask{', L2 normalisation' if normalize else ''} and "
                     "head inside: logits [batch, classes]; softmax gives the probabilities",
            "int8": "onnxruntime.quantization.quantize_dynamic: int8 weights per output channel, activations "
                    "quantised at run time",
            "check": checks,
            "checked_on": f"{len(texts)} texts ({check_source})",
            "min_agreement": onnx_student.MIN_AGREEMENT,
            "how_to_run": "onnxruntime.InferenceSession(folder/files.int8).run(['logits'], dict(AutoTokenizer."
                          "from_pretrained(folder)(texts, padding=True, truncation=True, return_tensors='np')))[0]",
        },
    }
