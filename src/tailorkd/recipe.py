"""The recipe: one YAML file that is the single source of truth for a run.

Each section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error rather than a
silently ignored setting. ``load_recipe`` reads the file, applies ``key.sub=value`` overrides, validates,
and turns every problem into one :class:`TailorkdError` that names the file and the key path.

Paths: data paths are relative to the recipe file's folder (so a recipe can sit beside its data);
``output_dir`` is relative to the working directory (where the user runs ``tailorkd``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from tailorkd.data.config import SOURCE_KINDS, DataConfig
from tailorkd.errors import TailorkdError

SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LabelSpec(_Section):
    """One class of the task. Its identity on disk is ``name``; ``verbalizer`` is what the models answer."""

    name: str = Field(min_length=1)
    description: str = ""
    verbalizer: str | None = Field(
        default=None, description="The word(s) a language model answers for this class; default: name."
    )

    @property
    def answer(self) -> str:
        return self.verbalizer or self.name


class TaskConfig(_Section):
    name: str = Field(min_length=1, description="Short task name, used in reports.")
    description: str = Field(min_length=1, description="What is being classified, in one sentence.")
    labels: list[LabelSpec] = Field(min_length=2, description="The classes, in the order used everywhere.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[LabelSpec]) -> list[LabelSpec]:
        for what in ("name", "answer"):
            values = [getattr(label, what) for label in labels]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"label {what}s must be unique; repeated: {dupes}")
        return labels

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


class PromptConfig(_Section):
    """Prompt parts. Rendered through the model's chat template when it has one, else a plain template."""

    system: str | None = None
    instruction: str = Field(min_length=1)
    describe_labels: bool = Field(default=True, description="List each label with its description.")
    input_prefix: str = "Text:"
    answer_prefix: str = Field(default="Answer:", description="Cue after which the label is scored.")
    shots: int = Field(default=5, ge=0, description="Few-shot examples drawn from the seed set.")
    max_text_chars: int = Field(default=600, ge=20, description="Each input text is cut to this length.")
    max_shot_chars: int = Field(default=300, ge=20, description="Each few-shot example is cut to this length.")
    template: Literal["auto", "chat", "plain"] = Field(
        default="auto", description="auto: the chat template if the tokenizer has one, else plain."
    )
    shot_selection: Literal["fixed", "knn"] = Field(
        default="fixed",
        description="fixed: the same seeded, class-balanced shots for every text (their prefix is computed once); "
        "knn: for each text, the seeds most similar to it (sentence-embedding cosine), balanced across classes. "
        "A causal-LM student always reads fixed shots.",
    )
    shot_encoder: str = Field(default="minilm-l6", min_length=1,
                              description="knn: the sentence encoder that embeds texts and seeds.")
    shot_seed: int | None = Field(default=None, description="Seed of the fixed shots' draw and order; default: the "
                                  "recipe's seed.")
    response_format: Literal["label", "json"] = Field(
        default="label",
        description='label: the answer is the label alone; json: the answer is a JSON object {"label": ..., '
        '"reason": ...} and the label is scored inside it.',
    )
    multilingual: bool = Field(
        default=False,
        description="Texts may be in any language: the instruction says so and asks for the answer (and reasons) "
        "in English.",
    )

    @model_serializer(mode="wrap")
    def _without_default_options(self, handler: Any) -> dict[str, Any]:
        # A prompt without these options dumps (and so hashes) exactly as before they existed.
        data = handler(self)
        defaults = {"shot_selection": "fixed", "shot_seed": None, "response_format": "label", "multilingual": False}
        for name, default in defaults.items():
            if data.get(name) == default:
                data.pop(name, None)
        if self.shot_selection == "fixed":
            data.pop("shot_encoder", None)
        return data


