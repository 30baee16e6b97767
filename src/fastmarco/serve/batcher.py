"""Dynamic batching: concurrent requests coalesced into one encode and one search per k.

Requests arrive tokenized (the server tokenizes on its own thread while the current batch runs) and
wait in a bounded queue. Whenever the engine is free, the loop takes queued requests in arrival order
up to `max_batch_tokens` real tokens (a single larger request runs alone), waiting up to
`max_wait_ms` for more where the batch is not full, then runs the batch on one worker thread: one
encode of every text, then one exact-refined search per distinct k (searching at the largest k and
cutting would change faiss candidates, so each k is searched as `Engine.search` would). A request
whose client has gone is skipped. A full queue refuses at once (OverloadedError, HTTP 429): memory is
bounded by max_queue x the per-request limits, never by the offered load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fastmarco.engine import Engine, SearchResult, Tokenized
from fastmarco.errors import OverloadedError
from fastmarco.serve.metrics import Metrics


@dataclass(frozen=True)
class JobResult:
    vectors: npt.NDArray[np.float32]  # (texts, dim)
    found: SearchResult | None  # (texts, k) for a search job
    queue_seconds: float
    encode_seconds: float
    search_seconds: float
    batch_rows: int  # texts in the batch this job ran in
    tokens: int  # this job's tokens, special tokens included
    truncated: int  # this job's texts cut to max_seq_length


@dataclass(eq=False)
class Job:
    tokenized: Tokenized
    k: int | None  # None: embeddings only
    future: asyncio.Future[JobResult]
    enqueued: float = field(default_factory=time.perf_counter)
    dropped: bool = False  # the client disconnected while the job waited


class Batcher:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue: int,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fastmarco-batch")
        self._loop_task: asyncio.Task[None] | None = None
        self._batch_seconds = 0.05  # running mean, for Retry-After

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        """Finish what is queued, then stop (the server has stopped taking requests by then)."""
        while self._waiting:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._worker.shutdown(wait=True)

    def submit(self, tokenized: Tokenized, k: int | None) -> Job:
        if len(self._waiting) >= self.max_queue:
            self.metrics.rejected.inc()
            retry_after = max(1.0, len(self._waiting) * self._batch_seconds)
            raise OverloadedError(
                f"the queue is full ({len(self._waiting)} requests waiting, --max-queue {self.max_queue}); "
                "retry later",
                retry_after=retry_after,
            )
        job = Job(tokenized, k, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self.metrics.queue_depth.set(len(self._waiting))
        self._arrived.set()
        return job

    def _take(self, batch: list[Job], tokens: int) -> int:
        """Move queued jobs into `batch` while they fit the token budget; returns the new total."""
        while self._waiting:
            job = self._waiting[0]
            if job.dropped:
                self._waiting.popleft()
                continue
            if batch and tokens + job.tokenized.tokens > self.max_batch_tokens:
                break
            batch.append(self._waiting.popleft())
            tokens += job.tokenized.tokens
        return tokens

    async def _next_batch(self) -> list[Job]:
        batch: list[Job] = []
        tokens = 0
        while not batch:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            tokens = self._take(batch, tokens)
        deadline = time.perf_counter() + self.max_wait
        while tokens < self.max_batch_tokens and not self._waiting and time.perf_counter() < deadline:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.perf_counter())
            tokens = self._take(batch, tokens)
        self.metrics.queue_depth.set(len(self._waiting))
        return batch

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._worker, self._run, batch, started)
            except Exception as exc:  # every job of the batch gets the error; the loop goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.perf_counter() - started)
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _run(self, batch: list[Job], started: float) -> list[JobResult]:
        """One encode of every text, then one search per distinct k; on the worker thread."""
        tokenized = Tokenized.concat([job.tokenized for job in batch])
        vectors = self.engine.embed(tokenized)
        encoded = time.perf_counter()
        self.metrics.batch_rows.observe(len(tokenized))
        self.metrics.batch_tokens.observe(tokenized.tokens)
        self.metrics.encode_seconds.observe(encoded - started)
        ends = np.cumsum([len(job.tokenized) for job in batch])
        spans = [(int(end) - len(job.tokenized), int(end)) for job, end in zip(batch, ends, strict=True)]
        found: dict[int, SearchResult] = {}
        search_seconds: dict[int, float] = {}
        for k in sorted({job.k for job in batch if job.k is not None}):
            members = [i for i, job in enumerate(batch) if job.k == k]
            rows = np.concatenate([np.arange(*spans[i]) for i in members])
            before = time.perf_counter()
            result = self.engine.search_vectors(vectors[rows], k)
            search_seconds[k] = time.perf_counter() - before
            self.metrics.search_seconds.observe(search_seconds[k])
            start = 0
            for i in members:
                n = spans[i][1] - spans[i][0]
                found[i] = SearchResult(
                    result.scores[start : start + n],
                    result.rows[start : start + n],
                    result.ids[start : start + n],
                )
                start += n
        results = []
        for i, job in enumerate(batch):
            queued = started - job.enqueued
            self.metrics.queue_seconds.observe(queued)
            results.append(
                JobResult(
                    vectors[spans[i][0] : spans[i][1]],
                    found.get(i),
                    queued,
                    encoded - started,
                    search_seconds.get(job.k, 0.0) if job.k is not None else 0.0,
                    len(tokenized),
                    job.tokenized.tokens,
                    int(job.tokenized.truncated.sum()),
                )
            )
        return results
