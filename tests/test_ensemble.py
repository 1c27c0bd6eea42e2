"""Several teachers: combination rules, weights that follow seed accuracy, and the pipeline end to end."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from helpers import TOPICS, make_recipe
from tailorkd.calibration import Calibration, softmax_rows
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.labels import text_hash
from tailorkd.prompts import held_out_seeds
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.stages.ensemble import ensemble_probs
from tailorkd.stages.label import teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.teachers.ensemble import combine, disagreement, matched_temperature, seed_weights, tempered


def noisy_teacher(y: np.ndarray, signal: float, seed: int, blind_to: int | None = None) -> np.ndarray:
    """A teacher that sees the true class with strength ``signal``; blind to one class if asked."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, size=(len(y), 3)) + signal * np.eye(3)[y]
    if blind_to is not None:
        logits[:, blind_to] -= 3.0
    return softmax_rows(logits)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(1) == y))


def test_weighted_mean_and_product_rules():
    a = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    b = np.array([[0.1, 0.6, 0.3], [np.nan, np.nan, np.nan]])  # b abstained on text 2
    mean = combine([a, b], [0.75, 0.25], "weighted_mean")
    np.testing.assert_allclose(mean[0], 0.75 * a[0] + 0.25 * b[0])
    np.testing.assert_allclose(mean[1], a[1])  # only a answered: its distribution
    prod = combine([a, b], [0.5, 0.5], "product")
    want = np.sqrt(a[0] * b[0])
    np.testing.assert_allclose(prod[0], want / want.sum())
    assert np.isnan(combine([b[1:]], [1.0], "product")).all()  # nobody answered
    np.testing.assert_allclose(disagreement([a, b], mean), [0.5, 0.0])
    with pytest.raises(ValueError, match="unknown combination"):
        combine([a], [1.0], "vote")


def test_weights_follow_seed_accuracy():
    better, worse = seed_weights([(0.9, 21), (0.3, 21)], 3)
    assert better > 0.9 and better + worse == pytest.approx(1.0)  # 0.3 on 3 classes: below chance
    assert seed_weights([(0.0, 21), (0.0, 21)], 3) == pytest.approx([0.5, 0.5])
    assert seed_weights([(0.8, 21), None], 3) == [0.5, 0.5]


def test_two_teachers_with_different_blind_spots_beat_each_alone():
    y = np.random.default_rng(0).integers(0, 3, size=3000)
    one = noisy_teacher(y, 2.5, seed=1, blind_to=2)
    two = noisy_teacher(y, 2.5, seed=2, blind_to=0)
    both = combine([one, two], [0.5, 0.5], "product")
    assert accuracy(both, y) > max(accuracy(one, y), accuracy(two, y)) + 0.05
    # A useless member with a small weight barely moves a good one; with an equal weight it hurts more.
    good, junk = noisy_teacher(y, 3.0, seed=3), noisy_teacher(y, 0.0, seed=4)
    weighted = combine([good, junk], seed_weights([(0.9, 21), (0.34, 21)], 3), "weighted_mean")
    equal = combine([good, junk], [0.5, 0.5], "weighted_mean")
    assert accuracy(weighted, y) >= accuracy(equal, y)


