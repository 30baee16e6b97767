"""The export steps every model kind shares (fastmarco.model.kinds): find the model, trace it to
ONNX, make its shapes inferable, fuse and optimize, and record how the graph was built and what
identifies it."""

from __future__ import annotations

import json
import logging
import warnings
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastmarco import fingerprints
from fastmarco._version import __version__
from fastmarco.errors import ExportError
from fastmarco.model.precisions import Precision

log = logging.getLogger("fastmarco")

OptimizeLevel = Literal["O1", "O2", "O3", "O4"]

# Calibrating int8 on the corpus to be encoded: this many of its passages, from its first
# CALIBRATION_SCAN. all-MiniLM-L6-v2 int8-static on the 4,297 DL19 BM25 passages, against fp32 (mean /
# min cosine, share of each query's top 10 kept, nDCG@10; fp32 0.6424): the bundled demo texts 0.9949
# / 0.930 / 95.6% / 0.6480; 300 MS MARCO passages, none of them among the 4,297, 0.9976 / 0.986 /
# 96.7% / 0.6471 (fastmarco.model.static_quantize.CORPUS_SMOOTH_QUANT_ALPHA); sentence-transformers'
# own static int8 (300 passages) 0.9979.
CALIBRATION_PASSAGES = 300
CALIBRATION_SCAN = 30_000

# Texts the export is parity-checked on: short, long, mixed case, MS MARCO-like mojibake.
PARITY_TEXTS = (
    "how big is london",
    "The presence of communication amid scientific minds was equally important to the success of the "
    "Manhattan Project as scientific intellect was.",
    "Wi-Fi or WiFi (/ËwaÉª faÉª/) is a technology that allows electronic devices to connect to a "
    "wireless LAN (WLAN) network, mainly using the 2.4 gigahertz (12 cm) UHF and 5 gigahertz (6 cm) "
    "SHF ISM radio bands. " * 8,
    "a",
    "",
)


