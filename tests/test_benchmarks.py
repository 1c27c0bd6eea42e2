"""The benchmark scripts end to end on tiny random models (few steps, seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_memory_tiny_llama(tiny_models, tmp_path):
    bench = _load_script("train_memory")
    out = tmp_path / "train_memory.json"
    report = bench.main(["--model", str(tiny_models["llama"]), "--methods", "full,lora,qlora", "--seq-len", "32",
                         "--batch-size", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
                         "--work-dir", str(tmp_path / "work"), "--output", str(out)])
    assert json.loads(out.read_text()) == report
    assert {"machine", "settings", "results", "estimate_table3", "table_markdown", "definitions"} <= set(report)
    results = report["results"]
    assert list(results) == ["full", "lora", "qlora"]
    for method, res in results.items():
        assert res["steps"] == 2 and len(res["step_seconds"]) == 2 and res["seconds_per_step"] > 0
        assert res["input_tokens"]["max"] == 32  # prompts cut to the sequence length
        mem = res["memory"]
        assert {"after_load_gb", "peak_gb", "added_by_training_gb", "optimizer_state_gb"} <= set(mem)
        assert mem["peak_gb"] >= mem["after_load_gb"] > 0
        assert set(res["ratios_to_full"]) == {"peak_gb", "added_by_training_gb", "seconds_per_step",
                                               "cpu_seconds_per_step", "trainable_params"}
        assert res["cpu_seconds_per_step"] > 0
        assert f"| {method} |" in report["table_markdown"]
    full, lora = results["full"], results["lora"]
    assert full["trainable_params"] == full["total_params"]
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    assert lora["trainable_params"] == results["qlora"]["trainable_params"]
    assert results["full"]["ratios_to_full"]["peak_gb"] == 1.0
    # Full fine-tuning keeps AdamW states for every weight; LoRA only for its adapters.
    assert lora["memory"]["optimizer_state_gb"] < full["memory"]["optimizer_state_gb"]
    # The estimate covers the same model: its trainable counts match what was trained.
    assert report["estimate_table3"]["full"]["trainable_params"] == full["trainable_params"]
    assert report["estimate_table3"]["lora"]["trainable_params"] == lora["trainable_params"]


def test_train_memory_refuses_unknown_method(tmp_path):
    bench = _load_script("train_memory")
    with pytest.raises(SystemExit):
        bench.main(["--methods", "full,prefix", "--output", str(tmp_path / "x.json")])


def test_prompt_search_benchmark_tiny_llama(tiny_models, tmp_path):
    """benchmarks/prompt_search.py end to end on a tiny LLaMA teacher: search, then four prompts on seeds
    and test, with the hand-written prompt as the baseline of every ratio."""
    from helpers import make_recipe

    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                         prompt_search={"max_candidates": 3, "builtin_instructions": False})
    bench = _load_script("prompt_search")
    out = tmp_path / "ps.json"
    report = bench.main([recipe, f"prompt.shot_encoder={tiny_models['bert']}", "--output-dir",
                         str(tmp_path / "run"), "--out", str(out)])
    assert json.loads(out.read_text())["prompts"].keys() == report["prompts"].keys()
    assert list(report["prompts"])[:2] == ["hand-written", "hand-written, knn shots"]
    assert report["search"]["candidates"] == 3 and report["search"]["teacher_calls"] > 0
    for result in report["prompts"].values():
        assert 0 <= result["test"]["accuracy"] <= 1 and sum(result["test"]["predicted_counts"].values()) == 20
        assert result["teacher_seconds_per_text"] > 0
    assert "| hand-written | " in report["table"][2] and "1.00x" in report["table"][2]


def test_teacher_combination_benchmark_tiny_llama(tiny_models, tmp_path):
    """benchmarks/teacher_combination.py on a tiny LLaMA + seed-classifier ensemble: the pool's human labels
    come back from the source as a development set; dev-chosen weights are the best grid point on dev, the
    test ceiling is at least every weighting's test score, and seed-only is the baseline of every ratio."""
    from helpers import make_recipe

    encoder = str(tiny_models["bert"])
    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                         teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4,
                                          "ensemble": {"seed_classifier": {"encoder": encoder}}},
                         evaluation={"seed_only_encoder": encoder})
    bench = _load_script("teacher_combination")
    assert len(bench.weight_grid(3)) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in bench.weight_grid(3))
    out = tmp_path / "tc.json"
    report = bench.main([recipe, "--out", str(out)])
    assert json.loads(out.read_text())["systems"] == report["systems"]
    systems = report["systems"]
    assert report["dev"]["texts"] == sum(report["dev"]["label_counts"].values()) > 0
    names = list(systems)
    assert names[0].startswith("member 1 (") and names[-1] == "seed-only baseline"
    dev_chosen = next(s for n, s in systems.items() if n.startswith("dev-chosen"))
    ceiling = next(s for n, s in systems.items() if n.startswith("test ceiling"))
    weighted = [s for n, s in systems.items() if n.startswith(("recipe:", "equal weights"))]
    for s in weighted:
        assert dev_chosen["dev"]["macro_f1"] >= s["dev"]["macro_f1"]
        assert ceiling["test"]["macro_f1"] >= s["test"]["macro_f1"]
    # The seed classifier member is the seed-only baseline (same encoder, seeds and fit).
    member = next(s for n, s in systems.items() if n.startswith("member 2 (seed classifier") and n.endswith("raw"))
    assert member["test"] == systems["seed-only baseline"]["test"]
    assert report["table"][-1].endswith("| 1.00x |")


