"""Prompt search and per-text (kNN) few-shot selection, on constructed teachers and tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import TOPICS, make_recipe, make_tokenizer
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.labels import LabelStore, text_hash
from tailorkd.models import load_causal_lm
from tailorkd.prompts import KnnShotSelector, PromptBuilder
from tailorkd.prompts.render import JSON_ANSWER_OPENING, MULTILINGUAL_NOTE
from tailorkd.prompts.search import greedy_search, loo_shot_groups, neighbours, search_space, seed_metrics
from tailorkd.recipe import PromptConfig, PromptSearchConfig, TaskConfig, TeacherConfig, load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.stages import prompt_search as prompt_search_stage
from tailorkd.stages.evaluate import prompt_search_block
from tailorkd.stages.label import teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.teachers import LocalTeacher, label_rows

TASK = TaskConfig(name="topic", description="The topic of a news item.",
                  labels=[{"name": t, "description": f"{t} news"} for t in TOPICS])


def one_hot_embedder(vocabulary):
    """A constructed sentence encoder: a text's vector counts the vocabulary words in it (normalised), so
    which seeds are nearest to a text is known in advance."""
    def embed(texts):
        out = np.zeros((len(texts), len(vocabulary)), dtype=np.float32)
        for i, text in enumerate(texts):
            for j, word in enumerate(vocabulary):
                out[i, j] = text.lower().count(word)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)
    return embed


SEEDS = [
    {"id": "b1", "text": "shares bank profit", "label": "business"},
    {"id": "b2", "text": "bank merger", "label": "business"},
    {"id": "s1", "text": "goal match", "label": "sport"},
    {"id": "s2", "text": "match final goal goal", "label": "sport"},
    {"id": "t1", "text": "chip phone", "label": "tech"},
]
VOCAB = ["shares", "bank", "profit", "merger", "goal", "match", "final", "chip", "phone"]


def test_knn_selector_takes_nearest_per_class_and_never_the_text_itself():
    selector = KnnShotSelector(SEEDS, ["business", "sport", "tech"], 3, "constructed",
                               embed=one_hot_embedder(VOCAB))
    shots = selector.select({"text": "bank shares fall"})
    # One per class; within business the nearer seed (b1 shares two words), nearest last.
    assert [s["id"] for s in shots][-1] == "b1"
    assert sorted(s["label"] for s in shots) == ["business", "sport", "tech"]
    # A seed is never its own example: s2's own text picks s1 for sport.
    own = selector.select({"text": "match final goal goal"})
    assert "s2" not in [s["id"] for s in own] and "s1" in [s["id"] for s in own]
    # k not a multiple of the classes: the first classes take the remainder; a class with too few seeds
    # gives what it has.
    five = KnnShotSelector(SEEDS, ["business", "sport", "tech"], 5, "constructed", embed=one_hot_embedder(VOCAB))
    assert five.per_class == {"business": 2, "sport": 2, "tech": 1}
    assert len(five.select({"text": "anything"})) == 5
    assert len(five.select({"text": "bank merger"})) == 4  # b2 is the text itself


def test_knn_selector_keeps_a_bounded_number_of_embeddings(monkeypatch):
    """Labelling a big pool embeds it a window at a time: the selector keeps the latest CACHE_TEXTS texts'
    embeddings, not the pool's, and a window larger than that is still served whole."""
    from tailorkd.prompts import select

    monkeypatch.setattr(select, "CACHE_TEXTS", 50)
    calls = []
    embed = one_hot_embedder(VOCAB)
    selector = KnnShotSelector(SEEDS, ["business", "sport", "tech"], 3, "constructed",
                               embed=lambda texts: calls.append(len(texts)) or embed(texts))
    window = [{"text": f"bank shares {i}"} for i in range(120)]
    selector.prepare(window)
    assert calls == [len(SEEDS), 120]
    assert [s["id"] for s in selector.select(window[-1])][-1] == "b1" and calls[-1] == 120  # kept: no new call
    selector.select(window[0])  # evicted: embedded again
    assert calls[-1] == 1


