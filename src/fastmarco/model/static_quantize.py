"""Static int8 (`export --int8-static`): NNCF's post-training quantization of the unfused fp32 graph,
written as an OpenVINO graph (model.xml + model.bin).

Dynamic int8 (fastmarco.model.quantize) picks each MatMul input's scale per batch at run time, which
suits ONNX Runtime's integer kernels; OpenVINO runs that graph at about half ORT's speed. Static int8
fixes every activation's scale from a calibration pass: OpenVINO compiles the quantized graph into its
int8 kernels (VNNI, AMX). NNCF's transformer preset keeps the numerically fragile parts (softmax, layer
norms, the embeddings) in floating point and smooths activation outliers into the weights (SmoothQuant);
the MatMuls between two activations (attention scores, and their weighting of the values) stay in
floating point too (all-MiniLM-L6-v2, 500 MS MARCO passages: min cosine to fp32 0.82 with them int8,
0.97 without; mean 0.9933 and 0.9948).

The graph is quantized on NNCF's OpenVINO backend, not its ONNX one, though both read the same ONNX
graph (unfused: `--optimize O1`; NNCF cannot read ORT's fused operators, OpenVINO fuses attention
itself). Written as ONNX QuantizeLinear/DequantizeLinear pairs, each SmoothQuant scale stays a separate
Multiply over the activations; OpenVINO's own graph folds it into the quantization of the layer norm
before it (all-MiniLM-L6-v2, 48 x 96 tokens, the same calibration: 18% less time per batch with oneDNN
capped at AVX512_CORE_BF16, a CPU family without AMX; the same on this repository's AMX host).
ONNX Runtime does not read that graph: an int8-static export runs on the openvino runtime only. The
graph is traced from eager attention (the precision's `attention_implementation`): SDPA's trace computes
the attention scale from the query's shape, which keeps the query path in float on every layer.

The weight range follows the CPU the export is made on: with VNNI (avx512_vnni, avx_vnni, AMX) the
full 8 bits; without, 7 bits (NNCF's overflow fix), since there x86 sums u8 x s8 pairs into int16, which
8-bit weights can overflow. The manifest records which; an 8-bit export opened on a CPU without VNNI
logs a warning (fastmarco.model.runtimes).
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from fastmarco.errors import ExportError
from fastmarco.model.runtime import Feeds
from fastmarco.model.runtimes import has_vnni

# SmoothQuant's migration strength for MatMuls when calibrating on a corpus (`export --calibration`):
# nearly all of an activation channel's outlier scale moves into the weights, which are quantized per
# channel. all-MiniLM-L6-v2, 300 MS MARCO passages + the demo queries: at NNCF's transformer default
# (0.95) the empty text's cosine to fp32 sits at the int8 floor (0.965-0.971 over five mixes of those
# passages with demo texts; 0.85: 0.959) and the export is refused as often as not; at 0.99 0.991-0.992,
# with the DL19 passages' mean cosine 0.9975 -> 0.9976. On the 48 demo texts NNCF's default stays:
# 0.99 is worse there (DL19 mean cosine 0.9949 -> 0.9928).
CORPUS_SMOOTH_QUANT_ALPHA = 0.99

# Ops that pass a weight on unchanged in kind: a MatMul fed through them by a Constant has a weight input
_WEIGHT_PATH_OPS = frozenset({"Convert", "Reshape", "Transpose", "Unsqueeze"})


def quantize_int8_static(
    path: Path, calibration: list[Feeds], *, from_corpus: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Quantize the fp32 ONNX graph at PATH into an OpenVINO graph beside it (PATH's stem + .xml and
    .bin) and remove PATH; returns the new graph's path and the manifest's record of the quantization.
    CALIBRATION: tokenized batches, every one used (NNCF's subset is all of them); `from_corpus`: they
    hold a corpus's passages (CORPUS_SMOOTH_QUANT_ALPHA), not just the bundled demo texts."""
    import nncf
    import openvino
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    nncf.set_log_level(logging.ERROR)
    try:
        model = openvino.convert_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise ExportError(f"{path}: OpenVINO cannot read this graph ({exc})") from exc
    inputs = {name for port in model.inputs for name in port.get_names()}
    vnni = has_vnni()
    smoothing = (
        {"smooth_quant_alphas": AdvancedSmoothQuantParameters(matmul=CORPUS_SMOOTH_QUANT_ALPHA)}
        if from_corpus
        else {}
    )
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration, lambda feeds: {k: v for k, v in feeds.items() if k in inputs}),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=_between_activations(model)),
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.DISABLE if vnni else OverflowFix.ENABLE,
                **smoothing,
            ),
        )
    except Exception as exc:  # NNCF raises its own and OpenVINO's errors for a graph it cannot handle
        raise ExportError(f"{path}: NNCF cannot quantize this graph ({type(exc).__name__}: {exc})") from exc
    graph = path.with_suffix(".xml")
    # float constants (embeddings, norms) stay fp32: OpenVINO would store them as fp16 by default
    openvino.save_model(quantized, str(graph), compress_to_fp16=False)
    path.unlink()
    record: dict[str, Any] = {
        "method": "nncf post-training static quantization (OpenVINO graph), transformer preset",
        "weights": "int8 per channel",
        "weight_bits": 8 if vnni else 7,
        "weight_bits_reason": (
            "made on a CPU with VNNI: the full 8-bit range"
            if vnni
            else "made on a CPU without VNNI: a 7-bit range, so int16 accumulation cannot overflow"
        ),
        "activations": "int8 per tensor, scales fixed by calibration",
        "smooth_quant_alpha": CORPUS_SMOOTH_QUANT_ALPHA if from_corpus else "nncf's transformer default",
        "kept_float": "MatMuls between two activations (attention), softmax, norms, embeddings",
        "calibration_batches": len(calibration),
        "calibration_rows": int(sum(len(feeds["input_ids"]) for feeds in calibration)),
        "nncf": metadata.version("nncf"),
    }
    return graph, record


def _between_activations(model: Any) -> list[str]:
    """The names of MODEL's MatMuls whose two inputs are both activations (attention)."""

    def weight(node: Any) -> bool:
        while node.get_type_name() in _WEIGHT_PATH_OPS:
            node = node.input_value(0).get_node()
        return bool(node.get_type_name() == "Constant")

    return [
        str(op.get_friendly_name())
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul" and not any(weight(value.get_node()) for value in op.input_values())
    ]
