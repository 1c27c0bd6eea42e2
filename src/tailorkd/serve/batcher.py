"""Dynamic batching: texts of concurrent requests run together in one worker thread.

The model is not thread-safe and a forward pass holds the CPU, so exactly one thread calls the predictor and
the event loop only queues texts and awaits futures. The worker waits for the first text, then up to
``max_wait_s`` from its arrival for more (or until ``max_batch_size`` texts wait), takes up to
``max_batch_size`` texts in arrival order (a request larger than that spans several batches), sorts them by
length (the predictor pads each of its micro-batches to its longest text) and scatters the probabilities back.
Texts that arrive while a batch runs are taken together as soon as it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More texts wait than ``max_queue``: the caller should retry later (HTTP 503)."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new texts."""


@dataclass
class _Job:
    texts: list[str]
    future: Future
    arrived: float
    probs: list[np.ndarray | None] = field(default_factory=list)
    taken: int = 0  # texts handed to a batch so far
    done: int = 0  # texts whose probabilities are back
    running: bool = False


@dataclass(frozen=True)
class BatchStats:
    """What one predictor call held: reported to ``on_batch`` (metrics, tests)."""

    texts: int
    requests: int
    seconds: float


class DynamicBatcher:
    """Batches texts of concurrent ``submit`` calls into calls of ``predict`` (texts -> [N, M] probabilities)
    from one worker thread. ``start`` it, ``submit`` texts (a Future of their [n, M] probabilities), ``close``
    it: it then takes no new texts, finishes every queued one and stops the worker."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch_size: int = 32,
                 max_wait_s: float = 0.005, max_queue: int = 1024,
                 on_batch: Callable[[BatchStats], None] | None = None):
        if max_batch_size < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closing = False
        self._hurry = False
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Texts waiting for a batch (not counting those in the running one)."""
        with self._cond:
            return self._queued

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("the batcher is already started")
            self._thread = threading.Thread(target=self._work, name="tailorkd-batcher", daemon=True)
            self._thread.start()

    def submit(self, texts: Sequence[str]) -> Future:
        """Queue ``texts``; the Future gets their [len(texts), M] probabilities, in order, or the predictor's
        exception. Raises QueueFull or BatcherClosed at once instead of queueing."""
        future: Future = Future()
        if not texts:
            future.set_result(np.zeros((0, 0)))
            return future
        with self._cond:
            if self._closing:
                raise BatcherClosed("the service is shutting down")
            if self._queued + len(texts) > self.max_queue:
                raise QueueFull(f"{self._queued} texts are waiting (at most {self.max_queue})")
            job = _Job(list(texts), future, time.monotonic(), [None] * len(texts))
            self._jobs.append(job)
            self._queued += len(texts)
            self._cond.notify_all()
        return future

    def stop_waiting(self) -> None:
        """Run what is queued without waiting for more texts (the server is about to stop)."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Take no new texts, finish the queued ones, stop the worker (waiting up to ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the worker thread -------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:  # closing and drained
                    return
                deadline = self._jobs[0].arrived + self.max_wait_s
                while self._queued < self.max_batch_size and not (self._closing or self._hurry):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take()
            if batch:
                self._run(batch)

    def _take(self) -> list[tuple[_Job, int]]:
        """Up to max_batch_size (job, text index) pairs in arrival order; called with the lock held."""
        batch: list[tuple[_Job, int]] = []
        while self._jobs and len(batch) < self.max_batch_size:
            job = self._jobs[0]
            if not job.running:
                if not job.future.set_running_or_notify_cancel():  # cancelled while it waited
                    self._jobs.popleft()
                    self._queued -= len(job.texts) - job.taken
                    continue
                job.running = True
            if job.future.done():  # an earlier part failed: its other texts need no batch
                self._jobs.popleft()
                self._queued -= len(job.texts) - job.taken
                continue
            n = min(len(job.texts) - job.taken, self.max_batch_size - len(batch))
            batch.extend((job, i) for i in range(job.taken, job.taken + n))
            job.taken += n
            self._queued -= n
            if job.taken == len(job.texts):
                self._jobs.popleft()
        return batch

    def _run(self, batch: list[tuple[_Job, int]]) -> None:
        batch.sort(key=lambda item: len(item[0].texts[item[1]]))
        jobs = list({id(job): job for job, _ in batch}.values())
        start = time.perf_counter()
        try:
            probs = np.asarray(self.predict([job.texts[i] for job, i in batch]))
            if probs.ndim != 2 or probs.shape[0] != len(batch):
                raise RuntimeError(f"the predictor returned shape {probs.shape} for {len(batch)} texts")
        except Exception as exc:  # every request of the batch fails; the worker goes on
            log.exception("prediction failed for a batch of %d texts", len(batch))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        for (job, i), row in zip(batch, probs):
            job.probs[i] = row
            job.done += 1
        for job in jobs:
            if job.done == len(job.texts) and not job.future.done():
                job.future.set_result(np.stack(job.probs))
        if self.on_batch is not None:
            self.on_batch(BatchStats(texts=len(batch), requests=len(jobs), seconds=seconds))
