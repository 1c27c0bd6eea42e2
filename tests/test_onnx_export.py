"""An encoder student's export as others use it: sentence-transformers and ONNX Runtime in a process that never
imports tailorkd give the tailorkd student's predictions (with its fitted temperature folded into the head), the
ONNX graphs check themselves against the PyTorch student, and the model card carries Hugging Face metadata."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer

from helpers import PROMPT, ROWS, TASK, TOPICS, topic_rows, trained_student
from tailorkd.errors import TailorkdError
from tailorkd.onnx_student import MIN_AGREEMENT, OnnxClassifier
from tailorkd.students import export_student, load_student, predict_probs, student_temperature

pytest.importorskip("onnxruntime")
pytest.importorskip("sentence_transformers")

TEMPERATURE = 2.5

# Run in a fresh interpreter: only sentence-transformers, onnxruntime and transformers, never tailorkd.
OUTSIDE = r"""
import json, sys
import numpy as np
import onnxruntime
import transformers
from sentence_transformers import SentenceTransformer

out, texts = sys.argv[1], json.loads(sys.stdin.read())
result = {"sentence_transformers": SentenceTransformer(out, device="cpu").encode(
    texts, convert_to_tensor=True).softmax(-1).double().tolist()}
for name in ("classifier", "classifier_int8"):
    logits = onnxruntime.InferenceSession(f"{out}/onnx/{name}.onnx").run(["logits"], dict(
        transformers.AutoTokenizer.from_pretrained(out)(texts, padding=True, truncation=True, return_tensors="np")))[0]
    exp = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    result[name] = (exp / exp.sum(1, keepdims=True)).tolist()
result["tailorkd_imported"] = any(m == "tailorkd" or m.startswith("tailorkd.") for m in sys.modules)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def calibrated_export(tiny_models, tmp_path_factory):
    """A LoRA encoder student with a hand-written confidence.json (T = 2.5), its export, and the tailorkd
    student's own probabilities (softmax(logits / T)) for ROWS."""
    tmp_path = tmp_path_factory.mktemp("onnx_export")
    folder, config = trained_student(tiny_models["bert"], tmp_path, "lora", kind="encoder")
    (folder / "confidence.json").write_text(json.dumps({"temperature": TEMPERATURE, "method": "by hand"}))
    assert student_temperature(folder) == TEMPERATURE
    student = load_student(folder, TASK, PROMPT, [], config)
    expected = predict_probs(student, ROWS, 16, temperature=TEMPERATURE)
    uncalibrated = predict_probs(student, ROWS, 16)
    out = tmp_path / "export"
    about = export_student(folder, out, TASK, PROMPT, [], config, check_rows=ROWS, check_source="test rows")
    return {"folder": folder, "config": config, "out": out, "about": about, "expected": expected,
            "uncalibrated": uncalibrated, "texts": [student.input_text(r) for r in ROWS]}


def test_export_loads_without_tailorkd_with_the_students_calibrated_predictions(calibrated_export):
    out, expected = calibrated_export["out"], calibrated_export["expected"]
    # The temperature matters here: without folding it the probabilities would be off by far more than 1e-4.
    assert np.abs(expected - calibrated_export["uncalibrated"]).max() > 1e-3
    run = subprocess.run([sys.executable, "-c", OUTSIDE, str(out)], input=json.dumps(calibrated_export["texts"]),
                         capture_output=True, text=True, timeout=600, cwd=out)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["tailorkd_imported"] is False
    for name in ("sentence_transformers", "classifier"):
        probs = np.array(got[name])
        np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1), err_msg=name)
        np.testing.assert_allclose(probs, expected, atol=1e-4, err_msg=name)
    int8 = np.array(got["classifier_int8"])
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= MIN_AGREEMENT["int8"]
    np.testing.assert_allclose(int8, expected, atol=0.05)


