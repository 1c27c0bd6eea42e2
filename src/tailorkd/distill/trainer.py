"""Train a student on the teacher's class distributions with the transformers Trainer."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from tailorkd.adapters import attach_adapter, count_parameters, optimizer_name
from tailorkd.distill.losses import soft_cross_entropy
from tailorkd.recipe import AdapterConfig, DistillConfig
from tailorkd.resources import measure_peak_memory
from tailorkd.students import Student, save_student

log = logging.getLogger(__name__)


class _TeacherTargets(torch.utils.data.Dataset):
    def __init__(self, rows: Sequence[dict[str, Any]], probs: np.ndarray):
        if len(rows) != len(probs):
            raise ValueError(f"{len(rows)} rows but {len(probs)} teacher distributions")
        self.rows = list(rows)
        self.probs = probs

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"row": self.rows[i], "teacher_probs": self.probs[i]}


class DistillationTrainer(Trainer):
    """Trainer whose loss is the soft cross-entropy between the student's and the teacher's classes."""

    def __init__(self, *args: Any, student: Student, temperature: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.student = student
        self.temperature = temperature

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        targets = inputs.pop("teacher_probs")
        logits = self.student.class_logits(model, inputs)
        loss = soft_cross_entropy(logits, targets, self.temperature)
        return (loss, {"logits": logits}) if return_outputs else loss


def _collator(student: Student):
    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = student.collate([f["row"] for f in features])
        batch["teacher_probs"] = torch.tensor(np.stack([f["teacher_probs"] for f in features]), dtype=torch.float32)
        return batch

    return collate


def distill_student(student: Student, rows: Sequence[dict[str, Any]], teacher_probs: np.ndarray,
                    adapter: AdapterConfig, config: DistillConfig, out_dir: str | Path, seed: int,
                    info: dict[str, Any]) -> dict[str, Any]:
    """Attach the adapter, train on (rows, teacher_probs), save the student folder; return a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student.model = attach_adapter(student.model, adapter, student.kind)
    params = count_parameters(student.model)
    log.info("student %s: %d of %d parameters train (%.3f%%)", adapter.method, params["trainable"], params["total"],
             100 * params["trainable"] / max(params["total"], 1))
    summary: dict[str, Any] = {"parameters": params, "train_examples": len(rows), "adapter": adapter.model_dump()}

    if adapter.method != "none":
        steps_per_epoch = math.ceil(len(rows) / (config.batch_size * config.gradient_accumulation_steps))
        total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
        device = next(student.model.parameters()).device
        args = TrainingArguments(
            output_dir=str(out_dir / "trainer"),
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            # An absolute count works on transformers 4 and 5 alike (5 dropped warmup_ratio).
            warmup_steps=math.ceil(config.warmup_ratio * total_steps),
            lr_scheduler_type=config.lr_scheduler,
            max_grad_norm=config.max_grad_norm,
            logging_steps=max(1, total_steps // 20),
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            label_names=["teacher_probs"],
            seed=seed,
            use_cpu=device.type == "cpu",
            optim=optimizer_name(device),
            dataloader_num_workers=0,
        )
        trainer = DistillationTrainer(
            model=student.model,
            args=args,
            train_dataset=_TeacherTargets(rows, teacher_probs),
            data_collator=_collator(student),
            student=student,
            temperature=config.temperature,
        )
        t0 = time.perf_counter()
        with measure_peak_memory(device) as peak:
            result = trainer.train()
        summary["train_seconds"] = time.perf_counter() - t0
        summary["peak_memory"] = {"source": peak.source, "added_by_training_gb": peak.peak_gb,
                                  "process_peak_gb": (peak.baseline_bytes + peak.peak_bytes) / 1e9}
        summary["train_loss"] = float(result.training_loss)
        summary["steps"] = int(result.global_step)
        summary["loss_curve"] = [
            {"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e
        ]
    else:
        summary.update(train_seconds=0.0, train_loss=None, steps=0, loss_curve=[])

    save_student(student, adapter.method, out_dir, {**info, "summary": summary})
    return summary
