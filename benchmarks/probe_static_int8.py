"""Is ONNX Runtime's static int8 (QDQ) a faster CPU path than fastmarco's dynamic int8? (issue: CPU
encode round 2, step 1). A probe, not an export option: it measures before anything is built on it.

    python benchmarks/probe_static_int8.py --fp32 FP32_EXPORT --int8 INT8_EXPORT [--passages 2000]

From a fastmarco fp32 export (fused graph) it makes static int8 variants the way a user of
`onnxruntime.quantization.quantize_static` would, after fastmarco's own outlier rewrite
(`keep_outliers_out`, the step that makes dynamic int8 accurate): symbolic shape inference (the fused
contrib ops have no ONNX shape rules, and without types the quantizer leaves activations in fp32),
then QDQ with int8 per-channel weights and uint8 activations on every MatMul, calibrated on 304 real
MS MARCO passages by min-max and by percentile. Each variant, the fp32 export and the `--int8` export
then encode the same real passages on all cores: passages/s (best of 2) and the cosine of each
embedding to fp32's. Saves results/static_int8_probe_<cpu family>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_family, environment, save

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini"
CALIBRATION_PASSAGES = 304  # 19 batches of 16, each padded to one shape (histogram calibrators need it)


def static_int8(fp32: Path, out: Path, texts: list[str], method: str) -> None:
    """`out`: a copy of the fp32 export whose graph is the static int8 QDQ form."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from transformers import AutoTokenizer

    from fastmarco.model.quantize import keep_outliers_out

    shutil.copytree(fp32, out)
    tokenizer = AutoTokenizer.from_pretrained(str(fp32))
    batches = [
        {
            name: np.asarray(value, dtype=np.int64)
            for name, value in tokenizer(
                texts[i : i + 16], padding="max_length", truncation=True, max_length=160, return_tensors="np"
            ).items()
        }
        for i in range(0, CALIBRATION_PASSAGES, 16)
    ]
    model = onnx.load(str(fp32 / "model.onnx"))
    plan = keep_outliers_out(model, batches)
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    inputs = {graph_input.name for graph_input in model.graph.input}
    rewritten = out / "outliers.onnx"
    onnx.save(model, str(rewritten))

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter([{k: v for k, v in batch.items() if k in inputs} for batch in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rest, None)

    quantize_static(
        str(rewritten),
        str(out / "model.onnx"),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=plan.fp32_nodes,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[
            method
        ],
    )
    rewritten.unlink()


def measure(
    directory: Path, evaluate: list[str], bulk: list[str], reference: np.ndarray | None
) -> dict[str, Any]:
    from fastmarco import Encoder

    encoder = Encoder.open(directory, device="cpu")
    vectors = encoder.encode(evaluate).astype(np.float32)
    encoder.encode(bulk[:200])  # warm
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        encoder.encode(bulk)
        best = max(best, len(bulk) / (time.perf_counter() - start))
    found: dict[str, Any] = {"passages_per_second": best}
    if reference is not None:
        cosine = (
            (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        )
        found |= {"cosine_to_fp32_mean": float(cosine.mean()), "cosine_to_fp32_min": float(cosine.min())}
    found["vectors"] = vectors
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fp32", type=Path, required=True, help="a fastmarco fp32 export (fused)")
    parser.add_argument("--int8", type=Path, required=True, help="the same model's `export --int8`")
    parser.add_argument("--passages", type=int, default=2000)
    args = parser.parse_args()
    with open(MINI / "collection.tsv", encoding="utf-8") as handle:
        texts = [line.split("\t", 1)[1].rstrip("\n") for line in handle]
    calibration, evaluate, bulk = texts[:20000:50], texts[20001:20501], texts[1000 : 1000 + args.passages]

    results: dict[str, dict[str, Any]] = {}
    reference = measure(args.fp32, evaluate, bulk, None)
    results["fp32"] = reference
    results["dynamic int8 (export --int8)"] = measure(args.int8, evaluate, bulk, reference["vectors"])
    with tempfile.TemporaryDirectory(prefix="fastmarco-static-") as scratch:
        for method in ("minmax", "percentile"):
            out = Path(scratch) / method
            static_int8(args.fp32, out, calibration, method)
            results[f"static int8 QDQ ({method})"] = measure(out, evaluate, bulk, reference["vectors"])
    for name, found in results.items():
        found.pop("vectors")
        print(f"{name:>32}: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
    body = {
        "model": str(args.fp32),
        "passages": len(bulk),
        "quality_passages": len(evaluate),
        "calibration_passages": CALIBRATION_PASSAGES,
        "systems": results,
        "environment": environment(["onnxruntime", "onnx", "fastmarco"]),
    }
    print(f"saved {save(f'static_int8_probe_{cpu_family()}', body)}")


if __name__ == "__main__":
    main()
