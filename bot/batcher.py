"""One encoder worker with dynamic micro-batching (docs/performance.md).

Encoding the question is nearly all the cost of a /chat request, and the bundled engine is not
thread-safe, so exactly one thread calls the encoder. Requests put their texts on a bounded queue
and wait on a `concurrent.futures.Future` (async routes await it with `asyncio.wrap_future`):

    request ─submit(texts, search)─> [ bounded queue ] ─> worker: take what is waiting (up to
    `max_batch` texts; wait at most `max_wait_ms` for more, and only while the previous batch
    says more are coming) ─> encode the unique texts in one call ─> one FAISS search per
    (index, top_k, tags) group ─> resolve each request's future.

A full queue raises `OverloadedError` (HTTP 503 with Retry-After) at once: a backlog that cannot
be served in time only turns every answer into a timeout. The worker is backend-agnostic: it is
given a plain `encode(texts) -> float32[n, d]` callable.

Threads: the worker limits FAISS's OpenMP pool to one thread on itself (OpenMP thread counts are
per calling thread), so a batched search never spins a second core the encoder is using.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from bot.matcher import Decision, Matcher
from faq.errors import UnavailableError

log = logging.getLogger("faqbot")

EncodeFn = Callable[[list[str]], np.ndarray]


class OverloadedError(UnavailableError):
    """The encoder queue is full (or the worker is stopped): refuse at once (retry in 1 s), never queue unboundedly."""

    code = "overloaded"
    retry_after = 1.0


@dataclass(frozen=True)
class SearchSpec:
    """Search the index of `matcher` with the job's vectors (jobs with equal specs share one FAISS call)."""

    matcher: Matcher
    top_k: int
    tags: tuple[str, ...] | None = None

    @property
    def group(self) -> tuple[int, int, tuple[str, ...] | None]:
        return id(self.matcher), self.top_k, self.tags


@dataclass(frozen=True)
class Encoded:
    """What a job gets back: one vector per text and, when it asked for a search, one decision per text."""

    vectors: np.ndarray
    decisions: list[Decision] | None = None


@dataclass(frozen=True)
class BatchStats:
    """One encoder call, for /metrics: texts taken, distinct texts encoded, seconds in the queue and encoding."""

    texts: int
    unique_texts: int
    jobs: int
    queued_seconds: float
    encode_seconds: float


@dataclass
class _Job:
    texts: list[str]
    search: SearchSpec | None
    future: Future[Encoded]
    enqueued_at: float


def limit_faiss_threads() -> None:
    """One OpenMP thread for FAISS on the calling thread (its searches are microseconds; spinning costs cores)."""
    import faiss

    faiss.omp_set_num_threads(1)


