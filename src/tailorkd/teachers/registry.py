"""Teacher kinds by name: one registry for every model that labels texts, as PEFT's ``register_peft_method``
registers adapter methods. A kind is one module under ``tailorkd.teachers`` plus one ``register_teacher_kind``
call; a recipe names it by ``teacher.kind`` (the main teacher and each ensemble member) or
``teacher.ensemble.seed_classifier.method`` (the seed-classifier member), and recipe loading checks the name
and the kind's ``teacher.options`` here.

Two roles, each built from what its recipe section gives:

- ``teacher``: ``build(config, task, prompt, shots, selector=...)`` -> a ``base.Teacher`` (``config``: the
  ``TeacherConfig``, or an ensemble member's);
- ``seed_classifier``: ``build(config, seeds, label_names, seed)`` -> a ``base.SeedModel`` (``config``: the
  ``SeedClassifierConfig``).

``build`` may be given as ``"module:attribute"`` and is imported on first use, so reading a recipe loads no
model library. Nothing here imports the recipe, so the recipe can import this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from tailorkd.errors import TailorkdError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from tailorkd.prompts import KnnShotSelector
    from tailorkd.recipe import PromptConfig, SeedClassifierConfig, TaskConfig, TeacherConfig
    from tailorkd.teachers.base import SeedModel, Teacher

TEACHER = "teacher"
SEED_CLASSIFIER = "seed_classifier"
Role = Literal["teacher", "seed_classifier"]

# ``teacher.kind: auto``: what every recipe written before teacher kinds meant.
AUTO = "auto"


@dataclass(frozen=True)
class TeacherKind:
    """One kind of teacher.

    ``options``: the pydantic class ``teacher.options`` is checked against (None: the kind takes none); like
    ``build``, it may be given as ``"module:attribute"``.
    ``server``: the kind talks to ``teacher.server`` (then required; without it ``server`` is refused).
    ``extras``: the main teacher's settings beyond labelling it supports (``hidden_states``, ``reasons``).
    ``weights``: ``teacher.model`` -> a fingerprint of the weights it names (or ``"module:attribute"``), for a
    kind whose model is files here: the label stage records it, so new weights at the same path label afresh.
    """

    name: str
    build: Callable[..., Any] | str
    role: Role = TEACHER
    options: type[BaseModel] | str | None = None
    server: bool = False
    extras: frozenset[str] = frozenset()
    description: str = ""
    weights: Callable[[str], str] | str | None = None

    def builder(self) -> Callable[..., Any]:
        """``build``, imported first when given as ``"module:attribute"`` (dotted attributes allowed)."""
        return _imported(self.build)

    def weights_fingerprint(self, model: str) -> str | None:
        """The fingerprint of the weights ``model`` names (None: the kind's weights are not files here)."""
        return None if self.weights is None else _imported(self.weights)(model)

    def parsed_options(self, options: Mapping[str, Any]) -> BaseModel | None:
        """``options`` validated by the kind's options class (a pydantic ``ValidationError`` when they do not
        fit; a ``ValueError`` when the kind takes none but some are given)."""
        if self.options is None:
            if options:
                raise ValueError(f"teacher kind {self.name!r} takes no options, got {sorted(options)}")
            return None
        return _imported(self.options).model_validate(dict(options))


def _imported(spec: Any) -> Any:
    """``spec`` itself, or the attribute a ``"module:attribute"`` string names (dotted attributes allowed)."""
    if not isinstance(spec, str):
        return spec
    module, _, attribute = spec.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


_KINDS: dict[str, TeacherKind] = {}


def register_teacher_kind(kind: TeacherKind) -> TeacherKind:
    """Make ``kind`` available by its name; a name registers once (``unregister_teacher_kind`` frees it)."""
    if kind.name == AUTO or kind.name in _KINDS:
        raise ValueError(f"teacher kind {kind.name!r} is already registered")
    if kind.role not in (TEACHER, SEED_CLASSIFIER):
        raise ValueError(f"teacher kind {kind.name!r}: role must be {TEACHER!r} or {SEED_CLASSIFIER!r}")
    _KINDS[kind.name] = kind
    return kind


def unregister_teacher_kind(name: str) -> None:
    """Forget the kind ``name`` (a kind registered for a test or a session)."""
    _KINDS.pop(name, None)


def teacher_kinds(role: Role = TEACHER) -> list[str]:
    """The registered kinds of ``role``, sorted."""
    return sorted(name for name, kind in _KINDS.items() if kind.role == role)


def get_teacher_kind(name: str, role: Role = TEACHER, key: str = "teacher.kind") -> TeacherKind:
    """The kind ``name`` of ``role``; a one-line error naming the recipe ``key`` and the known kinds if none."""
    kind = _KINDS.get(name)
    if kind is None or kind.role != role:
        known = ", ".join(teacher_kinds(role))
        raise TailorkdError(f"{key}: unknown teacher kind {name!r} (known: {known})")
    return kind


def implied_kind(config: TeacherConfig) -> str:
    """What ``kind: auto`` means for a teacher section: served when it names a server, else local."""
    return "served" if config.server is not None else "local"


def resolved_kind(config: TeacherConfig) -> str:
    """The kind a teacher section names (``auto``: its ``implied_kind``)."""
    return implied_kind(config) if config.kind == AUTO else config.kind


def make_teacher(config: TeacherConfig, task: TaskConfig, prompt: PromptConfig, shots: list[dict[str, Any]],
                 selector: KnnShotSelector | None = None) -> Teacher:
    """The teacher a recipe's teacher section (or an ensemble member's) describes, built by its kind (a local
    model is loaded now)."""
    return get_teacher_kind(resolved_kind(config)).builder()(config, task, prompt, shots, selector=selector)


def make_seed_model(config: SeedClassifierConfig, seeds: Sequence[dict[str, Any]], label_names: Sequence[str],
                    seed: int) -> SeedModel:
    """The seed classifier ``teacher.ensemble.seed_classifier`` describes (its ``method`` names the kind)."""
    kind = get_teacher_kind(config.method, SEED_CLASSIFIER, "teacher.ensemble.seed_classifier.method")
    return kind.builder()(config, seeds, label_names, seed)


# The built-in kinds, one registration each.
register_teacher_kind(TeacherKind(
    "local", "tailorkd.teachers.local:LocalTeacher", extras=frozenset({"hidden_states", "reasons"}),
    weights="tailorkd.models:weights_fingerprint",
    description="a Hugging Face causal LM loaded here; class probabilities from label likelihoods"))
register_teacher_kind(TeacherKind(
    "served", "tailorkd.teachers.served:ServedTeacher", server=True,
    description="a model behind an OpenAI-compatible chat-completions API (teacher.server)"))
register_teacher_kind(TeacherKind(
    "llama_cpp", "tailorkd.teachers.llama_cpp:LlamaCppTeacher", options="tailorkd.teachers.llama_cpp:LlamaCppOptions",
    weights="tailorkd.teachers.llama_cpp:gguf_weights",
    description="a GGUF model run in-process by llama.cpp; class probabilities from label likelihoods"))
register_teacher_kind(TeacherKind(
    "logistic_regression", "tailorkd.teachers.seed_classifier:LogisticSeedModel.from_config", role=SEED_CLASSIFIER,
    description="logistic regression on frozen sentence embeddings of the seeds"))
register_teacher_kind(TeacherKind(
    "setfit", "tailorkd.teachers.seed_classifier:SetFitSeedModel.from_config", role=SEED_CLASSIFIER,
    description="SetFit: the sentence encoder tuned on pairs of seeds, a logistic-regression head"))
