"""Train a student on the teacher's class distributions with the transformers Trainer.

One or more stages (progressive distillation, see tailorkd.distill.stages) train the same model object in
order, each with a fresh optimizer and schedule. A seeded share of the pool is held out to evaluate the
student against the teacher after each epoch (loss and agreement), which early stopping watches.

Checkpoints (``<student>/trainer/stage-<k>/checkpoint-<step>/``) hold only the trainable parameters
(adapters, an encoder's head, the hidden-state projection; all weights for ``full``) plus the Trainer's
optimizer, scheduler and RNG states, so every student kind and adapter method saves and resumes the same
way. A finished stage leaves its final weights (``stage-<k>/done.safetensors``). An interrupted run
resumes from there when its inputs are the same (``trainer/run.json``); the folder is removed once the
student is saved. Everything a rerun trusts is written atomically (a kill leaves the old file or the new
one); a state file that cannot be read all the same (e.g. left by an older tailorkd) counts as absent.
TensorBoard logs go to ``<student>/logs/stage-<k>/`` when tensorboard is installed.

Under a launcher (``accelerate launch``, ``torchrun``; see tailorkd.distributed) every process trains: the
Trainer shards the texts and averages the gradients, so ``distill.batch_size`` is per process and the
effective batch is batch_size x gradient_accumulation_steps x processes. Only the main process writes the
run stamp, checkpoints, stage records and the student; every decision read from those files (is a stage
done, which checkpoint resumes) is the main process's, so all processes take the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from tailorkd import distributed
from tailorkd.adapters import attach_adapter, count_parameters, get_adapter_method, optimizer_name
from tailorkd.data.pool_rows import take_rows, windows
from tailorkd.distill.losses import hidden_state_loss, soft_cross_entropy
from tailorkd.distill.stages import Stage, plan_stages, validation_split
from tailorkd.errors import TailorkdError
from tailorkd.files import atomic_write, write_json_atomic
from tailorkd.recipe import AdapterConfig, DistillConfig, HiddenStateLossConfig
from tailorkd.resources import measure_peak_memory
from tailorkd.students import Student, save_student

log = logging.getLogger(__name__)

# Recorded in student.json: students trained before the validation split and stages existed are retrained.
TRAINING_FORMAT = 2
TRAINER_DIR = "trainer"
LOGS_DIR = "logs"
CHECKPOINT_WEIGHTS = "trainable.safetensors"
STAGE_DONE_WEIGHTS = "done.safetensors"
STAGE_DONE_INFO = "done.json"
PROJECTION_FILE = "hidden_projection.safetensors"


class _TeacherTargets(torch.utils.data.Dataset):
    def __init__(self, rows: Sequence[dict[str, Any]], probs: np.ndarray, states: np.ndarray | None = None):
        if len(rows) != len(probs):
            raise ValueError(f"{len(rows)} rows but {len(probs)} teacher distributions")
        self.rows = rows  # a list, or PoolRows read from disk row by row
        self.probs = probs
        self.states = states

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"row": self.rows[i], "teacher_probs": self.probs[i]}
        if self.states is not None:
            item["teacher_states"] = self.states[i]
        return item


class StudentWithProjection(torch.nn.Module):
    """The student's model and the learned projections (student width -> teacher width, one per teacher
    layer) of the hidden-state loss, as one module so the Trainer optimises and checkpoints both, and a
    data-parallel wrapper sees the whole computation in its forward."""

    def __init__(self, student: Student, student_width: int, teacher_width: int, layers: Sequence[int],
                 student_layer: int):
        super().__init__()
        self.student_model = student.model
        self.student = student  # not a Module: how to read class logits and pooled states from student_model
        self.student_layer = student_layer
        self.layers = [str(layer) for layer in layers]
        device = next(student.model.parameters()).device
        self.projections = torch.nn.ModuleDict(
            {str(layer): torch.nn.Linear(student_width, teacher_width) for layer in layers}).to(device)

    def forward(self, **batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits [B, M] and the pooled student state projected to each teacher layer [B, L, H_teacher]."""
        logits, pooled = self.student.class_logits_and_pooled(self.student_model, batch, self.student_layer)
        return logits, torch.stack([self.projections[layer](pooled) for layer in self.layers], dim=1)


