"""Stage 1, prepare: read the recipe's sources and write the seed / pool / test splits.

Skipped when ``data/prepare.json`` records the fingerprint of what the splits depend on (the recipe's
``data``, ``task`` and ``seed``). Every later stage reads the splits through ``load_data``, which prepares
them again when they were made for other inputs, so a stage run alone never works on stale splits. Under a
launcher the main process prepares and the others then read its splits.
"""

from __future__ import annotations

import logging

from tailorkd import distributed
from tailorkd.data import PreparedData, load_prepared, prepare_data
from tailorkd.run_dir import RunDir

log = logging.getLogger(__name__)


def prepare(recipe, force: bool = False) -> PreparedData:
    """Read the sources and write the splits (skipped when they are up to date, unless ``force``)."""
    with distributed.main_first() as main:
        return _prepare(recipe, force and main)


def _prepare(recipe, force: bool) -> PreparedData:
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
    if run.prepare_stamp.exists():
        run.prepare_stamp.unlink()  # the splits read as unprepared until the new stamp is written
    data = prepare_data(recipe.data, recipe.task.label_names, run.data_dir, recipe.seed, recipe.base_dir)
    run.write_json(run.prepare_stamp, {"fingerprint": run.fingerprint("prepare"),
                                       "sections": run.section_fingerprints("prepare")})
    log.info("data: seed %d, pool %d, test %d, rejects %d -> %s", len(data.seed), len(data.pool), len(data.test),
             len(data.rejects), run.data_dir)
    return data


def load_data(recipe) -> PreparedData:
    """The recipe's splits, prepared first when missing or made for another data, task or seed section."""
    run = RunDir(recipe)
    with distributed.main_first():
        if _changed_inputs(run) != []:
            return _prepare(recipe, force=False)
        return load_prepared(run.data_dir)


def _changed_inputs(run: RunDir) -> list[str] | None:
    """The recipe sections whose fingerprint differs from the one the splits were made with: empty when the
    splits are up to date, None when there are none yet."""
    stamp = run.read_json_if_exists(run.prepare_stamp, "prepare stamp")
    if not isinstance(stamp, dict):
        return None
    if stamp.get("fingerprint") == run.fingerprint("prepare"):
        return []
    recorded = stamp.get("sections") or {}
    return [name for name, value in run.section_fingerprints("prepare").items() if recorded.get(name) != value] \
        or list(run.section_fingerprints("prepare"))