def test_loo_groups_never_show_a_seed_its_own_answer():
    shots = [SEEDS[0], SEEDS[2]]
    groups = loo_shot_groups(shots, SEEDS)
    scored = [row["id"] for _, rows in groups for row in rows]
    assert sorted(scored) == sorted(s["id"] for s in SEEDS)  # every seed once
    for group_shots, rows in groups:
        assert not {r["id"] for r in rows} & {s["id"] for s in group_shots}
        assert len(group_shots) == len(shots)  # replaced by a seed of the same class, not dropped
    # Without a spare seed of the class, the shot is dropped.
    alone = loo_shot_groups([SEEDS[4]], SEEDS)
    assert [(len(s), [r["id"] for r in rows]) for s, rows in alone][-1] == (0, ["t1"])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_knn_teacher_scores_each_text_as_its_own_fixed_shot_prompt(tiny_models, family):
    """Per-text shots: the shared prefix stops before the shots, and each text's probabilities are those
    of a teacher given that text's shots as fixed shots."""
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    model, tokenizer = load_causal_lm(str(tiny_models[family]))
    seeds = [{"id": f"{t}-{i}", "text": f"{t} story {i} about {t}", "label": t} for t in TOPICS for i in range(2)]
    selector = KnnShotSelector(seeds, TOPICS, 3, "constructed", embed=one_hot_embedder(TOPICS + ["story"]))
    config = TeacherConfig(model=str(tiny_models[family]), batch_size=2)
    prompt = PromptConfig(instruction="Which topic?", shots=3, shot_selection="knn")
    teacher = LocalTeacher(config, TASK, prompt, [], model, tokenizer, selector=selector)
    rows = [{"id": "a", "text": "sport and tech today"}, {"id": "b", "text": "politics"}, {"id": "c", "text": "x"}]
    probs, _ = teacher.score(rows)
    prefix = teacher.scorer.prefix
    assert prefix is not None and all(teacher.scorer.prefix_for([teacher.encode(r)]) for r in rows)
    for row, p in zip(rows, probs):
        fixed = LocalTeacher(config, TASK, prompt.model_copy(update={"shot_selection": "fixed"}),
                             selector.select(row), model, tokenizer)
        reference, _ = fixed.score([row])
        np.testing.assert_allclose(p, reference[0], atol=1e-5)
    assert teacher.builder.describe()["shot_selection"] == "knn"
    assert teacher.prompt_fingerprint != fixed.prompt_fingerprint


def test_json_answer_format_scores_the_label_inside_the_object(tiny_models):
    model, tokenizer = load_causal_lm(str(tiny_models["llama"]))
    prompt = PromptConfig(instruction="Which topic?", shots=2, response_format="json", multilingual=True)
    shots = [{"id": "1", "text": "A goal.", "label": "sport"}, {"id": "2", "text": "Shares up.", "label": "business"}]
    builder = PromptBuilder(TASK, prompt, tokenizer, shots)
    text = builder.render("Chips are faster.")
    assert text.endswith(JSON_ANSWER_OPENING) and MULTILINGUAL_NOTE in text
    assert '{"label": "sport"}' in text and "JSON object" in text
    assert builder.label_continuations() == [t + '"' for t in TOPICS]
    teacher = LocalTeacher(TeacherConfig(model=str(tiny_models["llama"])), TASK, prompt, shots, model, tokenizer)
    probs, _ = teacher.score([{"id": "x", "text": "Chips are faster."}])
    # The class score is the likelihood of the label and its closing quote after the opening.
    ids = teacher.encode({"text": "Chips are faster."})
    with torch.no_grad():
        logp = []
        for label_ids in teacher.prompts.label_token_ids():
            full = torch.tensor([ids + label_ids])
            out = torch.log_softmax(model(full).logits[0].double(), -1)
            logp.append(sum(out[len(ids) - 1 + k, t].item() for k, t in enumerate(label_ids)))
    np.testing.assert_allclose(probs[0], torch.softmax(torch.tensor(logp), 0).numpy(), atol=1e-5)
    # The reason prompt closes the JSON label rather than opening a second object.
    plain = PromptBuilder(TASK, prompt.model_copy(update={"template": "plain"}), make_tokenizer(chat=False), shots)
    assert plain.render("t").endswith('Answer: ' + JSON_ANSWER_OPENING)


class ConstructedTeacher:
    """A teacher whose quality depends on the instruction: with 'GOOD' in it, it puts 0.9 on each seed's
    true class; otherwise 0.9 on the first class. It checks that no seed is scored by a prompt showing it."""

    calls = 0

    def __init__(self, prompt, shots, selector, truth):
        self.task = TASK
        self.builder = PromptBuilder(TASK, prompt, make_tokenizer(chat=True), shots, selector)
        self.good = "GOOD" in prompt.instruction
        self.truth = truth

    identity = "constructed"

    @property
    def prompt_fingerprint(self):
        return self.builder.fingerprint()

    def with_prompt(self, prompt, shots, selector=None):
        return ConstructedTeacher(prompt, shots, selector, self.truth)

    def label(self, rows, store, desc="teacher", **options):
        return label_rows(self, rows, store, desc=desc, **options)

    def score_states(self, rows, bar=None, hidden_layers=(), pooling="last"):
        probs = np.full((len(rows), len(TOPICS)), 0.1 / (len(TOPICS) - 1))
        for i, row in enumerate(rows):
            shown = {s["text"] for s in self.builder.shots_for(row["text"])}
            assert row["text"] not in shown, "a seed was scored by a prompt that shows it"
            probs[i, TOPICS.index(self.truth[row["text"]]) if self.good else 0] = 0.9
        type(self).calls += len(rows)
        return probs, np.zeros(len(rows)), {}


