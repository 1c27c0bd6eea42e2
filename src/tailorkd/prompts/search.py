"""Prompt search: choose the prompt parts from data (PromptAid's explore / perturb / test / iterate).

A candidate is a setting of the prompt's parts (instruction wording, system prompt, label descriptions,
number, draw and selection of shots, answer format). The search starts from the hand-written prompt,
scores every candidate that changes one part of the best prompt so far (perturb, test), moves to the best
one, and repeats (iterate) until no neighbour is better or ``max_candidates`` prompts have been scored.
Scoring is the teacher's agreement with the expert seeds (``seed_metrics``); how a candidate is scored
is the caller's (``pipeline.tune_prompt`` asks the real teacher, through the label store).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from tailorkd.recipe import PromptConfig, PromptSearchConfig, TaskConfig

# The parts a candidate sets, in the order neighbours are listed.
PARTS = ("instruction", "system", "describe_labels", "shots", "shot_selection", "shot_seed", "response_format")


def builtin_instructions(task: TaskConfig) -> list[str]:
    """Instruction wordings made from the task itself, so a search has alternatives without any typing."""
    labels = ", ".join(label.answer for label in task.labels)
    description = task.description.strip().rstrip(".")
    return [
        f"{description}. Choose the label that fits the text best.",
        f"Read the text and decide its {task.name}. Possible labels: {labels}.",
        f"You are given a text. Which of these labels describes it: {labels}?",
    ]


def canonical(parts: dict[str, Any], recipe_seed: int) -> dict[str, Any]:
    """Settings that render the same prompt written the same way (so equal prompts are scored once)."""
    parts = dict(parts)
    if parts["shots"] == 0:
        parts["shot_selection"] = "fixed"
    if parts["shots"] == 0 or parts["shot_selection"] == "knn" or parts["shot_seed"] == recipe_seed:
        parts["shot_seed"] = None
    return parts


def key_of(parts: dict[str, Any]) -> tuple:
    return tuple((name, parts[name]) for name in PARTS)


def search_space(prompt: PromptConfig, config: PromptSearchConfig, task: TaskConfig, n_seeds: int,
                 recipe_seed: int, served: bool) -> dict[str, list[Any]]:
    """The values each part may take; the hand-written prompt's own value comes first."""
    def unique(values: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if value not in out:
                out.append(value)
        return out

    n_classes = len(task.labels)
    instructions = [prompt.instruction, *config.instructions]
    if config.builtin_instructions:
        instructions += builtin_instructions(task)
    # At most n_seeds - 1 shots, so that every seed can be scored with a prompt that does not show it.
    counts = config.shot_counts if config.shot_counts is not None else [prompt.shots, 0, n_classes, 2 * n_classes]
    counts = unique([min(c, max(n_seeds - 1, 0)) for c in [prompt.shots, *counts]])
    draws = [prompt.shot_seed] + [recipe_seed + 1 + i for i in range(config.shot_draws)]
    return {
        "instruction": unique(instructions),
        "system": unique([prompt.system, *config.systems, None]),
        "describe_labels": unique([prompt.describe_labels, *config.describe_labels]),
        "shots": counts,
        "shot_selection": unique([prompt.shot_selection, *config.shot_selections]),
        "shot_seed": unique(draws),
        "response_format": ["label"] if served else unique([prompt.response_format, *config.response_formats]),
    }


def base_parts(prompt: PromptConfig) -> dict[str, Any]:
    return {name: getattr(prompt, name) for name in PARTS}


def to_prompt(base: PromptConfig, parts: dict[str, Any]) -> PromptConfig:
    """``base`` with the candidate's parts set (every other field, e.g. lengths and template, kept)."""
    return PromptConfig.model_validate({**base.model_dump(mode="json"), **parts,
                                        "shots": int(parts["shots"])})


def neighbours(parts: dict[str, Any], space: dict[str, list[Any]], recipe_seed: int) -> list[dict[str, Any]]:
    """Every candidate that differs from ``parts`` in one part (canonical, without repeats)."""
    seen = {key_of(canonical(parts, recipe_seed))}
    out = []
    for name in PARTS:
        for value in space[name]:
            if value == parts[name]:
                continue
            other = canonical({**parts, name: value}, recipe_seed)
            if key_of(other) not in seen:
                seen.add(key_of(other))
                out.append(other)
    return out


def seed_metrics(probs: np.ndarray, labels: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    """How well a teacher's [S, M] distributions on the seeds match their labels (a row of NaN is an
    abstention: wrong, with log-probability log(1e-6))."""
    from sklearn.metrics import f1_score

    names = list(names)
    answered = ~np.isnan(probs).any(axis=1)
    predicted = [names[int(p.argmax())] if ok else "(abstained)" for p, ok in zip(np.nan_to_num(probs), answered)]
    truth = [names.index(label) for label in labels]
    true_p = np.array([probs[i, j] if answered[i] else 1e-6 for i, j in enumerate(truth)], dtype=float)
    return {
        "accuracy": float(np.mean([p == t for p, t in zip(predicted, labels)])) if len(labels) else math.nan,
        "macro_f1": float(f1_score(list(labels), predicted, labels=names, average="macro", zero_division=0))
        if len(labels) else math.nan,
        "log_likelihood": float(np.mean(np.log(np.clip(true_p, 1e-6, 1.0)))) if len(labels) else math.nan,
        "predicted_counts": {name: predicted.count(name) for name in names},
        "seeds": len(labels),
    }


def fold_calibrated(probs: np.ndarray, labels: Sequence[str], names: Sequence[str], seed: int, l2: float = 0.1
                    ) -> np.ndarray:
    """Each seed's distribution after a per-class bias fitted without it, on balanced folds of the other
    seeds (``calibration.held_out_bias_probs``), so a seed never calibrates itself and no refit leans away from
    its class. Abstentions (NaN rows) stay NaN and fit nothing."""
    from tailorkd.calibration import held_out_bias_probs, log_probs

    names = list(names)
    answered = ~np.isnan(probs).any(axis=1)
    out = np.full_like(probs, np.nan, dtype=float)
    if answered.sum() < 2:  # nothing to fit a bias on: as they are
        out[answered] = probs[answered]
        return out
    y = np.array([names.index(label) for label in labels])[answered]
    out[answered] = held_out_bias_probs(log_probs(probs[answered]), y, l2, seed)
    return out


def rank_key(metrics: dict[str, Any], metric: str) -> tuple[float, ...]:
    """Higher is better: the chosen metric, then the mean log-probability of the true label."""
    return (metrics[metric], metrics["log_likelihood"])


@dataclass
class Scored:
    parts: dict[str, Any]
    metrics: dict[str, Any]
    round: int
    teacher_calls: int = 0
    seconds: float = 0.0
    order: int = 0


@dataclass
class SearchResult:
    base: Scored
    chosen: Scored
    scored: list[Scored] = field(default_factory=list)
    rounds: int = 0
    stopped_because: str = ""

    def ranked(self, metric: str) -> list[Scored]:
        return sorted(self.scored, key=lambda s: (rank_key(s.metrics, metric), -s.order), reverse=True)


def greedy_search(base: dict[str, Any], space: dict[str, list[Any]], score: Callable[[dict[str, Any]], tuple],
                  config: PromptSearchConfig, recipe_seed: int, progress: Callable[[Scored], None] | None = None
                  ) -> SearchResult:
    """Hill-climb over one-part changes from ``base``. ``score(parts)`` returns (metrics, teacher calls,
    seconds). Neighbours of a round are tried in a seeded order, so a budget cut is not biased towards
    the first parts."""
    rng = random.Random(recipe_seed)
    scored: dict[tuple, Scored] = {}

    def evaluate(parts: dict[str, Any], round_no: int) -> Scored:
        metrics, calls, seconds = score(parts)
        item = Scored(parts, metrics, round_no, calls, seconds, order=len(scored))
        scored[key_of(parts)] = item
        if progress is not None:
            progress(item)
        return item

    base = canonical(base, recipe_seed)
    current = evaluate(base, 0)
    first = current
    rounds, why = 0, ""
    while True:
        if len(scored) >= config.max_candidates:
            why = f"budget of {config.max_candidates} candidates spent"
            break
        todo = [p for p in neighbours(current.parts, space, recipe_seed) if key_of(p) not in scored]
        if not todo:
            why = "every one-part change of the best prompt is scored"
            break
        rounds += 1
        rng.shuffle(todo)
        for parts in todo[: config.max_candidates - len(scored)]:
            evaluate(parts, rounds)
        best = max(scored.values(), key=lambda s: (rank_key(s.metrics, config.metric), -s.order))
        if best is current:
            why = "no one-part change of the best prompt scores better"
            break
        current = best
    return SearchResult(base=first, chosen=current, scored=list(scored.values()), rounds=rounds, stopped_because=why)


def loo_shot_groups(shots: list[dict[str, Any]], seeds: Sequence[dict[str, Any]]
                    ) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """[(shots, seeds scored with them)]: the seeds that are not shots with ``shots``; each seed that is a
    shot with ``shots`` where it is replaced by an unused seed of its class (dropped when there is none),
    so that no seed is ever scored by a prompt that shows its own answer."""
    shot_ids = {s["id"] for s in shots}
    groups = [(shots, [s for s in seeds if s["id"] not in shot_ids])]
    for i, shot in enumerate(shots):
        own = [s for s in seeds if s["id"] == shot["id"]]
        if not own:
            continue
        spare = sorted((s for s in seeds if s["label"] == shot["label"] and s["id"] not in shot_ids),
                       key=lambda s: str(s["id"]))
        replaced = shots[:i] + spare[:1] + shots[i + 1:]
        groups.append((replaced, own))
    return [(group_shots, rows) for group_shots, rows in groups if rows]


def write_table(result: SearchResult, metric: str) -> str:
    """The ranked candidates as a Markdown table (what `tailorkd prompts tune` prints and writes)."""
    lines = [f"| rank | {metric} | accuracy | macro-F1 | mean log p(true) | instruction | system | labels described "
             "| shots | selection | draw | format | round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rank, s in enumerate(result.ranked(metric), 1):
        p, m = s.parts, s.metrics
        mark = " (chosen)" if s is result.chosen else (" (hand-written)" if s is result.base else "")
        instruction = p["instruction"] if len(p["instruction"]) <= 60 else p["instruction"][:57] + "..."
        lines.append(f"| {rank}{mark} | {m[metric]:.3f} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
                     f"{m['log_likelihood']:.3f} | {instruction} | {'yes' if p['system'] else 'no'} | "
                     f"{'yes' if p['describe_labels'] else 'no'} | {p['shots']} | {p['shot_selection']} | "
                     f"{'default' if p['shot_seed'] is None else p['shot_seed']} | {p['response_format']} | "
                     f"{s.round} |")
    return "\n".join(lines)

