"""Distillation: losses, adapters and the training loop (transformers Trainer)."""

from tailorkd.distill.losses import soft_cross_entropy
from tailorkd.distill.trainer import distill_student

__all__ = ["soft_cross_entropy", "distill_student"]
