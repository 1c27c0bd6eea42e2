"""Recipes: every shipped one parses; mistakes are one clear error naming the key (and file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tailorkd.errors import TailorkdError
from tailorkd.evaluation.systems import SYSTEMS
from tailorkd.recipe import Recipe, apply_overrides, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*/*.yaml"))


def test_recipes_are_shipped_and_named_by_convention():
    assert SHIPPED, "no recipes shipped"
    for path in SHIPPED:
        assert "_to_" in path.stem, f"{path.name}: expected <teacher>_to_<student>_<method>.yaml"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.task.label_names
    assert recipe.base_dir == path.parent
    assert path.stem.endswith(recipe.adapter.method)


def minimal(tmp_path: Path, **changes) -> Path:
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    raw = {
        "name": "t", "output_dir": str(tmp_path / "run"),
        "task": {"name": "t", "description": "d", "labels": [{"name": "x"}, {"name": "y"}]},
        "data": {"sources": [{"path": "texts.jsonl"}], "splits": {"seed_per_class": 1, "test_size": 2}},
        "prompt": {"instruction": "Classify.", "shots": 2},
        "teacher": {"model": "m"}, "student": {"model": "s"},
    }
    for key, value in changes.items():
        apply_overrides(raw, [f"{key}={value}"])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_minimal_recipe_gets_defaults(tmp_path):
    recipe = load_recipe(minimal(tmp_path))
    assert recipe.adapter.method == "lora" and recipe.distill.learning_rate == 2e-4
    assert recipe.evaluation.systems == ["teacher", "untrained_student", "standard_kd", "adaptive_kd", "seed_only"]
    assert recipe.evaluation.systems == list(SYSTEMS)


def test_old_system_name_student_loads_as_adaptive_kd(tmp_path):
    recipe = load_recipe(minimal(tmp_path), ["evaluation.systems=[teacher, student, seed_only]"])
    assert recipe.evaluation.systems == ["teacher", "adaptive_kd", "seed_only"]
    assert "- adaptive_kd" in recipe.to_yaml() and "- student" not in recipe.to_yaml()


@pytest.mark.parametrize("systems, message", [("[teacher, students]", "unknown systems ['students']"),
                                              ("[student, adaptive_kd]", "must not repeat")])
def test_bad_systems_name_the_key(tmp_path, systems, message):
    with pytest.raises(TailorkdError) as err:
        load_recipe(minimal(tmp_path), [f"evaluation.systems={systems}"])
    assert "evaluation.systems" in str(err.value) and message in str(err.value)


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(TailorkdError) as err:
        load_recipe(minimal(tmp_path, **{"teacher.batchsize": 4}))
    assert "teacher.batchsize" in str(err.value) and "unknown key" in str(err.value)
    assert "recipe.yaml" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(TailorkdError) as err:
        load_recipe(minimal(tmp_path, **{"distill.epochs": "many"}))
    assert "distill.epochs" in str(err.value) and "'many'" in str(err.value)


def test_missing_data_file_names_key_and_path(tmp_path):
    with pytest.raises(TailorkdError) as err:
        load_recipe(minimal(tmp_path, **{"data.sources.0.path": "nowhere.jsonl"}))
    assert "data.sources.0" in str(err.value) and "nowhere.jsonl" in str(err.value)


def test_more_shots_than_seeds_is_an_error(tmp_path):
    with pytest.raises(TailorkdError, match="prompt.shots=5"):
        load_recipe(minimal(tmp_path, **{"prompt.shots": 5}))


def test_duplicate_labels_are_an_error(tmp_path):
    with pytest.raises(TailorkdError, match="unique"):
        load_recipe(minimal(tmp_path, **{"task.labels.1.name": "x"}))


def test_overrides_on_the_command_line(tmp_path):
    recipe = load_recipe(minimal(tmp_path), ["teacher.batch_size=3", "adapter.method=full",
                                             "prompt.system=Be brief.", "data.splits.test_size=4"])
    assert recipe.teacher.batch_size == 3 and recipe.adapter.method == "full"
    assert recipe.prompt.system == "Be brief." and recipe.data.splits.test_size == 4


@pytest.mark.parametrize("bad", ["novalue", "data.sources.7.path=x", "teacher.model.sub=1"])
def test_bad_overrides_are_clear(tmp_path, bad):
    with pytest.raises(TailorkdError, match="override"):
        load_recipe(minimal(tmp_path), [bad])


SECTIONS = [name for name, field in Recipe.model_fields.items() if not field.exclude]


@pytest.mark.parametrize("override, section", [
    ("distill.epochs=9", "distill"),
    ("seed=14", "seed"),
    # Settings that used to be left out of the dump (and so of the hash) while at or near their defaults:
    ("prompt.shot_encoder=other", "prompt"),
    ("adapter.target_modules=[query]", "adapter"),
    ("teacher.calibration.seeds=all", "teacher"),
    ("distill.hard_label_weight=0.5", "distill"),
    ("evaluation.systems=[teacher]", "evaluation"),
    ("alerts.severity={}", "alerts"),
])
def test_content_hash_moves_with_the_sections_it_covers_only(tmp_path, override, section):
    path, common = minimal(tmp_path), ["teacher.calibration.method=auto"]
    base, changed = load_recipe(path, common), load_recipe(path, [*common, override])
    others = [s for s in SECTIONS if s != section]
    assert changed.content_hash(section) != base.content_hash(section)
    assert changed.content_hash() != base.content_hash()
    assert changed.content_hash(*others) == base.content_hash(*others)


def test_content_hash_reads_content_not_spelling(tmp_path):
    path = minimal(tmp_path)
    base = load_recipe(path)
    explicit = load_recipe(path, ["distill.validation_fraction=0.1", "teacher.server=null", "prompt.template=auto",
                                  "teacher.kind=local", "teacher.options={}"])
    assert explicit.content_hash() == base.content_hash()
    assert base.content_hash("task", "data") == base.content_hash("data", "task")
    with pytest.raises(ValueError, match="not sections"):
        base.content_hash("distil")
    with pytest.raises(ValueError, match="not sections"):
        base.content_hash("base_dir")


def _assert_dump_is_complete(model: object, dump: object, where: str) -> None:
    # Every section's schema: the recipe package's and the data section's (tailorkd.data.config).
    if isinstance(model, BaseModel) and type(model).__module__.startswith(("tailorkd.recipe", "tailorkd.data")):
        fields = {name for name, field in type(model).model_fields.items() if not field.exclude}
        # Only a field whose absence implies its value may be left out (the reload below checks it does).
        fields -= getattr(type(model), "IMPLIED_WHEN_LEFT_OUT", frozenset()) - set(dump)
        assert set(dump) == fields, f"{where}: dump leaves out {sorted(fields - set(dump))}"
        for name in fields:
            _assert_dump_is_complete(getattr(model, name), dump[name], f"{where}.{name}")
    elif isinstance(model, (list, tuple)):
        for i, (item, dumped) in enumerate(zip(model, dump)):
            _assert_dump_is_complete(item, dumped, f"{where}.{i}")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipe_survives_dump_and_reload(tmp_path, path):
    recipe = load_recipe(path)
    # The full dump has every setting of every section (what the hash reads), and its nulls validate.
    dump = recipe.model_dump(mode="json")
    _assert_dump_is_complete(recipe, dump, "recipe")
    assert Recipe.model_validate(dump).model_copy(update={"base_dir": recipe.base_dir}) == recipe
    # The YAML people read leaves idle nulls out and loads back to the same recipe, with the same hashes.
    text = recipe.to_yaml()
    assert ": null" not in text
    (tmp_path / "again.yaml").write_text(text, encoding="utf-8")
    again = load_recipe(tmp_path / "again.yaml")
    assert again.model_copy(update={"base_dir": recipe.base_dir}) == recipe
    for sections in [(), ("data", "task", "seed"), ("prompt", "teacher"), ("student", "adapter", "distill")]:
        assert again.content_hash(*sections) == recipe.content_hash(*sections)


def test_to_yaml_keeps_the_nulls_that_mean_something(tmp_path):
    recipe = load_recipe(minimal(tmp_path), ["data.sources.0.columns.label=null",
                                             "prompt_search.systems=[null, Be brief.]"])
    text = recipe.to_yaml()
    assert "verbalizer" not in text and "alerts" not in text  # nulls that are only defaults are left out
    (tmp_path / "again.yaml").write_text(text, encoding="utf-8")
    again = load_recipe(tmp_path / "again.yaml")
    assert again.data.sources[0].columns.label is None and again.prompt_search.systems == [None, "Be brief."]
    assert again == recipe


def test_error_inside_a_source_names_the_plain_key_path(tmp_path):
    with pytest.raises(TailorkdError) as err:
        load_recipe(minimal(tmp_path, **{"data.sources.0.format": "xml"}))
    assert "data.sources.0.format:" in str(err.value)


def test_source_kinds_match_the_source_models():
    from typing import get_args

    from tailorkd.data.config import (
        SOURCE_KINDS,
        BBCNewsSource,
        CrisisLexT26Source,
        FileSource,
        FinancialPhraseBankSource,
    )

    models = (FileSource, BBCNewsSource, CrisisLexT26Source, FinancialPhraseBankSource)
    assert SOURCE_KINDS == tuple(get_args(m.model_fields["kind"].annotation)[0] for m in models)


# The paper's three pairs (Table 2), shipped for users with hub access and a GPU: the student's hub id and
# the shipped architecture config that stands in for it offline.
PAPER_STUDENTS = {"meta-llama/Llama-2-7b-hf": "llama-2-7b", "facebook/opt-1.3b": "opt-1.3b",
                  "openai-community/gpt2": "gpt2"}


def test_paper_pair_recipes_use_the_papers_settings_and_fit_the_memory_estimate():
    from tailorkd.resources import estimate_training_memory, load_config

    paper = [p for p in SHIPPED if p.stem.endswith("_qlora") and load_recipe(p).student.model in PAPER_STUDENTS]
    assert {load_recipe(p).student.model for p in paper} == set(PAPER_STUDENTS)
    for path in paper:
        recipe = load_recipe(path)
        a, d = recipe.adapter, recipe.distill
        assert (a.method, a.r, a.dropout) == ("qlora", 64, 0.1), path.name
        assert (d.learning_rate, d.warmup_ratio, d.weight_decay, d.max_grad_norm, d.lr_scheduler) == (
            2e-4, 0.03, 0.001, 0.3, "cosine"), path.name
        assert d.gradient_checkpointing and recipe.student.kind == "causal_lm"
        config = load_config(PAPER_STUDENTS[recipe.student.model])
        qlora = estimate_training_memory(config, "qlora", r=a.r)
        full = estimate_training_memory(config, "full", r=a.r)
        # Table 3: 4-bit adapter training needs a small fraction of full fine-tuning (weights + gradients +
        # optimizer states + fp32 gradient copy); the paper reports -95% for LLaMA-2 7B.
        assert qlora["gb"]["total"] < 0.15 * full["gb"]["total"], path.name
        if recipe.student.model == "meta-llama/Llama-2-7b-hf":
            assert qlora["reduction_vs_full_pct"] > 93


@pytest.mark.parametrize("key, value", [("signals.quantifier", "median"), ("signals.alert_on", "hunch"),
                                        ("signals.replicates", 5)])
def test_a_bad_signals_quantification_option_is_a_problem_line_naming_the_key(tmp_path, key, value):
    with pytest.raises(TailorkdError) as err:
        load_recipe(minimal(tmp_path), [f"{key}={value}"])
    [problem] = [line for line in str(err.value).splitlines() if key in line]  # the recipe's list of problems
    assert str(value) in problem and "recipe.yaml" in str(err.value)
    recipe = load_recipe(minimal(tmp_path), ["signals.quantifier=acc", "signals.alert_on=interval"])
    assert (recipe.signals.quantifier, recipe.signals.alert_on) == ("acc", "interval")
