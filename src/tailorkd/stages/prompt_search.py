"""Stage 1b, prompt search (when the recipe has ``prompt_search``): choose the teacher's prompt on the seeds.

Candidates change one part of the best prompt so far (see ``tailorkd.prompts.search``); each is scored by
the teacher's agreement with the expert seeds, a seed never scored by a prompt that shows it. Every seed
scoring goes into the label store, so an interrupted search resumes and a rerun costs no teacher calls.
Writes prompts/search.json (last: its presence means the search is complete), prompts/candidates.md,
prompts/chosen_prompt.yaml and recipe.tuned.yaml. Every later stage works on ``resolve_prompt(recipe)``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd import distributed
from tailorkd.data import PreparedData
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, text_hash
from tailorkd.prompts import fixed_shots, knn_selector, per_text_shots
from tailorkd.run_dir import RunDir
from tailorkd.stages.prepare import load_data
from tailorkd.stages.registry import Stage, register_stage, run_requirements
from tailorkd.teachers import make_teacher

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

# How candidates are scored on the seeds; a search scored otherwise is done again (the seeds' teacher scores
# are in the label store, so that costs no teacher call). 2: the calibrated ranking fits its per-class bias on
# balanced folds instead of leave-one-out.
SCORING_VERSION = 2


def tune_prompt(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Choose the prompt on the expert seeds; skipped when prompts/search.json was made for this recipe,
    unless ``force``. Returns the search's record (search.json). Under a launcher the main process searches
    and the others read its record."""
    run_requirements(recipe, "prompt_search")
    with distributed.main_first() as main:
        return _tune_prompt(recipe, force and main)


