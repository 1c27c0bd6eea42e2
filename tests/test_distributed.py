"""Several processes on one run: `accelerate launch` and `torchrun` with 2 CPU processes (gloo) on tiny models.

Each test starts real launchers in subprocesses. Nothing is timed: a subprocess only has a generous limit so a
hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import TEST_GUARD_CANDIDATES, TOPICS, topic_rows, write_jsonl
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.labels import LabelStore, text_hash
from tailorkd.recipe import load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.students import load_student, predict_probs

LIMIT_S = 900  # per launch; a tiny run takes ~15 s alone
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def make_recipe(folder: Path, name: str, teacher: Path, student: Path, hidden_states: bool = False,
                **distill) -> Path:
    write_jsonl(folder / "news.jsonl", topic_rows(12))
    raw = {
        "name": name, "seed": 3, "output_dir": str(folder / name),
        "task": {"name": "topic", "description": "The topic of a news item.", "labels": [{"name": t} for t in TOPICS]},
        # 60 texts: 10 seeds, 18 test, 32 pool (an even count, so both processes get full batches)
        "data": {"sources": [{"path": "news.jsonl", "columns": {"id": "id"}}],
                 "splits": {"seed_per_class": 2, "test_size": 18}},
        "prompt": {"instruction": "Which topic?", "shots": 0, "max_text_chars": 120},
        "teacher": {"model": str(teacher), "batch_size": 4,
                    **({"hidden_states": {"layers": [-1], "pooling": "mean"}} if hidden_states else {})},
        "student": {"model": str(student), "max_length": 128},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "distill": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "validation_fraction": 0.0,
                    # the guard's folds train under the launcher too (standard KD: every weight, DDP finds the
                    # unused ones); SetFit is left to tests/test_seed_guard.py
                    "seed_guard": {"candidates": TEST_GUARD_CANDIDATES}, **distill},
        "evaluation": {"systems": ["teacher", "adaptive_kd"]},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``args`` (a module and its arguments, or a script) on 2 CPU processes with ``launcher``."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:  # accelerate's multi-process launcher; without CUDA the processes join over gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=LIMIT_S)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _summary(run: Path) -> dict:
    return json.loads((run / "students" / "adaptive_kd" / "student.json").read_text())["summary"]


# Students without dropout (a tiny LLaMA, LoRA dropout 0), so one process and two see the same computation.
# (distill settings, effective batch, training texts, steps); every stage's texts fill whole batches.
VARIANTS = {
    # 32 pool texts, 8 a step: 4 steps an epoch, 2 epochs
    "plain": ({}, 8, 32, 8),
    # hidden-state loss (its projection inside the data-parallel forward), two progressive stages (coarse
    # classes, then all five; a confidence filter would leave a ragged last batch), a validation split of 8
    # evaluated on both processes after each epoch
    "hidden_state_loss+stages+validation": (
        {"hidden_state_loss": {"weight": 0.3}, "validation_fraction": 0.25,
         "stages": [{"name": "coarse", "label_map": {"money": ["business", "tech"],
                                                     "public": ["entertainment", "politics", "sport"]}},
                    {"name": "all"}]},
        4, 24, 6 * 2 + 6 * 2),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_train_as_one_with_the_same_effective_batch(tiny_models, tmp_path, variant):
    """accelerate launch, 2 processes x batch B/2 against one process x batch B: same texts per step, gradients
    averaged, so the same loss curve and the same student (tolerance 1e-4: float sums in another order)."""
    distill, batch, train_examples, steps = VARIANTS[variant]
    hidden = "hidden_state_loss" in distill
    one = make_recipe(tmp_path, "one", tiny_models["llama"], tiny_models["llama"], hidden, batch_size=batch,
                      **distill)
    two = make_recipe(tmp_path, "two", tiny_models["llama"], tiny_models["llama"], hidden, batch_size=batch // 2,
                      **distill)
    assert main(["run", str(one)]) == 0
    result = _ok(launch("accelerate", ["-m", "tailorkd", "run", str(two)], tmp_path))

    # The main process reported; the other printed nothing.
    assert result.stdout.count("report: ") == 1
    first, second = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert first["train_examples"] == second["train_examples"] == train_examples
    assert first["steps"] == second["steps"] == steps
    assert [s["train_examples"] for s in second["stages"]] == [s["train_examples"] for s in first["stages"]]
    for mine, reference in zip(second["stages"], first["stages"]):  # validation after each epoch, same result
        np.testing.assert_allclose([v["loss"] for v in mine["validation"]],
                                   [v["loss"] for v in reference["validation"]], rtol=1e-4)
    np.testing.assert_allclose([p["loss"] for p in second["loss_curve"]], [p["loss"] for p in first["loss_curve"]],
                               rtol=1e-4)
    assert [p["step"] for p in second["loss_curve"]] == [p["step"] for p in first["loss_curve"]]

    # The adapter the main process wrote loads, and predicts as the one-process student does.
    recipe = load_recipe(str(two))
    student, reference = (load_student(tmp_path / run / "students" / "adaptive_kd", recipe.task, recipe.prompt, [],
                                       recipe.student) for run in ("two", "one"))
    rows = pipeline.load_data(recipe).rows("test")
    np.testing.assert_allclose(predict_probs(student, rows, 8), predict_probs(reference, rows, 8), atol=1e-4)
    predicted = [pd.read_parquet(tmp_path / run / "predictions" / "adaptive_kd.parquet")
                 for run in ("one", "two")]
    assert predicted[1]["predicted"].tolist() == predicted[0]["predicted"].tolist()
    # One writer: a single TensorBoard log, no trainer folder left, one report.
    for stage in (tmp_path / "two" / "students" / "adaptive_kd" / "logs").glob("stage-*"):
        assert len(list(stage.glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "two" / "students" / "adaptive_kd" / "trainer").exists()
    assert json.loads((tmp_path / "two" / "report.json").read_text())["systems"]["adaptive_kd"]


SCORE_LOGGER = """
    import os, sys
    from tailorkd.cli import main
    from tailorkd.labels import text_hash
    from tailorkd.teachers import local

    real = local.LocalTeacher.score_states

    def logged(self, rows, *args, **kwargs):
        with open(f"scored-{os.environ['RANK']}.txt", "a") as out:
            out.writelines(text_hash(r["text"]) + "\\n" for r in rows)
        return real(self, rows, *args, **kwargs)

    local.LocalTeacher.score_states = logged
    sys.exit(main(sys.argv[1:]))
