"""The ``prompt:`` section (how the teacher is asked) and ``prompt_search:`` (how a better prompt is looked for)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tailorkd.recipe.base import Section


class PromptConfig(Section):
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


class PromptSearchConfig(Section):
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
        description="Rank candidates after a per-class bias fitted on the other seeds (balanced folds), so that "
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
