"""Dynamic batching: concurrent requests coalesced into one encode, one search per k and one
cross-encoder scoring of every re-ranking request's pairs.

Requests arrive tokenized (the server tokenizes on its own thread while the current batch runs) and
wait in a bounded queue. Whenever the engine is free, the loop takes queued requests in arrival order
up to `max_batch_tokens` real tokens (a single larger request runs alone), waiting up to
`max_wait_ms` for more where the batch is not full, then runs the batch on one worker thread: one
encode of every text, then one exact-refined search per distinct k (searching at the largest k and
cutting would change faiss candidates, so each k is searched as `Engine.search` would). A request
whose client has gone is skipped. Re-ranking requests (query, document pairs tokenized by the
cross-encoder) share the queue and the token budget with the texts. A full queue refuses at once
(OverloadedError, HTTP 429): memory is bounded by max_queue x the per-request limits, never by the
offered load.
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

from fastmarco.engine import Engine, PairTokens, SearchResult, Tokenized
from fastmarco.errors import OverloadedError
from fastmarco.serve.metrics import Metrics


@dataclass(frozen=True)
class JobResult:
    vectors: npt.NDArray[np.float32]  # (texts, dim); (0, dim) for a re-ranking job
    found: SearchResult | None  # (texts, k) for a search job
    scores: npt.NDArray[np.float32] | None  # (pairs,) for a re-ranking job
    queue_seconds: float
    encode_seconds: float
    search_seconds: float
    batch_rows: int  # texts in the batch this job ran in
    tokens: int  # this job's tokens, special tokens included
    truncated: int  # this job's texts cut to max_seq_length


@dataclass(eq=False)
class Job:
    tokenized: Tokenized | None  # texts to embed (and search), or
    pairs: PairTokens | None  # pairs to score with the cross-encoder
    k: int | None  # None: embeddings only
    future: asyncio.Future[JobResult]
    enqueued: float = field(default_factory=time.perf_counter)
    dropped: bool = False  # the client disconnected while the job waited

    @property
    def tokens(self) -> int:
        return self.tokenized.tokens if self.tokenized is not None else self.pairs.tokens if self.pairs else 0


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
        """Queue texts to embed, and to search at k unless k is None."""
        return self._queue(Job(tokenized, None, k, asyncio.get_running_loop().create_future()))

    def submit_pairs(self, pairs: PairTokens) -> Job:
        """Queue (query, document) pairs to score with the cross-encoder."""
        return self._queue(Job(None, pairs, None, asyncio.get_running_loop().create_future()))

    def _queue(self, job: Job) -> Job:
        if len(self._waiting) >= self.max_queue:
            self.metrics.rejected.inc()
            retry_after = max(1.0, len(self._waiting) * self._batch_seconds)
            raise OverloadedError(
                f"the queue is full ({len(self._waiting)} requests waiting, --max-queue {self.max_queue}); "
                "retry later",
                retry_after=retry_after,
            )
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
            if batch and tokens + job.tokens > self.max_batch_tokens:
                break
            batch.append(self._waiting.popleft())
            tokens += job.tokens
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
        """One encode of every text, one search per distinct k, one scoring of every pair; on the
        worker thread."""
        texts = [(i, job.tokenized) for i, job in enumerate(batch) if job.tokenized is not None]
        pairs = [(i, job.pairs) for i, job in enumerate(batch) if job.pairs is not None]
        spans: dict[int, tuple[int, int]] = {}
        vectors = np.zeros((0, self.engine.index.dim), dtype=np.float32)
        rows = 0
        if texts:
            tokenized = Tokenized.concat([t for _, t in texts])
            vectors = self.engine.embed(tokenized)
            self.metrics.batch_tokens.observe(tokenized.tokens)
            for i, part in texts:
                spans[i] = (rows, rows + len(part))
                rows += len(part)
        encoded = time.perf_counter()
        scores: dict[int, npt.NDArray[np.float32]] = {}
        if pairs:
            joined = PairTokens.concat([p for _, p in pairs])
            scored_pairs = self.engine.score_pairs(joined)
            start = 0
            for i, pair_part in pairs:
                scores[i] = scored_pairs[start : start + len(pair_part)]
                start += len(pair_part)
            rows += len(joined)
        scored = time.perf_counter()
        self.metrics.batch_rows.observe(rows)
        self.metrics.encode_seconds.observe(scored - started)
        found: dict[int, SearchResult] = {}
        search_seconds: dict[int, float] = {}
        for k in sorted({k for i, _ in texts if (k := batch[i].k) is not None}):
            members = [i for i, _ in texts if batch[i].k == k]
            selected = np.concatenate([np.arange(*spans[i]) for i in members])
            before = time.perf_counter()
            result = self.engine.search_vectors(vectors[selected], k)
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
            span = spans.get(i, (0, 0))
            truncated = int(job.tokenized.truncated.sum()) if job.tokenized is not None else 0
            results.append(
                JobResult(
                    vectors[span[0] : span[1]],
                    found.get(i),
                    scores.get(i),
                    queued,
                    (encoded - started) if job.tokenized is not None else (scored - encoded),
                    search_seconds.get(job.k, 0.0) if job.k is not None else 0.0,
                    rows,
                    job.tokens,
                    truncated,
                )
            )
        return results
