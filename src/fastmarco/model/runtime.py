"""The one ONNX Runtime base of every exported model kind: `OnnxModel` opens a directory (manifest,
session, tokenizer, device, token budget) with the same device rules (`cuda` without CUDA is an
error, never a CPU fallback) and the same error messages, pads token batches and runs them (with IO
binding on CUDA). The bi-encoder `Encoder` and the `CrossEncoderScorer` are its two subclasses."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from fastmarco.corpus.text import unicode_problem
from fastmarco.errors import EncoderError, InputError, ModelError
from fastmarco.model.manifest import ModelManifest

log = logging.getLogger("fastmarco")

Device = Literal["cpu", "cuda", "auto"]
Model = TypeVar("Model", bound="OnnxModel")

# Padded tokens per run (rows x longest row). On CPU a batch whose activations stay in cache is
# faster and needs a third of the memory (2 cores, 2026-12-02: 16,384 -> 4,096 took MiniLM int8 from
# 212 to 227-245 passages/s and its peak RSS from 1.6 GB to 0.55 GB; 2,048 was faster still there,
# but leaves more cores short of work). GPUs want far more.
DEFAULT_MAX_TOKENS = 4_096
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
    """How a model's runs are cut: at most `max_tokens` padded tokens and `max_batch` rows a run, and
    on CPU no row shorter than `min_fill` x the run's longest (padding costs full compute there)."""

    max_tokens: int
    max_batch: int = DEFAULT_MAX_BATCH
    min_fill: float = 0.0

    @classmethod
    def for_device(
        cls, device: str, max_tokens: int | None = None, max_batch: int = DEFAULT_MAX_BATCH
    ) -> TokenBudget:
        if device.startswith("cuda"):
            return cls(max_tokens or DEFAULT_GPU_MAX_TOKENS, max_batch)
        return cls(max_tokens or DEFAULT_MAX_TOKENS, max_batch, CPU_MIN_FILL)

    def plan(self, lengths: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        """Longest first, greedily packed so rows x longest row <= max_tokens (at least one row each)
        and every row at least min_fill x the longest."""
        order = np.argsort(-lengths, kind="stable")
        ordered = lengths[order]
        batches = []
        start = 0
        while start < len(order):
            longest = max(1, int(ordered[start]))
            take = max(1, min(self.max_batch, self.max_tokens // longest))
            if self.min_fill:  # rows are sorted: stop at the first too short to share this width
                take = max(
                    1, min(take, int(np.searchsorted(-ordered[start:], -self.min_fill * longest, "right")))
                )
            batches.append(order[start : start + take])
            start += take
        return batches


def open_session(
    root: Path,
    model: ModelManifest,
    device: Device,
    *,
    device_id: int = 0,
    threads: int = 0,
    busy_wait: bool = True,
) -> tuple[Any, str]:
    """(session, "cpu" or "cuda:N"). busy_wait=False stops ORT's CPU threads spinning once each run
    returns; they still spin between the operators inside a run, which is where the spin pays."""
    import onnxruntime as ort

    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if threads < 0:
        raise InputError(f"threads must be 0 (ONNX Runtime's default) or positive, got {threads}")
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise EncoderError(
            "device 'cuda' asked for, but onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu (pip install 'fastmarco[gpu]')"
        )
    use_cuda = device == "cuda" or (device == "auto" and has_cuda)
    if use_cuda and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels or torch, as onnxruntime-gpu documents
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not busy_wait:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        if use_cuda
        else ["CPUExecutionProvider"]
    )
    try:
        session = ort.InferenceSession(str(root / model.model), options, providers=providers)
    except Exception as exc:  # ORT raises its own types for an unreadable or invalid graph
        raise EncoderError(f"{root / model.model}: ONNX Runtime cannot load it ({exc})") from exc
    if use_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        raise EncoderError(
            f"CUDAExecutionProvider failed to initialise (session providers: {session.get_providers()}); "
            "check the CUDA and cuDNN libraries onnxruntime-gpu needs"
        )
    chosen = f"cuda:{device_id}" if use_cuda else "cpu"
    if device == "auto":
        log.info("device auto: using %s (%s)", chosen, "CUDA present" if use_cuda else "no CUDA provider")
    return session, chosen


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
        session: Any,
        tokenizer: Any,
        device: str,
        budget: TokenBudget,
    ) -> None:
        self.directory = directory
        self.model = model
        self.session = session
        self.tokenizer = tokenizer
        self.device = device
        self.budget = budget
        self.input_names = {i.name for i in session.get_inputs()}
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
    ) -> Model:
        """Load the ONNX graph and tokenizer. `cuda` without CUDA is an error, never a CPU fallback.

        busy_wait=False stops ONNX Runtime's CPU threads spinning when each run returns (they still
        spin inside it): right when other work shares the cores between runs (a query engine
        tokenizes before and searches after each one), while bulk work keeps the spin for
        back-to-back batches.
        """
        root = Path(directory)
        model = ModelManifest.load(root)
        if model.kind != cls.kind:
            raise ModelError(cls.wrong_kind.format(root=root, held=model.kind))
        session, chosen = open_session(
            root, model, device, device_id=device_id, threads=threads, busy_wait=busy_wait
        )
        budget = TokenBudget.for_device(chosen, max_tokens, max_batch)
        return cls(root, model, session, load_tokenizer(root, model), chosen, budget)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def pad(self, encodings: list[Any], width: int) -> dict[str, npt.NDArray[np.int64]]:
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

    def run(self, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        """The graph's one output for one padded batch (IO binding on CUDA)."""
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
