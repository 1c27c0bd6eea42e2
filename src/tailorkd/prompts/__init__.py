"""Prompt parts rendered into each model's own format, with few-shot examples from the seed set."""

from tailorkd.prompts.render import PromptBuilder, PromptEncoder, choose_shots, clip_text
from tailorkd.prompts.select import KnnShotSelector
from tailorkd.prompts.shots import fixed_shots, held_out_seeds, knn_selector, per_text_shots

__all__ = ["KnnShotSelector", "PromptBuilder", "PromptEncoder", "choose_shots", "clip_text", "fixed_shots",
           "held_out_seeds", "knn_selector", "per_text_shots"]
