"""Batched text -> embedding with onnxruntime, tokenization overlapped with inference.

Texts are tokenized in chunks (in bulk on a background thread: the Rust tokenizer releases the GIL),
sorted by length inside each chunk and cut into batches under a token budget (batch rows x padded length),
so short passages travel in big batches and long ones in small ones. The runtime runs the next batch
while the following chunk is tokenized (several at once in bulk where it gains from that: see
`OnnxModel.run_batches`); results land in input order.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.model.runtime import BULK_ROWS, Feeds, OnnxModel, checked_texts
from fastmarco.progress import Progress, Update

CHUNK_TEXTS = 8_192


@dataclass
class EncodeStats:
    """Counts of one `encode_with_stats` call. `tokenize_seconds` (tokenization and padding, on the
    background thread) and `infer_seconds` (the model's runs) overlap in time: they say which of the
    two bounds the throughput, not how the wall time `seconds` divides."""

    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    batches: int = 0
    seconds: float = 0.0
    tokenize_seconds: float = 0.0
    infer_seconds: float = 0.0

    def add(self, other: EncodeStats) -> None:
        self.texts += other.texts
        self.tokens += other.tokens
        self.truncated += other.truncated
        self.batches += other.batches
        self.seconds += other.seconds
        self.tokenize_seconds += other.tokenize_seconds
        self.infer_seconds += other.infer_seconds


@dataclass(frozen=True)
class Tokenized:
    """Texts after tokenization (truncated to the model's max_seq_length, no padding): what a caller
    that batches requests itself (the server) counts and coalesces before one `encode_tokenized`."""

    encodings: list[Any]  # tokenizers.Encoding, one per text
    lengths: npt.NDArray[np.int64]  # tokens per text, special tokens included
    truncated: npt.NDArray[np.bool_]  # which texts lost tokens to max_seq_length

    def __len__(self) -> int:
        return len(self.encodings)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @classmethod
    def concat(cls, parts: Sequence[Tokenized]) -> Tokenized:
        return cls(
            [e for part in parts for e in part.encodings],
            np.concatenate([part.lengths for part in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([part.truncated for part in parts]) if parts else np.zeros(0, np.bool_),
        )


@dataclass
class _Batch:
    positions: npt.NDArray[np.int64]  # indexes into the caller's texts
    feeds: Feeds


class Encoder(OnnxModel):
    """A bi-encoder directory (see fastmarco.model.export) opened for inference."""

    kind = "bi-encoder"
    pairs = False
    wrong_kind = (
        "{root} holds a {held}: it scores (query, passage) pairs and embeds nothing; use it with "
        "`fastmarco rerank` or `fastmarco mine --cross-encoder`"
    )

    @property
    def dim(self) -> int:
        return self.model.dim

    def tokenize(self, texts: Sequence[str], *, offset: int = 0) -> Tokenized:
        """Tokenize texts as `encode` does (`offset` only shifts the index an error names)."""
        checked = checked_texts(texts, offset=offset)
        n = len(checked)
        cut = np.fromiter((len(text) > self.max_chars for text in checked), dtype=np.bool_, count=n)
        encodings = self.tokenizer.encode_batch([self.bounded(text) for text in checked])
        overflowing = np.fromiter((bool(e.overflowing) for e in encodings), dtype=np.bool_, count=n)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        return Tokenized(encodings, lengths, overflowing | cut)

    def _pack(self, tokenized: Tokenized, start: int, *, bulk: bool = False) -> Iterator[_Batch]:
        """Padded batches under the token budget (its bulk widths for bulk work); positions are shifted
        by `start`."""
        for rows, width in self.budget.plan(tokenized.lengths, bulk=bulk):
            encodings = [tokenized.encodings[row] for row in rows]
            yield _Batch(rows + start, self.pad(encodings, width))

    def _batches(self, texts: Sequence[Any], stats: EncodeStats, bulk: bool) -> Iterator[_Batch]:
        for start in range(0, len(texts), CHUNK_TEXTS):
            tokenized = self.tokenize(texts[start : start + CHUNK_TEXTS], offset=start)
            stats.tokens += tokenized.tokens
            stats.truncated += int(tokenized.truncated.sum())
            yield from self._pack(tokenized, start, bulk=bulk)

    def encode_tokenized(
        self, tokenized: Tokenized, *, dtype: type[np.floating[Any]] = np.float32
    ) -> npt.NDArray[np.floating[Any]]:
        """Embed already tokenized texts in their order, on the calling thread: (len(tokenized), dim)."""
        out = np.empty((len(tokenized), self.dim), dtype=dtype)
        for batch in self._pack(tokenized, 0):
            out[batch.positions] = self.run(batch.feeds)
        return out

    def encode(
        self,
        texts: Sequence[str],
        *,
        dtype: type[np.floating[Any]] = np.float32,
        progress: Progress | None = None,
    ) -> npt.NDArray[np.floating[Any]]:
        """Embed texts in input order: (len(texts), dim). Over-long texts are truncated (see
        `encode_with_stats` for the count); an empty string embeds as sentence-transformers embeds it."""
        return self.encode_with_stats(texts, dtype=dtype, progress=progress)[0]

    def encode_with_stats(
        self,
        texts: Sequence[str],
        *,
        dtype: type[np.floating[Any]] = np.float32,
        progress: Progress | None = None,
    ) -> tuple[npt.NDArray[np.floating[Any]], EncodeStats]:
        """`encode`, plus token, truncation and batch counts for this call (safe across threads)."""
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of str, not one str")
        out = np.empty((len(texts), self.dim), dtype=dtype)
        bulk = len(texts) >= BULK_ROWS
        stats = EncodeStats(texts=len(texts))
        started = time.perf_counter()

        def tokenized() -> Iterator[_Batch]:
            clock = time.perf_counter()
            for batch in self._batches(texts, stats, bulk):
                stats.tokenize_seconds += time.perf_counter() - clock
                yield batch
                clock = time.perf_counter()

        embedded = 0
        # Bulk work tokenizes ahead on a background thread; below that the thread costs more than it
        # overlaps (one query: starting it and handing the batch over took 0.5 of 1.8 ms)
        with _ahead(tokenized()) if bulk else contextlib.nullcontext(tokenized()) as batches:
            arrivals = ((batch, batch.feeds) for batch in batches)
            for batch, result, seconds in self.run_batches(arrivals, bulk=bulk):
                out[batch.positions] = result
                stats.infer_seconds += seconds
                stats.batches += 1
                embedded += len(batch.positions)
                if progress is not None:
                    progress(Update("embed", embedded, len(texts), "texts"))
        stats.seconds = time.perf_counter() - started
        return out, stats


@contextlib.contextmanager
def _ahead(items: Iterator[_Batch], depth: int = 8) -> Iterator[Iterator[_Batch]]:
    """ITEMS produced on a background thread, up to DEPTH ahead of the consumer; an exception there is
    raised here, and leaving the block stops and joins the thread."""
    pipe: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: _Batch | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                pipe.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    def arrivals() -> Iterator[_Batch]:
        while (item := pipe.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    producer = threading.Thread(target=produce, name="fastmarco-tokenize", daemon=True)
    producer.start()
    try:
        yield arrivals()
    finally:
        stop.set()
        producer.join()
