"""The recipe's table of contents: the stages of a run, in order.

    corpus         raw dump -> corpus/pool-*.parquet, funnel (with corpus:)      tailorkd.stages.corpus
    prepare        sources -> data/{seed,pool,test}.parquet                       tailorkd.stages.prepare
    prompt search  the teacher's prompt chosen on the seeds (with prompt_search)  tailorkd.stages.prompt_search
    label          teacher distributions -> labels.sqlite; calibrate, ensemble    tailorkd.stages.label
    distill        students/<system>/ learn the teacher's distributions           tailorkd.stages.distill
    evaluate       every system on the test set -> report.{md,json}               tailorkd.stages.evaluate

Each stage registers itself (``tailorkd.stages.registry``) with what it requires and how to tell that its
output is current; each reads the recipe and what earlier stages wrote into the run folder
(``tailorkd.run_dir``) and writes its own, so each can be rerun or resumed alone. ``run`` calls them in
order, skipping the ones that are current. ``classify``, ``export`` and ``signals`` use a finished run's student.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tailorkd.stages import stage_order
from tailorkd.stages.classify import classify, export
from tailorkd.stages.corpus import corpus
from tailorkd.stages.distill import distill
from tailorkd.stages.evaluate import evaluate
from tailorkd.stages.label import label
from tailorkd.stages.prepare import load_data, prepare
from tailorkd.stages.prompt_search import resolve_prompt, tune_prompt
from tailorkd.stages.registry import is_current
from tailorkd.stages.signals import signals

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe


def run(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Every stage the recipe asks for, in order, then the evaluation (which always runs); a stage whose output
    is current is skipped unless ``force``. Returns the report."""
    timings: dict[str, float] = {}
    for stage in stage_order():
        if stage.name == "evaluate" or not stage.wanted(recipe):
            continue
        if not force and is_current(recipe, stage.name):
            continue
        start = time.perf_counter()
        stage.run(recipe, force)
        timings[stage.name] = round(time.perf_counter() - start, 2)
    return evaluate(recipe, timings=timings)


__all__ = ["classify", "corpus", "distill", "evaluate", "export", "label", "load_data", "prepare",
           "resolve_prompt", "run", "signals", "tune_prompt"]
