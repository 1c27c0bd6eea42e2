"""The ``teacher:`` section: the LLM that labels the pool, where it runs, what else it records, how its label
bias is corrected and which other teachers join it in an ensemble. Teacher kinds are checked against
``tailorkd.teachers.registry`` (which imports nothing of the recipe)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tailorkd.recipe.base import Device, Dtype, Section
from tailorkd.recipe.prompt import PromptConfig
from tailorkd.teachers.registry import (
    AUTO,
    SEED_CLASSIFIER,
    TEACHER,
    get_teacher_kind,
    implied_kind,
    resolved_kind,
    teacher_kinds,
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ServerConfig(Section):
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, a hosted API) that
    serves the teacher. The prompt goes out as chat messages; the server applies its own chat template."""

    base_url: str = Field(min_length=1, description="The API root, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(default=None,
                              description="The served model name sent in requests; default: teacher.model.")
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


class HiddenStatesConfig(Section):
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


class ReasonsConfig(Section):
    """A short generated justification of the teacher's label, kept beside it (shown with alerts)."""

    sample: int = Field(default=50, ge=1, description="How many pool texts (a seeded sample) get a reason.")
    max_new_tokens: int = Field(default=48, ge=4, le=512, description="Token limit of one reason.")


class CalibrationConfig(Section):
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
        default="not_shown", description="The seeds that choose the method and fit seed_bias (the teacher check "
        "and the ensemble's weights are judged on every seed). not_shown: those that are not few-shot examples "
        "(with 18 fixed shots of 21 seeds, only 3); all: "
        "every seed, a shown one scored with its shot swapped for an unused seed of its class (as the prompt "
        "search scores them; one teacher call per shot, none after a search). Per-text shots: always all.")


class TeacherCheckConfig(Section):
    """The teacher judged on the seeds and a pool sample before it labels the pool (stages.teacher_check)."""

    on_failure: Literal["warn", "stop", "fallback"] = Field(
        default="warn",
        description="What a weak or collapsed teacher does to the run. warn: say so and go on; stop: an error "
        "before any pool text is labelled; fallback: the seed classifier (logistic regression on the seeds' "
        "sentence embeddings) labels pool and test in the teacher's place, no calibration or ensemble, when it "
        "scores at least as well on the seeds (else as warn).",
    )
    pool_sample: int = Field(default=200, ge=0, description="Pool texts (a seeded sample) whose predicted class "
                             "mix is judged; their labels are kept, so labelling the pool later skips them.")
    collapse_share: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Collapsed: one class takes at least this share of the teacher's "
        "answers on the pool sample or on the seeds (after calibration when the recipe calibrates), while it "
        "holds less of the seeds.")
    seed_only_margin: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Weak: the teacher's seed accuracy is more than this below the "
        "seed classifier's (judged on balanced folds), or its 95% interval does not clear chance.")


