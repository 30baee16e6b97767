"""ONNX Runtime sessions and tokenizers for exported model directories: what the bi-encoder `Encoder`
and the `CrossEncoderScorer` both open, with the same device rules (`cuda` without CUDA is an error,
never a CPU fallback) and the same error messages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from fastmarco.errors import EncoderError, InputError
from fastmarco.model.manifest import ModelManifest

log = logging.getLogger("fastmarco")

Device = Literal["cpu", "cuda", "auto"]


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
