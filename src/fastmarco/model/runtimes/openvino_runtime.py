"""OpenVINO: the second CPU runtime (the `openvino` extra). It reads the exported ONNX graph as it is
(ONNX Runtime's fused contrib operators included) and compiles it for this CPU; a `bf16` export runs
in bf16 where the CPU has bf16 instructions (AVX512_BF16, AMX), anything else in fp32 (OpenVINO's
own default would be bf16 on such CPUs: fastmarco asks for what the manifest says)."""

from __future__ import annotations

import logging
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import EncoderError
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.runtimes import not_installed, register_runtime

log = logging.getLogger("fastmarco")


class OpenVinoSession:
    """One compiled model; an infer request per calling thread (a request is not thread-safe)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.input_names = frozenset(name for port in compiled.inputs for name in port.get_names())
        self._local = threading.local()

    def run(self, output: str, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({name: value for name, value in feeds.items() if name in self.input_names})
        result: npt.NDArray[np.float32] = request.get_tensor(output).data.copy()
        return result


@cache
def _core() -> Any:
    import openvino

    return openvino.Core()


def bf16_capable() -> bool:
    """Whether OpenVINO computes in bf16 on this CPU (AVX512_BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRuntime:
    name = "openvino"
    extra = "openvino"

    def missing(self) -> str | None:
        return not_installed("openvino")

    def runs(self, precision: str, device: str) -> bool:
        return device != "cuda" and precision in ("fp32", "bf16", "int8")

    def widened(self, precision: str) -> str | None:
        if precision == "bf16" and not bf16_capable():
            return "this CPU has no bf16 instructions: openvino runs the bf16 export in fp32"
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
        bf16 = model.precision == "bf16"
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",  # one stream: every thread on each run, as fastmarco calls it
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 and bf16_capable() else "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        graph = path / model.model
        try:
            compiled = _core().compile_model(str(graph), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise EncoderError(f"{graph}: OpenVINO cannot compile it ({exc})") from exc
        if device == "auto":
            log.info("device auto: using cpu (the openvino runtime)")
        return OpenVinoSession(compiled), "cpu"


register_runtime(OpenVinoRuntime())
