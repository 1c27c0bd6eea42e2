"""Device and dtype names from the recipe, resolved to torch objects."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> str:
    """'auto' picks CUDA when present, else the CPU; under a launcher, 'cuda' is this process's GPU."""
    from tailorkd.distributed import device_name

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from tailorkd.errors import TailorkdError

        raise TailorkdError("device 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    return device_name(name)


def resolve_dtype(name: str) -> torch.dtype:
    return DTYPES[name]
