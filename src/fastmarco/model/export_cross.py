"""Export a sentence-transformers `CrossEncoder` (one-label sequence classification: the families of
cross-encoder/ms-marco-MiniLM-L-6-v2 and ms-marco-electra-base) to one ONNX graph whose `score`
output is what `CrossEncoder.predict` returns.

optimum traces the transformers model (output `logits`, (batch, 1)); the graph then gets the
model's activation (a Sigmoid where `CrossEncoder` applies one; ms-marco cross-encoders declare
Identity) and a reshape to (batch,), so nothing outside the graph changes a score. The same fusions,
fp16 and int8 options as bi-encoders apply, and the directory is checked against `CrossEncoder.predict`
before it is published, atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmarco._atomic import publish_directory, staging_directory
from fastmarco.errors import ExportError
from fastmarco.model.manifest import MANIFEST_NAME, MODEL_FORMAT, MODEL_FORMAT_VERSION

if TYPE_CHECKING:
    from fastmarco.model.export import OptimizeLevel

log = logging.getLogger("fastmarco")

OUTPUT_NAME = "score"
SUPPORTED_ARCHITECTURES = ("bert", "electra", "distilbert", "roberta", "xlm-roberta")
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}

# Score agreement with CrossEncoder.predict over the check pairs, as a fraction of the largest
# |score| (at least 1): fp32 differs only by kernel rounding; fp16 and int8 by their precision.
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}

# Every manifest field that changes a score: two exports differing in any of them get two fingerprints.
SCORE_SETTINGS = ("kind", "max_seq_length", "pad_token_id", "activation", "precision", "output")


@dataclass
class CrossEncoderCard:
    """What the cross-encoder is, read from the loaded model."""

    architecture: str
    activation: str
    max_seq_length: int
    pad_token_id: int
    num_heads: int
    hidden_size: int

    def describe(self) -> str:
        return (
            f"cross-encoder ({self.architecture} sequence classification, 1 label); activation "
            f"{self.activation}; max_seq_length {self.max_seq_length}"
        )


def is_cross_encoder(folder: Path) -> bool:
    """A sentence-transformers CrossEncoder folder, or a plain transformers sequence classifier."""
    st_config = folder / "config_sentence_transformers.json"
    if st_config.is_file():
        try:
            return bool(json.loads(st_config.read_text("utf-8")).get("model_type") == "CrossEncoder")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return False
    config = folder / "config.json"
    if (folder / "modules.json").is_file() or not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text("utf-8")).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def _length_attribute(cross_encoder: Any) -> str:
    """sentence-transformers 5 renamed CrossEncoder.max_length to max_seq_length (the old name warns)."""
    return "max_seq_length" if hasattr(type(cross_encoder), "max_seq_length") else "max_length"


def _card(cross_encoder: Any, folder: Path, max_seq_length: int | None) -> CrossEncoderCard:
    config = cross_encoder.config
    architecture = str(config.model_type)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"{folder / 'config.json'}: cross-encoder model_type '{architecture}' is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if cross_encoder.num_labels != 1:
        raise ExportError(
            f"{folder / 'config.json'}: the cross-encoder has {cross_encoder.num_labels} labels; fastmarco "
            "exports one-label (relevance score) cross-encoders"
        )
    activation_name = type(cross_encoder.activation_fn).__name__
    if activation_name not in ACTIVATIONS:
        raise ExportError(
            f"{folder}: the cross-encoder's activation {activation_name} is not supported; supported: "
            + ", ".join(ACTIVATIONS)
        )
    positions = int(getattr(config, "max_position_embeddings", 512))
    if architecture in ("roberta", "xlm-roberta"):  # positions start after the padding index
        positions -= int(config.pad_token_id or 1) + 1
    length = int(max_seq_length or getattr(cross_encoder, _length_attribute(cross_encoder)) or positions)
    if length > positions:
        raise ExportError(
            f"max_seq_length {length} exceeds the {positions} positions this {architecture} has"
        )
    heads = getattr(config, "num_attention_heads", getattr(config, "n_heads", None))
    hidden = getattr(config, "hidden_size", getattr(config, "dim", None))
    if not isinstance(heads, int) or not isinstance(hidden, int):
        raise ExportError(f"{folder / 'config.json'}: no attention head count or hidden size")
    return CrossEncoderCard(
        architecture, ACTIVATIONS[activation_name], length, int(config.pad_token_id or 0), heads, hidden
    )


def _score_head(path: Path, activation: str) -> None:
    """logits (batch, 1) -> [Sigmoid] -> score (batch,): the only output of the graph."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    if [o.name for o in graph.output] != ["logits"]:
        raise ExportError(
            f"the exported graph's outputs are {[o.name for o in graph.output]}, not ['logits']"
        )
    source = "logits"
    if activation == "sigmoid":
        graph.node.append(helper.make_node("Sigmoid", ["logits"], ["logits/sigmoid"], name="score/Sigmoid"))
        source = "logits/sigmoid"
    graph.initializer.append(helper.make_tensor("score/shape", TensorProto.INT64, [1], [-1]))
    graph.node.append(
        helper.make_node("Reshape", [source, "score/shape"], [OUTPUT_NAME], name="score/Reshape")
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch_size"]))
    onnx.save(model, str(path))


def demo_pairs() -> tuple[list[str], list[str]]:
    """Every demo query against every demo passage (written for fastmarco, not MS MARCO text): int8's
    calibration pairs, and part of its check."""
    from fastmarco.corpus.bundled import demo_corpus_path, demo_queries_path, demo_texts

    pairs = list(product(demo_texts(demo_queries_path()), demo_texts(demo_corpus_path())))
    return [q for q, _ in pairs], [p for _, p in pairs]


def check_pairs(precision: str) -> tuple[list[str], list[str]]:
    """Every parity text against every other (short, long enough to truncate, empty), plus for int8 the
    demo pairs."""
    from fastmarco.model.export import PARITY_TEXTS

    queries, passages = (
        [q for q, _ in product(PARITY_TEXTS, PARITY_TEXTS)],
        [*PARITY_TEXTS] * len(PARITY_TEXTS),
    )
    if precision == "int8":
        demo_queries, demo_passages = demo_pairs()
        queries += demo_queries
        passages += demo_passages
    return queries, passages


def export_cross_encoder(
    folder: Path,
    model: str,
    target: Path,
    *,
    fp16: bool,
    int8: bool,
    int8_attention: bool,
    optimize: OptimizeLevel | None,
    max_seq_length: int | None,
    opset: int | None,
) -> tuple[CrossEncoderCard, str, str, dict[str, int], float, str]:
    """Export the cross-encoder in FOLDER to TARGET (checked absent by the caller): (card, precision,
    optimize level, fusions, parity as the largest |score difference|, fingerprint)."""
    from optimum.exporters.onnx import onnx_export_from_model
    from sentence_transformers import CrossEncoder

    from fastmarco.model.cross_encoder import CrossEncoderScorer
    from fastmarco.model.export import _optimize, build_record, embedding_fingerprint
    from fastmarco.model.quantize import quantize_int8, tokenized_batches

    cross_encoder = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    card = _card(cross_encoder, folder, max_seq_length)
    setattr(cross_encoder, _length_attribute(cross_encoder), card.max_seq_length)
    staging = staging_directory(target)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            onnx_export_from_model(
                cross_encoder.model,
                staging,
                task="text-classification",
                library_name="transformers",
                opset=opset,
                do_validation=False,
            )
        for warning in caught:
            log.debug("exporter warning: %s: %s", warning.category.__name__, warning.message)
        cross_encoder.tokenizer.save_pretrained(str(staging))
        if not (staging / "tokenizer.json").is_file():
            raise ExportError(f"{folder}: no fast tokenizer (tokenizer.json) could be saved for this model")
        onnx_path = staging / "model.onnx"
        _score_head(onnx_path, card.activation)
        level: OptimizeLevel = optimize or "O2"
        fusions = _optimize(onnx_path, card.num_heads, card.hidden_size, level, fp16)
        quantization = None
        if int8:
            queries, passages = demo_pairs()
            calibration = tokenized_batches(cross_encoder.tokenizer, queries, card.max_seq_length, passages)
            quantization = quantize_int8(onnx_path, calibration, attention=int8_attention)
        precision = "int8" if int8 else "fp16" if fp16 or optimize == "O4" else "fp32"
        manifest: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "kind": "cross-encoder",
            "model": "model.onnx",
            "output": OUTPUT_NAME,
            "dim": 1,
            "activation": card.activation,
            "max_seq_length": card.max_seq_length,
            "do_lower_case": False,
            "pad_token_id": card.pad_token_id,
            "architecture": card.architecture,
            **build_record(onnx_path, model, folder, precision, level, fusions, quantization),
        }
        manifest["fingerprint"] = fingerprint = embedding_fingerprint(
            [onnx_path, staging / "tokenizer.json"], manifest, SCORE_SETTINGS
        )
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        queries, passages = check_pairs(precision)
        expected = np.asarray(
            cross_encoder.predict(
                list(zip(queries, passages, strict=True)), batch_size=8, show_progress_bar=False
            ),
            dtype=np.float64,
        )
        got = CrossEncoderScorer.open(staging, device="cpu").score(queries, passages).astype(np.float64)
        difference = float(np.abs(expected - got).max())
        allowed = PARITY_TOLERANCE[precision] * max(1.0, float(np.abs(expected).max()))
        if not difference <= allowed:  # also refuses NaN
            raise ExportError(
                f"the {precision} cross-encoder export disagrees with CrossEncoder.predict on "
                f"{len(queries)} check pairs: largest score difference {difference:.6g} > {allowed:.6g}; "
                "nothing was published"
            )
        manifest["parity_max_abs_diff"] = difference
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        publish_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return card, precision, level, fusions, difference, fingerprint
