"""Several processes, one run: what tailorkd does when a launcher (``accelerate launch``, ``torchrun``) starts it
once per device.

A launcher tells each process its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
tailorkd then joins the process group through Accelerate's ``PartialState`` (gloo on CPUs, NCCL on GPUs), which
the transformers Trainer reuses for data-parallel training, and follows three rules:

- **the main process writes**: preparing the data, the prompt search, calibration, the ensemble, the files of
  a student and the report are done by rank 0 (``on_main``) while the others wait; work that all need is done
  by the main process first and then read by the others (``main_first``);
- **shared work is split by rank**: each process labels a disjoint share of the pool (``share``) into the one
  label store, which is safe for several writers;
- **everyone trains**: distillation runs on every process, the Trainer sharding the data and averaging the
  gradients (DDP), or sharding the model too (FSDP) when the Accelerate config says so.

In one process (no launcher) every function here is a no-op and costs nothing. Inside a section only one
process runs (``on_main``, the body of ``main_first``) the waits are skipped, so a stage may call another.

The process group waits up to ``TAILORKD_DIST_TIMEOUT`` seconds (default 24 h) for a rank: the main process
may search prompts or calibrate for hours while the others wait. A rank that dies does not hang the others:
the launcher stops them all.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")

TIMEOUT_ENV = "TAILORKD_DIST_TIMEOUT"
_solo = False  # inside a section that only this process runs: no waits


def world_size() -> int:
    """The number of processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """The process's index on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def state() -> Any:
    """Accelerate's PartialState, created on first use with tailorkd's timeout (None in one process)."""
    if not is_distributed():
        return None
    import torch
    from accelerate import PartialState

    joined = torch.distributed.is_initialized()
    # cpu=True where there is no GPU: else Accelerate takes the processes for single ones and never joins them.
    shared = PartialState(cpu=not torch.cuda.is_available(),
                          timeout=timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 24 * 3600))))
    if not joined and torch.distributed.is_initialized():
        # Leave the group before the interpreter exits: gloo's threads abort a process that exits inside it.
        atexit.register(_leave)
    return shared


def _leave() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (not inside a section one process runs alone)."""
    if is_distributed() and not _solo:
        state().wait_for_everyone()


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    global _solo
    before, _solo = _solo, True
    try:
        yield
    finally:
        _solo = before


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """The main process runs the body first, the others after it (finding its work done, e.g. the data
    prepared). Yields whether this is the main process. If the main process fails, the others are not
    released: the launcher stops them."""
    if not is_distributed() or _solo:
        yield is_main()
        return
    if not is_main():
        barrier()
    with _alone():
        yield is_main()
    if is_main():
        barrier()


def on_main(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate a stage that only the main process runs: the others wait for it and get None."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        if not is_distributed() or _solo:
            return fn(*args, **kwargs)
        if is_main():
            with _alone():
                result = fn(*args, **kwargs)
            barrier()
            return result
        barrier()
        return None

    return wrapper


def from_main(value: T) -> T:
    """The main process's ``value`` on every process: a decision read from files (is this stage done? which
    checkpoint resumes?) must be the same everywhere, or the processes part ways."""
    if not is_distributed() or _solo:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def share(items: Sequence[T], key: Callable[[T], str]) -> Sequence[T]:
    """This process's disjoint share of ``items``: those whose ``key`` hashes to its rank (all of them in one
    process). By key, not position, so processes that hold the items in different orders still split them
    exactly, and equal keys (the same text twice) fall to one process. Pool rows read from disk stay there
    (the share is a view of them)."""
    if not is_distributed():
        return items
    from tailorkd.data.pool_rows import take_rows

    n, me = world_size(), rank()
    mine = [i for i, item in enumerate(items)
            if int(hashlib.blake2b(key(item).encode(), digest_size=8).hexdigest(), 16) % n == me]
    return take_rows(items, mine)


def sharding_engine() -> str | None:
    """The engine the launcher asked to shard the model with (Accelerate's FSDP or DeepSpeed), else None."""
    for engine, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(flag, "false").lower() == "true":
            return engine
    return None


def device_name(kind: str) -> str:
    """'cuda' -> this process's GPU ('cuda:<LOCAL_RANK>') under a launcher; other names unchanged."""
    if kind == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{local_rank()}"
    return kind
