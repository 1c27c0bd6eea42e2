"""Cross-fitting the teacher's targets: refitted on all the seeds they are the label stage's own; without a fold
of them, what the seeds fitted (calibration, seed classifier, weights, temperatures) moves, and nothing is
labelled again."""

from __future__ import annotations

import json
import logging

import numpy as np

from helpers import labels_in_store, make_recipe
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.stages.cross_fit import TeacherRefit
from tailorkd.stages.distill import distill
from tailorkd.stages.label import label, teacher_records
from tailorkd.stages.prepare import load_data, prepare


def test_refit_on_every_seed_gives_the_label_stages_targets_and_a_fold_moves_them(tiny_models, tmp_path, caplog):
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                        "calibration": {"method": "auto", "domain_samples": 3},
                                        "ensemble": {"members": [{"model": str(tiny_models["opt"])}],
                                                     "seed_classifier": {"encoder": str(tiny_models["bert"])}}},
                       distill={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3,
                                "seed_guard": {"candidates": ["adaptive_kd", "seed_only"], "folds": 2}},
                       evaluation={"systems": ["teacher", "adaptive_kd", "seed_only"]})
    recipe = load_recipe(path)
    prepare(recipe)
    label(recipe)
    data = load_data(recipe)
    rows, expected, _ = teacher_records(recipe, data, "pool")
    stored = labels_in_store(tmp_path / "run")
    refit = TeacherRefit(recipe, data, rows)
    assert refit.seeds_fitted
    seeds = data.rows("seed")
    np.testing.assert_allclose(refit.targets(np.ones(len(seeds), dtype=bool)), expected, atol=1e-9)
    without = refit.targets(np.arange(len(seeds)) % 2 == 0)
    assert without.shape == expected.shape and np.allclose(without.sum(axis=1), 1)
    assert not np.allclose(without, expected, atol=1e-4)
    assert labels_in_store(tmp_path / "run") == stored  # read back, never labelled again

    # The guard trains each distilled candidate once per fold on such targets, and keeps only its predictions,
    # written fold by fold: a guard cut short, or asked again with another rule, refits nothing done.
    run = RunDir(recipe)
    distill(recipe)
    guard = json.loads(run.seed_guard.read_text())
    assert guard["folds"]["k"] == 2 and guard["seconds"]["cross_fitting"] > 0
    folds_dir = run.root / "students" / "guard"
    assert sorted(p.name for p in folds_dir.iterdir()) == ["adaptive_kd.folds.json", "seed_only.folds.json"]
    assert all(p is not None for p in guard["candidates"]["adaptive_kd"]["predicted"].values())
    kept = json.loads((folds_dir / "adaptive_kd.folds.json").read_text())
    assert sorted(kept["folds"]) == ["0", "1"] and kept["fold_key"] == guard["candidates"]["adaptive_kd"]["fold_key"]
    del kept["folds"]["1"]  # as if cut short after the first fold
    (folds_dir / "adaptive_kd.folds.json").write_text(json.dumps(kept))
    again = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={
        "seed_guard": recipe.distill.seed_guard.model_copy(update={"switch_probability": 0.95})})})
    caplog.clear()
    caplog.set_level(logging.INFO, logger="tailorkd")
    distill(again)
    redone = json.loads(run.seed_guard.read_text())
    assert redone["candidates"]["adaptive_kd"]["oof_probs"] == guard["candidates"]["adaptive_kd"]["oof_probs"]
    trained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("distill: adaptive_kd, ")]
    assert len(trained) == 1 and "1 of 2 folds predicted before are reused" in caplog.text
