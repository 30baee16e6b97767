"""Int8 for the CPU: ONNX Runtime dynamic quantization of a fused graph, with the few outlier activation
channels that per-batch int8 cannot hold kept out of it.

Dynamic quantization gives each MatMul's input one uint8 scale per batch. In BERT-family encoders a
handful of channels carry activations 4-6x larger than every other channel (at the [CLS] token, the
"attention sink"), so one scale wide enough for them leaves ~30 levels for everything else: that is
most of dynamic int8's error on all-MiniLM-L6-v2. A short calibration pass (fp32, a few dozen texts)
finds those channels from each quantized node's input, per channel max |activation| over real tokens,
and keeps them out of int8 without changing what the graph computes:

- split: where the input is a per-channel activation (BiasGelu, FastGelu, Gelu, Relu) of a MatMul, the
  outlier channels of that MatMul, its activation and the quantized MatMul move to a small fp32 side
  path whose result is added back (the FFN output MatMul: exact algebra, a rank-few MatMul and an Add);
- scaled: elsewhere (LayerNorm outputs that also feed the residual) a Mul divides the outlier channels
  down to the others' range and the node's weight rows are multiplied back (SmoothQuant's identity,
  applied to the outlier channels only, so the weights' per-channel int8 grid stays fine elsewhere).

A MatMul or Gemm whose input has one row per sequence stays fp32 whole: a cross-encoder's last layer
computed for the first token alone (fastmarco.model.cross_encoder_export.last_layer_for_the_first_token)
and its head, ANCE's Dense after CLS pooling. They cost a few rows of the batch, and per-batch int8
scales drawn from those rows alone, where the outlier channels live, are coarse: the MiniLM-L6-shaped
cross-encoder's int8 scores went from 0.0026 to 0.0008 off CrossEncoder.predict with them fp32 (and
from 86 to 100 pairs/s, AVX2, the last layer cut to one row); the tiny BERT one of the tests from 0.25
(the whole last layer and the head int8) to 0.14, where the cut layer fp32 with the head int8 read
0.26. The calibration pass finds them by their shape, whatever the architecture names them.

By default only MatMuls are quantized: the fused Attention (QKV projection plus the attention itself)
stays fp32. On all-MiniLM-L6-v2 its int8 form is ~15% faster but, once the outliers are handled,
causes ~40% of the remaining error (mean cosine to fp32 0.9982 with it, 0.9989 without), so it is
opt-in (`attention=True`), for latency-bound query encoders with a wide QKV weight. The embedding
lookup stays fp32 too: quantizing it costs accuracy and saves no time. Everything is recorded in the
manifest's `quantization` entry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import ExportError

# A channel is an outlier when its max |activation| exceeds this many times the 99th percentile of
# the node's channel maxima. On all-MiniLM-L6-v2 it finds 1-3 channels in 13 of its 18 MatMuls' inputs;
# the mean cosine to fp32 over 500 MS MARCO passages goes from 0.9939 (plain dynamic int8) to 0.9989
# (measured with the fused Attention int8 too: factor 2.0 gave 0.9978, 1.5 0.9982, 1.2 0.9983).
OUTLIER_FACTOR = 1.5

# Elementwise per-channel activations an outlier channel can be split through (bias, if any, at input 1).
_CHANNEL_ACTIVATIONS = ("BiasGelu", "FastGelu", "Gelu", "Relu")

Feeds = Mapping[str, npt.NDArray[np.int64]]


@dataclass
class OutlierPlan:
    """What keeping the outlier channels out of int8 did: node name -> its input's outlier channels;
    and the nodes over one row per sequence, kept fp32 whole."""

    split: dict[str, list[int]] = field(default_factory=dict)
    scaled: dict[str, list[int]] = field(default_factory=dict)
    one_row: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)  # side-path and one-row MatMuls, never quantized


@dataclass
class ActivationStats:
    """What a calibration pass saw of each named tensor."""

    maxima: dict[str, np.ndarray]  # per-channel max |value| over the real (unpadded) tokens
    one_row: set[str]  # one row per sequence (see _one_row) in every batch of 2+ tokens


class _DropQuantizationAdvice(logging.Filter):
    """ORT logs a hint to run its shape pre-processing first; the fusions have done that already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _weighted_nodes(graph: Any, ops: tuple[str, ...]) -> list[Any]:
    """The nodes of OPS dynamic quantization turns into integer kernels: those with a constant 2-D weight."""
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return [node for node in graph.node if node.op_type in ops and len(shapes.get(node.input[1], ())) == 2]


def _one_row(value: np.ndarray, sequences: int) -> bool:
    """VALUE holds one row per sequence: (sequences, channels), or (..., 1, channels)."""
    return (value.ndim == 2 and value.shape[0] == sequences) or (value.ndim >= 3 and value.shape[-2] == 1)