def test_members_speak_on_one_scale_when_tempered_to_their_seed_accuracy():
    """A flat member (mean top probability 0.38) that is right 86% of the time is outvoted in a mixture by a
    peaked one (0.89) right 69% of the time; tempered so that each one's mean top probability is its accuracy, the
    mixture follows the better member."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=4000)
    flat = softmax_rows(0.1 * (rng.normal(0, 1.0, size=(len(y), 3)) + 2.0 * np.eye(3)[y]))
    peaked = noisy_teacher(y, 1.2, seed=5) ** 4
    peaked /= peaked.sum(1, keepdims=True)
    accs = [accuracy(flat, y), accuracy(peaked, y)]
    assert accs[0] > 0.85 and 0.5 < accs[1] < 0.7 and flat.max(1).mean() < 0.45 < peaked.max(1).mean()
    temps = [matched_temperature(p, a) for p, a in zip((flat, peaked), accs)]
    for p, t, a in zip((flat, peaked), temps, accs):
        assert tempered(p, t).max(1).mean() == pytest.approx(a, abs=1e-4)
        assert (tempered(p, t).argmax(1) == p.argmax(1)).all()  # only how loudly it speaks
    as_labelled = accuracy(combine([flat, peaked], [0.5, 0.5], "weighted_mean"), y)
    on_one_scale = accuracy(combine([tempered(flat, temps[0]), tempered(peaked, temps[1])], [0.5, 0.5],
                                    "weighted_mean"), y)
    assert as_labelled < accs[1] + 0.02 and on_one_scale > accs[0] + 0.02
    # Ends of the range: below chance it flattens as far as it can, at 1 it sharpens; no judgement: as it is.
    assert tempered(flat, matched_temperature(flat, 0.2)).max(1).mean() < 0.34
    assert tempered(flat, matched_temperature(flat, 1.0)).max(1).mean() > 0.99
    with_gap = np.vstack([flat[:5], np.full((1, 3), np.nan)])
    assert matched_temperature(with_gap, None) == 1.0 and np.isnan(tempered(with_gap, 0.5)[-1]).all()
    assert np.isfinite(matched_temperature(with_gap, 0.9))


def test_pipeline_combines_calibrated_members(tiny_models, tmp_path):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                               "calibration": {"method": "domain", "domain_samples": 3},
                                               "ensemble": {"combine": "product", "confidence": "seed_accuracy",
                                                            "members": [{"model": str(tiny_models["opt"])}]}})
    assert main(["label", recipe_path]) == 0
    run = tmp_path / "run"
    ensemble = json.loads((run / "ensemble.json").read_text())
    members = ensemble["members"]
    assert [m["model"] for m in members] == [str(tiny_models["llama"]), str(tiny_models["opt"])]
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)
    assert all(m["calibration"]["method"] == "domain" for m in members)
    # Each member's labels are kept in the store under its own identity.
    with sqlite3.connect(run / "labels.sqlite") as conn:
        teachers = {t for (t,) in conn.execute("SELECT DISTINCT teacher FROM labels")}
    assert {m["identity"] for m in members} <= teachers

    recipe = load_recipe(recipe_path)
    data = load_data(recipe)
    rows, probs, seconds = teacher_records(recipe, data, "test")
    from tailorkd.labels import LabelStore

    with LabelStore(run / "labels.sqlite") as store:
        _, _, member_probs = ensemble_probs(recipe, rows, store, calibrated=True)
    expected = combine(member_probs, [m["weight"] for m in members], "product")
    np.testing.assert_allclose(probs, expected)
    # the members' calibrations were applied
    with LabelStore(run / "labels.sqlite") as store:
        raw = store.get(members[1]["identity"], members[1]["prompt"], [text_hash(r["text"]) for r in rows],
                        TOPICS)
    raw_opt = np.array([raw[text_hash(r["text"])].probs for r in rows])
    calibrated_opt = Calibration.from_dict(members[1]["calibration"]).apply(raw_opt)
    np.testing.assert_allclose(member_probs[1], tempered(calibrated_opt, members[1]["temperature"]))
    # ... then tempered: over the pool, each member's mean top probability is its seed accuracy.
    assert ensemble["confidence"] == "seed_accuracy"
    pool = data.rows("pool")
    with LabelStore(run / "labels.sqlite") as store:
        _, _, pool_members = ensemble_probs(recipe, pool, store, calibrated=True)
    for member, probs in zip(members, pool_members):
        assert probs.max(1).mean() == pytest.approx(member["held_out_seed_accuracy"], abs=1e-3) or \
            member["temperature"] in (np.exp(-7.0), np.exp(5.0))
    assert (seconds > 0).all()
    summary = json.loads((run / "labels_summary.json").read_text())
    assert summary["ensemble"]["combine"] == "product" and len(summary["ensemble"]["members"]) == 2
    # Weights made by an older rule are recomputed by the label stage, never trusted.
    (run / "ensemble.json").write_text(json.dumps({**ensemble, "weighting_version": 1}))
    with pytest.raises(TailorkdError, match="older rule"):
        teacher_records(recipe, data, "test")


def test_members_cannot_carry_their_own_options(tmp_path, tiny_models):
    bad = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                      teacher_section={"model": "a", "ensemble": {"members": [
                          {"model": "b", "calibration": {"method": "domain"}}]}})
    with pytest.raises(Exception, match=r"ensemble.members.0: calibration belong"):
        load_recipe(bad)


def test_seed_classifier_joins_the_ensemble_as_a_member(tiny_models, tmp_path):
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                               "ensemble": {"seed_classifier": {"encoder": str(tiny_models["bert"])}}})
    assert main(["label", recipe_path]) == 0
    run = tmp_path / "run"
    members = json.loads((run / "ensemble.json").read_text())["members"]
    assert len(members) == 2 and members[1]["identity"].startswith("seed-classifier|")
    judged = [(m["held_out_seed_accuracy"], m["seed_judgement"]["n"]) for m in members]
    assert [m["weight"] for m in members] == pytest.approx(seed_weights(judged, len(TOPICS)))
    for m in members:  # each judgement with its interval, the seed classifier's on balanced folds
        j = m["seed_judgement"]
        assert j["accuracy"] == m["held_out_seed_accuracy"] and j["n"] == 10
        assert j["accuracy_interval"]["low"] <= j["accuracy"] <= j["accuracy_interval"]["high"]
    assert members[1]["seed_judgement"]["method"].startswith("stratified")
    recipe = load_recipe(recipe_path)
    data = load_data(recipe)
    rows, probs, _ = teacher_records(recipe, data, "pool")
    assert probs.shape == (len(rows), len(TOPICS)) and np.allclose(probs.sum(1), 1.0)
    # Its distributions are in the store like a teacher's: a second label run refits nothing.
    from tailorkd.evaluation.baselines import classifier_probs, fit_seed_classifier
    from tailorkd.labels import LabelStore
    from tailorkd.models.embedder import SentenceEmbedder, embedding_text

    seeds = data.rows("seed")
    embed = SentenceEmbedder(str(tiny_models["bert"]))
    model = fit_seed_classifier(embed([embedding_text(r) for r in seeds]), [r["label"] for r in seeds], recipe.seed)
    expected = classifier_probs(model, embed([embedding_text(r) for r in rows]), TOPICS)
    with LabelStore(run / "labels.sqlite") as store:
        stored = store.get(members[1]["identity"], members[1]["prompt"], [text_hash(r["text"]) for r in rows],
                           TOPICS)
    np.testing.assert_allclose([stored[text_hash(r["text"])].probs for r in rows], expected, atol=1e-6)
    # Combined as they come unless the recipe asks to temper each member to its seed accuracy.
    assert [m["temperature"] for m in members] == [1, 1]
    assert main(["label", recipe_path, "teacher.ensemble.confidence=seed_accuracy"]) == 0
    tempered_run = json.loads((run / "ensemble.json").read_text())
    assert tempered_run["confidence"] == "seed_accuracy"
    assert all(m["temperature"] > 0 for m in tempered_run["members"]) and \
        any(m["temperature"] != 1 for m in tempered_run["members"])
    # A seed classifier alone is an ensemble too; an ensemble of nothing is refused.
    with pytest.raises(Exception, match="needs members"):
        load_recipe(recipe_path, ["teacher.ensemble={members: []}"])


def test_setfit_joins_the_ensemble_as_a_seed_classifier_member(tiny_models, tmp_path, monkeypatch):
    """teacher.ensemble.seed_classifier.method: setfit: the encoder tuned on seed pairs labels pool and test
    like a teacher, keyed by its method, iterations and random seed; it is judged by SetFit refits on balanced
    folds, and weighted by that judgement."""
    from tailorkd.labels import LabelStore
    from tailorkd.teachers.seed_classifier import SetFitSeedModel

    member = {"encoder": "minilm-l6", "method": "setfit", "setfit_iterations": 2}
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                               "ensemble": {"seed_classifier": member}})
    assert main(["label", recipe_path]) == 0
    run = tmp_path / "run"
    members = json.loads((run / "ensemble.json").read_text())["members"]
    assert len(members) == 2
    setfit = members[1]
    assert setfit["identity"] == "seed-classifier|minilm-l6|setfit|iterations=2|seed=3"
    assert setfit["model"].startswith("seed classifier: SetFit on minilm-l6 tuned on pairs of 10 seeds")
    judged = setfit["seed_judgement"]
    assert judged["n"] == 10 and judged["repeats"] == 1 and "SetFit trained anew per fold" in judged["method"]
    assert judged["accuracy_interval"]["low"] <= judged["accuracy"] <= judged["accuracy_interval"]["high"]
    assert [m["weight"] for m in members] == pytest.approx(
        seed_weights([(m["held_out_seed_accuracy"], m["seed_judgement"]["n"]) for m in members], len(TOPICS)))
    # The stored distributions are those of SetFit fitted on all the seeds with the recipe's random seed.
    recipe = load_recipe(recipe_path)
    data = load_data(recipe)
    rows = list(data.rows("test"))
    expected = SetFitSeedModel(data.rows("seed"), "minilm-l6", TOPICS, recipe.seed, iterations=2).fit()(rows)
    with LabelStore(run / "labels.sqlite") as store:
        stored = store.get(setfit["identity"], setfit["prompt"], [text_hash(r["text"]) for r in rows], TOPICS)
    np.testing.assert_allclose([stored[text_hash(r["text"])].probs for r in rows], expected, atol=1e-5)
    rows, probs, _ = teacher_records(recipe, data, "pool")
    assert probs.shape == (len(rows), len(TOPICS)) and np.allclose(probs.sum(1), 1.0)
    # Labelling again neither refits nor re-judges it: its labels are stored, its judgement is in ensemble.json.
    def not_again(self):
        raise AssertionError("SetFit trained again")

    monkeypatch.setattr(SetFitSeedModel, "fit", not_again)
    monkeypatch.setattr(SetFitSeedModel, "judge", not_again)
    assert main(["label", recipe_path]) == 0
    assert json.loads((run / "ensemble.json").read_text())["members"] == members
    with pytest.raises(Exception, match=r"seed_classifier.method"):
        load_recipe(recipe_path, ["teacher.ensemble.seed_classifier.method=svm"])


def test_a_member_labels_with_its_own_prompt(tiny_models, tmp_path):
    """teacher.ensemble.members[i].prompt: that member's labels, shots, held-out seeds and fingerprint follow
    its own prompt (here zero-shot, another instruction), the main teacher keeps the recipe's."""
    from tailorkd.labels import LabelStore
    from tailorkd.models import load_causal_lm
    from tailorkd.recipe import PromptConfig
    from tailorkd.teachers import LocalTeacher

    own = {"instruction": "Name the topic of this news item.", "shots": 0, "describe_labels": False,
           "max_text_chars": 120}
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                               "ensemble": {"members": [{"model": str(tiny_models["opt"]),
                                                                         "prompt": own}]}})
    assert main(["label", recipe_path]) == 0
    run = tmp_path / "run"
    members = json.loads((run / "ensemble.json").read_text())["members"]
    assert [m["own_prompt"] for m in members[1:]] == [True]
    recipe = load_recipe(recipe_path)
    member_config = recipe.teacher.ensemble.members[0]
    model, tokenizer = load_causal_lm(str(tiny_models["opt"]))
    with_own = LocalTeacher(member_config, recipe.task, PromptConfig(**own), [], model, tokenizer)
    with_recipes = LocalTeacher(member_config, recipe.task, recipe.prompt, [], model, tokenizer)
    assert members[1]["prompt"] == with_own.prompt_fingerprint != with_recipes.prompt_fingerprint
    data = load_data(recipe)
    rows = data.rows("test")[:6]
    with LabelStore(run / "labels.sqlite") as store:
        stored = store.get(members[1]["identity"], members[1]["prompt"], [text_hash(r["text"]) for r in rows],
                           TOPICS)
    expected, _ = with_own.score(rows)
    np.testing.assert_allclose([stored[text_hash(r["text"])].probs for r in rows], expected, atol=1e-5)
    # With zero shots every seed is held out for this member: its seed accuracy is measured on all of them.
    seeds = data.rows("seed")
    held_out = held_out_seeds(PromptConfig(**own), seeds, TOPICS, recipe.seed)
    assert len(held_out) == len(data.seed) > len(held_out_seeds(recipe.prompt, seeds, TOPICS, recipe.seed))
    # The member's prompt is part of what the labels were made with.
    changed = load_recipe(recipe_path, ["teacher.ensemble.members.0.prompt.instruction=Which topic is it?"])
    plain = load_recipe(recipe_path, ["teacher.ensemble.members.0.prompt=null"])
    fingerprints = {RunDir(r).fingerprint("label") for r in (recipe, changed, plain)}
    assert len(fingerprints) == 3
