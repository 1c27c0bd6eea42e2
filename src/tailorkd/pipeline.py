"""The recipe's table of contents: the stages of a run, in order.

    corpus         raw dump -> corpus/pool-*.parquet, funnel (with corpus:)      tailorkd.stages.corpus
    prepare        sources -> data/{seed,pool,test}.parquet                       tailorkd.stages.prepare
    prompt search  the teacher's prompt chosen on the seeds (with prompt_search)  tailorkd.stages.prompt_search
    label          teacher distributions -> labels.sqlite; calibrate, ensemble    tailorkd.stages.label
    distill        students/<system>/ learn the teacher's distributions           tailorkd.stages.distill
    evaluate       every system on the test set -> report.{md,json}               tailorkd.stages.evaluate

Each stage reads the recipe and what earlier stages wrote into the run folder (``tailorkd.run_dir``) and
writes its own, so each can be rerun or resumed alone; ``run`` calls them in order and each skips work
that is already done for the same inputs. ``classify``, ``export`` and ``signals`` use a finished run's student.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from tailorkd.stages.classify import classify, export
from tailorkd.stages.corpus import corpus
from tailorkd.stages.distill import distill
from tailorkd.stages.evaluate import evaluate
from tailorkd.stages.label import label
from tailorkd.stages.prepare import load_data, prepare
from tailorkd.stages.prompt_search import resolve_prompt, tune_prompt
from tailorkd.stages.signals import signals

# (name, whether the recipe asks for it, the stage): the order ``run`` follows before evaluating.
STAGES: list[tuple[str, Callable[[Any], bool], Callable[[Any, bool], Any]]] = [
    ("corpus", lambda recipe: recipe.corpus is not None, lambda recipe, force: corpus(recipe, force)),
    ("prepare", lambda recipe: True, lambda recipe, force: prepare(recipe, force)),
    ("prompt_search", lambda recipe: recipe.prompt_search is not None,
     lambda recipe, force: tune_prompt(recipe, force)),
    ("label", lambda recipe: True, lambda recipe, force: label(recipe)),
    ("distill", lambda recipe: True, lambda recipe, force: distill(recipe, force)),
]


def run(recipe, force: bool = False) -> dict[str, Any]:
    """Every stage in order, then the evaluation; finished, valid work is skipped unless ``force``.
    Returns the report."""
    timings: dict[str, float] = {}
    for name, wanted, stage in STAGES:
        if wanted(recipe):
            start = time.perf_counter()
            stage(recipe, force)
            timings[name] = round(time.perf_counter() - start, 2)
    return evaluate(recipe, timings=timings)


__all__ = ["STAGES", "classify", "corpus", "distill", "evaluate", "export", "label", "load_data", "prepare",
           "resolve_prompt", "run", "signals", "tune_prompt"]
