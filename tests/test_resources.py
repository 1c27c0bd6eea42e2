"""Parameter counts and the Table 3 memory estimate (tailorkd.resources), and `tailorkd memory`."""

from __future__ import annotations

import json

import pytest

from tailorkd import resources
from tailorkd.errors import TailorkdError

GB = 1e9


def _tiny_configs():
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    return {
        "llama": LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
        "opt": OPTConfig(vocab_size=300, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=128, word_embed_proj_dim=16),
        "gpt2": GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=128),
    }


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_total_params_match_an_instantiated_model(family):
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()[family]
    model = AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())
    counts = resources.count_parameters_from_config(config, r=4)
    assert counts["total_params"] == expected
    # The shipped ones are the same numbers as a dict or a config object.
    assert resources.count_parameters_from_config(config.to_dict(), r=4)["total_params"] == expected


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
@pytest.mark.parametrize("targets", [None, "all-linear"])
def test_lora_params_match_peft(family, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tailorkd.adapters.lora import attention_modules

    config = _tiny_configs()[family]
    model = AutoModelForCausalLM.from_config(config)
    peft_targets = targets or attention_modules(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=peft_targets, fan_in_fan_out=family == "gpt2"))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    counts = resources.count_parameters_from_config(config, r=4, target_modules=targets)
    assert counts["adapter_params"] == trainable
    est = resources.estimate_training_memory(config, "lora", r=4, target_modules=targets)
    assert est["trainable_params"] == trainable


# Published sizes: LLaMA-2 paper / model cards, OPT paper (1.3B, 13B), GPT-2 (124M, 1.5B).
PUBLISHED = {
    "llama-2-7b": 6.74e9,
    "llama-2-13b": 13.0e9,
    "opt-1.3b": 1.32e9,
    "opt-13b": 12.9e9,
    "gpt2": 124e6,
    "gpt2-xl": 1.56e9,
}


def test_shipped_configs_have_the_published_sizes():
    assert set(PUBLISHED) <= set(resources.shipped_configs())
    for name, size in PUBLISHED.items():
        total = resources.count_parameters_from_config(name)["total_params"]
        assert abs(total - size) / size < 0.01, (name, total)
    # Exact, well-known totals.
    assert resources.count_parameters_from_config("llama-2-7b")["total_params"] == 6_738_415_616
    assert resources.count_parameters_from_config("gpt2")["total_params"] == 124_439_808


def test_shipped_configs_load_with_transformers(tmp_path):
    from transformers import AutoConfig

    for name in resources.shipped_configs():
        data = json.loads(resources.configs_dir().joinpath(f"{name}.json").read_text(encoding="utf-8"))
        config = AutoConfig.for_model(**data)
        assert type(config).__name__ == f"{data['architectures'][0].split('For')[0].replace('LMHeadModel', '')}Config"
    # A config.json path and a model folder load too.
    (tmp_path / "m").mkdir()
    resources.load_config("gpt2").save_pretrained(tmp_path / "m")
    assert resources.load_config(str(tmp_path / "m")).n_embd == 768
    assert resources.load_config(str(tmp_path / "m" / "config.json")).n_layer == 12


def test_table3_full_kd_for_llama_2_7b():
    full = resources.estimate_training_memory("llama-2-7b", "full")
    paper = {"weights": 14, "gradients": 14, "optimizer_states": 28, "fp32_gradient_copy": 28, "total": 84}
    for key, gb in paper.items():
        assert abs(full["gb"][key] - gb) / gb < 0.05, (key, full["gb"][key])
    assert full["bytes"]["total"] == 12 * 6_738_415_616
    assert full["trainable_share_pct"] == 100 and full["reduction_vs_full_pct"] == 0
    assert full["activations_counted"] is False and "not counted" in full["notes"]


