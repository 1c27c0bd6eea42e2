"""Where the per-batch steps run: local processes (``engine: local``) or a Ray cluster (``engine: ray``).

Both yield the processed batches *in input order* (files in ``corpus_files`` order, each file's batches in
order), so the driver's stateful steps (exact and near dedup, shard writing) see the same sequence and the
output is the same whatever the engine or the number of workers.

- local: the driver reads the files (bounded batches) and hands each batch to a pool of ``workers``
  processes; at most 2 x workers batches are in flight, so memory stays bounded when the driver is the
  slower side. The processes are forked, except with a relevance stage: the driver has then run the
  embedding model (for the references), whose OpenMP threads do not survive a fork, so they are spawned
  (a script that calls ``build_corpus`` then needs the usual ``if __name__ == "__main__":`` guard).
- ray: Ray Data over the list of files: each file is read and processed by one of ``workers`` actors (each
  loads the models once) with ``map_batches``, which yields the file's processed batches as the same
  ``read_shard`` + ``BatchSteps`` produce them locally; the driver iterates them with ``preserve_order``.
  Ray Data's streaming executor applies backpressure, so a large corpus is not materialised. Files must be
  reachable at the same path from every node (a shared or network file system).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from tailorkd.corpus.read import read_shard
from tailorkd.corpus.steps import BatchSteps, StepSettings
from tailorkd.errors import TailorkdError

log = logging.getLogger(__name__)

RAY_PIP = "pip install 'tailorkd[ray]'"

# -- local --------------------------------------------------------------------------------------------------
_WORKER_STEPS: BatchSteps | None = None


def _init_worker(settings: StepSettings) -> None:
    global _WORKER_STEPS
    _WORKER_STEPS = BatchSteps(settings)


def _run_in_worker(batch: pa.Table) -> pa.Table:
    assert _WORKER_STEPS is not None
    return _WORKER_STEPS(batch)


def _raw_batches(files: list[tuple[int, Path, str]], settings: StepSettings) -> Iterator[pa.Table]:
    config = settings.config
    for index, path, fmt in files:
        yield from read_shard(index, path, fmt, config.inputs[index], config.batch_size)


def local_batches(files: list[tuple[int, Path, str]], settings: StepSettings, workers: int) -> Iterator[pa.Table]:
    """The processed batches, in order, from ``workers`` local processes (in this process when 1)."""
    if workers <= 1:
        steps = BatchSteps(settings)
        for batch in _raw_batches(files, settings):
            yield steps(batch)
        return
    method = "spawn" if settings.config.relevance is not None or "fork" not in multiprocessing.get_all_start_methods() \
        else "fork"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker, initargs=(settings,))
    try:
        pending: deque[Future[pa.Table]] = deque()
        for batch in _raw_batches(files, settings):
            pending.append(pool.submit(_run_in_worker, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- ray ----------------------------------------------------------------------------------------------------
def import_ray(needed_by: str = "corpus.engine: ray", instead: str = "use corpus.engine: local",
               data: bool = True) -> Any:
    """The ray module (with Ray Data when ``data``); a one-line error naming what needs it, the extra to
    install and what to do ``instead`` when missing."""
    try:
        import ray

        if data:
            import ray.data  # noqa: F401
    except ImportError:
        raise TailorkdError(f"{needed_by} needs Ray{' Data' if data else ''}, which is not installed; run "
                            f"`{RAY_PIP}` (or {instead})") from None
    return ray


class _ShardActor:
    """A Ray actor: reads whole corpus files and runs the per-batch steps on each of their batches."""

    def __init__(self, settings: StepSettings):
        self.settings = settings
        self.config = settings.config
        self.steps = BatchSteps(settings)

    def __call__(self, files: pa.Table) -> Iterator[pa.Table]:
        for item in files.to_pylist():
            index = item["input"]
            for batch in read_shard(index, Path(item["file"]), item["format"], self.config.inputs[index],
                                    self.config.batch_size):
                yield self.steps(batch)


def _user_error(exc: BaseException) -> str | None:
    """The message of the TailorkdError a Ray task raised, if that is what ``exc`` wraps (Ray's wrapper
    carries the remote traceback in its text: the message is its last ``TailorkdError:`` line)."""
    seen = 0
    while exc is not None and seen < 8:
        cause = getattr(exc, "cause", None)
        if isinstance(exc, TailorkdError) or isinstance(cause, TailorkdError):
            text = str(exc)
            marker = "TailorkdError: "
            return text.rsplit(marker, 1)[1].splitlines()[0] if marker in text else text.splitlines()[0]
        exc = cause or exc.__cause__  # type: ignore[assignment]
        seen += 1
    return None


def start_ray(address: str | None) -> bool:
    """Join the cluster at ``address`` (None: start a local Ray) unless Ray runs already; whether this call
    started it (then ``ray_batches`` shuts it down at the end)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def cluster_cpus() -> int:
    return max(1, int(import_ray().cluster_resources().get("CPU", 1)))


def ray_batches(files: list[tuple[int, Path, str]], settings: StepSettings, workers: int,
                shutdown: bool) -> Iterator[pa.Table]:
    """The processed batches, in order, from ``workers`` Ray Data actors on the running Ray (``start_ray``),
    shut down at the end when ``shutdown``."""
    ray = import_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        items = [{"input": index, "file": str(path), "format": fmt} for index, path, fmt in files]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        dataset = dataset.map_batches(_ShardActor, fn_constructor_kwargs={"settings": settings}, batch_size=1,
                                      batch_format="pyarrow", num_cpus=1,
                                      compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(items)))))
        try:
            yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        except Exception as exc:
            message = _user_error(exc)
            if message is not None:
                raise TailorkdError(message) from None
            raise
    finally:
        if shutdown:
            ray.shutdown()
