"""Prompt rendering: chat and plain formats, few-shot seeds, answer continuation."""

from __future__ import annotations

from transformers import AutoTokenizer

from helpers import TOPICS
from tailorkd.prompts import PromptBuilder, choose_shots, clip_text
from tailorkd.recipe import PromptConfig, TaskConfig

TASK = TaskConfig(name="topic", description="d", labels=[{"name": t, "description": f"{t} news"} for t in TOPICS])
SEEDS = [{"id": f"{t}-{i}", "text": f"A {t} story number {i}.", "title": None, "label": t}
         for t in TOPICS for i in range(4)]


def test_clip_text_cuts_at_a_word_and_marks_it():
    assert clip_text("short  text", 50) == "short text"
    clipped = clip_text("word " * 100, 40)
    assert len(clipped) <= 40 and clipped.endswith("...") and " wor..." not in clipped


def test_choose_shots_is_balanced_deterministic_and_seeded():
    shots = choose_shots(SEEDS, TOPICS, 10, seed=1)
    assert [s["label"] for s in shots].count("sport") == 2
    assert len({s["id"] for s in shots}) == 10
    assert choose_shots(SEEDS, TOPICS, 10, seed=1) == shots
    assert choose_shots(SEEDS, TOPICS, 10, seed=2) != shots
    assert choose_shots(SEEDS, TOPICS, 0, seed=1) == []


def test_plain_prompt_has_instruction_labels_shots_and_cue(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    shots = choose_shots(SEEDS, TOPICS, 3, seed=0)
    builder = PromptBuilder(TASK, PromptConfig(instruction="Pick the topic.", system="You are careful."), tok, shots)
    assert not builder.use_chat
    text = builder.render("Goal in the final minute.", title="Late win")
    assert text.startswith("You are careful.\n\nPick the topic.")
    assert "- sport: sport news" in text
    for shot in shots:
        assert f"{shot['text']}\nAnswer: {shot['label']}" in text
    assert text.endswith("Text: Late win. Goal in the final minute.\nAnswer:")
    assert builder.label_continuations() == [f" {t}" for t in TOPICS]


def test_chat_prompt_uses_the_template_and_shots_as_turns(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    shots = choose_shots(SEEDS, TOPICS, 2, seed=0)
    builder = PromptBuilder(TASK, PromptConfig(instruction="Pick the topic."), tok, shots)
    assert builder.use_chat
    text = builder.render("Goal!")
    assert text.count("<|im_start|>user") == 3 and text.count("<|im_start|>assistant") == 3
    assert f"<|im_start|>assistant\n{shots[0]['label']}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert builder.label_continuations() == TOPICS  # no space after the newline that opens the answer


def test_fingerprint_changes_with_what_changes_the_prompt(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    base = PromptBuilder(TASK, PromptConfig(instruction="A."), tok, SEEDS[:2]).fingerprint()
    assert PromptBuilder(TASK, PromptConfig(instruction="A."), tok, SEEDS[:2]).fingerprint() == base
    assert PromptBuilder(TASK, PromptConfig(instruction="B."), tok, SEEDS[:2]).fingerprint() != base
    assert PromptBuilder(TASK, PromptConfig(instruction="A."), tok, SEEDS[1:3]).fingerprint() != base