class PromptSearchConfig(_Section):
    """Prompt search (``tailorkd prompts tune``; ``tailorkd run`` runs it before labelling): candidates
    perturb one part of the best prompt so far at a time, each scored by the teacher's agreement with the
    expert seeds (a seed that is also a shot is left out of its own prompt), until no neighbour is better
    or the budget is spent. The chosen prompt replaces ``prompt`` for every later stage."""

    instructions: list[str] = Field(default_factory=list,
                                    description="Other wordings of the instruction to try, besides prompt.instruction.")
    builtin_instructions: bool = Field(default=True,
                                       description="Also try wordings generated from the task's name and description.")
    systems: list[str | None] = Field(
        default_factory=list, description="Other system prompts to try; no system prompt is always tried.")
    shot_counts: list[int] | None = Field(
        default=None, description="Numbers of shots to try; default: 0, one and two per class, and prompt.shots.")
    shot_draws: int = Field(default=2, ge=0, description="Other seeded draws (choice and order) of fixed shots to try.")
    shot_selections: list[Literal["fixed", "knn"]] = Field(default_factory=lambda: ["fixed", "knn"])
    response_formats: list[Literal["label", "json"]] = Field(
        default_factory=lambda: ["label"], description="Answer formats to try (a served teacher keeps its own).")
    describe_labels: list[bool] = Field(default_factory=lambda: [True, False])
    max_candidates: int = Field(default=16, ge=1, description="Budget: prompts scored, the hand-written one included.")
    metric: Literal["accuracy", "macro_f1", "log_likelihood"] = Field(
        default="macro_f1",
        description="What ranks candidates on the seeds; ties go to the higher mean log-probability of the "
        "true label. macro_f1 penalises a prompt that piles every answer onto one class.",
    )
    calibrate: bool = Field(
        default=True,
        description="Rank candidates after a per-class bias fitted on the other seeds (leave-one-out), so that "
        "a prompt is judged by what it can tell apart rather than by the label bias calibration removes anyway.",
    )
    evaluate_base_on_test: bool = Field(
        default=True, description="Also label the test set with the hand-written prompt, so the report shows "
        "its test accuracy beside the chosen prompt's.")

    @field_validator("shot_counts")
    @classmethod
    def _counts(cls, counts: list[int] | None) -> list[int] | None:
        if counts is not None and (not counts or min(counts) < 0):
            raise ValueError("shot_counts must be a non-empty list of numbers >= 0")
        return counts


Dtype = Literal["float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ServerConfig(_Section):
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, a hosted API) that
    serves the teacher. The prompt goes out as chat messages; the server applies its own chat template."""

    base_url: str = Field(min_length=1, description="The API root, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(default=None, description="The served model name sent in requests; default: teacher.model.")
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (the key itself never goes in a "
        "recipe); none: no key is sent, as for most local servers.",
    )
    mode: Literal["auto", "logprobs", "json"] = Field(
        default="auto",
        description="logprobs: class probabilities from the top log-probabilities of the answer's first token; "
        "json: the answer as a JSON object {label, reason}, the parsed label taking the probability mass; "
        "auto: logprobs, falling back to json when the server gives none.",
    )
    top_logprobs: int = Field(default=20, ge=1, le=20, description="How many top tokens to ask for (logprobs mode).")
    json_smoothing: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="json mode: the parsed label gets 1 - this, the other classes share it evenly.",
    )
    max_tokens_json: int = Field(default=64, ge=8, description="Token limit of one JSON answer.")
    concurrency: int = Field(default=4, ge=1, le=256, description="Requests in flight at once.")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds one request may take before it is retried.")
    max_retries: int = Field(
        default=5, ge=0, description="Retries with exponential backoff after a timeout, a connection error, 429 or 5xx."
    )
    temperature: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _key_env_is_a_name(cls, raw: Any) -> Any:
        # Checked here rather than on the field so that an error never echoes the value: a key pasted in
        # by mistake must not be printed.
        name = raw.get("api_key_env") if isinstance(raw, dict) else None
        if name is not None and not (isinstance(name, str) and _ENV_NAME.fullmatch(name)):
            raise ValueError("api_key_env must be the name of an environment variable (letters, digits, _), "
                             "not the key itself")
        return raw


class HiddenStatesConfig(_Section):
    """Which of the teacher's hidden states to keep for hidden-state distillation, and how to pool them."""

    layers: list[int] = Field(
        min_length=1, description="Indices into the model's hidden states: 0 = embeddings, 1..L = after each "
        "layer, -1 = the last layer."
    )
    pooling: Literal["last", "mean"] = Field(
        default="last", description="last: the state at the answer position; mean: the mean over the text's own "
        "tokens (after the shared few-shot prefix)."
    )
    rows_per_shard: int = Field(default=1024, ge=1, description="Texts per float16 safetensors shard.")

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers: list[int]) -> list[int]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers repeat: {layers}")
        return layers


