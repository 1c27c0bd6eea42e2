"""Stage 1, prepare: read the recipe's sources and write the seed / pool / test splits.

Skipped when ``data/prepare.json`` records the fingerprint of what the splits depend on (the recipe's
``data``, ``task``, ``seed`` and ``corpus``). With a ``corpus:`` section the pool is taken from the corpus
shards (``corpus/``, built first by the corpus stage when it is missing or stale; the stamp also records the
corpus's own fingerprint, which covers its input files), without the seed and test texts; seeds and test
still come from ``data.sources``. Every later stage reads the splits through ``load_data``, which prepares
them again when they were made for other inputs, so a stage run alone never works on stale splits. Under a
launcher the main process prepares and the others then read its splits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from tailorkd import distributed
from tailorkd.data import PreparedData, load_prepared, prepare_data
from tailorkd.data.splits import is_prepared
from tailorkd.data.splits import load_split as read_split
from tailorkd.run_dir import RunDir
from tailorkd.stages.corpus import corpus, corpus_fingerprint, seed_split_texts, uses_seeds
from tailorkd.stages.registry import Stage, register_stage

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)


def prepare(recipe: Recipe, force: bool = False) -> PreparedData:
    """Read the sources and write the splits (skipped when they are up to date, unless ``force``)."""
    with distributed.main_first() as main:
        return _prepare(recipe, force and main)


def _prepare(recipe: Recipe, force: bool) -> PreparedData:
    run = RunDir(recipe)
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_text(run.recipe_file, recipe.to_yaml())
    changed = _changed_inputs(run)
    if not force and changed == []:
        log.info("data: splits in %s are up to date", run.data_dir)
        return load_prepared(run.data_dir)
    if changed:
        log.info("data: the recipe's %s changed since the splits in %s were made; preparing them again",
                 " and ".join(changed), run.data_dir)
    run.clear_stamp("prepare")  # the splits read as unprepared until the new stamp is written
    corpus_fingerprint = None
    if recipe.corpus is not None:
        corpus_fingerprint = corpus(recipe)["fingerprint"]  # skipped when up to date
    data = prepare_data(recipe.data, recipe.task.label_names, run.data_dir, recipe.seed, recipe.base_dir,
                        corpus_dir=run.corpus_dir if recipe.corpus is not None else None,
                        corpus_pool=recipe.corpus.pool if recipe.corpus is not None else "replace")
    run.write_stamp("prepare", {"sections": run.section_fingerprints("prepare"),
                                **({"corpus": corpus_fingerprint} if corpus_fingerprint else {})})
    log.info("data: seed %d, pool %d, test %d, rejects %d -> %s", len(data.seed), len(data.pool), len(data.test),
             len(data.rejects), run.data_dir)
    return data


def load_data(recipe: Recipe) -> PreparedData:
    """The recipe's splits, prepared first when missing or made for another data, task or seed section."""
    run = RunDir(recipe)
    with distributed.main_first():
        if _changed_inputs(run) != []:
            return _prepare(recipe, force=False)
        return load_prepared(run.data_dir)


def load_split(recipe: Recipe, split: str) -> pd.DataFrame:
    """One split of the recipe's data (``seed``, ``pool`` or ``test``), prepared first when missing or stale,
    without reading the other splits."""
    run = RunDir(recipe)
    with distributed.main_first():
        if _changed_inputs(run) != []:
            return _prepare(recipe, force=False).frame(split)
        return read_split(run.data_dir, split)


def splits_are_current(recipe: Recipe) -> bool:
    """Whether the splits in the run folder were made from the recipe's data, task, seed and corpus."""
    return _changed_inputs(RunDir(recipe)) == []


def _changed_inputs(run: RunDir) -> list[str] | None:
    """The recipe sections whose fingerprint differs from the one the splits were made with: empty when the
    splits are up to date, None when there are none yet."""
    stamp = run.read_json_if_exists(run.prepare_stamp, "prepare stamp")
    if not isinstance(stamp, dict):
        return None
    if not is_prepared(run.data_dir):
        return ["splits' format (made by an older tailorkd, or incomplete)"]
    if run.stamp("prepare") is not None:
        # The splits are those of this data, task and seed, so their seed split is the corpus's seeds.
        seeds = seed_split_texts(read_split(run.data_dir, "seed")) \
            if uses_seeds(run.recipe) and (run.data_dir / "seed.parquet").is_file() else None
        if run.recipe.corpus is not None and stamp.get("corpus") != corpus_fingerprint(run.recipe, seeds):
            return ["corpus (its input files or seeds)"]
        return []
    recorded = stamp.get("sections") or {}
    return [name for name, value in run.section_fingerprints("prepare").items() if recorded.get(name) != value] \
        or list(run.section_fingerprints("prepare"))


register_stage(Stage("prepare", lambda recipe, force: prepare(recipe, force), requires=("corpus",),
                     is_current=splits_are_current, command="tailorkd prepare RECIPE",
                     doc="sources -> data/{seed,pool,test}.parquet"))