def test_qlora_for_llama_2_7b():
    q = resources.estimate_training_memory("llama-2-7b", "qlora", r=64)
    full_total = resources.estimate_training_memory("llama-2-7b", "full")["bytes"]["total"]
    assert q["bytes"]["total"] < 0.10 * full_total
    assert q["reduction_vs_full_pct"] == pytest.approx(100 * (1 - q["bytes"]["total"] / full_total))
    # r=64 on q/k/v/o: 4 projections x 64 x (4096 + 4096) x 32 layers.
    assert q["trainable_params"] == 4 * 64 * 8192 * 32
    assert q["bytes"]["gradients"] == 2 * q["trainable_params"]
    assert q["bytes"]["optimizer_states"] == q["bytes"]["fp32_gradient_copy"] == 4 * q["trainable_params"]
    d = q["weights_detail"]
    # All 7 projections of 32 layers are 4-bit; embeddings, head and norms are not.
    assert d["quantized_tensors"] == 7 * 32
    assert d["quantized_params"] + d["unquantized_params"] == q["total_params"]
    assert d["quantization_constants_bytes"] == resources.quantization_constants_bytes([4096 * 4096] * 4 * 32
                                                                                     + [4096 * 11008] * 3 * 32)
    assert q["bytes"]["weights"] == (0.5 * d["quantized_params"] + d["quantization_constants_bytes"]
                                     + 2 * d["unquantized_params"] + 2 * q["trainable_params"])
    # The paper's simpler rule: every parameter at 4 bit -> 0.5 x 6.74B.
    paper = resources.estimate_training_memory("llama-2-7b", "qlora", weights_rule="paper")
    assert paper["gb"]["weights"] == pytest.approx(0.5 * 6.738415616)
    assert paper["bytes"]["total"] < q["bytes"]["total"]


def test_double_quantisation_constants():
    n = 64 * 256 * 10  # 2560 blocks of 64 -> 10 second-level blocks
    assert resources.quantization_constants_bytes([n]) == 2560 + 4 * 10 + 4
    assert resources.quantization_constants_bytes([n], double_quant=False) == 4 * 2560
    assert resources.quantization_constants_bytes([65]) == 2 + 4 + 4


def test_markdown_table():
    full, lora = resources.compare_training_memory("gpt2", "lora", r=8)
    text = resources.render_memory_table(full, lora, title="gpt2")
    assert "| weights |" in text and "| **total** |" in text and "fp32 gradient copy" in text
    assert "LoRA (16-bit), r=8" in text and "not counted" in text


def test_cli_memory(capsys):
    from tailorkd.cli import main

    assert main(["memory", "llama-2-7b", "--adapter", "qlora", "--r", "64"]) == 0
    out = capsys.readouterr().out
    assert "| **total** | **80.86 GB** |" in out
    assert "QLoRA (4-bit NF4), r=64" in out and "67,108,864" in out
    assert main(["memory", "gpt2", "--adapter", "lora", "--target-modules", "c_attn", "c_proj"]) == 0
    assert "c_attn, c_proj" in capsys.readouterr().out


def test_unknown_model_lists_the_shipped_configs(capsys, tmp_path):
    with pytest.raises(TailorkdError, match="llama-2-7b"):
        resources.load_config(str(tmp_path / "no-such-model"))
    from tailorkd.cli import main

    assert main(["memory", "./no/such/model"]) == 2
    err = capsys.readouterr().err
    assert "opt-1.3b" in err and "gpt2-xl" in err


def test_bad_target_modules():
    with pytest.raises(TailorkdError, match="match no layer"):
        resources.count_parameters_from_config("gpt2", target_modules=["nope"])
    with pytest.raises(TailorkdError, match="method"):
        resources.estimate_training_memory("gpt2", "dora")


def test_measure_peak_memory_on_cpu():
    import mmap

    import numpy as np

    size = 64 * 2**20
    with resources.measure_peak_memory("cpu") as m:
        # Fresh anonymous pages, written: a malloc could reuse pages freed earlier and still resident.
        buf = mmap.mmap(-1, size)
        np.frombuffer(buf, dtype=np.uint8)[:] = 1
        buf.close()
    assert m.source in ("vmhwm", "ru_maxrss")
    if m.source == "vmhwm":
        assert 0.9 * size < m.peak_bytes < 2**30
    assert m.peak_gb == m.peak_bytes / GB
