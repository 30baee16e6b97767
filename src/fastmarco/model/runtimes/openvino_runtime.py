"""OpenVINO: the second CPU runtime (the `openvino` extra). It reads the exported ONNX graph as it is
(ONNX Runtime's fused contrib operators included) and compiles it for this CPU; a `bf16` export runs
in bf16 where the CPU has bf16 instructions (AVX512_BF16, AMX), anything else in fp32, the float rest
of an `int8-static` one included (OpenVINO's own default would be bf16 on such CPUs: fastmarco asks
for what the precision computes in, `Precision.computes_in`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import EncoderError
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.precisions import Precision, precision_named
from fastmarco.model.runtimes import (
    cpu_flags,
    has_amx,
    has_vnni,
    isa_cap_admits,
    not_installed,
    register_runtime,
)

log = logging.getLogger("fastmarco")


class OpenVinoSession:
    """One compiled model; an infer request per calling thread (a request is not thread-safe).

    It is compiled for latency (one stream: every thread on each run). `bulk` compiles the same graph
    once more, on first use, with OpenVINO's throughput hint: the plugin splits the threads into
    streams (2 on 2 cores), each computing its own run, so batches go through side by side.
    """

    def __init__(self, compiled: Any, compile_for: Callable[[str], Any] | None = None) -> None:
        self.compiled = compiled
        self.input_names = frozenset(name for port in compiled.inputs for name in port.get_names())
        self.streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._compile_for = compile_for  # hint -> compiled model; None for the bulk session itself
        self._bulk: tuple[OpenVinoSession, int] | None = None
        self._bulk_lock = threading.Lock()
        self._local = threading.local()

    def run(self, output: str, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({name: value for name, value in feeds.items() if name in self.input_names})
        result: npt.NDArray[np.float32] = request.get_tensor(output).data.copy()
        return result

    def bulk(self) -> tuple[OpenVinoSession, int]:
        if self._compile_for is None:
            return self, self.streams
        with self._bulk_lock:
            if self._bulk is None:
                throughput = OpenVinoSession(self._compile_for("THROUGHPUT"))
                # one stream (a single thread): the latency model is the same thing, already compiled
                self._bulk = (throughput, throughput.streams) if throughput.streams > 1 else (self, 1)
            return self._bulk


@cache
def _core() -> Any:
    import openvino

    # pybind11 sets up its numpy API on first use under a once-flag it takes before the GIL: two threads
    # reading their first tensor `.data` together deadlock (OpenVINO 2026.4, two bulk runs in flight in
    # a fresh process). One conversion here, before any session exists, sets it up.
    openvino.Tensor(np.zeros(1, dtype=np.float32)).data  # noqa: B018  (the side effect is the point)
    return openvino.Core()


def bf16_capable() -> bool:
    """Whether OpenVINO computes in bf16 on this CPU (AVX512_BF16 or AMX). OpenVINO's own answer reads
    the CPU, not a oneDNN cap: under one below bf16 (another CPU family, emulated) its kernels have no
    bf16, and asking for it fails to compile (a Softmax without a kernel, capped at AVX2)."""
    capable = "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return capable and isa_cap_admits("AVX512_CORE_BF16", "AVX2_VNNI_2")


def int8_kernels() -> bool:
    """Whether oneDNN, under OpenVINO, has its fast int8 kernels here (brgemm: VNNI or AVX-512). On AVX2
    without VNNI its int8 matrix products fall back to a generic gemm: all-MiniLM-L6-v2 int8-static, one
    24 x 96 batch on one core with oneDNN capped at AVX2, 729 ms against fp32's 445 (sentence-
    transformers' static int8: 699); capped at AVX512_CORE 256 against 352, at AVX2_VNNI 205 against
    428 (2-core Xeon VM, 2026-12-07)."""
    return has_vnni() or ("avx512bw" in cpu_flags() and isa_cap_admits("AVX512_CORE"))


class OpenVinoRuntime:
    name = "openvino"
    extra = "openvino"
    graph_formats = frozenset({".onnx", ".xml"})  # ONNX as it is, and its own

    # OpenVINO prepares its kernels for each input shape on first sight: widths in steps of 16 make 16
    # shapes of 2,000 MS MARCO passages instead of 46, and a first encode of them 373-385 -> 430-449
    # passages/s (int8-static, 2-core AMX VM, 2026-12-07); warm ones measured the same or faster. One
    # query at a time needs it on every CPU: without it each query length is a new shape (capped below
    # AMX: one-query p50 2.6-2.9 ms with it, 3.6-3.7 without).
    width_step = 16
    # Two streams each run a batch of their own on one core, so no core waits on a small one: 2,048
    # padded tokens against 4,096, 2,000 MS MARCO passages, paired rounds (2-core Xeon VM, 2026-12-07):
    # int8-static 471 -> 495 passages/s with AMX, 358 -> 367 capped at AVX512_CORE_BF16; bf16 479 ->
    # 487; the int8-static cross-encoder 484 -> 534 pairs/s with AMX, 326 -> 331 capped. 1,024 was as
    # fast or faster with AMX and slower capped; 8,192 slower on both.
    cpu_max_tokens = 2_048

    @property
    def bulk_width_step(self) -> int:
        """With AMX, bulk work keeps the step; without, preparing a shape is cheap next to a bulk run
        and padding is not: the same host with oneDNN capped at AVX512_CORE_BF16, 2,000 passages, two
        processes each, first / second call: steps of 16 251-252 / 256-261 passages/s, none 263-264 /
        262-279."""
        return 16 if has_amx() else 1

    def missing(self) -> str | None:
        return not_installed("openvino")

    def runs(self, precision: Precision, device: str) -> bool:
        return device != "cuda" and not precision.for_gpu

    def caveat(self, precision: Precision) -> str | None:
        if precision.computes_in == "bf16" and not bf16_capable():
            return f"this CPU has no bf16 instructions: openvino runs the {precision.name} export in fp32"
        if precision.quantization == "static" and not int8_kernels():
            return (
                f"this CPU has neither VNNI nor AVX-512: OpenVINO's int8 matrix products fall back to a "
                f"generic gemm, and the {precision.name} export runs slower than fp32 here; the int8 made "
                f"for this CPU is `fastmarco export --int8` (ONNX Runtime's kernels, 7-bit weights)"
            )
        return None

    def accelerated(self, device: str) -> bool:
        return False

    def versions(self) -> str:
        import openvino

        return str(openvino.__version__)

    def open(
        self,
        path: Path,
        model: ModelManifest,
        device: str,
        *,
        device_id: int,
        threads: int,
        busy_wait: bool,
    ) -> tuple[OpenVinoSession, str]:
        """device_id and busy_wait do not apply: the CPU only (`runs` refuses cuda), and OpenVINO's
        threads do not spin."""
        graph = path / model.model
        config = compile_config(precision_named(model.precision), threads)

        try:
            read = _core().read_model(str(graph))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise EncoderError(f"{graph}: OpenVINO cannot read it ({exc})") from exc

        def compile_for(hint: str) -> Any:
            try:
                return _core().compile_model(read, "CPU", {**config, "PERFORMANCE_HINT": hint})
            except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
                raise EncoderError(f"{graph}: OpenVINO cannot compile it ({exc})") from exc

        session = OpenVinoSession(compile_for("LATENCY"), compile_for)
        if device == "auto":
            log.info("device auto: using cpu (the openvino runtime)")
        return session, "cpu"


def compile_config(precision: Precision, threads: int) -> dict[str, Any]:
    """OpenVINO's CPU settings for a PRECISION's graph on this CPU (THREADS: 0 is OpenVINO's default),
    the performance hint aside."""
    in_bf16 = precision.computes_in == "bf16" and bf16_capable()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if in_bf16 else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


register_runtime(OpenVinoRuntime())