"""


def test_two_labelling_processes_share_the_pool_each_text_scored_once(tiny_models, tmp_path):
    """torchrun, 2 processes: the main process checks the teacher (seeds and a pool sample), then each scores a
    disjoint share of pool and test into the one store; the main process finds them all there and writes the
    summary."""
    recipe_path = make_recipe(tmp_path, "shared", tiny_models["llama"], tiny_models["bert"])
    worker = tmp_path / "label_worker.py"
    worker.write_text(textwrap.dedent(SCORE_LOGGER), encoding="utf-8")
    sample = "teacher.check.pool_sample=4"
    _ok(launch("torchrun", [str(worker), "label", str(recipe_path), sample], tmp_path))

    recipe = load_recipe(str(recipe_path), [sample])
    data = pipeline.load_data(recipe)
    texts = {text_hash(r["text"]) for split in ("pool", "test") for r in data.rows(split)}
    seeds = {text_hash(r["text"]) for r in data.rows("seed")}
    scored = [(tmp_path / f"scored-{rank}.txt").read_text().split() for rank in (0, 1)]
    assert all(scored), "both processes labelled a share"
    assert set(scored[1]) <= texts  # the check is the main process's alone
    both = scored[0] + scored[1]
    assert len(both) == len(set(both)) == len(texts) + len(seeds)  # nobody scored a text twice
    assert set(scored[0]).isdisjoint(scored[1]) and set(both) == texts | seeds
    summary = json.loads(RunDir(recipe).labels_summary.read_text())
    assert summary["pool_labelled"] == len(data.pool) and summary["test_labelled"] == len(data.test)
    with LabelStore(RunDir(recipe).label_store) as store:
        assert len(store.get(summary["teacher"], summary["prompt"]["fingerprint"], sorted(texts),
                             recipe.task.label_names)) == len(texts)


RANK_KILLER = """
    import os, signal, sys
    from transformers import Trainer
    from tailorkd.cli import main

    real = Trainer.training_step

    def training_step(self, *args, **kwargs):
        if os.environ["RANK"] == "1" and self.state.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies in the middle of the run
        return real(self, *args, **kwargs)

    Trainer.training_step = training_step
    sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_rank_leaves_a_run_that_resumes(tiny_models, tmp_path):
    """torchrun, encoder student, a checkpoint every 2 steps: rank 1 is killed as step 6 begins, the launcher
    stops the main process too; the same command again resumes from the last checkpoint and finishes.

    Step 5's gradients reach rank 1 only after the main process has joined step 5, which it does after saving
    checkpoint-4 (and dropping checkpoint-2): so checkpoint-4 is complete whatever the load."""
    recipe_path = make_recipe(tmp_path, "killed", tiny_models["llama"], tiny_models["bert"], batch_size=2,
                              epochs=2, checkpoint_steps=2)
    recipe = load_recipe(str(recipe_path))
    pipeline.label(recipe)
    worker = tmp_path / "kill_worker.py"
    worker.write_text(textwrap.dedent(RANK_KILLER), encoding="utf-8")
    killed = launch("torchrun", [str(worker), "distill", str(recipe_path)], tmp_path)
    assert killed.returncode != 0
    student_dir = tmp_path / "killed" / "students" / "adaptive_kd"
    assert not (student_dir / "student.json").exists()
    left = sorted(p.name for p in (student_dir / "trainer" / "stage-1").glob("checkpoint-*"))
    assert left == ["checkpoint-4"]

    _ok(launch("torchrun", ["-m", "tailorkd", "distill", str(recipe_path)], tmp_path))
    summary = _summary(tmp_path / "killed")
    stage = summary["stages"][0]
    assert stage["resumed_from"] == "checkpoint-4"
    assert summary["steps"] == 16  # 32 texts / (2 x 2 processes) x 2 epochs: the whole run, not a new one
    student = load_student(student_dir, recipe.task, recipe.prompt, [], recipe.student)
    probs = predict_probs(student, pipeline.load_data(recipe).rows("test"), 8)
    assert probs.shape == (18, len(TOPICS)) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("name, kind, processes", [("single_gpu", "NO", 1), ("multi_gpu_ddp", "MULTI_GPU", 8)])
def test_shipped_accelerate_configs_load(name, kind, processes):
    """Each shipped Accelerate config is read by Accelerate's own loader, as `accelerate launch --config_file`
    reads it."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind
    assert config.num_processes == processes and config.mixed_precision == "no" and not config.use_cpu


def test_shares_are_disjoint_and_complete_in_any_order(monkeypatch):
    from tailorkd import distributed

    texts = [f"text {i}" for i in range(101)] + ["text 7"]  # a repeated text falls to one process
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(distributed.share(texts, key=str))
        assert sorted(distributed.share(texts[::-1], key=str)) == sorted(shares[-1])
    assert sorted(sum(shares, [])) == sorted(texts)
    assert all(20 <= len(share) <= 47 for share in shares)  # roughly a third each


def test_a_sharded_launch_is_refused_in_one_line(tiny_models, tmp_path, monkeypatch, capsys):
    recipe_path = make_recipe(tmp_path, "fsdp", tiny_models["llama"], tiny_models["bert"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(["distill", str(recipe_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: distill under FSDP") and "multi_gpu_ddp.yaml" in error and "\n" not in error
