"""The ``signals:`` section: how `tailorkd signals` turns a feed of articles into daily signals and alerts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tailorkd.recipe.base import Section

DEFAULT_SEVERITY_WEIGHTS = {"none": 0.0, "low": 1 / 3, "medium": 2 / 3, "high": 1.0}


class SignalColumns(Section):
    """Where each field of an article is in the input files (JSONL, JSONL.gz, Parquet, CSV)."""

    text: str = "text"
    date: str = Field(default="date", description="A date or timestamp pandas parses (taken to UTC), or Unix time "
                      "in seconds (a number or digits, 1980 to 2100); the day is what counts.")
    topic: str | None = Field(default="topic", description="None, or a missing column: every article in 'all'.")
    source: str | None = Field(default="source", description="None, or a missing column: no source.")
    id: str | None = Field(default="id", description="An article seen twice (in any file) under one id counts "
                           "once. None, or a missing column: the text, day, topic and source identify it.")


class SignalRule(Section):
    """One alert rule, checked for every topic and day."""

    name: str = Field(min_length=1)
    kind: Literal["share_above", "rise_over_baseline"] = Field(
        description="share_above: the day's risk share reaches `threshold`; rise_over_baseline: the day's risk "
        "share is at least `threshold` times the topic's share over the `baseline_days` days before it.")
    threshold: float = Field(gt=0)
    min_count: int = Field(default=10, ge=1, description="Only days with at least this many articles.")
    baseline_days: int = Field(default=7, ge=1, description="rise_over_baseline: the trailing window, in days.")
    min_baseline_count: int = Field(default=10, ge=1,
                                    description="rise_over_baseline: articles the window must hold to be a baseline.")

    @model_validator(mode="after")
    def _share_is_a_fraction(self) -> SignalRule:
        if self.kind == "share_above" and self.threshold > 1:
            raise ValueError(f"threshold: a share_above threshold is a share in (0, 1], got {self.threshold}")
        return self


class SignalsConfig(Section):
    """Signals per article (label, calibrated confidence, severity) aggregated per topic and day."""

    columns: SignalColumns = SignalColumns()
    risk_labels: list[str] | None = Field(
        default=None, description="The labels whose share is the risk share; default: the task's first label.")
    severity_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY_WEIGHTS),
        description="The weight of each severity level (alerts.severity) in the severity index, the day's mean "
        "weight: every level alerts.severity names needs one.")
    rules: list[SignalRule] = Field(default_factory=lambda: [
        SignalRule(name="high risk share", kind="share_above", threshold=0.5),
        SignalRule(name="risk rising", kind="rise_over_baseline", threshold=2.0),
    ])
    top_articles: int = Field(default=3, ge=0, description="Articles listed with each alert (most confident risk).")
    batch_size: int = Field(default=256, ge=1, description="Articles read, scored and stored at a time.")
    interval_level: float = Field(default=0.95, gt=0, lt=1)
    quantifier: Literal["raw", "pcc", "acc", "pacc", "emq"] = Field(
        default="raw", description="How each topic-day's class shares are estimated (tailorkd.quantify): raw "
        "counts the student's labels; pcc averages its probabilities; acc / pacc correct the count / the mean "
        "probability by the student's confusion on the seeds (its cross-fitted predictions, which the seed guard "
        "keeps); emq adjusts the prior by EM. A run without those predictions falls back to raw, and says so. "
        "raw by default: on the CrisisLexT26 benchmark (docs/signals.md) no correction from ~20 seeds came "
        "closer to the crowd's shares than the count.")
    alert_on: Literal["estimate", "interval"] = Field(
        default="estimate", description="What must clear a rule's threshold: the estimated risk share "
        "(estimate), or the lower end of its interval at interval_level (interval), which takes in the day's "
        "sampling and the uncertainty of the student's confusion.")
    replicates: int = Field(default=200, ge=20, le=10000,
                            description="Bootstrap replicates behind each estimated share's interval.")