def activation_stats(model: Any, tensors: list[str], feeds: Iterable[Feeds]) -> ActivationStats:
    """Each named fp32 tensor's per-channel max |value| over the real (unpadded) tokens of FEEDS, and
    whether it holds one row per sequence."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    for name in tensors:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    one_row: set[str] | None = None  # None: no batch of 2+ tokens seen yet
    for batch in feeds:
        values = session.run(tensors, {k: v for k, v in batch.items() if k in inputs})
        real = batch["attention_mask"].astype(bool)
        if real.shape[1] > 1:
            rows_of_one = {n for n, v in zip(tensors, values, strict=True) if _one_row(v, len(real))}
            one_row = rows_of_one if one_row is None else one_row & rows_of_one
        for name, value in zip(tensors, values, strict=True):
            per_token = value.ndim == 3 and value.shape[:2] == real.shape
            rows = value[real] if per_token else value.reshape(-1, value.shape[-1])
            peak = np.abs(rows).max(axis=0) if rows.size else np.zeros(value.shape[-1], np.float32)
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    if not maxima:
        raise ExportError("int8 calibration got no texts")
    return ActivationStats(maxima, one_row or set())


def outlier_channels(maxima: np.ndarray, factor: float = OUTLIER_FACTOR) -> npt.NDArray[np.intp]:
    """Channels whose max |activation| exceeds FACTOR x the 99th percentile of all channels' maxima."""
    return np.flatnonzero(maxima > factor * float(np.percentile(maxima, 99)))


class _Graph:
    """One graph's initializers, producers and tensor uses, for the rewrites below."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return np.asarray(numpy_helper.to_array(self.initializers[name]))

    def put(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)
        if name in self.initializers:
            self.initializers[name].CopyFrom(tensor)
        else:
            self.graph.initializer.append(tensor)
            self.initializers[name] = self.graph.initializer[-1]

    def producer(self, tensor: str) -> Any | None:
        return next((n for n in self.graph.node if tensor in n.output), None)

    def uses(self, tensor: str) -> int:
        readers = sum(list(n.input).count(tensor) for n in self.graph.node)
        outputs = sum(1 for output in self.graph.output if output.name == tensor)
        return int(readers + outputs)

    def own_weight(self, node: Any, index: int) -> str:
        """NODE's initializer input INDEX, copied first if another node shares it."""
        name = node.input[index]
        if self.uses(name) > 1:
            copy = f"{node.name}/{name}"
            self.put(copy, self.array(name))
            node.input[index] = name = copy
        return str(name)

    def insert_after(self, node: Any, new_nodes: list[Any]) -> None:
        position = list(self.graph.node).index(node) + 1
        for offset, new in enumerate(new_nodes):
            self.graph.node.insert(position + offset, new)


def _splittable(index: _Graph, node: Any) -> tuple[Any, Any] | None:
    """(first MatMul, activation) when NODE's input is a per-channel activation of a constant-weight
    MatMul that nothing else reads."""
    activation = index.producer(node.input[0])
    if activation is None or activation.op_type not in _CHANNEL_ACTIVATIONS:
        return None
    if len(activation.input) > 1 and activation.input[1] not in index.initializers:
        return None
    first = index.producer(activation.input[0])
    if first is None or first.op_type != "MatMul" or first.input[1] not in index.initializers:
        return None
    if index.uses(first.output[0]) != 1 or index.uses(activation.output[0]) != 1:
        return None
    return first, activation


def _split(index: _Graph, node: Any, first: Any, activation: Any, outliers: np.ndarray) -> list[str]:
    """Move OUTLIERS (channels between FIRST and NODE) to an fp32 side path added to NODE's output."""
    from onnx import helper

    prefix = f"{node.name}/outliers"
    w_in = index.own_weight(first, 1)
    w_out = index.own_weight(node, 1)
    w_in_all, w_out_all = index.array(w_in), index.array(w_out)
    keep = np.setdiff1d(np.arange(w_in_all.shape[1]), outliers)
    index.put(f"{prefix}/w_in", w_in_all[:, outliers])
    index.put(f"{prefix}/w_out", w_out_all[outliers, :])
    index.put(w_in, w_in_all[:, keep])
    index.put(w_out, w_out_all[keep, :])
    side_inputs = [f"{prefix}/hidden"]
    if len(activation.input) > 1:
        bias = index.own_weight(activation, 1)
        bias_all = index.array(bias)
        index.put(f"{prefix}/bias", bias_all[outliers])
        index.put(bias, bias_all[keep])
        side_inputs.append(f"{prefix}/bias")
    result = node.output[0]
    node.output[0] = f"{prefix}/main"
    side_activation = helper.make_node(
        activation.op_type,
        side_inputs,
        [f"{prefix}/active"],
        name=f"{prefix}/activation",
        domain=activation.domain,
    )
    side_activation.attribute.extend(activation.attribute)
    index.insert_after(
        node,
        [
            helper.make_node(
                "MatMul", [first.input[0], f"{prefix}/w_in"], side_inputs[:1], name=f"{prefix}/in"
            ),
            side_activation,
            helper.make_node(
                "MatMul", [f"{prefix}/active", f"{prefix}/w_out"], [f"{prefix}/out"], name=f"{prefix}/out"
            ),
            helper.make_node("Add", [f"{prefix}/main", f"{prefix}/out"], [result], name=f"{prefix}/add"),
        ],
    )
    return [f"{prefix}/in", f"{prefix}/out"]


