"""Which seeds a prompt shows: fixed few-shot examples, or per-text ones, and which seeds are left to judge it."""

from __future__ import annotations

from typing import Any, Sequence

from tailorkd.prompts.render import choose_shots


def per_text_shots(prompt: Any) -> bool:
    """Whether ``prompt`` chooses its shots per text (kNN) rather than showing the same fixed ones."""
    return prompt.shot_selection == "knn" and prompt.shots > 0


def fixed_shots(prompt: Any, seeds: Sequence[dict[str, Any]], label_names: list[str], recipe_seed: int
                ) -> list[dict[str, Any]]:
    """The fixed few-shot examples of ``prompt``, drawn from ``seeds`` with its shot_seed (default: the recipe's
    seed). A causal-LM student reads these even when the teacher's shots are per text."""
    return choose_shots(list(seeds), label_names, prompt.shots,
                        recipe_seed if prompt.shot_seed is None else prompt.shot_seed)


def knn_selector(prompt: Any, seeds: Sequence[dict[str, Any]], label_names: list[str], embed: Any = None) -> Any:
    """The per-text shot selector of ``prompt`` when it asks for one (shot_selection: knn), else None.
    ``embed``: an already loaded sentence embedder to share."""
    from tailorkd.prompts.select import KnnShotSelector

    if not per_text_shots(prompt):
        return None
    return KnnShotSelector(seeds, label_names, prompt.shots, prompt.shot_encoder, embed=embed)


def held_out_seeds(prompt: Any, seeds: Sequence[dict[str, Any]], label_names: list[str], recipe_seed: int
                   ) -> list[dict[str, Any]]:
    """The seeds ``prompt`` does not show as fixed shots: the only labelled texts that may judge a teacher.
    With per-text shots every seed is held out (a seed is never chosen as its own example)."""
    if per_text_shots(prompt):
        return list(seeds)
    shown = {s["id"] for s in fixed_shots(prompt, seeds, label_names, recipe_seed)}
    return [r for r in seeds if r["id"] not in shown]
