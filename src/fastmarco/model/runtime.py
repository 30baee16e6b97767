"""The one base of every exported model kind: `OnnxModel` opens a directory (manifest, a runtime's
session, tokenizer, device, token budget) with the same rules and error messages (the runtimes and
how 'auto' picks one: fastmarco.model.runtimes), pads token batches and runs them. The bi-encoder
`Encoder` and the `CrossEncoderScorer` are its two subclasses."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from fastmarco.corpus.text import unicode_problem
from fastmarco.errors import EncoderError, InputError, ModelError
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.runtimes import AUTO, DEFAULT_CPU_MAX_TOKENS, RUNTIMES, Session, open_model_session

log = logging.getLogger("fastmarco")

Device = Literal["cpu", "cuda", "auto"]
Model = TypeVar("Model", bound="OnnxModel")
Key = TypeVar("Key")
Feeds = dict[str, npt.NDArray[np.int64]]

# Padded tokens per run (rows x longest row) on a GPU; a CPU's is its runtime's (`cpu_max_tokens`)
DEFAULT_GPU_MAX_TOKENS = 262_144
DEFAULT_MAX_BATCH = 1024
# On CPU a run costs its padded tokens: rows shorter than this share of the run's longest go to a run of
# their own (2-core AVX-512 VM, 2026-12-06, MiniLM fp32, 640 MS MARCO passages: in groups of 8 as the
# server batches concurrent requests 80.8 -> 118.8 passages/s, in groups of 32 62 -> 124, all at once
# 118.8 -> 122.1; 0.7 and 0.9 measured the same within noise).
CPU_MIN_FILL = 0.8
# Texts are cut to this many characters per token of max_seq_length before tokenizing: a WordPiece or
# BPE token spans far fewer on real text (MS MARCO: ~4.5), so the tokens kept do not change, while a
# 10 MB line no longer costs 1.75 GB and 19 s to tokenize in full and then truncate.
CHARS_PER_TOKEN_BOUND = 32
# From this many texts (or pairs) a call is bulk work, run on the session's bulk form (several runs in
# flight where the runtime gains from it: OpenVINO's streams). Fewer keep the latency form, whose one
# run has every thread: a query, a server batch.
BULK_ROWS = 256


def checked_texts(texts: Sequence[Any], name: str = "texts", offset: int = 0) -> list[str]:
    """`texts` as a list, each a str the tokenizer takes (valid Unicode); else an InputError naming
    `name[offset + i]`."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{name}[{offset + i}] is {type(text).__name__}, expected str")
        problem = unicode_problem(text)
        if problem:
            raise InputError(f"{name}[{offset + i}] is {problem}")
    return list(texts)


