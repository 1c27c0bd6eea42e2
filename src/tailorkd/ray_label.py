"""Labelling the pool on a Ray cluster (``tailorkd label RECIPE --engine ray``): one teacher per Ray actor, the
driver alone writing the one label store.

The driver (the process that runs the label stage) lists the pool and test texts the store lacks for the
teacher's identity and prompt, each text once, and cuts them into chunks of ``chunk`` texts, in the order and
size the single-process labeller (``teachers.local.label_rows``) uses. ``workers`` actors each build the
recipe's teacher (as ``stages.ensemble.member_teacher`` does, with the recipe's shots) and score chunks with its
own scorer (``score_states`` / ``score_with_reasons`` / ``score``: distributions, no store); each actor holds
one GPU when the cluster has GPUs, else an equal share of its CPUs. At most two chunks per actor are in flight,
so the next one is waiting when a chunk is done. The driver writes each chunk's records as it arrives, one
transaction per chunk (``labels.make_record`` + ``LabelStore.put_batch``; hidden states through the same
writer as the single-process way), so:

- no node needs the run folder: only the driver touches labels.sqlite (the teacher's model must be at the same
  path, or the same registry name, on every node);
- a killed run loses at most the chunks in flight, and the next run labels only what the store lacks;
- the probabilities are those single-process labelling stores (same scorer, same chunks; on a CPU each text is
  scored alone on the shared prefix, so batching cannot change them).

An actor whose teacher differs from the driver's (another model version on a node, another prompt) is refused
before it labels anything. After the Ray part the label stage goes on as usual in the driver: what is still
missing (the texts a served teacher abstained on), reasons, calibration, the other ensemble members (in the
driver, one at a time) and the summary.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from tailorkd.corpus.engines import import_ray as import_ray_module
from tailorkd.data.pool_rows import PoolRows, take_rows, windows
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, make_record, text_hash

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 2


@dataclass(frozen=True)
class RayEngine:
    """How the pool is labelled on Ray: ``workers`` actors (default: one per GPU of the cluster, else 2; with
    ``endpoints``, one per endpoint), on the cluster at ``address`` (None: a running Ray, else a new local one,
    shut down at the end). ``endpoints``: base URLs of several servers of the same served teacher; actor i
    asks endpoint i mod n."""

    workers: int | None = None
    address: str | None = None
    chunk: int = 64
    endpoints: tuple[str, ...] = ()


def actor_recipe(recipe: Any, endpoints: Sequence[str], index: int) -> Any:
    """The recipe actor ``index`` builds its teacher from: with ``endpoints``, the served teacher's server at
    endpoint ``index`` mod n (a server's address is not part of the teacher's identity: same labels)."""
    if not endpoints:
        return recipe
    server = recipe.teacher.server
    if server is None:
        raise TailorkdError("tailorkd label --endpoint: the recipe's teacher is not served (no teacher.server)")
    server = server.model_copy(update={"base_url": endpoints[index % len(endpoints)]})
    return recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"server": server})})


def import_ray() -> Any:
    """The ray module; a one-line error naming the extra to install when missing."""
    return import_ray_module("tailorkd label --engine ray", "label without --engine ray", data=False)


def _cause(exc: BaseException) -> TailorkdError | None:
    """The TailorkdError a Ray task raised, if ``exc`` wraps one."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, TailorkdError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__  # type: ignore[assignment]
    return None


