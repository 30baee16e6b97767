"""Batched text -> embedding with onnxruntime, tokenization overlapped with inference.

Texts are tokenized in chunks on a background thread (the Rust tokenizer releases the GIL), sorted
by length inside each chunk and cut into batches under a token budget (batch rows x padded length),
so short passages travel in big batches and long ones in small ones. ORT runs the next batch while
the following chunk is tokenized; results land in input order.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError, ModelError
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.runtime import Device, load_tokenizer, open_session

# Per batch on CPU: a batch whose activations stay in cache is faster, and needs a third of the memory
# (2 cores, 2026-12-02: 16,384 -> 4,096 took MiniLM int8 from 212 to 227-245 passages/s and its peak
# RSS from 1.6 GB to 0.55 GB; 2,048 was faster still there, but leaves more cores short of work).
# GPUs want far more.
DEFAULT_MAX_TOKENS = 4_096
DEFAULT_GPU_MAX_TOKENS = 262_144
CHUNK_TEXTS = 8_192


@dataclass
class EncodeStats:
    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    batches: int = 0
    seconds: float = 0.0

    def add(self, other: EncodeStats) -> None:
        self.texts += other.texts
        self.tokens += other.tokens
        self.truncated += other.truncated
        self.batches += other.batches
        self.seconds += other.seconds


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
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]


def plan_batches(
    lengths: npt.NDArray[np.int64], max_tokens: int, max_batch: int
) -> list[npt.NDArray[np.int64]]:
    """Longest first, greedily packed so rows x longest row <= max_tokens (at least one row each)."""
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))
        take = max(1, min(max_batch, max_tokens // longest))
        batches.append(order[start : start + take])
        start += take
    return batches


class Encoder:
    """An exported model directory (see fastmarco.export) opened for inference."""

    def __init__(
        self,
        directory: Path,
        model: ModelManifest,
        session: Any,
        tokenizer: Any,
        device: str,
        max_tokens: int,
        max_batch: int,
    ) -> None:
        self.directory = directory
        self.model = model
        self.session = session
        self.tokenizer = tokenizer
        self.device = device
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.input_names = {i.name for i in session.get_inputs()}

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        device: Device = "auto",
        *,
        device_id: int = 0,
        threads: int = 0,
        max_tokens: int | None = None,
        max_batch: int = 1024,
        busy_wait: bool = True,
    ) -> Encoder:
        """Load the ONNX graph and tokenizer. `cuda` without CUDA is an error, never a CPU fallback.

        busy_wait=False stops ONNX Runtime's CPU threads spinning when each run returns (they still
        spin inside it): right when other work shares the cores between encodes (a query engine
        tokenizes before and searches after each one), while bulk encoding keeps the spin for
        back-to-back batches.
        """
        root = Path(directory)
        model = ModelManifest.load(root)
        if model.kind != "bi-encoder":
            raise ModelError(
                f"{root} holds a {model.kind}: it scores (query, passage) pairs and embeds nothing; "
                "use it with `fastmarco rerank` or `fastmarco mine --cross-encoder`"
            )
        session, chosen = open_session(
            root, model, device, device_id=device_id, threads=threads, busy_wait=busy_wait
        )
        tokenizer = load_tokenizer(root, model)
        use_cuda = chosen.startswith("cuda")
        budget = max_tokens or (DEFAULT_GPU_MAX_TOKENS if use_cuda else DEFAULT_MAX_TOKENS)
        return cls(root, model, session, tokenizer, chosen, budget, max_batch)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    @staticmethod
    def _check_texts(texts: Sequence[Any], offset: int) -> list[str]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"texts[{offset + i}] is {type(text).__name__}, expected str")
        return list(texts)

    def tokenize(self, texts: Sequence[str], *, offset: int = 0) -> Tokenized:
        """Tokenize texts as `encode` does (`offset` only shifts the index an error names)."""
        encodings = self.tokenizer.encode_batch(self._check_texts(texts, offset))
        return Tokenized(
            encodings,
            np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings)),
            np.fromiter((bool(e.overflowing) for e in encodings), dtype=np.bool_, count=len(encodings)),
        )

    def _pack(self, tokenized: Tokenized, start: int) -> Iterator[_Batch]:
        """Padded batches under the token budget; positions are shifted by `start`."""
        pad = self.model.pad_token_id
        lengths = tokenized.lengths
        for rows in plan_batches(lengths, self.max_tokens, self.max_batch):
            width = int(lengths[rows[0]])
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, row in enumerate(rows):
                n = int(lengths[row])
                ids[j, :n] = tokenized.encodings[row].ids
                mask[j, :n] = 1
            yield _Batch(rows + start, ids, mask)

    def _batches(self, texts: Sequence[Any], stats: EncodeStats) -> Iterator[_Batch]:
        for start in range(0, len(texts), CHUNK_TEXTS):
            tokenized = self.tokenize(texts[start : start + CHUNK_TEXTS], offset=start)
            stats.tokens += tokenized.tokens
            stats.truncated += int(tokenized.truncated.sum())
            yield from self._pack(tokenized, start)

    def encode_tokenized(
        self, tokenized: Tokenized, *, dtype: type[np.floating[Any]] = np.float32
    ) -> npt.NDArray[np.floating[Any]]:
        """Embed already tokenized texts in their order, on the calling thread: (len(tokenized), dim)."""
        out = np.empty((len(tokenized), self.dim), dtype=dtype)
        for batch in self._pack(tokenized, 0):
            out[batch.positions] = self._run(batch)
        return out

    def _run(self, batch: _Batch) -> npt.NDArray[np.float32]:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(batch.input_ids)
        if self.device.startswith("cuda"):
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(self.model.output, "cuda", int(self.device.split(":")[1]))
            self.session.run_with_iobinding(binding)
            result: npt.NDArray[np.float32] = binding.copy_outputs_to_cpu()[0]
        else:
            result = self.session.run([self.model.output], feeds)[0]
        return result

    def encode(
        self,
        texts: Sequence[str],
        *,
        dtype: type[np.floating[Any]] = np.float32,
        progress: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.floating[Any]]:
        """Embed texts in input order: (len(texts), dim). Over-long texts are truncated (see
        `encode_with_stats` for the count); an empty string embeds as sentence-transformers embeds it."""
        return self.encode_with_stats(texts, dtype=dtype, progress=progress)[0]

    def encode_with_stats(
        self,
        texts: Sequence[str],
        *,
        dtype: type[np.floating[Any]] = np.float32,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[npt.NDArray[np.floating[Any]], EncodeStats]:
        """`encode`, plus token, truncation and batch counts for this call (safe across threads)."""
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of str, not one str")
        out = np.empty((len(texts), self.dim), dtype=dtype)
        stats = EncodeStats(texts=len(texts))
        started = time.perf_counter()
        pipe: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=8)
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
                for batch in self._batches(texts, stats):
                    if not put(batch):
                        return
                put(None)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(exc)

        producer = threading.Thread(target=produce, name="fastmarco-tokenize", daemon=True)
        producer.start()
        try:
            while (item := pipe.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                out[item.positions] = self._run(item)
                stats.batches += 1
                if progress is not None:
                    progress(len(item.positions))
        finally:
            stop.set()
            producer.join()
        stats.seconds = time.perf_counter() - started
        return out, stats