@contextlib.contextmanager
def _four_bit_layers_kept_trainable(model: torch.nn.Module):
    """Run an inference pass without spoiling a 4-bit (qlora) base for training: on the CPU, bitsandbytes
    repacks a Linear4bit's weights for inference the first time it runs in eval mode, in a layout that cannot
    train again. Those layers stay in training mode meanwhile (the flag changes nothing else in them)."""
    held = [m for m in model.modules() if type(m).__name__ == "Linear4bit" and not m.training]
    for module in held:
        module.training = True
    try:
        yield
    finally:
        for module in held:
            module.training = False


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))


def _read_json_or_none(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a kill cut it short)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        log.warning("distill: %s cannot be read (%s); not trusted", path, exc)
        return None


def _load_trainable_state(model: torch.nn.Module, path: str | Path) -> None:
    state = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise TailorkdError(f"{path}: the checkpoint does not fit this student (missing {missing[:3]}, "
                            f"unexpected {extra[:3]}); delete the trainer folder or run with --force")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


class DistillationTrainer(Trainer):
    """Trainer whose loss is the soft cross-entropy between the student's and the teacher's classes (or
    coarse groups of them), optionally mixed with a hidden-state alignment term; checkpoints hold only the
    trainable parameters."""

    def __init__(self, *args: Any, student: Student, temperature: float, groups: np.ndarray | None = None,
                 hidden: HiddenStateLossConfig | None = None, hidden_layers: Sequence[int] = (),
                 hard_label_weight: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.student = student
        self.hard_label_weight = hard_label_weight
        self.temperature = temperature
        self.groups = None if groups is None else torch.tensor(groups)
        self.hidden = hidden
        self.hidden_layers = list(hidden_layers)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        targets = inputs.pop("teacher_probs")
        states = inputs.pop("teacher_states", None)
        if self.hidden is None:
            logits = self.student.class_logits(model, inputs)
            loss = self.class_loss(logits, targets)
        else:
            logits, projected = model(**inputs)  # through the (data-parallel) wrapper's forward
            ce = self.class_loss(logits, targets)
            aligned = torch.stack([hidden_state_loss(projected[:, j], states[:, j], self.hidden.kind)
                                   for j in range(len(self.hidden_layers))]).mean()
            loss = (1.0 - self.hidden.weight) * ce + self.hidden.weight * aligned
        return (loss, {"logits": logits}) if return_outputs else loss

    def class_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy with the teacher's distribution, mixed with a hard-label term (the teacher's
        top class as a one-hot target, at temperature 1) when distill.hard_label_weight > 0."""
        soft = soft_cross_entropy(logits, targets, self.temperature, self.groups)
        if not self.hard_label_weight:
            return soft
        onehot = torch.nn.functional.one_hot(targets.argmax(-1), targets.shape[-1]).to(targets.dtype)
        hard = soft_cross_entropy(logits, onehot, 1.0, self.groups)
        return (1.0 - self.hard_label_weight) * soft + self.hard_label_weight * hard

    def prediction_step(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        with _four_bit_layers_kept_trainable(model):
            return super().prediction_step(model, *args, **kwargs)

    # -- checkpoints: the trainable parameters only, for every kind of student ---------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:  # the main process writes; the Trainer calls this on every process
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        _save_tensors(_trainable_state(self.model), os.path.join(output_dir, CHECKPOINT_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        _load_trainable_state(self.model, os.path.join(resume_from_checkpoint, CHECKPOINT_WEIGHTS))

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        log.info("loading the best checkpoint %s (validation loss %s)", best, self.state.best_metric)
        _load_trainable_state(self.model, os.path.join(best, CHECKPOINT_WEIGHTS))


def _enable_gradient_checkpointing(student: Student) -> None:
    """Checkpoint the transformer's layers (not the Trainer's flag: an encoder student's top module is
    tailorkd's own). Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings
    under adapters are fine."""
    model = student.transformer
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise TailorkdError(f"distill.gradient_checkpointing: {type(base).__name__} does not support it")
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(base, "config", None) is not None:
        base.config.use_cache = False


def _collator(student: Student):
    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = student.collate([f["row"] for f in features])
        batch["teacher_probs"] = torch.tensor(np.stack([f["teacher_probs"] for f in features]), dtype=torch.float32)
        if "teacher_states" in features[0]:
            batch["teacher_states"] = torch.tensor(np.stack([f["teacher_states"] for f in features]),
                                                   dtype=torch.float32)
        return batch

    return collate


def _agreement_metric(groups: np.ndarray | None):
    def compute(prediction: Any) -> dict[str, float]:
        logits, teacher = prediction.predictions, prediction.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        if isinstance(teacher, tuple):
            teacher = teacher[0]
        student = np.exp(logits - logits.max(-1, keepdims=True))
        student /= student.sum(-1, keepdims=True)
        if groups is not None:
            student, teacher = student @ groups, teacher @ groups
        return {"agreement": float((student.argmax(-1) == teacher.argmax(-1)).mean())}

    return compute


def _tensorboard_callback(log_dir: Path) -> TrainerCallback | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:
        return None
    # An explicit writer puts the logs where we want them on every transformers version (5.x dropped
    # TrainingArguments.logging_dir).
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def _last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose weights and trainer state were both written: the Trainer writes
    trainer_state.json last and in place, so a kill may leave it cut short."""
    saved = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in saved:
        if (checkpoint / CHECKPOINT_WEIGHTS).is_file() and isinstance(
                _read_json_or_none(checkpoint / "trainer_state.json"), dict):
            return checkpoint
        log.info("distill: %s is incomplete; not resumed from", checkpoint)
    return None