class ReasonsConfig(_Section):
    """A short generated justification of the teacher's label, kept beside it (shown with alerts)."""

    sample: int = Field(default=50, ge=1, description="How many pool texts (a seeded sample) get a reason.")
    max_new_tokens: int = Field(default=48, ge=4, le=512, description="Token limit of one reason.")


class CalibrationConfig(_Section):
    """How the teacher's class distribution is corrected for label bias (see tailorkd.calibration)."""

    method: Literal["auto", "none", "contextual", "domain", "seed_bias"] = Field(
        default="auto",
        description="contextual: divide out the distribution on content-free inputs; domain: on random word "
        "sequences from the pool; seed_bias: domain plus a per-class bias fitted on the held-out seeds; auto: the "
        "best of these (and none) by macro-F1 on the seeds that are not few-shot examples.",
    )
    content_free: list[str] = Field(default_factory=lambda: ["N/A", "", "[MASK]"],
                                    description="Content-free inputs (contextual).")
    domain_samples: int = Field(default=16, ge=1, le=1000, description="Random in-domain inputs (domain).")
    domain_words: int | None = Field(default=None, ge=1, description="Words per in-domain input; default: the "
                                     "median word count of pool texts (5 to 200).")
    seeds: Literal["not_shown", "all"] = Field(
        default="not_shown", description="The seeds that choose the method, fit seed_bias and weigh an ensemble "
        "member. not_shown: those that are not few-shot examples (with 18 fixed shots of 21 seeds, only 3); all: "
        "every seed, a shown one scored with its shot swapped for an unused seed of its class (as the prompt "
        "search scores them; one teacher call per shot, none after a search). Per-text shots: always all.")

    @model_serializer(mode="wrap")
    def _without_default_seeds(self, handler: Any) -> dict[str, Any]:
        # A calibration without this option dumps (and so hashes) exactly as before it existed.
        data = handler(self)
        if data.get("seeds") == "not_shown":
            data.pop("seeds", None)
        return data


