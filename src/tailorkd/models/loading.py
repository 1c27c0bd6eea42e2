"""Resolving a registry name, local folder or Hub id, and loading models and tokenizers from it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tailorkd.errors import TailorkdError
from tailorkd.models.cache import prepare_model
from tailorkd.models.registry import KIND_CAUSAL_LM, KIND_ENCODER, REGISTRY, transformers_major


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


def from_pretrained(loader: Callable, name_or_path: str, what: str, **kwargs):
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
    return {"dtype": dtype} if transformers_major() >= 5 else {"torch_dtype": dtype}


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

        config = from_pretrained(AutoConfig.from_pretrained, name_or_path, "config")
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

    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "tokenizer")
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


def load_causal_lm(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu", quantization: Any = None
):
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
    model = from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, "model", **_dtype_kwargs(dtype),
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
    model = from_pretrained(
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


def load_encoder(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu", quantization: Any = None
):
    """(model, tokenizer): the bare encoder (AutoModel), for a student that adds its own pooling and head."""
    from transformers import AutoModel

    model = from_pretrained(AutoModel.from_pretrained, name_or_path, "encoder", **_dtype_kwargs(dtype),
                             **quantization_kwargs(quantization, device))
    _place(model, quantization, device)
    tokenizer = load_tokenizer(name_or_path)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer
