"""What each stage of (progressive) distillation trains on: the validation split, per-stage text filters by
the teacher's confidence, entropy or text length, and coarse label groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.recipe import DistillConfig, StageConfig, StageFilter


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices of ``n`` texts; no validation when the fraction rounds to none or
    would leave nothing to train on."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    if fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1  # a fraction was asked for: hold out at least one text
    if n_val >= n:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def difficulty(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per text: the teacher's confidence (top probability) and entropy (nats)."""
    p = np.clip(probs, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return {"confidence": p.max(1), "entropy": entropy}


def filter_mask(stage_filter: StageFilter | None, rows: Sequence[dict[str, Any]], probs: np.ndarray,
                reference: np.ndarray | None = None) -> np.ndarray:
    """Which of ``rows`` a stage keeps. Quantile bounds are taken over ``reference`` (the training texts'
    teacher distributions; default: ``probs``), so the validation texts are filtered by the same cut-offs."""
    keep = np.ones(len(rows), dtype=bool)
    if stage_filter is None:
        return keep
    d = difficulty(probs)
    ref = difficulty(probs if reference is None else reference)
    f = stage_filter
    if f.min_confidence is not None:
        keep &= d["confidence"] >= f.min_confidence
    if f.min_confidence_quantile is not None:
        keep &= d["confidence"] >= np.quantile(ref["confidence"], f.min_confidence_quantile)
    if f.max_entropy is not None:
        keep &= d["entropy"] <= f.max_entropy
    if f.max_entropy_quantile is not None:
        keep &= d["entropy"] <= np.quantile(ref["entropy"], f.max_entropy_quantile)
    if f.min_chars is not None or f.max_chars is not None:
        lengths = np.array([len(r["text"]) for r in rows])
        if f.min_chars is not None:
            keep &= lengths >= f.min_chars
        if f.max_chars is not None:
            keep &= lengths <= f.max_chars
    return keep


def group_matrix(label_map: dict[str, list[str]] | None, label_names: Sequence[str], where: str) -> np.ndarray | None:
    """[M, K] 0/1 matrix of a label map (None: the classes themselves); errors name ``where``."""
    if label_map is None:
        return None
    names = list(label_names)
    matrix = np.zeros((len(names), len(label_map)), dtype=np.float32)
    for k, (group, members) in enumerate(label_map.items()):
        for name in members:
            if name not in names:
                raise TailorkdError(f"{where}: group {group!r} names unknown label {name!r} (labels: {names})")
            matrix[names.index(name), k] = 1.0
    counts = matrix.sum(1)
    if (counts != 1).any():
        bad = [n for n, c in zip(names, counts) if c != 1]
        raise TailorkdError(f"{where}: every label must be in exactly one group; not so for {bad}")
    return matrix


@dataclass
class Stage:
    index: int  # 1-based
    name: str
    config: StageConfig
    epochs: float
    learning_rate: float
    groups: np.ndarray | None
    train: np.ndarray  # indices into the training rows
    validation: np.ndarray  # indices into the validation rows

    def describe(self) -> dict[str, Any]:
        return {"name": self.name,
                "filter": None if self.config.filter is None else self.config.filter.model_dump(exclude_none=True),
                "label_map": self.config.label_map, "epochs": self.epochs, "learning_rate": self.learning_rate,
                "train_examples": int(len(self.train)), "validation_examples": int(len(self.validation))}


def plan_stages(config: DistillConfig, label_names: Sequence[str], train_rows: Sequence[dict[str, Any]],
                train_probs: np.ndarray, val_rows: Sequence[dict[str, Any]], val_probs: np.ndarray) -> list[Stage]:
    stages = []
    for k, stage in enumerate(config.resolved_stages()):
        where = (f"distill.stages.{k}" if config.stages is not None else
                 f"distill.progressive (stage {k + 1})" if config.progressive is not None else "distill")
        train = np.flatnonzero(filter_mask(stage.filter, train_rows, train_probs))
        val = np.flatnonzero(filter_mask(stage.filter, val_rows, val_probs, reference=train_probs))
        if len(train) == 0:
            raise TailorkdError(f"{where}.filter: keeps none of the {len(train_rows)} training texts; loosen it")
        stages.append(Stage(k + 1, stage.name or f"stage-{k + 1}", stage, stage.epochs or config.epochs,
                            stage.learning_rate or config.learning_rate,
                            group_matrix(stage.label_map, label_names, f"{where}.label_map"), train, val))
    return stages
