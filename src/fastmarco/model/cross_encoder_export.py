"""The cross-encoder kind: a sentence-transformers `CrossEncoder` (one-label sequence classification:
the families of cross-encoder/ms-marco-MiniLM-L-6-v2 and ms-marco-electra-base) exported to one ONNX
graph whose `score` output is what `CrossEncoder.predict` returns.

optimum traces the transformers model (output `logits`, (batch, 1)); the graph then gets the
model's activation (a Sigmoid where `CrossEncoder` applies one; ms-marco cross-encoders declare
Identity) and a reshape to (batch,), so nothing outside the graph changes a score. The same fusions,
fp16 and int8 options as bi-encoders apply, and the directory is checked against `CrossEncoder.predict`
before it is published, atomically.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import ExportError
from fastmarco.model.export_steps import PARITY_TEXTS, model_kwargs, trace_to_onnx
from fastmarco.model.kinds import Similarity, Source, register_model_kind
from fastmarco.model.precisions import Precision
from fastmarco.model.quantize import tokenized_batches

OUTPUT_NAME = "score"
SUPPORTED_ARCHITECTURES = ("bert", "electra", "distilbert", "roberta", "xlm-roberta")
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}

# Every manifest field that changes a score: two exports differing in any of them get two fingerprints.
SCORE_SETTINGS: tuple[str, ...] = (
    "kind",
    "max_seq_length",
    "pad_token_id",
    "activation",
    "precision",
    "output",
)


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


@contextlib.contextmanager
def last_layer_for_the_first_token(model: Any) -> Iterator[None]:
    """MODEL (a transformers sequence classifier) with its last layer computing the first token's row
    alone, for tracing; restored on leaving.

    A one-label classifier reads the last layer at the first token only (BERT's pooler, the ELECTRA,
    RoBERTa and DistilBERT heads): there the last layer's query, attention output and feed-forward
    run on that row alone, over every token's keys and values, which is exact (each row is computed on
    its own) and saves most of a layer: MiniLM-L6, a sixth of the model's matrix products, less the
    keys and values. Every export is still checked against `CrossEncoder.predict`."""
    import torch

    base = getattr(model, model.base_model_prefix)
    layers = base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer
    last = layers[-1]

    class FirstTokenLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = last  # registered: its weights stay the model's parameters in the trace

        def forward(self, hidden: Any, mask: Any = None, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            layer, first = self.layer, hidden[:, :1]
            if mask is not None and mask.dim() == 4:  # (batch, 1, queries, keys): the first query's row
                mask = mask[:, :, :1, :]
            if hasattr(layer, "sa_layer_norm"):  # DistilBERT's block
                attended = layer.attention(query=first, key=hidden, value=hidden, mask=mask)[0]
                attended = layer.sa_layer_norm(attended + first)
                return (layer.output_layer_norm(layer.ffn(attended) + attended),)
            context = layer.attention.self(first, mask, encoder_hidden_states=hidden)[0]
            attended = layer.attention.output(context, first)
            return (layer.output(layer.intermediate(attended), attended),)

    layers[-1] = FirstTokenLayer()
    try:
        yield
    finally:
        layers[-1] = last


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


def check_pairs(precision: Precision) -> tuple[list[str], list[str]]:
    """Every parity text against every other (short, long enough to truncate, empty), plus for int8 the
    demo pairs."""
    queries, passages = (
        [q for q, _ in product(PARITY_TEXTS, PARITY_TEXTS)],
        [*PARITY_TEXTS] * len(PARITY_TEXTS),
    )
    if precision.quantized:
        demo_queries, demo_passages = demo_pairs()
        queries += demo_queries
        passages += demo_passages
    return queries, passages


class CrossEncoderKind:
    name = "cross-encoder"
    fallback = False
    fingerprint_settings = SCORE_SETTINGS

    def claims(self, folder: Path) -> bool:
        return is_cross_encoder(folder)

    def load(
        self,
        folder: Path,
        *,
        max_seq_length: int | None,
        similarity: Similarity | None,
        attention_implementation: str | None = None,
    ) -> Source:
        from sentence_transformers import CrossEncoder

        if similarity is not None:
            raise ExportError(f"{folder} is a cross-encoder: it scores pairs, so --similarity does not apply")
        cross_encoder = CrossEncoder(
            str(folder),
            device="cpu",
            local_files_only=True,
            model_kwargs=model_kwargs(attention_implementation),
        )
        card = _card(cross_encoder, folder, max_seq_length)
        setattr(cross_encoder, _length_attribute(cross_encoder), card.max_seq_length)
        return Source(folder, card, cross_encoder)

    def trace(self, source: Source, out: Path, opset: int | None, precision: Precision) -> Path:
        cross_encoder = source.reference
        with last_layer_for_the_first_token(cross_encoder.model):  # every precision: exact, and a layer less
            onnx_path = trace_to_onnx(
                cross_encoder.model, out, task="text-classification", library="transformers", opset=opset
            )
        cross_encoder.tokenizer.save_pretrained(str(out))
        assert isinstance(source.card, CrossEncoderCard)
        _score_head(onnx_path, source.card.activation)
        return onnx_path

    def calibration(
        self, source: Source, passages: list[str] | None, *, static: bool = False
    ) -> list[dict[str, npt.NDArray[np.int64]]]:
        """The demo pairs, or each of PASSAGES after a demo query in turn (`static` adds nothing: every
        input is a query and a passage together, never a one-word text alone)."""
        if passages is None:
            queries, passages = demo_pairs()
        else:
            from fastmarco.corpus.bundled import demo_queries_path, demo_texts

            asked = demo_texts(demo_queries_path())
            queries = [asked[i % len(asked)] for i in range(len(passages))]
        return tokenized_batches(source.reference.tokenizer, queries, source.card.max_seq_length, passages)

    def expected(self, source: Source, precision: Precision) -> npt.NDArray[Any]:
        queries, passages = check_pairs(precision)
        return np.asarray(
            source.reference.predict(
                list(zip(queries, passages, strict=True)), batch_size=8, show_progress_bar=False
            ),
            dtype=np.float64,
        )

    def manifest_fields(self, source: Source, expected: npt.NDArray[Any]) -> dict[str, Any]:
        card = source.card
        assert isinstance(card, CrossEncoderCard)
        return {
            "kind": self.name,
            "output": OUTPUT_NAME,
            "dim": 1,
            "activation": card.activation,
            "max_seq_length": card.max_seq_length,
            "do_lower_case": False,
            "pad_token_id": card.pad_token_id,
            "architecture": card.architecture,
        }

    def check(
        self, source: Source, exported: Path, precision: Precision, expected: npt.NDArray[Any]
    ) -> tuple[str, Any]:
        """The same pairs through CrossEncoder.predict and the exported graph."""
        from fastmarco.model.cross_encoder import CrossEncoderScorer

        queries, passages = check_pairs(precision)
        scorer = CrossEncoderScorer.open(exported, device="cpu", runtime=precision.check_runtime)
        got = scorer.score(queries, passages).astype(np.float64)
        difference = float(np.abs(expected - got).max())
        allowed = precision.score_tolerance * max(1.0, float(np.abs(expected).max()))
        if not difference <= allowed:  # also refuses NaN
            raise ExportError(
                f"the {precision.name} cross-encoder export disagrees with CrossEncoder.predict on "
                f"{len(queries)} check pairs: largest score difference {difference:.6g} > {allowed:.6g}; "
                "nothing was published"
            )
        return "parity_max_abs_diff", difference

    def parity_words(self, value: Any) -> str:
        return f"largest score difference from CrossEncoder.predict {value:.3g}"


register_model_kind(CrossEncoderKind())
