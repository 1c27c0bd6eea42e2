"""The student's training loop: progressive stages (filters, coarse label maps), the validation split,
early stopping, checkpoints and resuming, TensorBoard logs, and the hidden-state alignment loss."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, TrainerCallback, set_seed

from helpers import TOPICS, make_recipe, topic_rows
from tailorkd.adapters import LoraAdapterConfig, QLoraAdapterConfig
from tailorkd.distill import distill_student, soft_cross_entropy
from tailorkd.distill.losses import hidden_state_loss
from tailorkd.distill.stages import filter_mask, group_matrix, validation_split
from tailorkd.distill.trainer import PROJECTION_FILE
from tailorkd.errors import TailorkdError
from tailorkd.recipe import DistillConfig, PromptConfig, StageFilter, TaskConfig, load_recipe
from tailorkd.run_dir import RunDir
from tailorkd.students import EncoderStudent, MeanPoolClassifier, predict_probs

TASK = TaskConfig(name="topic", description="d", labels=[{"name": t} for t in TOPICS])
PROMPT = PromptConfig(instruction="Topic?", shots=0, describe_labels=False)
# business+tech vs the rest: a coarse two-class view of the five topics
COARSE = {"economy": ["business", "tech"], "other": ["entertainment", "politics", "sport"]}
LORA = LoraAdapterConfig(r=4, alpha=8, dropout=0.0)


def _encoder_student(folder, seed=0):
    set_seed(seed)
    model = MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS))
    return EncoderStudent(model, AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)


def _teacher(rows, sharp):
    """`sharp[i]` on row i's topic, the rest spread evenly."""
    probs = np.zeros((len(rows), len(TOPICS)))
    for i, r in enumerate(rows):
        probs[i] = (1 - sharp[i]) / (len(TOPICS) - 1)
        probs[i, TOPICS.index(r["label"])] = sharp[i]
    return probs


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Snapshots(TrainerCallback):
    """The trainable weights at the start and end of each stage (each stage is one Trainer.train)."""

    def __init__(self, model_of):
        self.model_of, self.begin, self.end = model_of, [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin.append(_trainable(self.model_of()))

    def on_train_end(self, args, state, control, **kwargs):
        self.end.append(_trainable(self.model_of()))


class _Interrupt(TrainerCallback):
    """Raises KeyboardInterrupt at the end of optimizer step ``at`` of stage ``stage`` (1-based)."""

    def __init__(self, stage, at):
        self.stage, self.at, self.seen = stage, at, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen += 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.seen == self.stage and state.global_step == self.at:
            raise KeyboardInterrupt


class _KeepCheckpoints(TrainerCallback):
    """Copies each checkpoint into ``into/<stage folder>/`` as it is saved (the Trainer keeps only the newest)."""

    def __init__(self, into):
        self.into = into

    def on_save(self, args, state, control, **kwargs):
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        shutil.copytree(saved, self.into / saved.parent.name / saved.name)


def _cut_short(path):
    """What a kill while writing ``path`` in place leaves: its first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- the loss over coarse groups --------------------------------------------------------------------
def test_grouped_soft_cross_entropy_sums_both_sides_into_the_groups():
    groups = torch.tensor(group_matrix({"risk": ["risk"], "not risk": ["caution", "safe"]},
                                       ["risk", "caution", "safe"], "x"))
    teacher = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]])
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.3]])
    q = torch.softmax(logits, -1)
    q_groups = torch.stack([q[:, 0], q[:, 1] + q[:, 2]], -1)
    t_groups = torch.stack([teacher[:, 0], teacher[:, 1] + teacher[:, 2]], -1)
    expected = -(t_groups * q_groups.log()).sum(-1).mean()
    assert soft_cross_entropy(logits, teacher, groups=groups).item() == pytest.approx(expected.item(), rel=1e-6)
    # Moving the student's mass between members of a group leaves the loss unchanged ...
    q2 = torch.stack([q[:, 0], 0.9 * (q[:, 1] + q[:, 2]), 0.1 * (q[:, 1] + q[:, 2])], -1)
    assert soft_cross_entropy(q2.log(), teacher, groups=groups).item() == pytest.approx(expected.item(), rel=1e-5)
    # ... but not without groups; and at the teacher's group probabilities the gradient vanishes.
    assert soft_cross_entropy(q2.log(), teacher).item() != pytest.approx(soft_cross_entropy(logits, teacher).item())
    at_teacher = torch.stack([t_groups[:, 0], t_groups[:, 1] / 2, t_groups[:, 1] / 2], -1).log().requires_grad_()
    soft_cross_entropy(at_teacher, teacher, groups=groups).backward()
    assert torch.allclose(at_teacher.grad, torch.zeros_like(at_teacher.grad), atol=1e-6)
    # With a temperature both sides are softened over the classes, then grouped.
    soft_t = torch.softmax(teacher.log() / 2, -1)
    log_q_t = torch.log_softmax(logits / 2, -1).exp()
    expected_t = -((soft_t @ groups) * (log_q_t @ groups).log()).sum(-1).mean() * 4
    assert soft_cross_entropy(logits, teacher, 2.0, groups).item() == pytest.approx(expected_t.item(), rel=1e-5)


def test_hidden_state_loss_kinds():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert hidden_state_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_state_loss(a, -a, "cosine").item() == pytest.approx(2.0)
    assert hidden_state_loss(a, a + 1, "mse").item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        hidden_state_loss(a, torch.zeros(2, 3), "mse")


# -- what each stage trains on --------------------------------------------------------------------
def test_filters_split_and_label_map_checks():
    rows = [{"text": "x" * n} for n in (5, 50, 500, 20)]
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.6, 0.2, 0.2], [0.34, 0.33, 0.33]])
    assert filter_mask(StageFilter(min_confidence=0.5), rows, probs).tolist() == [True, False, True, False]
    assert filter_mask(StageFilter(min_confidence_quantile=0.5), rows, probs).tolist() == [True, False, True, False]
    assert filter_mask(StageFilter(max_entropy_quantile=0.25), rows, probs).tolist() == [True, False, False, False]
    assert filter_mask(StageFilter(min_chars=10, max_chars=100), rows, probs).tolist() == [False, True, False, True]
    # Quantiles of a reference (the training texts) apply unchanged to other texts (the validation split).
    kept = filter_mask(StageFilter(min_confidence_quantile=0.5), rows[:1], probs[1:2], reference=probs)
    assert kept.tolist() == [False]
    train, val = validation_split(50, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45 and not set(train) & set(val)
    assert np.array_equal(validation_split(50, 0.1, seed=3)[1], val)
    assert not np.array_equal(validation_split(50, 0.1, seed=4)[1], val)
    assert len(validation_split(50, 0.0, seed=3)[1]) == 0

    labels = ["risk", "caution", "safe"]
    with pytest.raises(ValueError, match=r"distill.stages.1.label_map: unknown labels \['danger'\]"):
        DistillConfig(stages=[{}, {"label_map": {"a": ["danger"], "b": ["risk", "caution", "safe"]}}]
                      ).check_against(labels, None)
    with pytest.raises(ValueError, match=r"distill.stages.0.label_map: labels in no group: \['safe'\]"):
        DistillConfig(stages=[{"label_map": {"a": ["risk"], "b": ["caution"]}}]).check_against(labels, None)
    with pytest.raises(ValueError, match="more than one group"):
        DistillConfig(stages=[{"label_map": {"a": ["risk", "safe"], "b": ["caution", "safe"]}}]
                      ).check_against(labels, None)
    with pytest.raises(ValueError, match="set teacher.hidden_states"):
        DistillConfig(hidden_state_loss={"weight": 0.3}).check_against(labels, None)
    with pytest.raises(ValueError, match="early_stopping_patience needs a validation split"):
        DistillConfig(validation_fraction=0.0, early_stopping_patience=2)
    with pytest.raises(ValueError, match="either stages or progressive"):
        DistillConfig(stages=[{}], progressive="default")


def test_distill_settings_round_trip_through_their_dump():
    dumped = DistillConfig(validation_fraction=0.2, progressive="default").model_dump()
    assert dumped["validation_fraction"] == 0.2 and dumped["progressive"] == "default"
    staged = DistillConfig(stages=[{"filter": {"min_confidence": 0.8}, "label_map": COARSE, "epochs": 1}, {}])
    assert staged.model_dump(exclude_none=True)["stages"] == [
        {"filter": {"min_confidence": 0.8}, "label_map": COARSE, "epochs": 1.0}, {}]
    assert DistillConfig.model_validate(staged.model_dump()) == staged
    assert [s.name for s in DistillConfig(progressive="default").resolved_stages()] == ["confident", "all"]


# -- training ---------------------------------------------------------------------------------------
def test_progressive_stages_filter_regroup_and_continue_from_each_other(tiny_models, tmp_path):
    rows = topic_rows(6)
    sharp = [0.9 if i % 3 else 0.4 for i in range(len(rows))]  # a third of the texts are uncertain
    probs = _teacher(rows, sharp)
    config = DistillConfig(epochs=2, batch_size=4, learning_rate=5e-2, warmup_ratio=0.0, max_grad_norm=1.0,
                           validation_fraction=0.2,
                           stages=[{"name": "confident coarse", "filter": {"min_confidence": 0.8}, "label_map": COARSE,
                                    "epochs": 3},
                                   {"learning_rate": 1e-2}])
    student = _encoder_student(tiny_models["bert"])
    snapshots = _Snapshots(lambda: student.model)
    summary = distill_student(student, rows, probs, LORA, config, tmp_path / "s", seed=5, info={},
                              callbacks=[snapshots])

    train, val = validation_split(len(rows), 0.2, seed=5)
    confident_train = sum(sharp[i] >= 0.8 for i in train)
    confident_val = sum(sharp[i] >= 0.8 for i in val)
    first, second = summary["stages"]
    assert summary["train_examples"] == len(train) == 24 and summary["validation_examples"] == 6
    assert (first["train_examples"], first["validation_examples"]) == (confident_train, confident_val)
    assert (second["train_examples"], second["validation_examples"]) == (24, 6)
    assert first["name"] == "confident coarse" and second["name"] == "stage-2"
    assert first["label_map"] == COARSE and first["filter"] == {"min_confidence": 0.8} and second["label_map"] is None
    assert (first["epochs"], first["learning_rate"]) == (3, 5e-2)
    assert (second["epochs"], second["learning_rate"]) == (2, 1e-2)
    assert first["steps"] == 3 * math.ceil(confident_train / 4) and second["steps"] == 2 * math.ceil(24 / 4)
    assert summary["steps"] == first["steps"] + second["steps"]
    for stage in (first, second):
        assert stage["seconds"] > 0 and math.isfinite(stage["final_loss"])
        assert len(stage["validation"]) == stage["epochs"]
        assert all(0.0 <= e["agreement"] <= 1.0 for e in stage["validation"])
    # The coarse stage's loss is over the two groups: at most log(2) at the start, not log(5).
    assert summary["loss_curve"][0]["stage"] == 1 and summary["loss_curve"][0]["loss"] < math.log(2) + 0.05

    # Stage 2 starts from the weights stage 1 ended with, and both stages trained.
    assert len(snapshots.begin) == len(snapshots.end) == 2
    for name, value in snapshots.end[0].items():
        assert torch.equal(snapshots.begin[1][name], value), name
    assert any(not torch.equal(snapshots.begin[0][n], v) for n, v in snapshots.end[0].items())
    assert any(not torch.equal(snapshots.begin[1][n], v) for n, v in snapshots.end[1].items())

    info = json.loads((tmp_path / "s" / "student.json").read_text())
    assert [s["train_examples"] for s in info["summary"]["stages"]] == [confident_train, 24]
    assert not (tmp_path / "s" / "trainer").exists()  # the checkpoints are removed once the student is saved
    assert list((tmp_path / "s" / "logs" / "stage-1").glob("events.out.tfevents.*"))  # TensorBoard


def test_a_filter_that_keeps_nothing_names_the_stage(tiny_models, tmp_path):
    rows = topic_rows(2)
    config = DistillConfig(stages=[{}, {"filter": {"min_confidence": 0.99}}], validation_fraction=0.0)
    with pytest.raises(TailorkdError, match=r"distill.stages.1.filter: keeps none of the 10 training texts"):
        distill_student(_encoder_student(tiny_models["bert"]), rows, _teacher(rows, [0.9] * 10), LORA, config,
                        tmp_path / "s", seed=0, info={})


@pytest.mark.parametrize("interrupt_stage,interrupt_step,expect_resumed",
                         [(1, 5, "checkpoint-4"), (2, 4, "checkpoint-2")])
def test_interrupted_training_resumes_to_the_same_weights(tiny_models, tmp_path, interrupt_stage, interrupt_step,
                                                          expect_resumed):
    rows = topic_rows(4)
    probs = _teacher(rows, [0.9] * len(rows))
    # 18 training texts, batch 4: 5 steps an epoch; a checkpoint every 2 steps; the encoder's dropout is on,
    # so the resumed run also needs the RNG states of the checkpoint to match.
    config = DistillConfig(epochs=2, batch_size=4, learning_rate=3e-2, warmup_ratio=0.0, validation_fraction=0.1,
                           checkpoint_steps=2, stages=[{"epochs": 1.6}, {"label_map": COARSE}])

    reference = _encoder_student(tiny_models["bert"])
    full = distill_student(reference, rows, probs, LORA, config, tmp_path / "ref", seed=1, info={})

    student = _encoder_student(tiny_models["bert"])
    with pytest.raises(KeyboardInterrupt):
        distill_student(student, rows, probs, LORA, config, tmp_path / "s", seed=1, info={},
                        callbacks=[_Interrupt(interrupt_stage, interrupt_step)])
    trainer_dir = tmp_path / "s" / "trainer"
    assert (trainer_dir / f"stage-{interrupt_stage}" / expect_resumed).is_dir()
    assert (trainer_dir / "stage-1" / "done.json").is_file() == (interrupt_stage == 2)

    resumed_student = _encoder_student(tiny_models["bert"], seed=99)  # other initial head: the checkpoint wins
    resumed = distill_student(resumed_student, rows, probs, LORA, config, tmp_path / "s", seed=1, info={})
    assert resumed["stages"][interrupt_stage - 1]["resumed_from"] == expect_resumed
    assert [s["steps"] for s in resumed["stages"]] == [s["steps"] for s in full["stages"]]
    final, expected = _trainable(resumed_student.model), _trainable(reference.model)
    assert final.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, atol=1e-5, rtol=1e-4, msg=name)
    np.testing.assert_allclose(predict_probs(resumed_student, rows, 16), predict_probs(reference, rows, 16), atol=1e-5)

    # Checkpoints of other inputs are never resumed: a changed setting starts afresh.
    student = _encoder_student(tiny_models["bert"])
    with pytest.raises(KeyboardInterrupt):
        distill_student(student, rows, probs, LORA, config, tmp_path / "t", seed=1, info={},
                        callbacks=[_Interrupt(1, 3)])
    other = config.model_copy(update={"learning_rate": 1e-2})
    again = distill_student(_encoder_student(tiny_models["bert"]), rows, probs, LORA, other, tmp_path / "t", seed=1,
                            info={})
    assert again["stages"][0]["resumed_from"] is None


def test_state_files_cut_short_are_not_trusted(tiny_models, tmp_path):
    """A rerun after a kill mid-write: a truncated trainer_state.json, stage done.json or run.json is not trusted
    (the previous checkpoint, the stage trained afresh, the run started afresh) and the student ends as it would."""
    rows = topic_rows(4)
    probs = _teacher(rows, [0.9] * len(rows))
    config = DistillConfig(epochs=2, batch_size=4, learning_rate=3e-2, warmup_ratio=0.0, validation_fraction=0.1,
                           checkpoint_steps=2, stages=[{"epochs": 1.6}, {"label_map": COARSE}])
    reference = _encoder_student(tiny_models["bert"])
    full = distill_student(reference, rows, probs, LORA, config, tmp_path / "ref", seed=1, info={})
    expected = _trainable(reference.model)

    def interrupted(folder, stage, step, callbacks=()):
        with pytest.raises(KeyboardInterrupt):
            distill_student(_encoder_student(tiny_models["bert"]), rows, probs, LORA, config, folder, seed=1, info={},
                            callbacks=[*callbacks, _Interrupt(stage, step)])
        return folder / "trainer"

    def rerun(folder, seed):
        student = _encoder_student(tiny_models["bert"], seed=seed)
        summary = distill_student(student, rows, probs, LORA, config, folder, seed=1, info={})
        assert [s["steps"] for s in summary["stages"]] == [s["steps"] for s in full["stages"]]
        final = _trainable(student.model)
        assert final.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(final[name], value, atol=1e-5, rtol=1e-4, msg=name)
        return summary

    # The newest checkpoint's trainer state cut short (the Trainer writes it last, in place): the one before it.
    trainer = interrupted(tmp_path / "a", 1, 5, [_KeepCheckpoints(tmp_path / "kept")])
    shutil.copytree(tmp_path / "kept" / "stage-1" / "checkpoint-2", trainer / "stage-1" / "checkpoint-2")
    _cut_short(trainer / "stage-1" / "checkpoint-4" / "trainer_state.json")
    summary = rerun(tmp_path / "a", seed=99)  # other initial head: the checkpoint wins
    assert summary["stages"][0]["resumed_from"] == "checkpoint-2"

    # A finished stage's record cut short: that stage trains afresh (from the same start), the next one resumes.
    trainer = interrupted(tmp_path / "b", 2, 4)
    _cut_short(trainer / "stage-1" / "done.json")
    summary = rerun(tmp_path / "b", seed=0)
    assert summary["stages"][0]["resumed_from"] is None and summary["stages"][1]["resumed_from"] == "checkpoint-2"

    # The run's stamp cut short: its checkpoints cannot be told to be this run's, so it starts afresh.
    trainer = interrupted(tmp_path / "c", 1, 3)
    _cut_short(trainer / "run.json")
    summary = rerun(tmp_path / "c", seed=0)
    assert summary["stages"][0]["resumed_from"] is None
    assert not (tmp_path / "c" / "trainer").exists() and json.loads((tmp_path / "c" / "student.json").read_text())


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tiny_models, tmp_path):
    rows = topic_rows(6)
    _, val = validation_split(len(rows), 0.2, seed=2)
    probs = _teacher(rows, [0.9] * len(rows))
    # The validation texts' teacher names the next topic: the better the student learns the topics, the worse
    # it does on them, so the validation loss soon rises.
    for i in val:
        probs[i] = np.roll(probs[i], 1)
    config = DistillConfig(epochs=30, batch_size=8, learning_rate=5e-2, warmup_ratio=0.0, max_grad_norm=1.0,
                           validation_fraction=0.2, early_stopping_patience=2, lr_scheduler="constant")
    student = _encoder_student(tiny_models["bert"])
    summary = distill_student(student, rows, probs, LORA, config, tmp_path / "s", seed=2, info={})
    stage = summary["stages"][0]
    losses = [e["loss"] for e in stage["validation"]]
    assert stage["stopped_early"] and stage["steps"] < 30 * 3
    best = int(np.argmin(losses))
    assert len(losses) == best + 1 + 2  # stopped after `patience` evaluations without a better loss
    assert stage["best_validation_loss"] == pytest.approx(losses[best])
    # The student kept is the best checkpoint's: its validation loss is the best one.
    student.model.eval()
    pred = predict_probs(student, [rows[i] for i in val], 16)
    assert float(-(probs[val] * np.log(pred)).sum(1).mean()) == pytest.approx(losses[best], rel=1e-4)


# -- hidden-state alignment -----------------------------------------------------------------------------
def _topic_states(rows, width=12, seed=0):
    """Teacher 'hidden states' that are a fixed random vector per topic plus noise: learnable from the text."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(TOPICS), width)) * 5 + 3
    return np.stack([centres[TOPICS.index(r["label"])] + rng.normal(size=width) * 0.1 for r in rows]).astype(np.float32)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_hidden_state_loss_aligns_the_projected_encoder_states(tiny_models, tmp_path, kind):
    rows = topic_rows(6)
    probs = _teacher(rows, [0.9] * len(rows))
    states = {-1: _topic_states(rows)}
    config = DistillConfig(epochs=15, batch_size=10, learning_rate=5e-2, warmup_ratio=0.0, max_grad_norm=1.0,
                           validation_fraction=0.0, hidden_state_loss={"weight": 0.5, "kind": kind})
    student = _encoder_student(tiny_models["bert"])
    summary = distill_student(student, rows, probs, LORA, config, tmp_path / "s", seed=0, info={},
                              teacher_states=states)
    details = summary["hidden_state_loss"]
    assert details["teacher_layers"] == [-1] and details["teacher_width"] == 12 and details["student_width"] == 32
    projection = load_file(str(tmp_path / "s" / PROJECTION_FILE))
    assert projection["-1.weight"].shape == (12, 32)
    # The trained projection of the student's pooled states points where the teacher's do.
    batch = student.collate(rows)
    student.model.eval()
    with torch.no_grad():
        pooled = student.model.pooled(batch["input_ids"], batch["attention_mask"])
        projected = pooled @ projection["-1.weight"].T + projection["-1.bias"]
    target = torch.tensor(states[-1])
    if kind == "mse":
        target = (target - target.mean(0)) / (target.std(0, unbiased=False) + 1e-6)
    cosine = torch.nn.functional.cosine_similarity(projected, target, dim=-1).mean().item()
    assert cosine > 0.8, f"{kind}: mean cosine of projected student states to the teacher's {cosine:.3f}"
    assert summary["loss_curve"][-1]["loss"] < summary["loss_curve"][0]["loss"]


def test_hidden_state_loss_on_a_causal_student_and_its_errors(tiny_models, tmp_path):
    from tailorkd.students import CausalLMStudent

    folder = tiny_models["llama"]
    set_seed(0)
    from transformers import AutoModelForCausalLM

    student = CausalLMStudent(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                              TASK, PROMPT, [], max_length=64)
    rows = topic_rows(2)
    probs = _teacher(rows, [0.9] * len(rows))
    batch = student.collate(rows)
    with torch.no_grad():
        logits, pooled = student.class_logits_and_pooled(student.model, batch, layer=1)
        np.testing.assert_allclose(logits.numpy(), student.class_logits(student.model, batch).numpy(), atol=1e-5)
    assert pooled.shape == (len(rows), 32)
    config = DistillConfig(epochs=1, batch_size=5, validation_fraction=0.0,
                           hidden_state_loss={"weight": 0.3, "student_layer": 1, "teacher_layers": [-1, 2]})
    with pytest.raises(TailorkdError, match=r"teacher_layers: layers \[2\] are not among"):
        distill_student(student, rows, probs, LORA, config, tmp_path / "bad", seed=0, info={},
                        teacher_states={-1: _topic_states(rows, 24)})
    with pytest.raises(TailorkdError, match="set teacher.hidden_states"):
        distill_student(student, rows, probs, LORA, config, tmp_path / "bad", seed=0, info={})
    student = CausalLMStudent(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                              TASK, PROMPT, [], max_length=64)
    summary = distill_student(student, rows, probs, LORA, config, tmp_path / "s", seed=0, info={},
                              teacher_states={-1: _topic_states(rows, 24), 2: _topic_states(rows, 24, seed=1)})
    assert summary["hidden_state_loss"]["student_width"] == 32 and summary["steps"] == 2
    assert set(load_file(str(tmp_path / "s" / PROJECTION_FILE))) == {"-1.weight", "-1.bias", "2.weight", "2.bias"}


# -- through the pipeline -------------------------------------------------------------------------------
def _recipe(tmp_path, tiny_models, distill, teacher_extra=None):
    """test_pipeline's tiny recipe (llama teacher, bert student) with these distill settings."""
    return make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section={"model": str(tiny_models["llama"]), "batch_size": 4, **(teacher_extra or {})},
                       student_section={"model": str(tiny_models["bert"]), "max_length": 64},
                       distill={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, **distill})