class TeacherConfig(Section):
    # Left out of a dump while they hold what leaving them out implies (kind: local, or served with a server;
    # no options), so a recipe that names no kind (every recipe written before teacher kinds) dumps, and so
    # fingerprints and stamps its run folder, exactly as before, and one naming its implied kind alike.
    IMPLIED_WHEN_LEFT_OUT: ClassVar[frozenset[str]] = frozenset({"kind", "options"})

    kind: str = Field(default=AUTO, min_length=1, description="Which kind of teacher (tailorkd.teachers.registry): "
                      "local (a Hugging Face causal LM loaded here), served (teacher.server), or one registered "
                      "with register_teacher_kind; auto: served when server is set, else local.")
    model: str = Field(min_length=1, description="Registry name, local folder or hub id (with server: the "
                       "default served model name).")
    options: dict[str, Any] = Field(default_factory=dict, description="Settings of a teacher kind that takes "
                                    "any, checked against its options class; local and served take none.")
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
    check: TeacherCheckConfig | None = Field(
        default_factory=TeacherCheckConfig, description="The teacher judged before it labels the pool: seed "
        "accuracy and macro-F1 with intervals against chance and the seed classifier, the class mix of a pool "
        "sample, a verdict (ok / weak / collapsed) and what a failed check does; null: no check."
    )

    @model_validator(mode="after")
    def _members_are_plain(self) -> TeacherConfig:
        for i, member in enumerate(self.ensemble.members if self.ensemble else []):
            extras = [n for n in ("hidden_states", "reasons", "calibration", "ensemble")
                      if getattr(member, n) is not None]
            if member.check != TeacherCheckConfig():
                extras.append("check")
            if extras:
                raise ValueError(f"ensemble.members.{i}: {', '.join(extras)} belong to the main teacher section "
                                 "(calibration applies to every member)")
        return self

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        if kind != AUTO and kind not in teacher_kinds(TEACHER):
            raise ValueError(f"unknown teacher kind {kind!r} (known: {', '.join([AUTO, *teacher_kinds(TEACHER)])})")
        return kind

    @model_validator(mode="after")
    def _fits_its_kind(self) -> TeacherConfig:
        kind = get_teacher_kind(resolved_kind(self))
        self.kind = kind.name  # auto resolved once: every reader sees the kind that labels
        if kind.server and self.server is None:
            raise ValueError(f"teacher kind {kind.name!r} needs server (base_url and the rest)")
        if not kind.server and self.server is not None:
            raise ValueError(f"server: teacher kind {kind.name!r} takes no server (kind served or auto does)")
        try:
            kind.parsed_options(self.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"options{'.' + where if where else ''}: {first['msg']} (teacher kind {kind.name!r})"
                             ) from None
        except ValueError as exc:
            raise ValueError(f"options: {exc}") from None
        for name in ("hidden_states", "reasons"):
            if getattr(self, name) is not None and name not in kind.extras:
                if kind.name == "served":
                    raise ValueError(f"{name} needs a local teacher: a served model's internals are not reachable"
                                     + (" (a served teacher in json mode records reasons itself)" if name == "reasons"
                                        else ""))
                raise ValueError(f"{name}: teacher kind {kind.name!r} does not support it (local does)")
        return self

    @model_serializer(mode="wrap")
    def _dump_without_implied(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = handler(self)  # see IMPLIED_WHEN_LEFT_OUT
        if self.kind == implied_kind(self):
            dumped.pop("kind", None)
        if not self.options:
            dumped.pop("options", None)
        return dumped


class EnsembleMemberConfig(TeacherConfig):
    """One more teacher of an ensemble, optionally with a prompt of its own."""

    prompt: PromptConfig | None = Field(
        default=None, description="This member's own prompt section (default: the recipe's prompt, after any "
        "prompt search). A prompt suits one model: on crisis tweets Gemma-3-270M reached 50.8 macro-F1 under the "
        "prompt searched for SmolLM2, 56.9 under its own. Find one with `tailorkd prompts tune RECIPE "
        "teacher.model=MEMBER output_dir=OTHER` and copy its prompts/chosen_prompt.yaml here.")


class EnsembleConfig(Section):
    """Extra teachers and how their distributions combine with the main teacher's (see teachers.ensemble)."""

    members: list[EnsembleMemberConfig] = Field(default_factory=list, description="More teachers (local or "
                                                "served), each with the recipe's prompt or its own.")
    seed_classifier: SeedClassifierConfig | None = Field(
        default=None, description="Set: a classifier fitted on the expert seeds joins as one more member.")
    combine: Literal["weighted_mean", "product"] = Field(
        default="weighted_mean", description="weighted_mean: a mixture; product: a product of experts."
    )
    weights: Literal["seed_accuracy", "equal"] = Field(
        default="seed_accuracy", description="seed_accuracy: each member weighted by its expected skill above "
        "chance on the expert seeds (after calibration, no seed judged by a prompt showing it; the seed classifier "
        "refitted on balanced folds), which moves towards equal weights the fewer seeds judge; equal: the same "
        "weight for all."
    )
    confidence: Literal["seed_accuracy", "as_labelled"] = Field(
        default="as_labelled", description="as_labelled (default): combined as they come. seed_accuracy: "
        "before they combine, each judged member's "
        "distributions are tempered (p^(1/T), renormalised) so that its mean top probability over the pool equals "
        "its accuracy on the held-out seeds; a member that is right as often as another then speaks as loudly, "
        "whether its raw scores are peaked (an LLM) or flat (a strongly regularised logistic regression). "
        "Opt-in: in the quality suite it helped BBC News and cost crisis tweets and financial tone "
        "(docs/recipes.md); the BBC News recipe sets it."
    )

    @model_validator(mode="after")
    def _has_a_member(self) -> EnsembleConfig:
        if not self.members and self.seed_classifier is None:
            raise ValueError("an ensemble needs members, a seed_classifier, or both")
        return self


class SeedClassifierConfig(Section):
    """A classifier fitted on the expert seeds as a teacher, giving each text a distribution. What an LLM
    teacher knows and 20 labels know are different errors; the ensemble can use both."""

    encoder: str = Field(default="minilm-l6", min_length=1, description="Sentence encoder (registry name, folder).")
    method: str = Field(
        default="logistic_regression", description="A seed-classifier teacher kind (tailorkd.teachers.registry). "
        "logistic_regression: on the frozen encoder's embeddings of "
        "the seeds, as the seed-only baseline (seconds); setfit: the encoder first tuned contrastively on pairs "
        "of seeds (SetFit, `tailorkd[setfit]`), stronger on long texts (test macro-F1 +5.5 on BBC News, +9.1 on "
        "financial tone, -7.0 on crisis tweets against logistic regression), and minutes on a CPU: it is fitted "
        "once for the pool and once per fold of the seeds to be judged.")
    setfit_iterations: int = Field(default=20, ge=1, description="method setfit: pairs drawn per seed (SetFit's "
                                   "num_iterations).")

    @field_validator("method")
    @classmethod
    def _registered_method(cls, method: str) -> str:
        if method not in teacher_kinds(SEED_CLASSIFIER):
            known = ", ".join(teacher_kinds(SEED_CLASSIFIER))
            raise ValueError(f"unknown seed-classifier kind {method!r} (known: {known})")
        return method


# TeacherConfig and EnsembleMemberConfig name classes defined after them: resolve those names now.
TeacherConfig.model_rebuild()
EnsembleMemberConfig.model_rebuild()