class TeacherConfig(_Section):
    model: str = Field(min_length=1, description="Registry name, local folder or hub id (with server: the "
                       "default served model name).")
    dtype: Dtype = Field(default="float32", description="Local teacher only; ignored with server.")
    device: Device = Field(default="auto", description="Local teacher only; ignored with server.")
    batch_size: int = Field(default=8, ge=1, description="Local teacher only; ignored with server.")
    length_normalize: bool = Field(
        default=False, description="Score a multi-token label by its mean token log-probability (local teacher only)."
    )
    server: ServerConfig | None = Field(default=None, description="Set: the teacher is served over an "
                                        "OpenAI-compatible API instead of loaded locally.")
    hidden_states: HiddenStatesConfig | None = Field(
        default=None, description="Set: also store the teacher's pooled hidden states (local teacher only)."
    )
    reasons: ReasonsConfig | None = Field(
        default=None, description="Set: the teacher writes a one-sentence reason for its label on a sample of "
        "the pool (local teacher only)."
    )
    calibration: CalibrationConfig | None = Field(
        default=None, description="Set: correct the teacher's label bias before the student learns from it."
    )
    ensemble: EnsembleConfig | None = Field(
        default=None, description="Set: more teachers label the same texts (with the recipe's prompt, or each "
        "with its own), and their (each calibrated) distributions are combined."
    )

    @model_validator(mode="after")
    def _members_are_plain(self) -> TeacherConfig:
        for i, member in enumerate(self.ensemble.members if self.ensemble else []):
            extras = [n for n in ("hidden_states", "reasons", "calibration", "ensemble") if getattr(member, n) is not None]
            if extras:
                raise ValueError(f"ensemble.members.{i}: {', '.join(extras)} belong to the main teacher section "
                                 "(calibration applies to every member)")
        return self

    @model_validator(mode="after")
    def _local_only_options(self) -> TeacherConfig:
        if self.server is not None:
            for name in ("hidden_states", "reasons"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs a local teacher: a served model's internals are not reachable"
                                     + (" (a served teacher in json mode records reasons itself)" if name == "reasons"
                                        else ""))
        return self

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler: Any) -> dict[str, Any]:
        # A recipe without these options dumps (and so hashes) exactly as before they existed.
        data = handler(self)
        for name in ("server", "hidden_states", "reasons", "calibration", "ensemble", "prompt"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class EnsembleMemberConfig(TeacherConfig):
    """One more teacher of an ensemble, optionally with a prompt of its own."""

    prompt: PromptConfig | None = Field(
        default=None, description="This member's own prompt section (default: the recipe's prompt, after any "
        "prompt search). A prompt suits one model: on crisis tweets Gemma-3-270M reached 50.8 macro-F1 under the "
        "prompt searched for SmolLM2, 56.9 under its own. Find one with `tailorkd prompts tune RECIPE "
        "teacher.model=MEMBER output_dir=OTHER` and copy its prompts/chosen_prompt.yaml here.")


class EnsembleConfig(_Section):
    """Extra teachers and how their distributions combine with the main teacher's (see teachers.ensemble)."""

    members: list[EnsembleMemberConfig] = Field(default_factory=list, description="More teachers (local or "
                                                "served), each with the recipe's prompt or its own.")
    seed_classifier: SeedClassifierConfig | None = Field(
        default=None, description="Set: a classifier fitted on the expert seeds joins as one more member.")
    combine: Literal["weighted_mean", "product"] = Field(
        default="weighted_mean", description="weighted_mean: a mixture; product: a product of experts."
    )
    weights: Literal["seed_accuracy", "equal"] = Field(
        default="seed_accuracy", description="seed_accuracy: each member weighted by its accuracy on the held-out "
        "expert seeds (after calibration; leave-one-out for the seed classifier)."
    )

    @model_validator(mode="after")
    def _has_a_member(self) -> EnsembleConfig:
        if not self.members and self.seed_classifier is None:
            raise ValueError("an ensemble needs members, a seed_classifier, or both")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_classifier(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("seed_classifier") is None:
            data.pop("seed_classifier", None)
        return data


class SeedClassifierConfig(_Section):
    """The seed-only classifier as a teacher: logistic regression on sentence embeddings of the expert seeds
    (as the seed-only baseline), giving each text a distribution. What an LLM teacher knows and 20 labels
    know are different errors; the ensemble can use both."""

    encoder: str = Field(default="minilm-l6", min_length=1, description="Sentence encoder (registry name, folder).")


TeacherConfig.model_rebuild()
EnsembleMemberConfig.model_rebuild()


class StudentConfig(_Section):
    model: str = Field(min_length=1, description="Registry name, local folder or hub id.")
    kind: Literal["auto", "causal_lm", "encoder"] = Field(
        default="auto", description="causal_lm answers through the prompt; encoder uses a classification head."
    )
    dtype: Dtype = "float32"
    device: Device = "auto"
    max_length: int = Field(default=256, ge=8, description="Token limit of one student input.")


_BOTTLENECK_FIELDS = ("bottleneck_size", "reduction_factor", "bottleneck_placement", "bottleneck_non_linearity")


class AdapterConfig(_Section):
    method: Literal["lora", "qlora", "bottleneck", "full", "none"] = Field(
        default="lora",
        description="lora: train adapters only; qlora: adapters on a 4-bit NF4 base; bottleneck: series "
        "adapters after each block's feed-forward (and attention) output; full: all weights; none: untrained student.",
    )
    r: int = Field(default=16, ge=1, description="LoRA rank (lora, qlora).")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (lora, qlora).")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        default=None, description="lora/qlora: modules to adapt; default: the attention projections of the family. "
        "bottleneck: modules (name suffixes) after whose output an adapter goes; default: by bottleneck_placement.",
    )
    bottleneck_size: int | None = Field(
        default=None, ge=1, description="bottleneck: width of each adapter; default: hidden size / reduction_factor."
    )
    reduction_factor: int = Field(
        default=16, ge=1, description="bottleneck: hidden size / adapter width, when bottleneck_size is not set."
    )
    bottleneck_placement: Literal["ffn", "both"] = Field(
        default="ffn", description="bottleneck: ffn: after each feed-forward block (Pfeiffer); both: also after "
        "each attention output projection (Houlsby).",
    )
    bottleneck_non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        default="relu", description="bottleneck: activation between the down and up projections."
    )

    @model_serializer(mode="wrap")
    def _bottleneck_fields_only_for_bottleneck(self, handler: Any) -> dict[str, Any]:
        # They shape only a bottleneck student: other recipes dump (and so hash) exactly as before they existed.
        data = handler(self)
        if self.method != "bottleneck":
            for key in _BOTTLENECK_FIELDS:
                data.pop(key, None)
        return data


