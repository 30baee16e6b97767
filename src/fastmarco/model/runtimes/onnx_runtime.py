"""ONNX Runtime: the default runtime, on the CPU and (onnxruntime-gpu) on CUDA. `cuda` without the
CUDA provider is an error, never a CPU fallback; on CUDA a run binds its output on the device."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import EncoderError
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.precisions import Precision
from fastmarco.model.runtimes import DEFAULT_CPU_MAX_TOKENS, not_installed, register_runtime

log = logging.getLogger("fastmarco")

# ORT's own fusions a CPU session leaves out: its SkipLayerNormalization CPU kernel is ~3x slower than
# the Adds and LayerNormalization it would fuse (ORT 1.32, with or without AVX-512)
CPU_UNFUSED = "SkipLayerNormFusion"


class OrtSession:
    def __init__(self, session: Any, cuda_device: int | None) -> None:
        self.session = session
        self.cuda_device = cuda_device
        self.input_names = frozenset(i.name for i in session.get_inputs())

    def run(self, output: str, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        if self.cuda_device is None:
            cpu_result: npt.NDArray[np.float32] = self.session.run([output], feeds)[0]
            return cpu_result
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(output, "cuda", self.cuda_device)
        self.session.run_with_iobinding(binding)
        result: npt.NDArray[np.float32] = binding.copy_outputs_to_cpu()[0]
        return result

    def bulk(self) -> tuple[OrtSession, int]:
        """One run at a time: two runs of one thread each were no faster than one of two threads (fp32
        and int8, 2 cores, docs/benchmarks.md)."""
        return self, 1


class OnnxRuntime:
    name = "onnxruntime"
    extra = "cpu"
    width_step = bulk_width_step = 1  # padding to a multiple of 8 or 16 measured slower (its cost, no gain)
    cpu_max_tokens = DEFAULT_CPU_MAX_TOKENS
    graph_formats = frozenset({".onnx"})

    def missing(self) -> str | None:
        return not_installed("onnxruntime")

    def runs(self, precision: Precision, device: str) -> bool:
        return True  # a bf16 export is an fp32 graph: it runs here in fp32

    def caveat(self, precision: Precision) -> str | None:
        return (
            f"onnxruntime runs a {precision.name} export in fp32 (openvino runs it in bf16)"
            if precision.computes_in == "bf16"
            else None
        )

    def accelerated(self, device: str) -> bool:
        import onnxruntime as ort

        return device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()

    def versions(self) -> str:
        return metadata.version("onnxruntime" if _installed("onnxruntime") else "onnxruntime-gpu")

    def open(
        self,
        path: Path,
        model: ModelManifest,
        device: str,
        *,
        device_id: int,
        threads: int,
        busy_wait: bool,
    ) -> tuple[OrtSession, str]:
        """busy_wait=False stops ORT's CPU threads spinning once each run returns; they still spin
        between the operators inside a run, which is where the spin pays."""
        import onnxruntime as ort

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
        if not use_cuda:  # the export keeps these apart on purpose (export_steps.optimize_graph)
            options.add_session_config_entry("optimization.disable_specified_optimizers", CPU_UNFUSED)
        providers: list[Any] = (
            [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            if use_cuda
            else ["CPUExecutionProvider"]
        )
        graph = path / model.model
        try:
            session = ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as exc:  # ORT raises its own types for an unreadable or invalid graph
            raise EncoderError(f"{graph}: ONNX Runtime cannot load it ({exc})") from exc
        if use_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
            raise EncoderError(
                f"CUDAExecutionProvider failed to initialise (session providers: {session.get_providers()}); "
                "check the CUDA and cuDNN libraries onnxruntime-gpu needs"
            )
        chosen = f"cuda:{device_id}" if use_cuda else "cpu"
        if device == "auto":
            log.info("device auto: using %s (%s)", chosen, "CUDA present" if use_cuda else "no CUDA provider")
        return OrtSession(session, device_id if use_cuda else None), chosen


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


register_runtime(OnnxRuntime())
