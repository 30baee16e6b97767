"""The export precision registry: each precision a manifest can declare owns, in one place, how its
export is made (its quantization, its optimization level), checked (on which
runtime, against which floor, on how many texts) and run (what the runtimes compute it in). A new
precision is one registration here; one that quantizes also names its quantizer in model.export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastmarco.errors import ModelError

Quantization = Literal["dynamic", "static"]

# An int8 export is checked on more text than the parity texts: the bundled demo passages too, every row
# at least this cosine to sentence-transformers' fp32 embedding. Dynamic int8 of all-MiniLM-L6-v2
# measures 0.985 at worst over 300 real MS MARCO passages (mean 0.994) and keeps DL19 nDCG@10 within
# 0.005.
INT8_MIN_COSINE = 0.97


@dataclass(frozen=True)
class Precision:
    """One precision an export can be made in, end to end (see the module docstring)."""

    name: str  # the manifest's 'precision' and the export flag (--int8-static, export_model's int8_static)
    computes_in: str  # what the graph declares its arithmetic in: fp32, fp16, bf16 or int8
    # Parity with sentence-transformers at export: a bi-encoder's every check row at least this cosine,
    # a cross-encoder's scores within this share of the largest |score| (at least 1).
    min_cosine: float
    score_tolerance: float
    quantization: Quantization | None = None
    # Made for OpenVINO: checked on it at export, so exporting it needs the openvino extra, and there
    # `export_modules` too
    for_openvino: bool = False
    export_modules: tuple[str, ...] = ()
    # transformers' attention implementation the graph is traced from (None: the model's default, SDPA)
    attention_implementation: str | None = None
    for_gpu: bool = False  # an fp16 graph, made for CUDA: OpenVINO does not take it
    # The optimization level its export defaults to; where `only_optimize` says why, the only one
    optimize: str = "O2"
    only_optimize: str | None = None

    @property
    def quantized(self) -> bool:
        """An int8 graph: checked on more texts, against a lower floor."""
        return self.quantization is not None

    @property
    def check_runtime(self) -> str:
        """The runtime its parity check runs on: the one that runs it as declared."""
        return "openvino" if self.for_openvino else "onnxruntime"


PRECISIONS: dict[str, Precision] = {}
FP32 = "fp32"


def register_precision(precision: Precision) -> Precision:
    if precision.name in PRECISIONS:
        raise ValueError(f"precision {precision.name!r} is registered twice")
    PRECISIONS[precision.name] = precision
    return precision


def precision_named(name: str | None, where: str = "the manifest") -> Precision:
    """The registered precision NAME (None: fp32, as manifests before precisions were recorded say);
    a ModelError naming WHERE for one this version does not know."""
    found = PRECISIONS.get(name or FP32)
    if found is None:
        raise ModelError(f"{where}: unknown precision {name!r}; known: {', '.join(PRECISIONS)}")
    return found


register_precision(Precision(FP32, "fp32", min_cosine=0.9999, score_tolerance=1e-4))
register_precision(Precision("fp16", "fp16", 0.999, 1e-2, for_gpu=True))
register_precision(Precision("bf16", "bf16", 0.999, 3e-2, for_openvino=True))
register_precision(
    Precision(
        "int8",
        "int8",
        INT8_MIN_COSINE,
        5e-2,
        quantization="dynamic",
    )
)
register_precision(
    Precision(
        "int8-static",
        "int8",
        INT8_MIN_COSINE,
        5e-2,
        quantization="static",
        for_openvino=True,
        export_modules=("nncf",),
        # Its unquantized rest (attention, softmax, norms) computes in fp32 (`computes_in` is int8, so
        # OpenVINO is asked for f32), not in bf16 as OpenVINO itself would choose on CPUs with bf16:
        # as fast or faster and as close to fp32 (all-MiniLM-L6-v2, 2,000 MS MARCO passages, paired
        # rounds, 2026-12-08: +4% bulk with CPUID masked to AVX512_CORE_BF16, +2% with AMX and one query
        # 2.45 against 2.6 ms; the MiniLM-shaped cross-encoder +3.5% and +1%; cosines to the fp32 export
        # within 0.0003 of bf16's). In bf16 on AMX, OpenVINO 2026.4's attention snippet over the int8
        # values was far off (min cosine 0.82) and had to be turned off; in fp32 it is right.
        # Traced from eager attention: the SDPA trace computes its scale from the query's shape at run
        # time, so OpenVINO keeps a float Multiply and Transpose on every layer's query path and the
        # query enters attention dequantized; from eager's constant scale each layer's graph is
        # sentence-transformers' own (all-MiniLM-L6-v2, 48 x 96: 4-5% less time a batch, capped at
        # AVX512_CORE_BF16 and on AMX; min cosine to fp32 the same)
        attention_implementation="eager",
        optimize="O1",
        only_optimize="int8-static quantizes the unfused graph: --optimize O1 (its default), OpenVINO "
        "fuses the rest",
    )
)