def _scale(index: _Graph, node: Any, maxima: np.ndarray, outliers: np.ndarray) -> None:
    """Divide NODE's input channels OUTLIERS down to the 99th percentile's range and multiply NODE's
    weight rows by the same factors: the product is unchanged, the int8 input range is not."""
    from onnx import helper

    factors = np.ones(maxima.shape, np.float32)
    factors[outliers] = maxima[outliers] / float(np.percentile(maxima, 99))
    weight = index.own_weight(node, 1)
    index.put(weight, index.array(weight) * factors[:, None])
    index.put(f"{node.name}/outliers/inverse", 1.0 / factors)
    scaled = f"{node.name}/outliers/input"
    mul = helper.make_node(
        "Mul", [node.input[0], f"{node.name}/outliers/inverse"], [scaled], name=f"{node.name}/outliers/scale"
    )
    index.graph.node.insert(list(index.graph.node).index(node), mul)
    node.input[0] = scaled


def keep_outliers_out(
    model: Any, feeds: Iterable[Feeds], factor: float = OUTLIER_FACTOR, ops: tuple[str, ...] = ("MatMul",)
) -> OutlierPlan:
    """Rewrite MODEL (an fp32 ModelProto, in place) so no quantized node's input has outlier channels,
    and plan the nodes over one row per sequence out of int8; the graph computes the same function (up
    to fp32 rounding)."""
    index = _Graph(model.graph)
    nodes = _weighted_nodes(model.graph, ops)
    if not nodes:
        return OutlierPlan()
    # ONNX Runtime's dynamic quantizer quantizes a Gemm too, as the MatMul it turns it into first,
    # named after it (replace_gemm_with_matmul); a head's Gemm over one row per sequence stays fp32
    gemms = _weighted_nodes(model.graph, ("Gemm",))
    plan = OutlierPlan()
    stats = activation_stats(model, sorted({node.input[0] for node in [*nodes, *gemms]}), feeds)
    for gemm in gemms:
        if gemm.input[0] in stats.one_row:
            plan.one_row.append(gemm.name)
            plan.fp32_nodes.append(f"{gemm.name}_MatMul")
    maxima = stats.maxima
    for node in nodes:
        if node.input[0] in stats.one_row:
            plan.one_row.append(node.name)
            plan.fp32_nodes.append(node.name)
            continue
        outliers = outlier_channels(maxima[node.input[0]], factor)
        if outliers.size == 0:
            continue
        route = _splittable(index, node)
        if route is not None and outliers.size < maxima[node.input[0]].size:
            plan.fp32_nodes += _split(index, node, *route, outliers)
            plan.split[node.name] = outliers.tolist()
        else:
            _scale(index, node, maxima[node.input[0]], outliers)
            plan.scaled[node.name] = outliers.tolist()
    return plan


def tokenized_batches(
    tokenizer: Any, texts: list[str], max_length: int, pairs_with: list[str] | None = None, batch: int = 8
) -> list[dict[str, npt.NDArray[np.int64]]]:
    """Calibration feeds: TEXTS (or the pairs TEXTS x PAIRS_WITH, row by row) through a transformers
    tokenizer, padded per batch and truncated as the model is."""
    batches = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        second = None if pairs_with is None else pairs_with[start : start + batch]
        encoded = tokenizer(
            chunk, second, padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        batches.append({name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()})
    return batches


def quantize_int8(path: Path, calibration: Iterable[Feeds], *, attention: bool = False) -> dict[str, Any]:
    """Replace the fp32 graph at PATH by its int8 form (see the module docstring); returns the
    manifest's record of what was done. CALIBRATION: tokenized batches (input_ids, attention_mask, ...)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))
    batches = list(calibration)
    ops = ("MatMul", "Attention") if attention else ("MatMul",)
    plan = keep_outliers_out(model, batches, ops=ops)
    rewritten = path.with_name("model.outliers.onnx")
    quantized = path.with_name("model.int8.onnx")
    onnx.save(model, str(rewritten))
    advice = _DropQuantizationAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            rewritten,
            quantized,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # 7-bit: without VNNI, x86 sums u8 x s8 pairs in int16; 8-bit overflows it
            op_types_to_quantize=list(ops),
            nodes_to_exclude=plan.fp32_nodes,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused ops have no type rule
        )
    finally:
        logging.getLogger().removeFilter(advice)
        rewritten.unlink(missing_ok=True)
    quantized.replace(path)
    return {
        "method": "onnxruntime dynamic, outlier channels kept in fp32",
        "weights": "int8 per channel, 7-bit range (reduce_range)",
        "activations": "uint8 per batch",
        "quantized_ops": list(ops),
        "outlier_rule": f"max |activation| > {OUTLIER_FACTOR} x the 99th percentile of the node's channels",
        "calibration_batches": len(batches),
        "outliers_split": plan.split,
        "outliers_scaled": plan.scaled,
        "fp32_one_row": plan.one_row,
    }