def _tune_prompt(recipe: Recipe, force: bool) -> dict[str, Any]:
    from tailorkd.prompts.search import base_parts, greedy_search, search_space, to_prompt

    config = recipe.prompt_search
    run = RunDir(recipe)
    if config is None:
        raise TailorkdError(f"{run.root}: the recipe has no prompt_search section; add one to tune the prompt")
    done = search_record(recipe)
    if done is not None and not force:
        log.info("prompt search: %s is up to date", run.search)
        return done
    data = load_data(recipe)
    if len(data.seed) < 2:
        raise TailorkdError(f"{run.data_dir / 'seed.parquet'}: prompt search needs at least two seeds, "
                            f"found {len(data.seed)}")
    space = search_space(recipe.prompt, config, recipe.task, len(data.seed), recipe.seed,
                         served=recipe.teacher.server is not None)
    scorer = SeedScorer(recipe, data, calibrate=config.calibrate)
    t0 = time.perf_counter()
    result = greedy_search(base_parts(recipe.prompt), space, lambda parts: scorer(to_prompt(recipe.prompt, parts)),
                           config, recipe.seed, _log_candidate(config))
    chosen = to_prompt(recipe.prompt, result.chosen.parts)
    record = {
        "metric": config.metric,
        "seeds": len(data.seed),
        "space": space,
        "base": _entry(result.base),
        "chosen": {**_entry(result.chosen), "prompt": chosen.model_dump(mode="json")},
        "candidates": [_entry(item, rank) for rank, item in enumerate(result.ranked(config.metric), 1)],
        "rounds": result.rounds,
        "stopped_because": result.stopped_because,
        "teacher_calls": sum(item.teacher_calls for item in result.scored),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    record = _write_outputs(run, recipe, result, chosen, record)
    log.info("prompt search: %d candidates, %d teacher calls, %.0fs; seeds %s %.3f -> %.3f (%s)",
             len(result.scored), record["teacher_calls"], record["seconds"], config.metric,
             result.base.metrics[config.metric], result.chosen.metrics[config.metric], result.stopped_because)
    return record


def resolve_prompt(recipe: Recipe, tune: bool = False) -> Recipe:
    """The recipe every stage after the search works with: with ``prompt_search``, its prompt is the chosen
    one (the search runs first when ``tune``, else it must be done) and the search section is gone, so this
    is idempotent. A recipe without a search is returned as it is."""
    from tailorkd.recipe import PromptConfig

    if recipe.prompt_search is None:
        return recipe
    record = search_record(recipe)
    if record is None:
        if not tune:
            raise TailorkdError(f"{RunDir(recipe).search}: the recipe asks for a prompt search that is not done "
                                "for this recipe; run `tailorkd prompts tune` (or `tailorkd label`)")
        record = tune_prompt(recipe)
    chosen = PromptConfig.model_validate(record["chosen"]["prompt"])
    return recipe.model_copy(update={"prompt": chosen, "prompt_search": None})


def search_record(recipe: Recipe) -> dict[str, Any] | None:
    """prompts/search.json when it was made for this recipe, else None."""
    return RunDir(recipe).stamp("prompt_search", version=SCORING_VERSION)


class SeedScorer:
    """Scores prompts by the teacher's agreement with the expert seeds: ``scorer(prompt)`` -> (metrics,
    teacher calls, seconds). One teacher model and one sentence encoder serve every prompt; each seed's
    distribution goes into the label store under its prompt, so a prompt scored before costs nothing.
    A seed is never scored by a prompt that shows it: fixed shots leave it out (``loo_shot_groups``), a
    per-text selector never picks a text's own seed."""

    def __init__(self, recipe: Recipe, data: PreparedData, calibrate: bool = True):
        """``calibrate``: the metrics are those after a per-class bias fitted on balanced folds of the other
        seeds (``fold_calibrated``), with the raw ones under "raw"."""
        self.recipe = recipe
        self.calibrate = calibrate
        self.seeds = data.rows("seed")
        self.names = recipe.task.label_names
        self._teacher: Any = None  # loaded on first use, then shared by every prompt
        self._selectors: dict[tuple[int, str], Any] = {}
        self._embedders: dict[str, Any] = {}

    def selector(self, prompt) -> Any:
        """The per-text shot selector of ``prompt`` (None for fixed shots), shared between prompts."""
        from tailorkd.models.embedder import SentenceEmbedder

        if not per_text_shots(prompt):
            return None
        key = (prompt.shots, prompt.shot_encoder)
        if key not in self._selectors:
            if prompt.shot_encoder not in self._embedders:
                self._embedders[prompt.shot_encoder] = SentenceEmbedder(prompt.shot_encoder)
            self._selectors[key] = knn_selector(prompt, self.seeds, self.names, self._embedders[prompt.shot_encoder])
        return self._selectors[key]

    def teacher(self, prompt, shots: list[dict[str, Any]] | None = None) -> Any:
        """A teacher with ``prompt`` and ``shots`` (default: its fixed shots drawn as every stage draws them)."""
        if shots is None:
            shots = fixed_shots(prompt, self.seeds, self.names, self.recipe.seed)
        if self._teacher is None:
            self._teacher = make_teacher(self.recipe.teacher, self.recipe.task, prompt, shots, self.selector(prompt))
            return self._teacher
        return self._teacher.with_prompt(prompt, shots, self.selector(prompt))

    def __call__(self, prompt) -> tuple[dict[str, Any], int, float]:
        from tailorkd.prompts.search import fold_calibrated, seed_metrics

        probs, calls, seconds = self.probs(prompt)
        labels = [r["label"] for r in self.seeds]
        metrics = seed_metrics(probs, labels, self.names)
        if self.calibrate:
            metrics = {**seed_metrics(fold_calibrated(probs, labels, self.names, self.recipe.seed), labels,
                                      self.names), "raw": metrics}
        return metrics, calls, seconds

    def probs(self, prompt) -> tuple[np.ndarray, int, float]:
        """The teacher's raw [S, M] distributions on the seeds under ``prompt`` (NaN rows: abstentions),
        the teacher calls it took (texts not yet in the store) and the seconds."""
        from tailorkd.prompts.search import loo_shot_groups

        t0 = time.perf_counter()
        if per_text_shots(prompt):
            groups = [([], self.seeds)]
        else:
            groups = loo_shot_groups(fixed_shots(prompt, self.seeds, self.names, self.recipe.seed), self.seeds)
        found: dict[str, Any] = {}
        calls = 0
        with LabelStore(RunDir(self.recipe).label_store) as store:
            for shots, rows in groups:
                teacher = self.teacher(prompt, shots)
                done = store.done_hashes(teacher.identity, teacher.prompt_fingerprint)
                calls += sum(text_hash(r["text"]) not in done for r in rows)
                records = teacher.label(rows, store, desc="prompt search: seeds")
                found.update({r["id"]: records[text_hash(r["text"])] for r in rows if text_hash(r["text"]) in records})
        none = [math.nan] * len(self.names)
        probs = np.array([found[r["id"]].probs if r["id"] in found else none for r in self.seeds],
                         dtype=float).reshape(len(self.seeds), len(self.names))
        return probs, calls, time.perf_counter() - t0


def _log_candidate(config) -> Any:
    def progress(item: Any) -> None:
        m, p = item.metrics, item.parts
        log.info("prompt search: candidate %d/%d (round %d): %s %.3f, accuracy %.3f [%d %s shots, %s, %s] "
                 "%d teacher calls, %.1fs", item.order + 1, config.max_candidates, item.round, config.metric,
                 m[config.metric], m["accuracy"], p["shots"], p["shot_selection"], p["response_format"],
                 "system" if p["system"] else "no system", item.teacher_calls, item.seconds)

    return progress


def _entry(item: Any, rank: int | None = None) -> dict[str, Any]:
    return {**({"rank": rank} if rank is not None else {}), "parts": item.parts, "metrics": item.metrics,
            "round": item.round, "teacher_calls": item.teacher_calls, "seconds": round(item.seconds, 2)}


def _write_outputs(run: RunDir, recipe: Recipe, result: Any, chosen: Any, record: dict[str, Any]
                   ) -> dict[str, Any]:
    """The ranked table, the chosen prompt, the recipe with it, and search.json last (returned as stamped)."""
    import yaml

    from tailorkd.prompts.search import write_table
    from tailorkd.recipe import readable_dump

    run.write_text(run.search_table, write_table(result, record["metric"]) + "\n")
    run.write_text(run.chosen_prompt, yaml.safe_dump({"prompt": readable_dump(chosen)}, sort_keys=False,
                                                     allow_unicode=True))
    tuned = readable_dump(recipe.model_copy(update={"prompt": chosen, "prompt_search": None}))
    for source in tuned["data"]["sources"]:  # it lies in the run folder: data paths must not depend on where
        if source.get("path") and not Path(source["path"]).is_absolute():
            source["path"] = str((Path(recipe.base_dir) / source["path"]).resolve())
    run.write_text(run.tuned_recipe, "# The recipe with the prompt chosen by `tailorkd prompts tune`.\n"
                   + yaml.safe_dump(tuned, sort_keys=False, allow_unicode=True))
    return run.write_stamp("prompt_search", record, version=SCORING_VERSION)


register_stage(Stage("prompt_search", lambda recipe, force: tune_prompt(recipe, force), requires=("prepare",),
                     wanted=lambda recipe: recipe.prompt_search is not None,
                     is_current=lambda recipe: search_record(recipe) is not None,
                     command="tailorkd prompts tune RECIPE", doc="the teacher's prompt chosen on the seeds"))
