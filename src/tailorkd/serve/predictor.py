"""What the service runs: a predictor (texts -> class probabilities) and the description of its model.

``Predictor`` is the one thing the service needs of a model: ``TorchPredictor`` runs a run's trained student
(``load_served_model``), ``OnnxPredictor`` an exported student's ONNX graph (``load_exported_model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np


class Predictor(Protocol):
    """Texts -> [N, M] class probabilities (calibrated, rows summing to 1), in the label order of the model.
    Called from one thread at a time (the batcher's worker)."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class ServedModel:
    """A predictor and what the service tells about it."""

    predict: Predictor
    label_names: list[str]
    name: str  # the recipe's name
    version: str  # student.json's recipe_hash: changes when anything the student was trained from changes
    info: dict[str, Any] = field(default_factory=dict)  # base model, kind, adapter method, temperature
    alerts: Any = None  # the recipe's AlertsConfig (severity levels), or None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "labels": self.label_names, **self.info}


class TorchPredictor:
    """The trained PyTorch student, as ``tailorkd.pipeline.classify`` runs it: rows {"text": ...}, the
    student's collate and class logits, softmax(logits / temperature), in micro-batches of ``batch_size``."""

    def __init__(self, student: Any, temperature: float = 1.0, batch_size: int = 16):
        import torch

        self.student = student
        self.temperature = temperature
        self.batch_size = batch_size
        self.student.model.eval()
        self._device = next(student.model.parameters()).device
        self._torch = torch

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), len(self.student.task.labels)))
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = [{"text": t} for t in texts[start : start + self.batch_size]]
                batch = {k: (v.to(self._device) if torch.is_tensor(v) else v)
                         for k, v in self.student.collate(rows).items()}
                logits = self.student.class_logits(self.student.model, batch)
                out[start : start + len(rows)] = torch.softmax(logits / self.temperature, -1).cpu().double().numpy()
        return out


class OnnxPredictor:
    """An exported student's ONNX graph run by ONNX Runtime (``tailorkd.onnx_student.OnnxClassifier``): its
    temperature is folded into the head, so softmax(logits) are the calibrated probabilities."""

    def __init__(self, classifier: Any, batch_size: int = 32):
        self.classifier = classifier
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.classifier.probs(texts, self.batch_size)


def load_exported_model(folder, precision: str = "int8", batch_size: int = 32) -> ServedModel:
    """A ``tailorkd export`` folder's ONNX graph (``precision``: int8 or fp32) for the service; a TailorkdError
    naming the file when the folder is no export or has no such graph (a causal-LM student has none)."""
    from pathlib import Path

    from tailorkd.errors import TailorkdError
    from tailorkd.files import read_json
    from tailorkd.onnx_student import OnnxClassifier
    from tailorkd.recipe import AlertsConfig

    folder = Path(folder)
    about = read_json(folder / "tailorkd.json", "export description")
    if not (about.get("onnx") or {}).get("files"):
        raise TailorkdError(f"{folder / 'tailorkd.json'}: this export has no ONNX graph "
                            f"({(about.get('onnx') or {}).get('reason', 'none recorded')}); serve the recipe's run")
    try:
        alerts = AlertsConfig.model_validate(about["alerts"]) if about.get("alerts") else None
    except ValueError as exc:
        raise TailorkdError(f"{folder / 'tailorkd.json'}: alerts: {str(exc).splitlines()[-1].strip()}") from None
    classifier = OnnxClassifier.from_export(folder, precision)
    return ServedModel(
        predict=OnnxPredictor(classifier, batch_size),
        label_names=list(about["label_names"]),
        name=str(about.get("name") or folder.name),
        version=str(about.get("version", "unknown")),
        info={"base_model": about.get("base_model"), "kind": about.get("kind"),
              "adapter_method": about.get("adapter_method"), "temperature": (about.get("temperature") or {}).get(
                  "value"), "runtime": f"onnxruntime-{precision}"},
        alerts=alerts,
    )


def load_served_model(recipe) -> ServedModel:
    """The run's trained adaptive-KD student as ``tailorkd classify`` loads it, wrapped for the service.
    A TailorkdError when the run has no trained student."""
    from tailorkd.run_dir import RunDir
    from tailorkd.stages.classify import student_shots
    from tailorkd.stages.prompt_search import resolve_prompt
    from tailorkd.students import load_student, read_student_info, student_temperature

    recipe = resolve_prompt(recipe)
    folder = RunDir(recipe).student_dir()
    info = read_student_info(folder)  # refuses a folder without a finished student, naming it
    temperature = student_temperature(folder)
    student = load_student(folder, recipe.task, recipe.prompt, student_shots(recipe), recipe.student)
    return ServedModel(
        predict=TorchPredictor(student, temperature, recipe.evaluation.batch_size),
        label_names=list(recipe.task.label_names),
        name=recipe.name,
        version=str(info.get("recipe_hash", "unknown")),
        info={"base_model": info.get("base_model", recipe.student.model), "kind": info["kind"],
              "adapter_method": info["adapter_method"], "temperature": temperature, "runtime": "pytorch"},
        alerts=recipe.alerts,
    )
