"""Evaluation against human labels: metrics and the run report."""

from tailorkd.evaluation.metrics import classification_metrics
from tailorkd.evaluation.report import write_report

__all__ = ["classification_metrics", "write_report"]
