"""Prompt parts rendered into each model's own format, with few-shot examples from the seed set."""

from tailorkd.prompts.render import PromptBuilder, PromptEncoder, choose_shots, clip_text
from tailorkd.prompts.select import KnnShotSelector

__all__ = ["KnnShotSelector", "PromptBuilder", "PromptEncoder", "choose_shots", "clip_text"]