def test_pipeline_trains_the_default_progressive_schedule_with_hidden_states(tiny_models, tmp_path):
    from tailorkd import pipeline

    path = _recipe(tmp_path, tiny_models, {"progressive": "default", "hidden_state_loss": {"weight": 0.2}},
                   teacher_extra={"hidden_states": {"layers": [-1], "pooling": "last"}})
    recipe = load_recipe(path)
    pipeline.label(recipe)
    pipeline.distill(recipe)
    out = RunDir(recipe).student_dir("adaptive_kd")  # the guard may ship another candidate
    info = json.loads((out / "student.json").read_text())
    stages = info["summary"]["stages"]
    assert [s["name"] for s in stages] == ["confident", "all"]
    # 30 pool texts: 3 held out; the confident stage keeps the upper half of the other 27
    assert info["summary"]["validation_examples"] == 3 and stages[1]["train_examples"] == 27
    assert 13 <= stages[0]["train_examples"] <= 27 - 13
    assert info["summary"]["hidden_state_loss"]["teacher_width"] == 32
    assert (out / PROJECTION_FILE).is_file()
    stamp = (out / "student.json").stat().st_mtime_ns
    pipeline.distill(recipe)  # up to date: not retrained
    assert (out / "student.json").stat().st_mtime_ns == stamp


