"""What the service runs: a predictor (texts -> class probabilities) and the description of its model.

``Predictor`` is the one thing the service needs of a model, so that another runtime (e.g. an ONNX Runtime
session of an exported student) plugs in beside ``TorchPredictor`` without touching the service.
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