class MicroBatcher:
    """The encoder worker thread(s) and their bounded queue (capacity counted in texts).

    One worker by default: the bundled engine serialises its calls anyway and gains from batches.
    An encoder whose calls run in parallel (onnxruntime sessions: the ONNX files, int8 included)
    gets one worker per core: each takes its own batch from the same queue.
    """

    def __init__(self, encode: EncodeFn, *, max_batch: int = 16, max_wait_ms: float = 2.0, queue_size: int = 256,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 thread_setup: Callable[[], None] | None = limit_faiss_threads, name: str = "faqbot-encoder",
                 workers: int = 1) -> None:
        if max_batch < 1 or queue_size < 1 or workers < 1:
            raise ValueError("max_batch, queue_size and workers must be at least 1")
        self.workers = workers
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.queue_size = queue_size
        self._on_batch = on_batch
        self._thread_setup = thread_setup
        self._name = name
        self._jobs: deque[_Job] = deque()
        self._queued_texts = 0
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the worker waits here for jobs
        self._space = threading.Condition(lock)  # blocking submitters wait here for room
        self._threads: list[threading.Thread] = []
        self._stopping = False
        # How many texts the last batch held: when fewer are waiting, their senders are probably
        # about to ask again, so a short wait fills the batch; when it held one, never wait.
        self._last_batch_texts = 1

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            self._threads = [threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True)
                             for i in range(self.workers)]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the workers; later submits get OverloadedError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads = self._threads
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._threads = []
            leftovers = list(self._jobs)
            self._jobs.clear()
            self._queued_texts = 0
            self._space.notify_all()
        for job in leftovers:  # only if the worker did not finish in time
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(OverloadedError("the encoder stopped before this question was encoded"))

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stopping

    @property
    def queue_depth(self) -> int:
        """Texts waiting for the encoder (not counting the batch being encoded)."""
        return self._queued_texts

    # --- requests --------------------------------------------------------------------------------
    def submit(self, texts: Sequence[str], search: SearchSpec | None = None, *, block: bool = False,
               timeout: float | None = None) -> Future[Encoded]:
        """Queue `texts` (at most `queue_size` of them); `block` waits for room instead of OverloadedError."""
        job = _Job(list(texts), search, Future(), 0.0)
        needed = len(job.texts)
        if needed == 0:
            job.future.set_result(Encoded(np.zeros((0, 0), dtype=np.float32), [] if search else None))
            return job.future
        if needed > self.queue_size:
            raise ValueError(f"{needed} texts in one job; split them into at most {self.queue_size}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._stopping or not self._threads:
                    raise OverloadedError("the encoder is not running")
                if self._queued_texts + needed <= self.queue_size:
                    break
                if not block:
                    raise OverloadedError(f"too many questions waiting ({self._queued_texts}); try again shortly")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise OverloadedError("timed out waiting for room in the encoder queue")
                self._space.wait(remaining)
            job.enqueued_at = time.perf_counter()
            self._jobs.append(job)
            self._queued_texts += needed
            self._cond.notify()
        return job.future

    # --- the worker ------------------------------------------------------------------------------
    def _take(self, batch: list[_Job], taken: int) -> int:
        """Move waiting jobs into `batch` while they fit in max_batch texts (a first job always fits).

        A job whose future was cancelled meanwhile (its request timed out or its client left, and
        `asyncio.wrap_future` passed the cancellation on) is dropped here, unencoded; the others
        become RUNNING, so they can no longer be cancelled under the worker's feet.
        """
        while self._jobs and (taken == 0 or taken + len(self._jobs[0].texts) <= self.max_batch):
            job = self._jobs.popleft()
            self._queued_texts -= len(job.texts)
            if not job.future.set_running_or_notify_cancel():
                continue
            batch.append(job)
            taken += len(job.texts)
        self._space.notify_all()
        return taken

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            batch: list[_Job] = []
            taken = self._take(batch, 0)
            if not batch:  # every waiting job had been cancelled
                return batch
            if self.max_wait > 0 and not self._stopping:
                deadline = time.perf_counter() + self.max_wait
                while taken < min(self.max_batch, self._last_batch_texts):
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    taken = self._take(batch, taken)
            self._last_batch_texts = taken
            return batch

    def _run(self) -> None:
        if self._thread_setup is not None:
            self._thread_setup()
        while (batch := self._next_batch()) is not None:
            if batch:
                self._process(batch)

    def _process(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        texts = [t for job in batch for t in job.texts]
        unique = list(dict.fromkeys(texts))  # the same question asked twice at once is encoded once
        try:
            unique_vectors = np.asarray(self._encode(unique), dtype=np.float32)
        except Exception as exc:  # an encoder failure fails this batch's requests, not the worker
            log.error("encoding a batch of %d texts failed: %s", len(unique), exc)
            for job in batch:
                job.future.set_exception(exc)
            return
        encoded_at = time.perf_counter()
        position = {text: i for i, text in enumerate(unique)}
        vectors = unique_vectors[[position[t] for t in texts]]
        results = self._search(batch, vectors)
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(texts), len(unique), len(batch), started - batch[0].enqueued_at,
                                      encoded_at - started))

    @staticmethod
    def _search(batch: list[_Job], vectors: np.ndarray) -> list[Encoded | Exception]:
        """Slice each job's vectors; jobs that asked for a search share one FAISS call per group."""
        slices: list[np.ndarray] = []
        start = 0
        for job in batch:
            slices.append(vectors[start:start + len(job.texts)])
            start += len(job.texts)
        results: list[Encoded | Exception] = [Encoded(s) for s in slices]
        groups: dict[tuple[int, int, tuple[str, ...] | None], list[int]] = {}
        for i, job in enumerate(batch):
            if job.search is not None:
                groups.setdefault(job.search.group, []).append(i)
        for members in groups.values():
            spec = batch[members[0]].search
            assert spec is not None
            try:
                decisions = spec.matcher.match_vectors(np.concatenate([slices[i] for i in members]),
                                                       [t for i in members for t in batch[i].texts],
                                                       top_k=spec.top_k, tags=spec.tags)
            except Exception as exc:  # a search failure fails only its group
                for i in members:
                    results[i] = exc
                continue
            offset = 0
            for i in members:
                n = len(slices[i])
                results[i] = Encoded(slices[i], decisions[offset:offset + n])
                offset += n
        return results
