"""Prompt parts rendered into each model's own format, with few-shot examples from the seed set."""

from tailorkd.prompts.render import PromptBuilder, PromptEncoder, choose_shots, clip_text

__all__ = ["PromptBuilder", "PromptEncoder", "choose_shots", "clip_text"]