def test_search_picks_the_better_prompt_and_resumes_from_the_store(tiny_models, tmp_path, monkeypatch, capsys):
    search = {"instructions": ["GOOD: which topic is it?"], "builtin_instructions": False, "shot_draws": 0,
              "shot_selections": ["fixed"], "describe_labels": [True], "max_candidates": 8, "metric": "macro_f1"}
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"], prompt_search=search)
    recipe = load_recipe(recipe_path)
    pipeline.prepare(recipe)
    seeds = load_data(recipe).rows("seed")
    truth = {r["text"]: r["label"] for r in seeds}
    monkeypatch.setattr(prompt_search_stage, "make_teacher", lambda config, task, prompt, shots, selector=None:
                        ConstructedTeacher(prompt, shots, selector, truth))
    ConstructedTeacher.calls = 0
    payload = pipeline.tune_prompt(recipe)
    assert payload["chosen"]["parts"]["instruction"] == "GOOD: which topic is it?"
    assert payload["base"]["parts"]["instruction"] == "Which topic?"
    assert payload["chosen"]["metrics"]["accuracy"] == 1.0
    assert payload["base"]["metrics"]["accuracy"] == pytest.approx(2 / 10)  # all 'business': 2 of 10 seeds
    assert payload["candidates"][0]["parts"] == payload["chosen"]["parts"]  # ranked best first
    assert payload["teacher_calls"] == ConstructedTeacher.calls > 0
    # The chosen prompt reaches every later stage, and a tuned recipe that reproduces it is written.
    resolved = pipeline.resolve_prompt(recipe)
    assert resolved.prompt.instruction == "GOOD: which topic is it?" and resolved.prompt_search is None
    tuned = load_recipe(tmp_path / "run" / "recipe.tuned.yaml")
    assert tuned.prompt == resolved.prompt and tuned.prompt_search is None
    assert "(chosen)" in (tmp_path / "run" / "prompts" / "candidates.md").read_text()
    # A search done again (forced) finds every candidate's scores in the label store: no teacher calls.
    ConstructedTeacher.calls = 0
    again = pipeline.tune_prompt(recipe, force=True)
    assert ConstructedTeacher.calls == 0 and again["teacher_calls"] == 0
    assert again["chosen"]["parts"] == payload["chosen"]["parts"]
    # A changed search invalidates the chosen prompt for the later stages until it is searched again.
    changed = recipe.model_copy(update={"prompt_search": PromptSearchConfig(**{**search, "max_candidates": 3})})
    with pytest.raises(Exception, match="prompts tune"):
        pipeline.resolve_prompt(changed)


def test_greedy_search_iterates_from_the_best_neighbour():
    """Two parts must both change to reach the best prompt: the search gets there in two rounds."""
    base = {"instruction": "a", "system": None, "describe_labels": True, "shots": 2, "shot_selection": "fixed",
            "shot_seed": None, "response_format": "label"}
    space = {"instruction": ["a", "b"], "system": [None], "describe_labels": [True, False], "shots": [2, 0],
             "shot_selection": ["fixed"], "shot_seed": [None], "response_format": ["label"]}
    value = {("a", True): 0.2, ("b", True): 0.5, ("a", False): 0.3, ("b", False): 0.9}

    def score(parts):
        v = value[(parts["instruction"], parts["describe_labels"])] - (0.1 if parts["shots"] == 0 else 0)
        return {"macro_f1": v, "accuracy": v, "log_likelihood": v}, 1, 0.0

    config = PromptSearchConfig(metric="macro_f1", max_candidates=10)
    result = greedy_search(base, space, score, config, recipe_seed=0)
    assert (result.chosen.parts["instruction"], result.chosen.parts["describe_labels"]) == ("b", False)
    assert result.chosen.round == 2 and result.rounds >= 2
    assert "no one-part change" in result.stopped_because
    budget = greedy_search(base, space, score, config.model_copy(update={"max_candidates": 2}), recipe_seed=0)
    assert len(budget.scored) == 2 and "budget" in budget.stopped_because


