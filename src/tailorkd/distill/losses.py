"""Distillation losses over the M classes (or over coarse groups of them) and the hidden-state term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0,
                       groups: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's class distribution, L = -sum_c y_c log yhat_c.

    With a temperature T both sides are softened (the teacher's probabilities as p^(1/T), renormalised)
    and the loss is scaled by T^2 so its gradients keep their size as T changes (Hinton et al., 2015).

    ``groups``: an [M, K] 0/1 matrix putting each class in one of K coarse groups. Both (softened)
    distributions are then summed into the groups and the cross-entropy is taken over the K groups, so a
    student is trained on coarse classes through its unchanged M-class head.
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} vs teacher probs {tuple(teacher_probs.shape)}")
    teacher_probs = teacher_probs.to(student_logits.dtype)
    if temperature != 1.0:
        teacher_probs = F.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=-1)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    if groups is not None:
        groups = groups.to(device=log_q.device, dtype=log_q.dtype)
        if groups.ndim != 2 or groups.shape[0] != log_q.shape[-1]:
            raise ValueError(f"groups {tuple(groups.shape)} do not map the {log_q.shape[-1]} classes")
        teacher_probs = teacher_probs @ groups
        # log of the summed probabilities of each group's members, computed stably in log space
        member = torch.where(groups.bool(), 0.0, float("-inf"))  # [M, K]
        log_q = torch.logsumexp(log_q.unsqueeze(-1) + member, dim=-2)
    return -(teacher_probs * log_q).sum(-1).mean() * temperature**2


def hidden_state_loss(projected: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance of the student's projected representation [B, H] from the teacher's pooled states [B, H]:
    ``cosine`` 1 - cosine similarity (0..2); ``mse`` mean squared error (expects standardised teacher
    states, so that it is of order 1 whatever the teacher's scale)."""
    if projected.shape != teacher.shape:
        raise ValueError(f"projected student states {tuple(projected.shape)} vs teacher states {tuple(teacher.shape)}")
    teacher = teacher.to(projected.dtype)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(projected, teacher, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(projected, teacher)
    raise ValueError(f"unknown hidden-state loss {kind!r} (expected mse or cosine)")
