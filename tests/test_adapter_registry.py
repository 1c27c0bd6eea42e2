"""Adapter methods are a registry: a method and the config class of its `adapter:` settings register with one
call, and a recipe's `adapter:` section is validated as the class its `method` names. Shown with a toy method
registered here (BitFit: only the bias terms train), which trains, saves and reloads a tiny student."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, set_seed

from helpers import TOPICS, topic_rows
from tailorkd.adapters import (
    ADAPTER_DIR,
    AdapterMethod,
    FullAdapterConfig,
    LoraAdapterConfig,
    adapter_config,
    adapter_methods,
    attach_adapter,
    register_adapter_method,
    unregister_adapter_method,
)
from tailorkd.distill import distill_student
from tailorkd.errors import TailorkdError
from tailorkd.recipe import AdapterConfig, DistillConfig, PromptConfig, StudentConfig, TaskConfig, load_recipe
from tailorkd.students import EncoderStudent, MeanPoolClassifier, load_student, predict_probs

TASK = TaskConfig(name="topic", description="d", labels=[{"name": t} for t in TOPICS])
PROMPT = PromptConfig(instruction="Topic?", shots=0, describe_labels=False)
BITFIT_FILE = "bitfit.safetensors"


# -- the toy method: one module's worth, as a new method would be ------------------------------------------
class BitFitAdapterConfig(AdapterConfig):
    """`adapter:` settings of `method: bitfit` (Ben Zaken et al., 2022): only the bias terms train."""

    method: Literal["bitfit"] = Field(default="bitfit", description="bitfit: only the bias terms train.")
    with_norms: bool = Field(default=False, description="Also train the normalisation layers' weights.")


def _trains(name: str, config: BitFitAdapterConfig) -> bool:
    return name.endswith(".bias") or (config.with_norms and "LayerNorm" in name)


def attach_bitfit(model: Any, config: BitFitAdapterConfig, kind: str) -> Any:
    for name, param in model.named_parameters():
        param.requires_grad = _trains(name, config)
    model.bitfit_names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    return model


def save_bitfit(model: Any, tokenizer: Any, folder: Path) -> None:
    params = dict(model.named_parameters())
    (folder / ADAPTER_DIR).mkdir(parents=True, exist_ok=True)
    save_file({n: params[n].detach().contiguous() for n in model.bitfit_names}, str(folder / ADAPTER_DIR / BITFIT_FILE))


def load_bitfit(base: Any, folder: Path) -> Any:
    trained = load_file(str(folder / ADAPTER_DIR / BITFIT_FILE))
    missing, unexpected = base.load_state_dict(trained, strict=False)
    assert not unexpected
    return base


@pytest.fixture
def bitfit():
    """The toy method, registered for one test and unregistered after it, so that no other test sees it."""
    method = register_adapter_method(AdapterMethod("bitfit", config=BitFitAdapterConfig, attach=attach_bitfit,
                                                   save=save_bitfit, load=load_bitfit, merge=load_bitfit))
    yield method
    unregister_adapter_method("bitfit")


# -- a recipe that selects an adapter method ---------------------------------------------------------------
def recipe_file(tmp_path: Path, adapter: dict[str, Any], student: str = "s") -> Path:
    (tmp_path / "texts.jsonl").write_text('{"text": "a", "label": "business"}\n', encoding="utf-8")
    raw = {
        "name": "t", "output_dir": str(tmp_path / "run"),
        "task": {"name": "t", "description": "d", "labels": [{"name": t} for t in TOPICS]},
        "data": {"sources": [{"path": "texts.jsonl"}], "splits": {"seed_per_class": 1, "test_size": 2}},
        "prompt": {"instruction": "Classify.", "shots": 0}, "teacher": {"model": "m"},
        "student": {"model": str(student), "kind": "encoder", "max_length": 64}, "adapter": adapter,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_registered_method_is_selected_with_its_own_settings_and_trains_saves_and_reloads(bitfit, tiny_models,
                                                                                              tmp_path):
    assert "bitfit" in adapter_methods()
    recipe = load_recipe(recipe_file(tmp_path, {"method": "bitfit", "with_norms": True}, tiny_models["bert"]))
    assert type(recipe.adapter) is BitFitAdapterConfig and recipe.adapter.with_norms
    # The resolved recipe dumps the method's own settings and loads back the same.
    dumped = yaml.safe_load(recipe.to_yaml())["adapter"]
    assert dumped == {"method": "bitfit", "with_norms": True}
    again = tmp_path / "again"
    again.mkdir()
    assert load_recipe(recipe_file(again, dumped, tiny_models["bert"])).adapter == recipe.adapter

    set_seed(0)
    folder = tiny_models["bert"]
    student = EncoderStudent(MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS)),
                             AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)
    before = {n: p.detach().clone() for n, p in student.model.encoder.named_parameters()}
    rows = topic_rows(4)
    targets = np.eye(len(TOPICS))[[TOPICS.index(r["label"]) for r in rows]] * 0.8 + 0.2 / len(TOPICS)
    summary = distill_student(student, rows, targets, recipe.adapter,
                              DistillConfig(validation_fraction=0.0, epochs=3, learning_rate=5e-2, batch_size=10,
                                            warmup_ratio=0.0), tmp_path / "student", seed=0,
                              info={"base_model": str(folder)})
    assert summary["steps"] > 0 and summary["adapter"] == {"method": "bitfit", "with_norms": True}
    changed = {n for n, p in student.model.encoder.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.endswith(".bias") or "LayerNorm" in n for n in changed)
    assert any(n.endswith(".bias") and "LayerNorm" not in n for n in changed)  # the biases really trained
    assert (tmp_path / "student" / ADAPTER_DIR / BITFIT_FILE).is_file()

    reloaded = load_student(tmp_path / "student", TASK, PROMPT, [],
                            StudentConfig(model=str(folder), kind="encoder", max_length=64))
    np.testing.assert_allclose(predict_probs(reloaded, rows, 8), predict_probs(student, rows, 8), atol=1e-5)


def test_a_setting_of_another_method_is_an_error_naming_the_key(bitfit, tmp_path):
    with pytest.raises(TailorkdError) as err:
        load_recipe(recipe_file(tmp_path, {"method": "bitfit", "r": 8}))
    assert "adapter.r: a setting of adapter.method lora, not of bitfit" in str(err.value)
    with pytest.raises(TailorkdError) as err:
        load_recipe(recipe_file(tmp_path, {"method": "lora", "with_norms": True}))
    assert "adapter.with_norms: a setting of adapter.method bitfit, not of lora" in str(err.value)
    with pytest.raises(TailorkdError) as err:
        load_recipe(recipe_file(tmp_path, {"method": "lora", "bottleneck_size": 8}))
    assert "adapter.bottleneck_size: a setting of adapter.method bottleneck, not of lora" in str(err.value)
    # A key of no method is a misspelling, said as for every section.
    with pytest.raises(TailorkdError) as err:
        load_recipe(recipe_file(tmp_path, {"method": "bitfit", "with_norm": True}))
    assert "adapter.with_norm: unknown key" in str(err.value)


def test_an_unknown_method_is_one_line_naming_the_key_and_the_registered_methods(tmp_path):
    with pytest.raises(TailorkdError) as err:
        load_recipe(recipe_file(tmp_path, {"method": "bitfit"}))
    line = [line for line in str(err.value).splitlines() if "adapter" in line]
    assert line == ["  - adapter.method: unknown adapter method; registered: bottleneck, full, lora, none, qlora "
                    "(got 'bitfit')"]


def test_unregistering_forgets_the_method_and_its_settings(tmp_path):
    register_adapter_method(AdapterMethod("bitfit", config=BitFitAdapterConfig, attach=attach_bitfit))
    try:
        assert type(load_recipe(recipe_file(tmp_path, {"method": "bitfit"})).adapter) is BitFitAdapterConfig
    finally:
        unregister_adapter_method("bitfit")
    assert "bitfit" not in adapter_methods()
    with pytest.raises(TailorkdError, match="unknown adapter method"):
        load_recipe(recipe_file(tmp_path, {"method": "bitfit"}))
    with pytest.raises(ValueError, match="not registered"):
        unregister_adapter_method("bitfit")


def test_registering_checks_the_config_class():
    class Unnamed(AdapterConfig):
        method: Literal["other"] = "other"

    with pytest.raises(ValueError, match="must default to 'bitfit'"):
        register_adapter_method(AdapterMethod("bitfit", config=Unnamed, attach=attach_bitfit))
    with pytest.raises(ValueError, match="subclass of AdapterConfig"):
        register_adapter_method(AdapterMethod("bitfit", config=dict, attach=attach_bitfit))
    assert "bitfit" not in adapter_methods()


def test_built_in_methods_keep_their_settings_and_defaults(tmp_path):
    lora = load_recipe(recipe_file(tmp_path, {"method": "lora"})).adapter
    assert lora.model_dump() == {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.1, "target_modules": None}
    assert load_recipe(recipe_file(tmp_path, {})).adapter == lora  # lora is the default method
    qlora = load_recipe(recipe_file(tmp_path, {"method": "qlora", "r": 64, "alpha": 16})).adapter
    assert (qlora.method, qlora.r, qlora.alpha, qlora.dropout) == ("qlora", 64, 16, 0.1)
    bottleneck = load_recipe(recipe_file(tmp_path, {"method": "bottleneck", "bottleneck_placement": "both"})).adapter
    assert bottleneck.model_dump() == {"method": "bottleneck", "dropout": 0.1, "target_modules": None,
                                       "bottleneck_size": None, "reduction_factor": 16, "bottleneck_placement": "both",
                                       "bottleneck_non_linearity": "relu"}
    assert load_recipe(recipe_file(tmp_path, {"method": "full"})).adapter == FullAdapterConfig()
    assert adapter_config("lora", r=4) == LoraAdapterConfig(r=4)
    with pytest.raises(TailorkdError, match="adapter.reduction_factor: a setting of adapter.method bottleneck"):
        adapter_config("qlora", reduction_factor=4)


def test_an_override_that_switches_method_leaves_out_the_other_methods_settings(tmp_path, caplog):
    path = recipe_file(tmp_path, {"method": "lora", "r": 4, "alpha": 8})
    with caplog.at_level(logging.WARNING, logger="tailorkd.recipe.load"):
        recipe = load_recipe(path, ["adapter.method=full", "adapter.r=8"])
    assert recipe.adapter == FullAdapterConfig()
    assert "adapter.alpha, adapter.r" in caplog.text
    switched = load_recipe(path, ["adapter.method=bottleneck", "adapter.reduction_factor=4"]).adapter
    assert (switched.method, switched.reduction_factor) == ("bottleneck", 4)
    assert load_recipe(path, ["adapter.method=qlora"]).adapter.model_dump()["r"] == 4  # qlora takes LoRA's settings
    assert load_recipe(path, ["adapter.r=8"]).adapter.r == 8
    with pytest.raises(TailorkdError, match="adapter.rr: unknown key"):  # a misspelling is still an error
        load_recipe(path, ["adapter.method=full", "adapter.rr=8"])
    with pytest.raises(TailorkdError, match="adapter.bottleneck_size: a setting of adapter.method bottleneck"):
        load_recipe(path, ["adapter.bottleneck_size=8"])  # without switching method, another's setting is an error


def test_a_config_built_in_code_is_taken_as_its_method(tiny_models):
    """attach_adapter takes a method's config class, or the shared base naming a method (its defaults)."""
    folder = tiny_models["bert"]
    student = EncoderStudent(MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS)),
                             AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)
    attach_adapter(student, AdapterConfig(method="lora"))
    assert student.transformer.peft_config["default"].r == 16