def _run_stamp(adapter: AdapterConfig, config: DistillConfig, seed: int, info: dict[str, Any],
               rows: Sequence[dict[str, Any]], probs: np.ndarray) -> str:
    """What a resumable run depends on: a checkpoint of other inputs is never resumed."""
    digest = hashlib.sha256()
    digest.update(json.dumps([adapter.model_dump(mode="json"), config.model_dump(mode="json"), seed,
                              info.get("recipe_hash"), info.get("base_model")], sort_keys=True, default=str).encode())
    for window in windows(rows):  # the texts' ids, a window at a time
        digest.update(json.dumps([r.get("id") for r in window], default=str).encode())
    digest.update(np.ascontiguousarray(probs, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _prepare_trainer_dir(folder: Path, stamp: str, resume: bool) -> None:
    stamp_file = folder / "run.json"
    if folder.exists():
        recorded = _read_json_or_none(stamp_file)
        same = isinstance(recorded, dict) and recorded.get("stamp") == stamp
        if resume and same:
            return
        log.info("distill: %s holds checkpoints of %s; starting afresh", folder,
                 "another run" if not same else "this run (resume off)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json_atomic(stamp_file, {"stamp": stamp})


def _hidden_targets(hidden: HiddenStateLossConfig, teacher_states: dict[int, np.ndarray] | None, n_rows: int,
                    train_index: np.ndarray) -> tuple[list[int], np.ndarray, dict[str, Any]]:
    """[N, L, H] teacher states for the loss (standardised per dimension over the training texts for mse)."""
    if teacher_states is None:
        raise TailorkdError("distill.hidden_state_loss is set but no teacher hidden states were given: set "
                            "teacher.hidden_states in the recipe and run `tailorkd label` again")
    layers = list(hidden.teacher_layers or sorted(teacher_states))
    missing = [layer for layer in layers if layer not in teacher_states]
    if missing:
        raise TailorkdError(f"distill.hidden_state_loss.teacher_layers: layers {missing} are not among the stored "
                            f"teacher states {sorted(teacher_states)}")
    stacked = np.stack([np.asarray(teacher_states[layer], dtype=np.float32) for layer in layers], axis=1)
    if stacked.shape[0] != n_rows:
        raise ValueError(f"{stacked.shape[0]} teacher hidden states for {n_rows} texts")
    details: dict[str, Any] = {"teacher_layers": layers, "teacher_width": int(stacked.shape[-1])}
    if hidden.kind == "mse":
        mean = stacked[train_index].mean(0, keepdims=True)
        std = stacked[train_index].std(0, keepdims=True) + 1e-6
        stacked = (stacked - mean) / std
        details["standardised"] = "per layer and dimension, over the training texts"
    return layers, stacked, details


def distill_student(student: Student, rows: Sequence[dict[str, Any]], teacher_probs: np.ndarray,
                    adapter: AdapterConfig, config: DistillConfig, out_dir: str | Path, seed: int,
                    info: dict[str, Any], teacher_states: dict[int, np.ndarray] | None = None,
                    resume: bool = True, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Attach the adapter, train on (rows, teacher_probs) stage by stage, save the student folder; return a
    summary (also in student.json).

    ``teacher_states``: {layer: [N, H]} the teacher's pooled hidden states of ``rows`` (hidden-state loss).
    ``resume``: continue from the checkpoints an interrupted run with the same inputs left in
    ``out_dir/trainer``; otherwise they are discarded. ``callbacks``: extra Trainer callbacks (every stage).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_probs = np.asarray(teacher_probs, dtype=np.float64)
    train_index, val_index = validation_split(len(rows), config.validation_fraction, seed)
    train_rows, val_rows = take_rows(rows, train_index), take_rows(rows, val_index)
    # Everything that can be wrong with the settings fails here, before the student is changed.
    stages = plan_stages(config, student.task.label_names, train_rows, teacher_probs[train_index], val_rows,
                         teacher_probs[val_index])
    method = get_adapter_method(adapter.method)
    hidden = config.hidden_state_loss if method.trains else None
    states = None
    hidden_layers: list[int] = []
    hidden_details: dict[str, Any] | None = None
    if hidden is not None:
        hidden_layers, states, hidden_details = _hidden_targets(hidden, teacher_states, len(rows), train_index)

    attach_adapter(student, adapter)
    if config.gradient_checkpointing and method.trains:
        _enable_gradient_checkpointing(student)
    trained: torch.nn.Module = student.model
    if hidden is not None:
        with torch.no_grad(), _four_bit_layers_kept_trainable(student.model):
            probe = student.collate(list(train_rows[:1]))
            device = next(student.model.parameters()).device
            probe = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in probe.items()}
            width = student.class_logits_and_pooled(student.model, probe, hidden.student_layer)[1].shape[-1]
        trained = StudentWithProjection(student, width, states.shape[-1], hidden_layers, hidden.student_layer)
        hidden_details.update(student_width=int(width), kind=hidden.kind, weight=hidden.weight,
                              student_layer=hidden.student_layer if student.kind == "causal_lm" else "mean-pooled last")

    params = count_parameters(trained)
    log.info("student %s: %d of %d parameters train (%.3f%%)", adapter.method, params["trainable"], params["total"],
             100 * params["trainable"] / max(params["total"], 1))
    summary: dict[str, Any] = {"training_format": TRAINING_FORMAT, "parameters": params,
                               "train_examples": len(train_rows), "validation_examples": len(val_rows),
                               "adapter": adapter.model_dump()}
    if hidden_details is not None:
        summary["hidden_state_loss"] = hidden_details

    if method.trains:
        trainer_dir = out_dir / TRAINER_DIR
        distributed.on_main(_prepare_trainer_dir)(trainer_dir, _run_stamp(adapter, config, seed, info, rows,
                                                                          teacher_probs), resume)
        device = next(trained.parameters()).device
        stage_summaries, loss_curve = [], []
        t0 = time.perf_counter()
        split_states = None if states is None else (states[train_index], states[val_index])
        with measure_peak_memory(device) as peak:
            for stage in stages:
                stage_summary, curve = _train_stage(stage, student, trained, train_rows, teacher_probs[train_index],
                                                    val_rows, teacher_probs[val_index], split_states,
                                                    config, hidden, hidden_layers, trainer_dir, out_dir / LOGS_DIR,
                                                    seed, device, list(callbacks), multi=len(stages) > 1)
                stage_summaries.append(stage_summary)
                loss_curve += curve
        summary["train_seconds"] = time.perf_counter() - t0
        summary["peak_memory"] = {"source": peak.source, "added_by_training_gb": peak.peak_gb,
                                  "process_peak_gb": (peak.baseline_bytes + peak.peak_bytes) / 1e9}
        summary["train_loss"] = stage_summaries[-1]["train_loss"]
        summary["steps"] = sum(s["steps"] for s in stage_summaries)
        summary["loss_curve"] = loss_curve
        summary["stages"] = stage_summaries
    else:
        summary.update(train_seconds=0.0, train_loss=None, steps=0, loss_curve=[],
                       stages=[{**s.describe(), "steps": 0} for s in stages])

    # The projection is not needed to predict; kept so the aligned representation can be studied or training
    # continued. It goes in before student.json, which marks the folder finished.
    extra = ({PROJECTION_FILE: _trainable_state(trained.projections)} if isinstance(trained, StudentWithProjection)
             else None)
    distributed.on_main(_save_finished_student)(student, adapter.method, out_dir, {**info, "summary": summary}, extra)
    return summary


def _save_finished_student(student: Student, method: str, out_dir: Path, info: dict[str, Any],
                           extra: dict[str, Any] | None) -> None:
    save_student(student, method, out_dir, info, extra_tensors=extra)
    if get_adapter_method(method).trains:
        shutil.rmtree(out_dir / TRAINER_DIR, ignore_errors=True)  # the student is saved: checkpoints are spent


def _train_stage(stage: Stage, student: Student, trained: torch.nn.Module, train_rows: Sequence[dict[str, Any]],
                 train_probs: np.ndarray, val_rows: Sequence[dict[str, Any]], val_probs: np.ndarray,
                 states: tuple[np.ndarray, np.ndarray] | None, config: DistillConfig,
                 hidden: HiddenStateLossConfig | None, hidden_layers: list[int], trainer_dir: Path, logs_dir: Path,
                 seed: int, device: torch.device, callbacks: list[TrainerCallback], multi: bool
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    folder = trainer_dir / f"stage-{stage.index}"
    described = stage.describe()
    done = distributed.from_main(distributed.on_main(_finished_stage)(folder, stage))
    if done is not None:
        # Finished before an interruption: take up its final weights rather than training it again.
        _load_trainable_state(trained, folder / STAGE_DONE_WEIGHTS)
        return done["summary"], done["loss_curve"]

    train_set = _TeacherTargets(take_rows(train_rows, stage.train), train_probs[stage.train],
                                None if states is None else states[0][stage.train])
    val_set = None
    if len(stage.validation):
        val_set = _TeacherTargets(take_rows(val_rows, stage.validation), val_probs[stage.validation],
                                  None if states is None else states[1][stage.validation])
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * config.gradient_accumulation_steps
                                                  * distributed.world_size()))
    total_steps = max(1, math.ceil(steps_per_epoch * stage.epochs))
    strategy = "steps" if config.checkpoint_steps else "epoch"
    early = config.early_stopping_patience is not None and val_set is not None
    args = TrainingArguments(
        output_dir=str(folder),
        num_train_epochs=stage.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=stage.learning_rate,
        weight_decay=config.weight_decay,
        # An absolute count works on transformers 4 and 5 alike (5 dropped warmup_ratio).
        warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        logging_steps=max(1, total_steps // 20),
        save_strategy=strategy,
        save_steps=config.checkpoint_steps or 500,
        eval_strategy=strategy if val_set is not None else "no",
        eval_steps=config.checkpoint_steps,
        # One checkpoint to resume from (the Trainer also keeps the best one while early stopping).
        save_total_limit=1,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        report_to="none",
        remove_unused_columns=False,
        label_names=["teacher_probs"],
        seed=seed,
        use_cpu=device.type == "cpu",
        optim=optimizer_name(device),
        dataloader_num_workers=0,
        # An adapter's trainable parameters (adapters, head, projections) all take part in every step, so DDP need
        # not search; when every weight trains (standard KD) some never do (an encoder's pooler), and must be found.
        ddp_find_unused_parameters=all(p.requires_grad for p in trained.parameters()),
    )
    stage_callbacks = list(callbacks)
    if early:
        stage_callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    board = _tensorboard_callback(logs_dir / f"stage-{stage.index}") if distributed.is_main() else None
    if board is not None:
        stage_callbacks.append(board)
    trainer = DistillationTrainer(
        model=trained,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=_collator(student),
        compute_metrics=_agreement_metric(stage.groups) if val_set is not None else None,
        callbacks=stage_callbacks,
        student=student,
        temperature=config.temperature,
        groups=stage.groups,
        hidden=hidden,
        hidden_layers=hidden_layers,
        hard_label_weight=config.hard_label_weight,
    )
    checkpoint = distributed.from_main(_last_complete_checkpoint(folder) if folder.is_dir() else None)
    if checkpoint is not None:
        log.info("distill: stage %d (%s) resumes from %s", stage.index, stage.name, checkpoint)
    if multi:
        log.info("distill: stage %d (%s): %d texts, %s epochs, lr %g%s", stage.index, stage.name, len(train_set),
                 stage.epochs, stage.learning_rate, ", coarse classes " + str(list(stage.config.label_map))
                 if stage.config.label_map else "")
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        if board is not None and board.tb_writer is not None:
            board.tb_writer.close()
    history = trainer.state.log_history
    curve = [{"stage": stage.index, "step": e["step"], "loss": e["loss"]} for e in history if "loss" in e]
    evals = [{"epoch": e.get("epoch"), "step": e["step"], "loss": e["eval_loss"], "agreement": e.get("eval_agreement")}
             for e in history if "eval_loss" in e]
    stage_summary = {
        **described,
        "steps": int(result.global_step),
        "seconds": time.perf_counter() - t0,
        "train_loss": float(result.training_loss),
        "final_loss": curve[-1]["loss"] if curve else float(result.training_loss),
        "validation": evals,
        "best_validation_loss": trainer.state.best_metric if early else None,
        "stopped_early": bool(early and result.global_step < trainer.state.max_steps),
        "resumed_from": None if checkpoint is None else checkpoint.name,
    }
    distributed.on_main(_mark_stage_finished)(trained, folder, {"summary": stage_summary, "loss_curve": curve})
    return stage_summary, curve


def _mark_stage_finished(trained: torch.nn.Module, folder: Path, record: dict[str, Any]) -> None:
    """Before the next stage starts; weights first: the marker names a complete state."""
    _save_tensors(_trainable_state(trained), folder / STAGE_DONE_WEIGHTS)
    write_json_atomic(folder / STAGE_DONE_INFO, record)


def _finished_stage(folder: Path, stage: Stage) -> dict[str, Any] | None:
    """The record of a stage an earlier run finished (its weights are in STAGE_DONE_WEIGHTS), else None; a
    stage whose record is unreadable is removed, to be trained afresh (its checkpoints may be at its end,
    where resuming trains nothing and loses the summary)."""
    if not (folder / STAGE_DONE_INFO).exists():
        return None
    done = _read_json_or_none(folder / STAGE_DONE_INFO)
    if isinstance(done, dict) and {"summary", "loss_curve"} <= set(done) and (folder / STAGE_DONE_WEIGHTS).is_file():
        log.info("distill: stage %d (%s) was finished by an earlier run; its weights are loaded", stage.index,
                 stage.name)
        return done
    log.info("distill: stage %d (%s): the record that it finished is unreadable; training it afresh", stage.index,
             stage.name)
    shutil.rmtree(folder)
    return None


def is_trained(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a student trained for ``fingerprint`` in the current training format."""
    from tailorkd.run_dir import RunDir
    from tailorkd.students import STUDENT_FILE, read_student_info

    if not (folder / STUDENT_FILE).is_file():
        return False
    try:
        done = read_student_info(folder)
    except TailorkdError as e:  # cut short by a kill under an older tailorkd: train again rather than trust it
        log.warning("distill: %s; training again", e)
        return False
    return (RunDir.stamp_matches(done, fingerprint)
            and done.get("summary", {}).get("training_format") == TRAINING_FORMAT)