class TeacherActor:
    """One teacher on one Ray worker: scores chunks of rows and returns their distributions (never a store)."""

    def __init__(self, recipe: Any, seeds: Any, threads: int | None, hidden_layers: Sequence[int], pooling: str):
        import torch

        from tailorkd.stages.ensemble import member_teacher

        if threads:
            torch.set_num_threads(threads)
        self.teacher = member_teacher(recipe, seeds)
        self.hidden_layers, self.pooling = tuple(hidden_layers), pooling

    def key(self) -> tuple[str, str]:
        return self.teacher.identity, self.teacher.prompt_fingerprint

    def score(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        teacher, reasons, hidden = self.teacher, None, {}
        if hasattr(teacher, "score_states"):
            probs, seconds, hidden = teacher.score_states(rows, None, self.hidden_layers, self.pooling)
        elif hasattr(teacher, "score_with_reasons"):
            probs, seconds, reasons = teacher.score_with_reasons(rows)
        else:
            probs, seconds = teacher.score(rows)
        return {"probs": probs, "seconds": seconds, "hidden": hidden, "reasons": reasons, "worker": os.getpid()}


def _seeds_only(data: Any) -> Any:
    """``data`` with empty pool and test: an actor needs the seeds (the shots), not the texts it is not sent."""
    from dataclasses import replace

    return replace(data, pool=PoolRows.empty(data.pool.columns), test=data.test.iloc[:0], rejects=[], stats={})


@dataclass(frozen=True)
class _Chunk:
    """Texts to label, by position in one split: their rows are read only when the chunk is sent."""

    split: str
    positions: np.ndarray

    def rows(self, data: Any) -> list[dict[str, Any]]:
        return list(take_rows(data.rows(self.split), self.positions))


def _todo_chunks(data: Any, done: set[str], chunk: int) -> list[_Chunk]:
    """The pool's, then the test set's texts the store lacks, each text once, in chunks (positions, not rows:
    the pool is walked a window at a time and never held)."""
    seen, chunks = set(done), []
    for split in ("pool", "test"):
        todo, position = [], 0
        for window in windows(data.rows(split)):
            for row in window:
                h = text_hash(row["text"])
                if h not in seen:
                    seen.add(h)
                    todo.append(position)
                position += 1
        chunks += [_Chunk(split, np.array(todo[i : i + chunk], dtype=np.int64)) for i in range(0, len(todo), chunk)]
    return chunks


def label_on_ray(recipe: Any, data: Any, teacher: Any, store: LabelStore, engine: RayEngine,
                 hidden_layers: Sequence[int] = (), pooling: str = "last", rows_per_shard: int = 1024
                 ) -> dict[str, Any]:
    """Label every pool and test text of ``data`` the store lacks for ``teacher`` (the driver's: its identity
    and prompt key the store) on Ray actors; the driver writes the store. Returns what was done: texts,
    chunks, actors, texts per actor (by process id), abstentions, seconds."""
    from tailorkd.hidden_states import HiddenStateWriter
    from tailorkd.teachers import hidden_key

    t0 = time.perf_counter()
    names = recipe.task.label_names
    key = (teacher.identity, teacher.prompt_fingerprint)
    writer = None
    done = store.done_hashes(*key)
    if hidden_layers:
        writer = HiddenStateWriter(store, hidden_key(teacher.identity, hidden_layers, pooling), key[1], hidden_layers,
                                   rows_per_shard)
        done &= writer.done_hashes()
    chunks = _todo_chunks(data, done, engine.chunk)
    stats: dict[str, Any] = {"texts": sum(len(c.positions) for c in chunks), "chunks": len(chunks), "actors": 0,
                             "texts_per_actor": {}, "abstained": 0}
    if not chunks:
        if writer is not None:
            writer.close()
        log.info("ray labelling: every pool and test text is already in %s", store.path)
        return {**stats, "seconds": time.perf_counter() - t0}
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=engine.address, include_dashboard=False, logging_level=logging.WARNING)
    actors: list[Any] = []
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        workers = min(engine.workers or len(engine.endpoints) or gpus or 2, len(chunks))
        on_gpus = bool(gpus) and not engine.endpoints  # a served teacher's actors only send requests
        if workers > (gpus if on_gpus else max(1, cpus)):  # more would wait for resources forever
            workers = gpus if on_gpus else max(1, cpus)
            log.warning("ray labelling: the cluster has room for %d actors (%s); using %d", workers,
                        f"{gpus} GPUs" if on_gpus else f"{cpus} CPUs", workers)
        if on_gpus:
            options: dict[str, Any] = {"num_gpus": 1}
            threads = None
        else:
            threads = max(1, cpus // workers)
            options = {"num_cpus": threads}
        remote = ray.remote(**options)(TeacherActor)
        seeds = _seeds_only(data)
        actors = [remote.remote(actor_recipe(recipe, engine.endpoints, i), seeds, threads, tuple(hidden_layers),
                                pooling) for i in range(workers)]
        for got in _get(ray, [actor.key.remote() for actor in actors]):
            if tuple(got) != key:
                raise TailorkdError(f"ray labelling: a worker's teacher is {got[0]!r} with prompt {got[1]!r}, the "
                                    f"driver's {key[0]!r} with prompt {key[1]!r}; every node needs the same model "
                                    "and tailorkd")
        stats["actors"] = workers
        log.info("ray labelling: %d texts in %d chunks on %d actors (%s each)", stats["texts"], len(chunks), workers,
                 f"{threads} CPU" if threads else "1 GPU")
        queue = deque(chunks)
        in_flight: dict[Any, tuple[Any, list[dict[str, Any]]]] = {}

        def submit(actor: Any) -> None:
            if queue:
                rows = queue.popleft().rows(data)
                in_flight[actor.score.remote(rows)] = (actor, rows)

        for actor in actors:
            for _ in range(IN_FLIGHT_PER_ACTOR):
                submit(actor)
        per_actor: Counter[int] = Counter()
        with tqdm(total=stats["texts"], desc="teacher on ray: pool and test", unit="text", dynamic_ncols=True) as bar:
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                actor, rows = in_flight.pop(ready[0])
                result = _get(ray, ready[0])
                submit(actor)
                stats["abstained"] += _store(store, writer, key, names, rows, result)
                per_actor[result["worker"]] += len(rows)
                bar.update(len(rows))
        stats["texts_per_actor"] = dict(per_actor)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
        if writer is not None:
            writer.close()
    if stats["abstained"]:
        log.warning("ray labelling: the teacher abstained on %d of %d texts; they are not stored",
                    stats["abstained"], stats["texts"])
    return {**stats, "seconds": time.perf_counter() - t0}


def _get(ray: Any, refs: Any) -> Any:
    """``ray.get``, a TailorkdError raised in an actor surfacing as itself."""
    try:
        return ray.get(refs)
    except Exception as exc:
        error = _cause(exc)
        if error is not None:
            raise TailorkdError(str(error)) from None
        raise


def _store(store: LabelStore, writer: Any, key: tuple[str, str], names: Sequence[str], rows: list[dict[str, Any]],
           result: dict[str, Any]) -> int:
    """One chunk's records into the store (one transaction); returns how many texts the teacher abstained on."""
    probs, seconds = np.asarray(result["probs"]), np.asarray(result["seconds"])
    reasons = result["reasons"] or [None] * len(rows)
    answered = ~np.isnan(probs).any(axis=1)
    records = [make_record(r["id"], r["text"], p, names, float(s), reason)
               for r, p, s, reason, ok in zip(rows, probs, seconds, reasons, answered) if ok]
    if writer is not None and result["hidden"]:
        writer.add([r.text_hash for r in records],
                   {layer: states[answered] for layer, states in result["hidden"].items()})
    if records:
        store.put_batch(*key, names, records)
    if writer is not None:
        writer.flush()  # after put_batch: every stored hidden state has its label
    return int((~answered).sum())


__all__ = ["RayEngine", "TeacherActor", "actor_recipe", "import_ray", "label_on_ray"]
