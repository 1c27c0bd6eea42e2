"""Shared fixtures: tiny random models of each family the paper uses, saved as local folders.

The models are built from configs in the test session (no download): LLaMA (with a chat template),
OPT, GPT-2 and Gemma-3 causal LMs and a BERT encoder, all sharing a small byte-level BPE tokenizer
trained here on a few sentences.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests (Hypothesis): "ci", the default, is small, derandomized and without deadlines, so a run is
# bounded and repeatable on a busy machine; HYPOTHESIS_PROFILE=long (`make fuzz`) searches far longer.
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CORPUS = [
    "The company reported higher profits and its shares rose on the stock market.",
    "The film won an award and the actor thanked the director at the ceremony.",
    "The minister said the government will hold an election next year.",
    "The team won the match after a late goal in the second half.",
    "The new phone has a faster chip and better software for users.",
    "Floods forced people to leave their homes; officials warned of more rain.",
    "Stay indoors and keep water ready, the agency advised residents.",
    "Labels: business entertainment politics sport tech risk caution safe Answer: Text:",
]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]


def make_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHATML
    return fast


def _configs(vocab: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig, OPTConfig

    configs = {
        "llama": LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0),
        "opt": OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=1024, word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=1024, bos_token_id=0,
                           eos_token_id=0),
        "bert": BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=512, pad_token_id=0),
    }
    try:
        from transformers import Gemma3TextConfig

        configs["gemma3"] = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                             head_dim=8, max_position_embeddings=1024, sliding_window=16,
                                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
    except ImportError:  # transformers without Gemma-3
        pass
    return configs


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny random models by family: llama (chat template), opt, gpt2, gemma3, bert (encoder)."""
    from transformers import AutoModelForCausalLM, BertModel

    root = tmp_path_factory.mktemp("tiny_models")
    folders = {}
    torch.manual_seed(0)
    for family, config in _configs(len(make_tokenizer(chat=False))).items():
        folder = root / family
        if family == "bert":
            model = BertModel(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder)
        make_tokenizer(chat=family == "llama").save_pretrained(folder)
        folders[family] = folder
    return folders


CAUSAL_FAMILIES = ["llama", "opt", "gpt2", "gemma3"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def topic_rows(n_per_class: int = 12) -> list[dict]:
    """Short synthetic texts whose topic word appears in them, so a model can learn it quickly."""
    rows = []
    for label in TOPICS:
        for i in range(n_per_class):
            rows.append({"id": f"{label}-{i}", "text": f"News item {i} about {label}: the {label} story of the day.",
                         "label": label})
    return rows