def test_student_confidence_benchmark_tiny(tiny_models, tmp_path):
    """benchmarks/student_confidence.py on a tiny run: each student's temperature is the one distill fitted,
    and it changes no answer."""
    from helpers import make_recipe
    from tailorkd.cli import main

    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                         evaluation={"systems": ["teacher", "untrained_student", "adaptive_kd"]},
                         distill={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3,
                                  "seed_guard": {"candidates": ["adaptive_kd", "seed_only"]}})
    assert main(["run", recipe]) == 0
    out = tmp_path / "confidence.json"
    assert _load_script("student_confidence").main([recipe, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["systems"]) == {"untrained_student", "adaptive_kd"}
    for system, folder in (("untrained_student", "untrained"), ("adaptive_kd", "adaptive_kd")):
        entry = result["systems"][system]
        fitted = json.loads((tmp_path / "run" / "students" / folder / "confidence.json").read_text())
        assert entry["temperature"] == fitted["temperature"] and entry["seeds"] == 10
        assert entry["accuracy_unchanged"] and entry["before"]["macro_f1"] == entry["after"]["macro_f1"]
        assert 0 <= entry["after"]["ece"] <= 1


def test_crisis_signals_days_come_from_tweet_ids():
    bench = _load_script("crisis_signals")
    assert bench.tweet_day("211040709124440064") == "2012-06-08"  # 2012_Colorado_wildfires, its first tweet
    assert bench.tweet_day("0") == "2010-11-04"  # Twitter's snowflake epoch: 2010-11-04 01:42:54.657 UTC


def test_quality_suite_on_a_tiny_task(tiny_models, tmp_path):
    """benchmarks/quality_suite.py end to end on a tiny task, two random seeds: every system's test metrics as
    the runs' reports have them, the shipped student, the majority class, the per-task means and the table, the
    seed guard's regret and a replay of its choice rule."""
    from helpers import TEST_GUARD_CANDIDATES, make_recipe, shipped_predictions

    recipe = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    bench = _load_script("quality_suite")
    out = tmp_path / "suite.json"
    result = bench.main(["--recipe", f"tiny={recipe}", "--seeds", "3,4", "--pool-size", "20", "--test-size", "20",
                         "--override", "evaluation.setfit_iterations=2", "--work", str(tmp_path / "work"),
                         "--output", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    runs = result["runs"]
    assert [(r["task"], r["seed"]) for r in runs] == [("tiny", 3), ("tiny", 4)]
    assert not any(r.get("failed") for r in runs)
    for run in runs:
        report = json.loads((Path(run["output_dir"]) / "report.json").read_text())
        for system in ("teacher", "adaptive_kd", "seed_only", "setfit"):
            assert run["rows"][system]["macro_f1"] == report["systems"][system]["metrics"]["macro_f1"]
        shipped = report["seed_guard"]["shipped"]
        assert run["seed_guard"]["shipped"] == shipped and run["seed_guard"]["reason"] == report["seed_guard"]["reason"]
        measured = report["systems"][shipped_predictions(report)]["metrics"]
        assert run["rows"]["shipped"]["macro_f1"] == measured["macro_f1"]
        # The guard's regret: the best candidate's test macro-F1 minus the shipped student's.
        best = max(("adaptive_kd", "standard_kd", "seed_only", "setfit"), key=lambda c: run["rows"][c]["macro_f1"])
        assert run["regret"]["best"] == best
        gap = run["rows"][best]["macro_f1"] - run["rows"]["shipped"]["macro_f1"]
        assert run["regret"]["macro_f1"] == pytest.approx(gap, abs=1e-4)
        assert run["regret"]["shipped_collapsed"] is False
        assert run["rows"]["majority"]["test_texts"] == 20 and 0 < run["rows"]["majority"]["accuracy"] < 1
    tiny = result["summary"]["per_task"]["tiny"]
    assert tiny["runs"] == 2
    mean = sum(r["rows"]["teacher"]["macro_f1"] for r in runs) / 2
    assert tiny["teacher"]["macro_f1"] == pytest.approx(mean, abs=1e-4)
    assert result["summary"]["average_over_tasks"]["setfit"]["macro_f1"] == tiny["setfit"]["macro_f1"]
    lines = result["table_markdown"].splitlines()
    assert lines[0] == "| system | tiny macro-F1 / acc | average macro-F1 / acc |" and len(lines) == 2 + 9
    # joint KD is not among this recipe's guard candidates: not evaluated, its row a dash
    assert "joint_kd" not in runs[0]["rows"] and lines[4] == "| joint KD (teacher + SetFit targets) | - | - |"
    guard = result["summary"]["guard"]
    regrets = [100 * r["regret"]["macro_f1"] for r in runs]
    assert guard["runs"] == 2 and guard["average_regret"] == pytest.approx(sum(regrets) / 2, abs=0.01)
    assert guard["max_regret"] == pytest.approx(max(regrets), abs=0.01)
    # without joint KD among the candidates, the regret against the single-source ones is the same
    assert guard["average_regret_single_source"] == guard["average_regret"]
    assert result["guard_table_markdown"].splitlines()[2].startswith("| tiny | 3 | ")
    # The guard's own rule replayed on the finished runs' recorded seed predictions makes the guard's choices;
    # another rule is scored the same way, its regret read from the test rows.
    replayed = bench.main(["--replay", str(out), "--preference", ",".join(TEST_GUARD_CANDIDATES)])
    assert [r["choice"] for r in replayed["runs"]] == [r["seed_guard"]["shipped"] for r in runs]
    replayed = bench.main(["--replay", str(out), "--preference", "seed_only,adaptive_kd,standard_kd"])
    for r, again in zip(runs, replayed["runs"]):
        best = max(("adaptive_kd", "standard_kd", "seed_only", "setfit"), key=lambda c: r["rows"][c]["macro_f1"])
        assert again["regret"] == pytest.approx(100 * (r["rows"][best]["macro_f1"]
                                                       - r["rows"][again["choice"]]["macro_f1"]), abs=0.01)
    # The suite in pieces, merged: the same summary; a later piece's run of a task and seed replaces one before.
    pieces = []
    for i, run in enumerate(runs):
        pieces.append(tmp_path / f"piece{i}.json")
        pieces[-1].write_text(json.dumps({**result, "runs": [run]}))
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**result, "runs": [{**runs[1], "rows": runs[0]["rows"]}]}))
    merged = bench.main(["--merge", str(stale), *map(str, pieces), "--output", str(tmp_path / "merged.json")])
    assert merged["summary"] == result["summary"] and len(merged["pieces"]) == 3
    # A merged file merged again keeps its pieces' machines and settings.
    again = bench.main(["--merge", str(tmp_path / "merged.json"), str(pieces[0]),
                        "--output", str(tmp_path / "m2.json")])
    assert [p["file"] for p in again["pieces"]] == ["stale.json", "piece0.json", "piece1.json", "piece0.json"]
    assert all(p["machine"] == result["machine"] for p in again["pieces"])
    assert again["summary"] == result["summary"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="bad.json: not a results file"):
        bench.main(["--merge", str(tmp_path / "bad.json"), "--output", str(tmp_path / "x.json")])
