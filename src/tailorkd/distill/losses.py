"""Distillation losses over the M classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's class distribution, L = -sum_c y_c log yhat_c.

    With a temperature T both sides are softened (the teacher's probabilities as p^(1/T), renormalised)
    and the loss is scaled by T^2 so its gradients keep their size as T changes (Hinton et al., 2015).
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} vs teacher probs {tuple(teacher_probs.shape)}")
    teacher_probs = teacher_probs.to(student_logits.dtype)
    if temperature != 1.0:
        teacher_probs = F.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=-1)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return -(teacher_probs * log_q).sum(-1).mean() * temperature**2