def test_recipe_asking_for_the_hidden_loss_without_stored_states_says_which_key_to_set(tiny_models, tmp_path):
    path = _recipe(tmp_path, tiny_models, {"hidden_state_loss": {"weight": 0.2}})
    with pytest.raises(TailorkdError, match="set teacher.hidden_states"):
        load_recipe(path)
    path = _recipe(tmp_path, tiny_models, {"stages": [{"label_map": {"a": ["business"], "b": ["tech"]}}]})
    with pytest.raises(TailorkdError, match=r"distill.stages.0.label_map: labels in no group"):
        load_recipe(path)


def test_qlora_student_evaluates_between_epochs_and_still_trains(tiny_models, tmp_path):
    """On the CPU, bitsandbytes repacks 4-bit weights for inference the first time they run in eval mode, in a
    layout that cannot train; the evaluation after epoch 1 must not do that to the base of epoch 2."""
    pytest.importorskip("bitsandbytes")
    from tailorkd.recipe import StudentConfig
    from tailorkd.students import build_student

    student = build_student(StudentConfig(model=str(tiny_models["bert"]), max_length=64), TASK, PROMPT, [],
                            adapter_method="qlora")
    rows = topic_rows(3)
    summary = distill_student(student, rows, _teacher(rows, [0.9] * len(rows)), QLoraAdapterConfig(r=4),
                              DistillConfig(epochs=2, batch_size=4, validation_fraction=0.2,
                                            hidden_state_loss={"weight": 0.2}),
                              tmp_path / "q", seed=0, info={}, teacher_states={-1: _topic_states(rows)})
    assert len(summary["stages"][0]["validation"]) == 2 and summary["steps"] == 2 * 3