def test_search_space_and_neighbours_skip_equal_prompts():
    prompt = PromptConfig(instruction="Which topic?", shots=3, system="You label news.")
    space = search_space(prompt, PromptSearchConfig(), TASK, n_seeds=10, recipe_seed=3, served=False)
    assert space["shots"] == [3, 0, 5, 10 - 1] and space["system"] == ["You label news.", None]
    assert len(space["instruction"]) == 4  # the recipe's and three made from the task
    zero = {"instruction": "Which topic?", "system": None, "describe_labels": True, "shots": 0,
            "shot_selection": "fixed", "shot_seed": None, "response_format": "label"}
    # With no shots, selection and draw change nothing: no such neighbours.
    assert not [n for n in neighbours(zero, space, 3) if n["shots"] == 0 and n["instruction"] == "Which topic?"
                and n["system"] is None and n["describe_labels"]]
    served = search_space(prompt, PromptSearchConfig(response_formats=["label", "json"]), TASK, 10, 3, served=True)
    assert served["response_format"] == ["label"]


def test_seed_metrics_count_abstentions_wrong():
    probs = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]])
    m = seed_metrics(probs, ["a", "a", "b"], ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["log_likelihood"] == pytest.approx(np.mean(np.log([0.9, 1e-6, 0.8])))
    assert m["predicted_counts"] == {"a": 1, "b": 1}


def test_run_with_prompt_search_on_a_tiny_teacher(tiny_models, tmp_path, capsys):
    """`tailorkd prompts tune` then `tailorkd run` on a tiny LLaMA teacher (with a seed classifier as ensemble
    member) with kNN candidates: the label stage uses the chosen prompt, the report shows seed and test scores
    of both prompts, the test scores those of the main teacher alone (not the ensemble)."""
    search = {"max_candidates": 4, "shot_draws": 1, "builtin_instructions": False,
              "instructions": ["Name the topic of the news item."]}
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"], prompt_search=search,
                              evaluation={"systems": ["teacher", "adaptive_kd"]},
                              teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4, "ensemble": {
                                  "seed_classifier": {"encoder": str(tiny_models["bert"])}}})
    raw = yaml.safe_load(open(recipe_path))
    raw["prompt"]["shot_encoder"] = str(tiny_models["bert"])  # a tiny encoder for the kNN candidates
    yaml.safe_dump(raw, open(recipe_path, "w"))
    assert main(["prompts", "tune", recipe_path]) == 0
    printed = capsys.readouterr().out
    assert "| rank |" in printed and "teacher calls" in printed
    run = tmp_path / "run"
    payload = json.loads((run / "prompts" / "search.json").read_text())
    assert len(payload["candidates"]) == 4 and payload["teacher_calls"] > 0
    assert main(["run", recipe_path]) == 0
    report = json.loads((run / "report.json").read_text())
    block = report["prompt_search"]
    assert block["seeds"]["chosen"]["accuracy"] == payload["chosen"]["metrics"]["accuracy"]
    assert block["seeds"]["hand_written"]["accuracy"] == payload["base"]["metrics"]["accuracy"]
    assert set(block["test"]) == {"hand_written", "chosen"}
    summary = json.loads((run / "labels_summary.json").read_text())
    test = pd.read_parquet(run / "data" / "test.parquet")
    with LabelStore(run / "labels.sqlite") as store:
        found = store.get(summary["teacher"], summary["prompt"]["fingerprint"], [text_hash(t) for t in test.text],
                          TOPICS)
    own = [TOPICS[int(np.argmax(found[text_hash(t)].probs))] for t in test.text]
    own_accuracy = float(np.mean(np.array(own) == test.label.to_numpy()))
    assert block["test"]["chosen"]["accuracy"] == pytest.approx(own_accuracy)
    # Even when the combination is the seed classifier alone, the block scores the main teacher.
    ensemble = json.loads((run / "ensemble.json").read_text())
    for member, weight in zip(ensemble["members"], [0.0, 1.0]):
        member["weight"] = weight
    (run / "ensemble.json").write_text(json.dumps(ensemble))
    chosen = pipeline.resolve_prompt(load_recipe(recipe_path))
    data = load_data(chosen)
    _, combined, _ = teacher_records(chosen, data, "test", calibrated=False)
    combined_accuracy = float(np.mean(np.array(TOPICS)[combined.argmax(1)] == test.label.to_numpy()))
    assert combined_accuracy != pytest.approx(own_accuracy)  # else this check could not tell them apart
    again = prompt_search_block(chosen, data, summary["prompt_search"])
    assert again["test"]["chosen"]["accuracy"] == pytest.approx(own_accuracy)
    assert "timings_seconds" in report and "label" in report["timings_seconds"]
    # The search `prompts tune` made is current: `run` skips it rather than timing a no-op.
    assert "prompt_search" not in report["timings_seconds"]
    assert summary["fingerprint"] == RunDir(chosen).fingerprint("label")
    assert "## Prompt search" in (run / "report.md").read_text()
