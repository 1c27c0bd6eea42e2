"""`tailorkd export`: a trained student as a standalone Hugging Face folder that plain transformers loads, and
whose class predictions, read as its tailorkd.json describes, are the tailorkd student's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from helpers import (
    CAUSAL_FAMILIES,
    FEW_STEPS,
    PROMPT,
    ROWS,
    TASK,
    TOPICS,
    teacher_targets,
    topic_rows,
    trained_student,
    write_jsonl,
)
from tailorkd.distill import distill_student
from tailorkd.errors import TailorkdError
from tailorkd.prompts import fixed_shots
from tailorkd.run_dir import RunDir
from tailorkd.students import build_student, export_student, load_student, predict_probs


def _causal_probs_from_export(out, rows) -> np.ndarray:
    """Class probabilities the way tailorkd.json says: the prompt with the input in place, then the next-token
    logits of each class's first answer token, softmaxed over the classes. Plain transformers only."""
    about = json.loads((out / "tailorkd.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    first = [ids[0] for ids in about["answer_token_ids"]]
    assert len(set(first)) == len(first), "the classes' first answer tokens must differ for this reading"
    probs = []
    with torch.no_grad():
        for row in rows:
            prompt = about["prompt_example"].replace("<input text>", row["text"])
            ids = tokenizer(prompt, add_special_tokens=about["add_special_tokens"], return_tensors="pt")["input_ids"]
            probs.append(torch.softmax(model(input_ids=ids).logits[0, -1, first].double(), -1).numpy())
    return np.stack(probs)


def _encoder_probs_from_export(out, rows) -> np.ndarray:
    about = json.loads((out / "tailorkd.json").read_text())
    encoder = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    head = torch.nn.Linear(about["head"]["in_features"], about["head"]["out_features"])
    head.load_state_dict(load_file(str(out / about["head"]["file"])))
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=about["max_length"],
                      return_tensors="pt")
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.softmax(head((states * mask).sum(1) / mask.sum(1)), -1).double().numpy()


def _no_adapter_weights(out):
    keys = load_file(str(out / "model.safetensors")).keys()
    assert keys and not any("lora_" in k or "base_layer" in k for k in keys), "adapter weights left in the export"


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_exported_lora_causal_lm_predicts_as_the_student(tiny_models, tmp_path, family):
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    folder, config = trained_student(tiny_models[family], tmp_path, "lora")
    student = load_student(folder, TASK, PROMPT, [], config)
    out = tmp_path / "export"
    about = export_student(folder, out, TASK, PROMPT, [], config)
    assert about["merged"] and about["label_names"] == TOPICS and about["kind"] == "causal_lm"
    # No ONNX graph for a causal LM, and tailorkd.json says so; the temperature (none fitted) is named.
    assert about["onnx"]["exported"] is False and "causal-LM" in about["onnx"]["reason"]
    assert not (out / "onnx").exists() and about["temperature"] == {"value": 1.0, "folded_into_head": False,
                                                                    "from": "none fitted"}
    assert yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["library_name"] == "transformers"
    _no_adapter_weights(out)
    expected = predict_probs(student, ROWS, 16)
    got = _causal_probs_from_export(out, ROWS)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # The adapter really is in the weights: the attention projections differ from the base's.
    base = load_file(str(tiny_models[family] / "model.safetensors"))
    exported = load_file(str(out / "model.safetensors"))
    assert base.keys() == exported.keys()
    assert any(not torch.equal(base[k], exported[k]) for k in base)


def test_exported_lora_encoder_predicts_as_the_student_with_its_head(tiny_models, tmp_path):
    folder, config = trained_student(tiny_models["bert"], tmp_path, "lora", kind="encoder")
    student = load_student(folder, TASK, PROMPT, [], config)
    out = tmp_path / "export"
    about = export_student(folder, out, TASK, PROMPT, [], config, check_rows=ROWS)
    assert about["kind"] == "encoder" and about["head"]["out_features"] == len(TOPICS)
    _no_adapter_weights(out)
    expected = predict_probs(student, ROWS, 16)
    got = _encoder_probs_from_export(out, ROWS)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_exported_full_student_is_its_trained_weights(tiny_models, tmp_path):
    steps = FEW_STEPS.model_copy(update={"learning_rate": 2e-3})
    folder, config = trained_student(tiny_models["gpt2"], tmp_path, "full", steps=steps)
    out = tmp_path / "export"
    export_student(folder, out, TASK, PROMPT, [], config)
    trained = load_file(str(folder / "model" / "model.safetensors"))
    exported = load_file(str(out / "model.safetensors"))
    assert trained.keys() == exported.keys()
    assert all(torch.equal(trained[k], exported[k]) for k in trained)
    np.testing.assert_allclose(_causal_probs_from_export(out, ROWS),
                               predict_probs(load_student(folder, TASK, PROMPT, [], config), ROWS, 16), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_exported_qlora_student_is_merged_into_the_dequantised_base(qlora_models, tmp_path, family):  # noqa: F811
    pytest.importorskip("bitsandbytes")
    kind = "encoder" if family == "bert" else "causal_lm"
    folder, config = trained_student(qlora_models[family], tmp_path, "qlora", kind=kind)
    student = load_student(folder, TASK, PROMPT, [], config)
    out = tmp_path / "export"
    export_student(folder, out, TASK, PROMPT, [], config, check_rows=ROWS)
    _no_adapter_weights(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    expected = predict_probs(student, ROWS, 16)
    got = (_encoder_probs_from_export if kind == "encoder" else _causal_probs_from_export)(out, ROWS)
    # The student computes in bf16 on 4-bit weights; the export in fp32 on the same weights dequantised.
    np.testing.assert_allclose(got, expected, atol=2e-2)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_export_refuses_a_bottleneck_student_and_a_used_folder(tiny_models, tmp_path):
    folder, config = trained_student(tiny_models["llama"], tmp_path, "bottleneck",
                              steps=FEW_STEPS.model_copy(update={"epochs": 1}))
    with pytest.raises(TailorkdError, match="bottleneck student cannot be exported.*non-linear"):
        export_student(folder, tmp_path / "export", TASK, PROMPT, [], config)
    lora, config = trained_student(tiny_models["llama"], tmp_path / "l", "lora",
                            steps=FEW_STEPS.model_copy(update={"epochs": 1}))
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(TailorkdError, match="not empty"):
        export_student(lora, used, TASK, PROMPT, [], config)
    with pytest.raises(TailorkdError, match="not a trained student folder"):
        export_student(tmp_path / "nothing", tmp_path / "e2", TASK, PROMPT, [], config)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "student.json").write_text((lora / "student.json").read_text()[:40])  # a kill while it was written
    with pytest.raises(TailorkdError, match="student.json: this student file is not valid JSON"):
        export_student(cut, tmp_path / "e3", TASK, PROMPT, [], config)


def test_cli_export_writes_the_prompt_the_student_was_trained_with(tiny_models, tmp_path, capsys):
    from tailorkd import pipeline
    from tailorkd.cli import main
    from tailorkd.recipe import load_recipe

    write_jsonl(tmp_path / "news.jsonl", topic_rows(6))
    raw = {
        "name": "tiny", "seed": 3, "output_dir": str(tmp_path / "run"),
        "task": {"name": "topic", "description": "The topic of a news item.", "labels": [{"name": t} for t in TOPICS]},
        "data": {"sources": [{"path": "news.jsonl", "columns": {"id": "id"}}],
                 "splits": {"seed_per_class": 1, "test_size": 10}},
        "prompt": {"instruction": "Which topic?", "shots": 2, "max_text_chars": 120},
        "teacher": {"model": str(tiny_models["opt"])},
        "student": {"model": str(tiny_models["gpt2"]), "max_length": 256},
        "adapter": {"method": "lora", "r": 4, "alpha": 8},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    recipe = load_recipe(path)
    data = pipeline.prepare(recipe)
    shots = fixed_shots(recipe.prompt, data.rows("seed"), recipe.task.label_names, recipe.seed)
    student = build_student(recipe.student, recipe.task, recipe.prompt, shots)
    rows = data.rows("test")[:10]  # the pool carries no labels; targets need them here
    distill_student(student, rows, teacher_targets(rows), recipe.adapter, FEW_STEPS.model_copy(update={"epochs": 1}),
                    RunDir(recipe).student_dir(), seed=0, info={})
    out = tmp_path / "export"
    assert main(["export", str(path), str(out)]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    about = json.loads((out / "tailorkd.json").read_text())
    assert about["prompt_example"].count("Answer:") == 2 + 1  # two few-shot answers, then the input's cue
    assert all(s["text"][:40] in about["prompt_example"] for s in shots)
    assert main(["export", str(path), str(out)]) == 2  # a used folder is refused, not overwritten