def test_export_describes_temperature_onnx_checks_and_card(calibrated_export):
    about, out = calibrated_export["about"], calibrated_export["out"]
    assert json.loads((out / "tailorkd.json").read_text()) == about
    assert about["temperature"] == {"value": TEMPERATURE, "folded_into_head": True, "from": "confidence.json"}
    onnx = about["onnx"]
    assert onnx["files"] == {"fp32": "onnx/classifier.onnx", "int8": "onnx/classifier_int8.onnx"}
    assert onnx["checked_on"] == f"{len(ROWS)} texts (test rows)"
    assert onnx["check"]["fp32"]["agreement"] == 1.0 and onnx["check"]["fp32"]["max_abs_probability_difference"] < 1e-4
    assert onnx["check"]["int8"]["agreement"] >= MIN_AGREEMENT["int8"]
    assert onnx["check"]["fp32"]["agreed"] == onnx["check"]["fp32"]["texts"] == len(ROWS)
    assert onnx["check"]["int8"]["texts"] == len(ROWS)
    assert onnx["check"]["int8"]["agreed"] == round(onnx["check"]["int8"]["agreement"] * len(ROWS))
    assert (out / "modules.json").is_file() and (out / "2_Dense").is_dir()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["library_name"] == "sentence-transformers" and header["pipeline_tag"] == "text-classification"
    assert header["labels"] == TOPICS and "tailorkd" in header["tags"]
    assert "base_model" not in header  # a local folder is not a Hub id
    body = card.split("---\n", 2)[2]
    assert "## Labels" in body and all(f"| {name} |" in body for name in TOPICS)
    assert "SentenceTransformer(" in body and "onnx/classifier_int8.onnx" in body and "## Limitations" in body
    assert f"T = {TEMPERATURE:.4g}" in body
    assert f"all {len(ROWS)} texts (fp32)" in body