class StageFilter(_Section):
    """Which pool texts a progressive-distillation stage trains on (all bounds that are set must hold).

    Difficulty is read from the teacher's distribution as the student learns it (calibrated when the recipe
    calibrates): confidence is its largest probability, entropy its entropy in nats. A quantile bound is
    taken over the training texts of the stage's input (e.g. min_confidence_quantile: 0.5 keeps the most
    confident half).
    """

    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0, description="Keep texts the teacher "
                                         "gives at least this probability to its top class.")
    min_confidence_quantile: float | None = Field(default=None, ge=0.0, lt=1.0, description="Keep texts whose "
                                                  "confidence is at least this quantile of the pool's.")
    max_entropy: float | None = Field(default=None, ge=0.0, description="Keep texts whose teacher entropy "
                                      "(nats) is at most this.")
    max_entropy_quantile: float | None = Field(default=None, gt=0.0, le=1.0, description="Keep texts whose "
                                               "entropy is at most this quantile of the pool's.")
    min_chars: int | None = Field(default=None, ge=0, description="Keep texts at least this many characters long.")
    max_chars: int | None = Field(default=None, ge=1, description="Keep texts at most this many characters long.")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> StageFilter:
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars={self.min_chars} is above max_chars={self.max_chars}")
        return self

    @model_serializer(mode="wrap")
    def _only_set_bounds(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class StageConfig(_Section):
    """One stage of progressive distillation: a subset of the pool and/or coarser classes, its own epochs
    and learning rate. Each stage continues from the weights the previous one ended with (a fresh
    optimizer and schedule)."""

    name: str | None = Field(default=None, description="Shown in logs and student.json; default stage-<k>.")
    filter: StageFilter | None = Field(default=None, description="Which texts to train on; default: all.")
    label_map: dict[str, list[str]] | None = Field(
        default=None, description="Coarse classes: group name -> the task labels it sums (every label in exactly "
        "one group). Teacher and student distributions are both summed into the groups; the head is unchanged.",
    )
    epochs: float | None = Field(default=None, gt=0, description="Default: distill.epochs.")
    learning_rate: float | None = Field(default=None, gt=0, description="Default: distill.learning_rate.")

    @field_validator("label_map")
    @classmethod
    def _groups_non_empty(cls, label_map: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if label_map is not None:
            if len(label_map) < 2:
                raise ValueError(f"a label map needs at least two groups, got {list(label_map)}")
            empty = [g for g, members in label_map.items() if not members]
            if empty:
                raise ValueError(f"groups without labels: {empty}")
        return label_map

    @model_serializer(mode="wrap")
    def _only_set_options(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


# `distill.progressive: default`: first the texts the teacher is surest of, then all of them.
DEFAULT_PROGRESSIVE_STAGES = [
    {"name": "confident", "filter": {"min_confidence_quantile": 0.5}},
    {"name": "all"},
]


class HiddenStateLossConfig(_Section):
    """Align the student's pooled representation with the teacher's stored pooled hidden states.

    The student's representation (encoder: the mean-pooled last hidden state its head reads; causal LM: the
    hidden state at the answer position after ``student_layer``) goes through a learned linear projection
    to the teacher's width, one per teacher layer. Total loss = (1 - weight) * soft cross-entropy +
    weight * hidden loss (the mean over the layers), so the weight is the share of the hidden term.
    """

    weight: float = Field(gt=0.0, lt=1.0, description="Share of the hidden-state term in the total loss.")
    kind: Literal["mse", "cosine"] = Field(
        default="cosine", description="cosine: 1 - cosine similarity; mse: mean squared error against the teacher "
        "states standardised per dimension (mean 0, variance 1 over the training texts), so it is of order 1.",
    )
    teacher_layers: list[int] | None = Field(
        default=None, description="Which stored teacher layers to align to; default: all that teacher.hidden_states "
        "stores.",
    )
    student_layer: int = Field(default=-1, description="Causal-LM student: the hidden state index to use (0 = "
                               "embeddings, -1 = last layer). An encoder uses its mean-pooled last state.")


class DistillConfig(_Section):
    epochs: float = Field(default=3.0, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    weight_decay: float = Field(default=0.001, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(default=0.3, gt=0)
    temperature: float = Field(default=1.0, gt=0, description="Softens both distributions; loss scaled by T^2.")
    validation_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of the teacher-labelled pool held out (seeded) to evaluate "
        "the student against the teacher after each epoch (loss and agreement); 0: none.",
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Set: stop a stage after this many evaluations without a lower validation "
        "loss and keep its best checkpoint (needs validation_fraction > 0).",
    )
    checkpoint_steps: int | None = Field(
        default=None, ge=1, description="Save a resumable checkpoint (and evaluate) every this many optimizer "
        "steps; default: after each epoch.",
    )
    stages: list[StageConfig] | None = Field(
        default=None, min_length=1, description="Progressive distillation: stages trained in order, each from the "
        "previous one's weights; default: one stage on all texts and classes.",
    )
    progressive: Literal["default"] | None = Field(
        default=None, description="default: two stages, the most confident half of the pool first, then all of it "
        "(each for distill.epochs); not together with stages.",
    )
    hidden_state_loss: HiddenStateLossConfig | None = Field(
        default=None, description="Set: add a hidden-state alignment term (needs teacher.hidden_states).",
    )
    hard_label_weight: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of a hard-label term (cross-entropy with the teacher's "
        "top class) in the class loss: (1-h)*soft + h*hard; 0: soft targets only.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass instead of keeping them: less "
        "memory, about a third more time (the paper's setting).",
    )
    standard_kd_learning_rate: float = Field(
        default=5e-5, gt=0, description="Learning rate of the standard-KD baseline (every weight trains, so far "
        "lower than an adapter's).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.stages is not None and self.progressive is not None:
            raise ValueError("set either stages or progressive, not both")
        if self.early_stopping_patience is not None and self.validation_fraction == 0:
            raise ValueError("early_stopping_patience needs a validation split: set validation_fraction > 0")
        return self

    def check_against(self, label_names: list[str], hidden_states: HiddenStatesConfig | None) -> None:
        """Raise ValueError, naming the key path, when a label map or the hidden-state loss does not fit the
        task's labels or the teacher's stored states."""
        for k, stage in enumerate(self.stages or []):
            if stage.label_map is None:
                continue
            where = f"distill.stages.{k}.label_map"
            unknown = sorted({n for members in stage.label_map.values() for n in members} - set(label_names))
            if unknown:
                raise ValueError(f"{where}: unknown labels {unknown} (the task's labels: {label_names})")
            seen: dict[str, list[str]] = {}
            for group, members in stage.label_map.items():
                for name in members:
                    seen.setdefault(name, []).append(group)
            twice = {n: g for n, g in seen.items() if len(g) > 1}
            if twice:
                raise ValueError(f"{where}: labels in more than one group: {twice}")
            left_out = [n for n in label_names if n not in seen]
            if left_out:
                raise ValueError(f"{where}: labels in no group: {left_out} (every label must be in exactly one)")
        loss = self.hidden_state_loss
        if loss is not None:
            if hidden_states is None:
                raise ValueError("distill.hidden_state_loss needs the teacher's hidden states: set "
                                 "teacher.hidden_states (e.g. {layers: [-1]}) and run `tailorkd label` again")
            missing = [layer for layer in loss.teacher_layers or [] if layer not in hidden_states.layers]
            if missing:
                raise ValueError(f"distill.hidden_state_loss.teacher_layers: {missing} are not stored; "
                                 f"teacher.hidden_states.layers is {hidden_states.layers}")

    def resolved_stages(self) -> list[StageConfig]:
        """The stages to train, in order (one stage with the top-level settings when none are set)."""
        if self.stages is not None:
            return list(self.stages)
        if self.progressive == "default":
            return [StageConfig.model_validate(s) for s in DEFAULT_PROGRESSIVE_STAGES]
        return [StageConfig()]

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler: Any) -> dict[str, Any]:
        # A recipe without these options dumps (and so hashes) exactly as before they existed. The validation
        # split is dumped only when it differs from its default for the same reason (student.json records the
        # training format, so a student trained before the split existed is still retrained).
        data = handler(self)
        for name in ("early_stopping_patience", "checkpoint_steps", "stages", "progressive", "hidden_state_loss"):
            if data.get(name) is None:
                data.pop(name, None)
        if self.validation_fraction == DistillConfig.model_fields["validation_fraction"].default:
            data.pop("validation_fraction", None)
        for name in ("hard_label_weight", "gradient_checkpointing"):
            if not data.get(name):
                data.pop(name, None)
        if self.standard_kd_learning_rate == DistillConfig.model_fields["standard_kd_learning_rate"].default:
            data.pop("standard_kd_learning_rate", None)
        return data


class EvaluationConfig(_Section):
    systems: list[Literal["teacher", "untrained_student", "standard_kd", "student", "seed_only"]] = Field(
        default_factory=lambda: ["teacher", "untrained_student", "standard_kd", "student", "seed_only"],
        description="The paper's four systems and a baseline: teacher (few-shot prompt); untrained_student (the "
        "student as it comes: a causal LM answering through the prompt, an encoder with an untrained head); "
        "standard_kd (every weight trained on the teacher's targets); student (adaptive KD: adapters, stages, "
        "hidden-state loss as configured); seed_only (logistic regression on sentence embeddings of the expert "
        "seeds alone, the bar distillation must clear).",
    )
    batch_size: int = Field(default=16, ge=1)
    seed_only_encoder: str = Field(default="minilm-l6", min_length=1,
                                   description="Sentence encoder of the seed-only baseline (registry name, folder).")

    @field_validator("systems")
    @classmethod
    def _non_empty_unique(cls, systems: list[str]) -> list[str]:
        if len(set(systems)) != len(systems):
            raise ValueError("systems must not repeat")
        return systems


NO_ALERT = "none"


class AlertsConfig(_Section):
    """How a prediction becomes an alert: a severity level from the predicted label and its confidence."""

    severity: dict[str, list[tuple[float, str]]] = Field(
        default_factory=dict,
        description="Per predicted label, [min_confidence, level] pairs with thresholds descending: the first "
        "pair whose threshold the confidence reaches gives the level, e.g. risk: [[0.8, high], [0.5, medium], "
        "[0, low]]. A label not listed, or a confidence below its last threshold, gives 'none'.",
    )

    @field_validator("severity")
    @classmethod
    def _thresholds_descend(cls, severity: dict[str, list[tuple[float, str]]]) -> dict[str, list[tuple[float, str]]]:
        for label, rules in severity.items():
            if not rules:
                raise ValueError(f"{label}: give at least one [min_confidence, level] pair (or leave the label out)")
            thresholds = [t for t, _ in rules]
            if any(not 0.0 <= t <= 1.0 for t in thresholds):
                raise ValueError(f"{label}: thresholds are confidences, in [0, 1]; got {thresholds}")
            if any(a <= b for a, b in zip(thresholds, thresholds[1:])):
                raise ValueError(f"{label}: thresholds must strictly descend; got {thresholds}")
            if any(not level.strip() for _, level in rules):
                raise ValueError(f"{label}: a level name is empty")
        return severity

    def level(self, label: str, confidence: float) -> str:
        """The severity level of a prediction of ``label`` with ``confidence`` (NaN: none)."""
        for threshold, level in self.severity.get(label, []):
            if confidence >= threshold:  # False for NaN, so an abstention raises no alert
                return level
        return NO_ALERT


class Recipe(_Section):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    seed: int = 13
    output_dir: Path
    task: TaskConfig
    data: DataConfig
    prompt: PromptConfig
    teacher: TeacherConfig
    student: StudentConfig
    adapter: AdapterConfig = AdapterConfig()
    distill: DistillConfig = DistillConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    alerts: AlertsConfig | None = Field(default=None, description="Set: predictions carry a severity level.")
    prompt_search: PromptSearchConfig | None = Field(
        default=None, description="Set: the prompt is chosen on the seeds before labelling (tailorkd prompts tune).")

    # Where the recipe file lies; data paths are relative to it. Not part of the recipe's content.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _distill_fits_task_and_teacher(self) -> Recipe:
        self.distill.check_against(self.task.label_names, self.teacher.hidden_states)
        return self

    @model_validator(mode="after")
    def _shots_fit_seeds(self) -> Recipe:
        seeds = self.data.splits.seed_per_class * len(self.task.labels)
        if self.prompt.shots > seeds:
            raise ValueError(
                f"prompt.shots={self.prompt.shots} but the seed set has only {seeds} examples "
                f"(data.splits.seed_per_class={self.data.splits.seed_per_class} x {len(self.task.labels)} labels)"
            )
        return self

    @model_validator(mode="after")
    def _alerts_name_task_labels(self) -> Recipe:
        unknown = sorted(set(self.alerts.severity) - set(self.task.label_names)) if self.alerts else []
        if unknown:
            raise ValueError(f"alerts.severity names labels the task does not have: {unknown} "
                             f"(task labels: {self.task.label_names})")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_alerts(self, handler: Any) -> dict[str, Any]:
        # A recipe without alerts dumps (and so hashes) exactly as before the section existed.
        data = handler(self)
        for name in ("alerts", "prompt_search"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    def content_hash(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none), for naming and invalidating outputs."""
        dump = self.model_dump(mode="json", include=set(sections) or None)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise TailorkdError(f"override {text!r} is not of the form key.sub=value")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise TailorkdError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise TailorkdError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``key.sub=value`` (value parsed as YAML; list items by index: ``data.sources.0.path=x``)."""
    for text in overrides:
        parts, value = _parse_override(text)
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise TailorkdError(f"override {text!r}: {where} is not an index of a {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise TailorkdError(f"override {text!r}: {'.'.join(parts[:depth])} is a value, not a section")
    return raw


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: the recipe is not valid ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        # pydantic puts the tag of a tagged union (e.g. a source's kind) into the path: leave it out.
        loc = [p for i, p in enumerate(err["loc"]) if not (i and isinstance(err["loc"][i - 1], int) and p in SOURCE_KINDS)]
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt, or not a setting of this section)"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem is one TailorkdError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise TailorkdError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TailorkdError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TailorkdError(f"{path}: a recipe is a mapping of sections (task, data, prompt, ...), got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides or []))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise TailorkdError(_format_validation_error(str(path), exc)) from None
    recipe.base_dir = path.resolve().parent
    check_files(recipe, str(path))
    return recipe


def check_files(recipe: Recipe, source: str) -> None:
    """Fail early, naming the key and the path, when a file or folder the recipe names does not exist."""
    from tailorkd.data.sources import resolve_source_path

    for i, src in enumerate(recipe.data.sources):
        try:
            resolve_source_path(src, recipe.base_dir, key=f"data.sources.{i}")
        except TailorkdError as exc:
            raise TailorkdError(f"{source}: {exc}") from None
