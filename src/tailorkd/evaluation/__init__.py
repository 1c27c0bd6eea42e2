"""Evaluation against human labels: metrics, the systems compared, and the run report.

Imported lazily (scikit-learn and matplotlib load only when a metric or the report is used), so that reading
a recipe, which names the systems, stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["classification_metrics", "write_report"]


def __getattr__(name: str) -> Any:
    if name == "classification_metrics":
        from tailorkd.evaluation.metrics import classification_metrics

        return classification_metrics
    if name == "write_report":
        from tailorkd.evaluation.report import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
