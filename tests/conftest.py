"""Shared fixtures: tiny random models of each family the paper uses, saved as local folders.

The models are built from configs in the test session (no download): LLaMA (with a chat template),
OPT, GPT-2 and Gemma-3 causal LMs and a BERT encoder, all sharing a small byte-level BPE tokenizer
(helpers.make_tokenizer) trained on a few sentences; and tiny models sized for bitsandbytes' 4-bit kernel.
Plain helper functions are in helpers.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from helpers import SERVE_TEMPERATURE, make_recipe, make_tokenizer

# Property tests and the API fuzz (Hypothesis, Schemathesis) take their budget from a profile: "ci" (the
# default) is small, derandomized and without deadlines, so a run is bounded and repeatable on a busy machine;
# HYPOTHESIS_PROFILE=long (`make fuzz`) searches far longer with fresh randomness.
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture(scope="session")
def qlora_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models whose every projection is a multiple of 32 wide: bitsandbytes' CPU 4-bit kernel packs
    weights in blocks of 32 rows (the real models' sizes all are)."""
    from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig, OPTConfig

    vocab = len(make_tokenizer(chat=False))
    configs = {
        "llama": LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0,
                             pad_token_id=0),
        "opt": OPTConfig(vocab_size=vocab, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=64, bos_token_id=0, eos_token_id=0, pad_token_id=0),
        "bert": BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, pad_token_id=0),
    }
    folders = {}
    torch.manual_seed(0)
    for family, config in configs.items():
        folder = tmp_path_factory.mktemp(f"qlora_{family}")
        (BertModel(config) if family == "bert" else AutoModelForCausalLM.from_config(config)).save_pretrained(folder)
        make_tokenizer(chat=False).save_pretrained(folder)
        folders[family] = folder
    return folders


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """A tiny finished run to serve: (recipe path, recipe, texts to ask about), its student's confidence
    temperature set to SERVE_TEMPERATURE so that the calibrated path is the one compared."""
    import pandas as pd

    from tailorkd.cli import main
    from tailorkd.recipe import load_recipe
    from tailorkd.run_dir import RunDir
    from tailorkd.students import CONFIDENCE_FILE

    tmp_path = tmp_path_factory.mktemp("serve")
    recipe_path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                              evaluation={"systems": ["teacher", "adaptive_kd"]},
                              alerts={"severity": {"business": [[0.3, "high"], [0.0, "low"]], "tech": [[0.0, "low"]]}})
    assert main(["run", recipe_path]) == 0
    recipe = load_recipe(recipe_path)
    (RunDir(recipe).student_dir() / CONFIDENCE_FILE).write_text(json.dumps({"temperature": SERVE_TEMPERATURE}))
    texts = pd.read_parquet(tmp_path / "run" / "data" / "test.parquet")["text"].tolist()
    texts += ["Shares rose on the market.", "The team won.", "ünïcödé news ✓ about tech", "x" * 300]
    return recipe_path, recipe, texts


@pytest.fixture(scope="module")
def model(trained):
    """The trained run's student as the service loads it."""
    from tailorkd.serve.predictor import load_served_model

    return load_served_model(trained[1])