def calibration_passages(path: Path) -> list[str]:
    """CALIBRATION_PASSAGES passages of the corpus file at PATH (any registered format), spread evenly
    through its first CALIBRATION_SCAN: int8's calibration on the text the model will encode. A bad
    line is a FormatError naming it."""
    from fastmarco.store.formats import read_collection

    texts = [text for _, text in islice(read_collection(path), CALIBRATION_SCAN)]
    if not texts:
        raise ExportError(f"{path}: no passages to calibrate on")
    count = min(CALIBRATION_PASSAGES, len(texts))
    return [texts[i * len(texts) // count] for i in range(count)]


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(body, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return body


def resolve_model(model: str) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (or taken from the local hub cache)."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/")):
        raise ExportError(f"{model}: not a model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        raise ExportError(f"cannot fetch '{model}' from the model hub ({type(exc).__name__}: {exc})") from exc


def fingerprint(files: list[Path], manifest: dict[str, Any], settings_names: tuple[str, ...]) -> str:
    """Of the graph and tokenizer files plus the settings that change an output (an embedding, or a
    cross-encoder's score): the same graph exported with --max-seq-length 128 and 256 gets two."""
    settings = {name: manifest.get(name) for name in settings_names}
    return fingerprints.combine(fingerprints.of_files(files), fingerprints.of_settings(settings))


def model_kwargs(attention_implementation: str | None) -> dict[str, Any] | None:
    """sentence-transformers' `model_kwargs` (transformers' from_pretrained arguments) that load the
    attention implementation to trace; None keeps the model's default."""
    return {"attn_implementation": attention_implementation} if attention_implementation else None


def trace_to_onnx(model: Any, out: Path, *, task: str, library: str, opset: int | None) -> Path:
    """optimum's exporter on a loaded model; returns OUT/model.onnx."""
    from optimum.exporters.onnx import onnx_export_from_model

    # torch/optimum warn about their own internals (TorchScript exporter, tracer); not actionable: they
    # go to fastmarco's debug log, as does optimum's logged advice to install accelerate for a tied-weight
    # check that a sentence embedding or cross-encoder graph (no tied LM head) does not need
    exporter_log = logging.getLogger("optimum.exporters.onnx.base")
    quiet = _ToDebug()
    exporter_log.addFilter(quiet)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            onnx_export_from_model(
                model, out, task=task, library_name=library, opset=opset, do_validation=False
            )
    finally:
        exporter_log.removeFilter(quiet)
    for warning in caught:
        log.debug("exporter warning: %s: %s", warning.category.__name__, warning.message)
    return out / "model.onnx"


class _ToDebug(logging.Filter):
    """Passes an exporter's log record to fastmarco's debug log instead of the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("exporter: %s", record.getMessage())
        return False


def check_openvino_for(precision: Precision) -> None:
    """A precision made for OpenVINO (bf16, int8-static) is made and checked there: refused before
    anything is built where the openvino extra (OpenVINO, and NNCF for static int8) is missing; with a
    warning where OpenVINO runs it wider or slower on this CPU (bf16 without bf16 instructions is
    checked in fp32)."""
    if not precision.for_openvino:
        return
    from fastmarco.model.runtimes import RUNTIMES, not_installed

    openvino = RUNTIMES["openvino"]
    problem = openvino.missing() or next(filter(None, map(not_installed, precision.export_modules)), None)
    if problem:
        raise ExportError(
            f"{precision.name} runs on the openvino runtime: {problem} (pip install 'fastmarco[openvino]')"
        )
    caveat = openvino.caveat(precision)
    if caveat:
        log.warning(caveat)


def onnx_opset(path: Path) -> int:
    """The ONNX opset of the graph at PATH."""
    import onnx

    return int(onnx.load(str(path), load_external_data=False).opset_import[0].version)


def build_record(
    graph: Path,
    opset: int,
    model: str,
    folder: Path,
    precision: Precision,
    level: str,
    fusions: dict[str, int],
    quantization: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest fields that say how a graph was built, for both kinds of model: its file, precision,
    optimization, quantization, the opset it was traced at, source and the exporting versions."""
    return {
        "model": graph.name,
        "precision": precision.name,
        "optimize": level,
        "fusions": fusions,
        **({"quantization": quantization} if quantization else {}),
        **(
            {"attention_implementation": precision.attention_implementation}
            if precision.attention_implementation
            else {}
        ),
        "opset": opset,
        "source": {"model": model, "fingerprint": _source_fingerprint(folder)},
        "exported_by": {
            "fastmarco": __version__,
            **{
                name: _version(name)
                for name in ("optimum-onnx", "onnxruntime", "torch", "transformers", "sentence-transformers")
                + (("openvino",) if precision.for_openvino else ())
                + precision.export_modules
            },
        },
    }


def _source_fingerprint(folder: Path) -> str:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in ("README.md", ".gitattributes")
    )
    return fingerprints.of_files(files)


def constant_values(graph: Any) -> dict[str, np.ndarray]:
    """GRAPH's constant tensors by name: its initializers and its Constant nodes' values."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _replace_node(graph: Any, node: Any, replacements: list[Any]) -> None:
    position = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, replacement in enumerate(replacements):
        graph.node.insert(position + offset, replacement)


def _make_shapes_inferable(path: Path) -> dict[str, int]:
    """Rewrite two exporter idioms that stop ORT's symbolic shape inference, so fusions can take.

    Without this the optimizer fuses only GELU and LayerNorm: attention and SkipLayerNorm fusion need
    every shape. (1) BERT/RoBERTa's zero `token_type_ids` buffer becomes
    `Expand(Slice(buffer, 0, seq_len), shape)`, whose length is `Min(512, seq_len)` to sympy and fails
    to broadcast; it is replaced by `ConstantOfShape(Shape(input_ids))`, the same zeros. (2) Normalize's
    `ReduceL2` with axes as an input (opset 18) has no shape rule; it becomes `Sqrt(ReduceSum(x*x))`.
    The parity check after optimization guards both rewrites.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = constant_values(graph)
    producer = {output: node for node in graph.node for output in node.output}
    rewrites = {"token_type_zeros": 0, "reduce_l2": 0}
    for node in list(graph.node):
        if node.op_type == "Expand":
            source = producer.get(node.input[0])
            if source is None or source.op_type != "Slice" or source.input[0] not in constants:
                continue
            buffer = constants[source.input[0]]
            if buffer.dtype.kind not in "iu" or buffer.any():
                continue
            shape_name = f"{node.output[0]}/input_ids_shape"
            element = TensorProto.INT32 if buffer.dtype == np.int32 else TensorProto.INT64
            _replace_node(
                graph,
                node,
                [
                    helper.make_node("Shape", ["input_ids"], [shape_name], name=f"{node.name}/Shape"),
                    helper.make_node(
                        "ConstantOfShape",
                        [shape_name],
                        [node.output[0]],
                        name=f"{node.name}/Zeros",
                        value=helper.make_tensor("value", element, [1], [0]),
                    ),
                ],
            )
            rewrites["token_type_zeros"] += 1
        elif node.op_type == "ReduceL2":
            result = node.output[0]
            keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
            _replace_node(
                graph,
                node,
                [
                    helper.make_node(
                        "Mul", [node.input[0]] * 2, [f"{result}/squared"], name=f"{node.name}/Square"
                    ),
                    helper.make_node(
                        "ReduceSum",
                        [f"{result}/squared", *node.input[1:]],
                        [f"{result}/sum"],
                        name=f"{node.name}/Sum",
                        keepdims=keepdims,
                    ),
                    helper.make_node("Sqrt", [f"{result}/sum"], [result], name=f"{node.name}/Sqrt"),
                ],
            )
            rewrites["reduce_l2"] += 1
    onnx.save(model, str(path))
    return rewrites


def optimize_graph(
    path: Path, num_heads: int, hidden_size: int, level: OptimizeLevel, fp16: bool
) -> dict[str, int]:
    """ORT transformer fusions (O2+), GELU approximation (O3+), fp16 (O4 or --fp16).

    ORT's basic graph optimizations (opt_level 1: constant folding, provider-independent) run first so
    the attention-mask arithmetic folds into the pattern the attention fusion matches. A CPU graph
    (fp32, and what int8 and bf16 are made from) keeps its residual Adds and LayerNormalization apart:
    ORT's SkipLayerNormalization CPU kernel is ~3x slower than the Adds and LayerNormalization it
    fuses (ORT 1.32: 5.8 against 1.9 ms for 64 x 96 x 384, with or without AVX-512), and the CPU
    session keeps ORT from fusing them again (runtimes.onnx_runtime). An fp16 graph, made for CUDA,
    keeps the fused kernel, which is the fast one there.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if level != "O1":
        log.debug("shape rewrites before fusion: %s", _make_shapes_inferable(path))

    options = FusionOptions("bert")
    if level == "O1":
        for name in vars(options):
            if name.startswith("enable_") and isinstance(getattr(options, name), bool):
                setattr(options, name, False)
    options.enable_gelu_approximation = level in ("O3", "O4")
    half = fp16 or level == "O4"
    if not half:
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0 if level == "O1" else 1,
    )
    fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    if half:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(path))
    return fusions


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