def test_the_check_reports_what_it_measured_not_every_text(calibrated_export, monkeypatch):
    """A graph that disagrees on one text is reported as such, by count, in tailorkd.json's check and the card;
    a share is rounded down, so only a check on which every text agreed reads as all of them."""
    import tailorkd.onnx_student as onnx_student
    from tailorkd.model_card import agreement_text, render

    about, out, texts = calibrated_export["about"], calibrated_export["out"], calibrated_export["texts"]
    reference = calibrated_export["expected"].copy()
    reference[0] = np.roll(reference[0], 1)  # the reference's class for the first text is another one
    assert reference[0].argmax() != calibrated_export["expected"][0].argmax()
    monkeypatch.setitem(onnx_student.MIN_AGREEMENT, "fp32", 0.0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    checks = onnx_student.check_export(out, {"fp32": onnx_student.ONNX_FP32}, tokenizer, about["max_length"],
                                       texts, reference, 16)
    n = len(texts)
    assert checks["fp32"]["agreed"] == n - 1 and checks["fp32"]["texts"] == n
    card = render({**about, "onnx": {**about["onnx"], "check": checks}},
                  {"name": "tiny", "task": "topics", "task_description": "Topics.", "base_model": "tiny-bert",
                   "teacher": "tiny-llama", "data": "test rows", "data_kind": "file", "report": None})
    share = math.floor(1000 * (n - 1) / n) / 10
    assert f"class on {n - 1} of {n} texts ({share:.1f}%) (fp32)." in card.replace("\n", " ")
    assert agreement_text({"agreement": 2499 / 2500, "agreed": 2499, "texts": 2500}) == "2499 of 2500 texts (99.9%)"
    assert agreement_text({"agreement": 1.0, "agreed": 200, "texts": 200}) == "all 200 texts"


def test_onnx_classifier_sorts_by_length_and_restores_the_order(calibrated_export):
    out = calibrated_export["out"]
    texts = [f"word {i} " * n + TOPICS[i % 5] for i, n in enumerate([9, 1, 30, 4, 17, 2, 25, 6])]
    classifier = OnnxClassifier.from_export(out, "fp32")
    batches = classifier.batches(texts, 3)
    lengths = [inputs["attention_mask"].sum(1) for _, inputs in batches]
    flat = np.concatenate(lengths)
    assert list(flat) == sorted(flat) and len(batches) == 3  # similar lengths together
    one_by_one = np.concatenate([classifier.logits([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(classifier.logits(texts, batch_size=3), one_by_one, atol=1e-5)
    assert not np.allclose(one_by_one[0], one_by_one[2], atol=1e-5)  # the texts do get different logits


def test_export_that_fails_its_check_leaves_nothing(tiny_models, tmp_path, calibrated_export, monkeypatch):
    import tailorkd.onnx_student as onnx_student

    monkeypatch.setitem(onnx_student.MIN_AGREEMENT, "int8", 1.01)  # no graph can agree on more than every text
    out = tmp_path / "refused"
    with pytest.raises(TailorkdError) as err:
        export_student(calibrated_export["folder"], out, TASK, PROMPT, [], calibrated_export["config"],
                       check_rows=ROWS)
    message = str(err.value)
    assert "\n" not in message and str(out / "onnx" / "classifier_int8.onnx") in message and "101%" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial folder beside it either
    with pytest.raises(TailorkdError, match="no texts to check the ONNX export"):
        export_student(calibrated_export["folder"], out, TASK, PROMPT, [], calibrated_export["config"])
    with pytest.raises(TailorkdError, match="onnx.files has no 'fp16'"):
        OnnxClassifier.from_export(calibrated_export["out"], "fp16")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not a graph")
    with pytest.raises(TailorkdError, match=f"{damaged}: ONNX Runtime cannot load it"):
        OnnxClassifier(damaged, None, 16)


def test_cli_export_checks_an_encoder_student_on_given_texts(tiny_models, tmp_path, capsys):
    from helpers import FEW_STEPS, teacher_targets, write_jsonl
    from tailorkd.cli import main
    from tailorkd.distill import distill_student
    from tailorkd.recipe import load_recipe
    from tailorkd.run_dir import RunDir
    from tailorkd.students import build_student

    write_jsonl(tmp_path / "news.jsonl", topic_rows(6))
    raw = {
        "name": "tiny", "seed": 3, "output_dir": str(tmp_path / "run"),
        "task": {"name": "topic", "description": "The topic of a news item.", "labels": [{"name": t} for t in TOPICS]},
        "data": {"sources": [{"path": "news.jsonl", "columns": {"id": "id"}}],
                 "splits": {"seed_per_class": 1, "test_size": 10}},
        "prompt": {"instruction": "Which topic?", "shots": 0},
        "teacher": {"model": str(tiny_models["opt"])},
        "student": {"model": str(tiny_models["bert"]), "kind": "encoder", "max_length": 64},
        "adapter": {"method": "lora", "r": 4, "alpha": 8},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    recipe = load_recipe(path)
    student = build_student(recipe.student, recipe.task, recipe.prompt, [])
    distill_student(student, ROWS, teacher_targets(ROWS), recipe.adapter, FEW_STEPS.model_copy(update={"epochs": 1}),
                    RunDir(recipe).student_dir(), seed=0, info={"base_model": str(tiny_models["bert"])})
    given = write_jsonl(tmp_path / "check.jsonl", [{"text": r["text"]} for r in topic_rows(3)])
    out = tmp_path / "export"
    assert main(["export", str(path), str(out), "--check-input", str(given)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "fp32 on all 15 texts" in printed
    about = json.loads((out / "tailorkd.json").read_text())
    assert about["onnx"]["checked_on"] == "15 texts (given texts)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    assert main(["export", str(path), str(tmp_path / "e2"), "--check-input", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_classifying_needs_neither_onnxruntime_nor_sentence_transformers():
    # The PyTorch path stays the fallback: importing the student and the pipeline loads neither package.
    code = ("import sys, tailorkd.pipeline, tailorkd.students, tailorkd.onnx_student, tailorkd.cli; "
            "print(sorted(m for m in ('onnxruntime', 'sentence_transformers', 'onnx') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_student_inference_benchmark_on_a_tiny_run(tiny_models, tmp_path):
    """benchmarks/student_inference.py end to end on a tiny run: every system classifies every text and agrees
    with the PyTorch student, and the ratios are those of the measured texts/s."""
    import importlib.util

    from helpers import make_recipe
    from tailorkd.cli import main

    # Without the seed guard: the benchmark measures the adaptive-KD student (the guard is tested elsewhere).
    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                         evaluation={"systems": ["teacher", "adaptive_kd"]},
                         distill={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "seed_guard": None})
    assert main(["run", recipe]) == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "student_inference.py"
    spec = importlib.util.spec_from_file_location("bench_student_inference", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    bench.main(["--recipe", recipe, "--export-dir", str(tmp_path / "export"), "--repeats", "1",
                "--teacher-texts", "2", "--output", str(out)])
    result = json.loads(out.read_text())
    systems = result["systems"]
    assert set(systems) == {"pytorch", "sentence_transformers", "onnx_fp32", "onnx_int8", "teacher"}
    assert result["texts"] == 20 and systems["teacher"]["texts"] == 2
    for name in ("sentence_transformers", "onnx_fp32"):
        assert systems[name]["agreement_with_pytorch"] == 1.0
        assert systems[name]["batches_timed"] == -(-20 // result["batch_size"])
    ratio = systems["onnx_int8"]["texts_per_s"] / systems["pytorch"]["texts_per_s"]
    assert result["ratios"]["onnx_int8_over_pytorch"] == pytest.approx(ratio)
    assert result["targets"]["onnx_int8_over_teacher"]["target"] == 50.0


def test_serve_runs_an_exports_onnx_graph_with_its_severities(calibrated_export, tmp_path):
    """`tailorkd serve EXPORT`: the service answers with the ONNX graph's calibrated probabilities, the
    export's name, version and severity levels; an export without a graph is a one-line error."""
    import shutil

    import httpx

    from helpers import PATIENCE_S, running
    from tailorkd.serve.app import ServeOptions, create_app
    from tailorkd.serve.predictor import load_exported_model

    out = tmp_path / "export"
    shutil.copytree(calibrated_export["out"], out)
    about = json.loads((out / "tailorkd.json").read_text())
    assert about["alerts"] is None and about["name"] and about["base_model"]
    about["alerts"] = {"severity": {"business": [[0.0, "high"]]}}
    (out / "tailorkd.json").write_text(json.dumps(about))
    model = load_exported_model(out, "fp32")
    with running(create_app(model, ServeOptions())) as (url, _):
        answer = httpx.post(f"{url}/v1/classify", json={"texts": calibrated_export["texts"]}, timeout=PATIENCE_S)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["model"]["runtime"], body["model"]["version"]) == ("onnxruntime-fp32", about["version"])
    probs = np.array([[r["probabilities"][t] for t in TOPICS] for r in body["results"]])
    np.testing.assert_allclose(probs, calibrated_export["expected"], atol=1e-4)  # the temperature is in the graph
    assert [r["severity"] for r in body["results"]] == ["high" if r["label"] == "business" else "none"
                                                        for r in body["results"]]
    from tailorkd.cli import main

    assert main(["serve", str(out), "student.max_length=8"]) == 2  # an export is served as it was exported
    int8 = load_exported_model(out, "int8").predict(calibrated_export["texts"])
    np.testing.assert_allclose(int8.sum(1), 1.0, atol=1e-9)
    assert (int8.argmax(1) == calibrated_export["expected"].argmax(1)).mean() >= MIN_AGREEMENT["int8"]  # as checked

    about["onnx"] = {"exported": False, "reason": "a causal-LM student"}
    (out / "tailorkd.json").write_text(json.dumps(about))
    with pytest.raises(TailorkdError, match=r"tailorkd.json: this export has no ONNX graph \(a causal-LM student\)"):
        load_exported_model(out)
