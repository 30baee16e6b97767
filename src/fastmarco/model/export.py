"""`fastmarco export`: the one export pipeline, for every registered model kind (fastmarco.model.kinds).

resolve the model -> the kind that claims it loads it -> trace to ONNX with the kind's head -> make
shapes inferable, fuse and optimize (fp16 on request) -> int8 (dynamic or static) on request,
calibrated on the kind's inputs (static int8 becomes an OpenVINO graph) -> manifest (the kind's fields,
how it was built, its fingerprint) -> check against sentence-transformers -> publish the directory
atomically. Nothing is published when a step fails.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fastmarco._atomic import publishing
from fastmarco._json import manifest_bytes
from fastmarco.errors import ExportError
from fastmarco.model import bi_encoder_export, cross_encoder_export  # noqa: F401  (register the kinds)
from fastmarco.model.export_steps import (
    OptimizeLevel,
    build_record,
    calibration_passages,
    check_openvino_for,
    fingerprint,
    onnx_opset,
    optimize_graph,
    resolve_model,
)
from fastmarco.model.kinds import Card, ModelKind, Similarity, Source, model_kind_for
from fastmarco.model.manifest import MANIFEST_NAME, MODEL_FORMAT, MODEL_FORMAT_VERSION, graph_files
from fastmarco.model.precisions import FP32, PRECISIONS, Precision, precision_named
from fastmarco.model.quantize import quantize_int8
from fastmarco.model.runtimes import caveat_said
from fastmarco.model.static_quantize import quantize_int8_static

log = logging.getLogger("fastmarco")


@dataclass
class ExportReport:
    directory: str
    card: Card
    precision: str
    optimize: str | None
    fusions: dict[str, int] = field(default_factory=dict)
    parity: str = ""  # how the export agrees with sentence-transformers, in words
    fingerprint: str = ""


def export_model(
    model: str,
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    bf16: bool = False,
    int8: bool = False,
    int8_attention: bool = False,
    int8_static: bool = False,
    optimize: OptimizeLevel | None = None,
    max_seq_length: int | None = None,
    similarity: Similarity | None = None,
    opset: int | None = None,
    calibration: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export MODEL (folder or hub id) to OUT; see the module docstring. A sentence-transformers
    CrossEncoder is exported as a cross-encoder, anything else as a bi-encoder. bf16 keeps the fp32
    graph and declares it run in bf16 (the openvino runtime, on CPUs with bf16 instructions);
    int8_static quantizes it statically for OpenVINO (fastmarco.model.static_quantize). CALIBRATION: a
    corpus file whose passages int8 calibrates on (`export_steps.calibration_passages`) instead of the
    bundled demo texts."""
    wanted = {"fp16": fp16 or optimize == "O4", "bf16": bf16, "int8": int8, "int8-static": int8_static}
    asked = [PRECISIONS[name] for name, on in wanted.items() if on]
    if len(asked) > 1:
        raise ExportError(f"{' and '.join(p.name for p in asked)} exclude each other: choose one precision")
    precision = asked[0] if asked else precision_named(FP32)
    if precision.only_optimize and optimize not in (None, precision.optimize):
        raise ExportError(precision.only_optimize)
    check_openvino_for(precision)
    if int8_attention and not int8:
        raise ExportError(
            "int8_attention (--int8-attention) quantizes the attention of an int8 export: add int8"
        )
    if calibration is not None and precision.quantization is None:
        raise ExportError(
            f"calibration (--calibration) tunes an int8 export's quantization; a {precision.name} export "
            "has none: add int8 or int8_static"
        )
    passages = None if calibration is None else calibration_passages(Path(calibration))
    target = Path(out)
    local = [model] if Path(model).exists() else []
    if calibration is not None:
        local.append(str(calibration))
    with publishing(target, overwrite=overwrite, verb="export", inputs=local) as staging:
        folder = resolve_model(model)
        kind = model_kind_for(folder)
        source = kind.load(
            folder,
            max_seq_length=max_seq_length,
            similarity=similarity,
            attention_implementation=precision.attention_implementation,
        )
        onnx_path = kind.trace(source, staging, opset, precision)
        if not (staging / "tokenizer.json").is_file():
            raise ExportError(f"{folder}: no fast tokenizer (tokenizer.json) could be saved for this model")
        # the transformer fusions help ORT's CPU kernels too; NNCF reads only the unfused graph
        level = cast(OptimizeLevel, optimize or precision.optimize)
        fusions = optimize_graph(onnx_path, source.card.num_heads, source.card.hidden_size, level, fp16)
        opset = onnx_opset(onnx_path)
        graph, quantization = _quantized(precision, onnx_path, kind, source, passages, int8_attention)
        if quantization is not None:
            quantization["calibrated_on"] = (
                "the bundled demo texts" if passages is None else f"{len(passages)} passages of {calibration}"
            )
        expected = kind.expected(source, precision)
        manifest = {
            **kind.manifest_fields(source, expected),
            **build_record(graph, opset, model, folder, precision, level, fusions, quantization),
        }
        manifest["fingerprint"] = identity = fingerprint(
            [*graph_files(graph), staging / "tokenizer.json"], manifest, kind.fingerprint_settings
        )
        document = functools.partial(manifest_bytes, format=MODEL_FORMAT, version=MODEL_FORMAT_VERSION)
        (staging / MANIFEST_NAME).write_bytes(document(manifest))
        with caveat_said():  # check_openvino_for said it, without the staging folder's name
            name, parity = kind.check(source, staging, precision, expected)
        manifest[name] = parity
        (staging / MANIFEST_NAME).write_bytes(document(manifest))
    words = kind.parity_words(parity)
    log.info(
        "exported %s %s to %s (%s, fusions %s, %s)", kind.name, model, target, precision.name, fusions, words
    )
    return ExportReport(str(target), source.card, precision.name, level, fusions, words, identity)


def _quantized(
    precision: Precision,
    onnx_path: Path,
    kind: ModelKind,
    source: Source,
    passages: list[str] | None,
    attention: bool,
) -> tuple[Path, dict[str, Any] | None]:
    """Quantize the graph as PRECISION says, calibrated on PASSAGES (None: the kind's demo inputs): the
    graph's path then (dynamic int8 rewrites the ONNX file in place, static int8 replaces it by an
    OpenVINO graph) and the manifest's record of the quantization (None: not quantized)."""
    if precision.quantization == "dynamic":
        return onnx_path, quantize_int8(onnx_path, kind.calibration(source, passages), attention=attention)
    if precision.quantization == "static":
        calibration = kind.calibration(source, passages, static=True)
        return quantize_int8_static(onnx_path, calibration, from_corpus=passages is not None)
    return onnx_path, None