@dataclass(frozen=True)
class TokenBudget:
    """How a model's runs are cut: at most `max_tokens` padded tokens and `max_batch` rows a run, on
    CPU no row shorter than `min_fill` x the run's longest (padding costs full compute there), and the
    padded width rounded up to a multiple of `width_step` (`bulk_width_step` in bulk work; never past
    `max_width`): a runtime that prepares kernels per input shape sees a few shapes instead of one per
    length."""

    max_tokens: int
    max_batch: int = DEFAULT_MAX_BATCH
    min_fill: float = 0.0
    width_step: int = 1
    max_width: int = 1 << 30
    bulk_width_step: int = 1

    @classmethod
    def for_device(
        cls,
        device: str,
        max_tokens: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        *,
        width_step: int = 1,
        bulk_width_step: int = 1,
        max_width: int = 1 << 30,
        cpu_max_tokens: int = DEFAULT_CPU_MAX_TOKENS,
    ) -> TokenBudget:
        gpu = device.startswith("cuda")
        return cls(
            max_tokens or (DEFAULT_GPU_MAX_TOKENS if gpu else cpu_max_tokens),
            max_batch,
            0.0 if gpu else CPU_MIN_FILL,
            width_step,
            max_width,
            bulk_width_step,
        )

    def width(self, longest: int, *, bulk: bool = False) -> int:
        """The padded width of a run whose longest row has `longest` tokens."""
        step = self.bulk_width_step if bulk else self.width_step
        rounded = -(-max(1, longest) // step) * step
        return max(longest, min(rounded, self.max_width))

    def plan(
        self, lengths: npt.NDArray[np.int64], *, bulk: bool = False
    ) -> list[tuple[npt.NDArray[np.int64], int]]:
        """(rows, padded width) of each run: longest first, greedily packed so rows x width <=
        max_tokens (at least one row each) and every row at least min_fill x the longest."""
        order = np.argsort(-lengths, kind="stable")
        ordered = lengths[order]
        runs = []
        start = 0
        while start < len(order):
            longest = max(1, int(ordered[start]))
            width = self.width(longest, bulk=bulk)
            take = max(1, min(self.max_batch, self.max_tokens // width))
            if self.min_fill:  # rows are sorted: stop at the first too short to share this width
                take = max(
                    1, min(take, int(np.searchsorted(-ordered[start:], -self.min_fill * longest, "right")))
                )
            runs.append((order[start : start + take], width))
            start += take
        return runs


def load_tokenizer(root: Path, model: ModelManifest) -> Any:
    """The directory's fast tokenizer: no padding, truncation at the model's max_seq_length (pairs are
    cut longest-first, as transformers does), lower-casing first where the model asks for it."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as exc:  # the Rust tokenizer raises a bare Exception for a bad file
        raise EncoderError(f"{root / 'tokenizer.json'}: cannot load the tokenizer ({exc})") from exc
    if model.do_lower_case:  # as sentence-transformers does: a Lowercase normalizer first
        from tokenizers.normalizers import Lowercase
        from tokenizers.normalizers import Sequence as NormalizerSequence

        current = tokenizer.normalizer
        tokenizer.normalizer = NormalizerSequence([Lowercase(), current] if current else [Lowercase()])
    tokenizer.no_padding()
    tokenizer.enable_truncation(model.max_seq_length, strategy="longest_first")
    return tokenizer


class OnnxModel:
    """An exported model directory of one kind, opened for inference (see the module docstring)."""

    kind: ClassVar[str]  # the manifest 'kind' this class runs
    wrong_kind: ClassVar[str]  # the error for a directory of another kind: {root}, {held} filled in
    pairs: ClassVar[bool]  # inputs are (query, passage) pairs, whose segment ids say which is which

    def __init__(
        self,
        directory: Path,
        model: ModelManifest,
        session: Session,
        tokenizer: Any,
        device: str,
        budget: TokenBudget,
        runtime: str,
    ) -> None:
        self.directory = directory
        self.model = model
        self.session = session
        self.tokenizer = tokenizer
        self.device = device
        self.budget = budget
        self.runtime = runtime  # the registered runtime running the graph
        self.input_names = session.input_names
        self.max_chars = model.max_seq_length * CHARS_PER_TOKEN_BOUND

    def bounded(self, text: str) -> str:
        """`text` cut to what can reach the model's max_seq_length tokens (CHARS_PER_TOKEN_BOUND)."""
        return text if len(text) <= self.max_chars else text[: self.max_chars]

    @classmethod
    def open(
        cls: type[Model],
        directory: str | os.PathLike[str],
        device: Device = "auto",
        *,
        device_id: int = 0,
        threads: int = 0,
        max_tokens: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        busy_wait: bool = True,
        runtime: str = AUTO,
    ) -> Model:
        """Load the ONNX graph and tokenizer. `cuda` without CUDA is an error, never a CPU fallback.
        `runtime`: a registered runtime's name, or 'auto' (fastmarco.model.runtimes).

        busy_wait=False stops ONNX Runtime's CPU threads spinning when each run returns (they still
        spin inside it): right when other work shares the cores between runs (a query engine
        tokenizes before and searches after each one), while bulk work keeps the spin for
        back-to-back batches.
        """
        root = Path(directory)
        model = ModelManifest.load(root)
        if model.kind != cls.kind:
            raise ModelError(cls.wrong_kind.format(root=root, held=model.kind))
        tokenizer = load_tokenizer(root, model)
        opened = open_model_session(
            root,
            model,
            device,
            runtime,
            vocab_size=tokenizer.get_vocab_size(),
            device_id=device_id,
            threads=threads,
            busy_wait=busy_wait,
        )
        running = RUNTIMES[opened.runtime]
        budget = TokenBudget.for_device(
            opened.device,
            max_tokens,
            max_batch,
            width_step=running.width_step,
            bulk_width_step=running.bulk_width_step,
            max_width=model.max_seq_length,
            cpu_max_tokens=running.cpu_max_tokens,
        )
        return cls(root, model, opened.session, tokenizer, opened.device, budget, opened.runtime)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def pad(self, encodings: list[Any], width: int) -> Feeds:
        """The graph's feeds for token encodings, padded to `width`."""
        ids = np.full((len(encodings), width), self.model.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros((len(encodings), width), dtype=np.int64)
        segments = feeds.get("token_type_ids") if self.pairs else None  # one text: every segment id is 0
        for j, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[j, :n] = encoding.ids
            mask[j, :n] = 1
            if segments is not None:
                segments[j, :n] = encoding.type_ids
        return feeds

    def run(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        """The graph's one output for one padded batch."""
        return self.session.run(self.model.output, feeds)

    def run_batches(
        self, batches: Iterable[tuple[Key, Feeds]], *, bulk: bool
    ) -> Iterator[tuple[Key, npt.NDArray[np.float32], float]]:
        """(key, output, seconds) for each (key, feeds), in order. In bulk, up to the bulk session's
        streams runs are in flight, the next batch taken as the oldest returns; `seconds` is a run's
        share of the model's wall time (its duration / streams), so the sum says how long inference
        held the model. Otherwise each batch runs on the calling thread."""
        session, streams = self.session.bulk() if bulk else (self.session, 1)
        output = self.model.output

        def timed(feeds: Feeds) -> tuple[npt.NDArray[np.float32], float]:
            clock = time.perf_counter()
            result = session.run(output, feeds)
            return result, (time.perf_counter() - clock) / streams

        if streams == 1:
            for key, feeds in batches:
                yield key, *timed(feeds)
            return
        with ThreadPoolExecutor(streams, thread_name_prefix="fastmarco-infer") as pool:
            in_flight: deque[tuple[Key, Future[tuple[npt.NDArray[np.float32], float]]]] = deque()
            for key, feeds in batches:
                in_flight.append((key, pool.submit(timed, feeds)))
                if len(in_flight) == streams:
                    oldest, running = in_flight.popleft()
                    yield oldest, *running.result()
            while in_flight:
                oldest, running = in_flight.popleft()
                yield oldest, *running.result()
