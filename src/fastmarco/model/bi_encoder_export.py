"""The bi-encoder kind: a sentence-transformers model exported to one ONNX graph that outputs the
final sentence embedding.

optimum's exporter traces the whole sentence-transformers pipeline (Transformer, Pooling, Dense,
LayerNorm, Normalize), so the graph's `sentence_embedding` output is what
`SentenceTransformer.encode` returns. Cosine models get a Normalize module appended (if they lack one)
so stored embeddings are unit vectors and search is a plain inner product. The export is checked
against `SentenceTransformer.encode` before it is published.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import ExportError
from fastmarco.model.export_steps import (
    PARITY_TEXTS,
    constant_values,
    model_kwargs,
    read_json_object,
    trace_to_onnx,
)
from fastmarco.model.kinds import Similarity, Source, register_model_kind
from fastmarco.model.precisions import Precision
from fastmarco.model.quantize import tokenized_batches

log = logging.getLogger("fastmarco")

OUTPUT_NAME = "sentence_embedding"

SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "LayerNorm", "Normalize")
SUPPORTED_POOLING = ("mean", "cls", "max")
SUPPORTED_ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "mpnet")


@dataclass
class ModelCard:
    """What the sentence-transformers module stack does, read from the model folder."""

    architecture: str
    modules: list[str]
    pooling: str
    similarity: Similarity
    similarity_source: str
    max_seq_length: int
    do_lower_case: bool
    pad_token_id: int
    num_heads: int
    hidden_size: int
    max_positions: int

    def describe(self) -> str:
        return (
            f"modules: {' + '.join(self.modules)}; pooling {self.pooling}; similarity {self.similarity}"
            f" ({self.similarity_source}); max_seq_length {self.max_seq_length}"
        )


def _module_kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def read_model_card(folder: Path, similarity: Similarity | None = None) -> ModelCard:
    """Check the module stack is exportable and work out pooling and similarity."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder}: no config.json; not a transformers / sentence-transformers model")
    config = read_json_object(config_path)
    architecture = str(config.get("model_type", ""))
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"{config_path}: model_type '{architecture}' is not supported; supported: "
            + ", ".join(SUPPORTED_ARCHITECTURES)
        )
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        entries = json.loads(modules_path.read_text(encoding="utf-8"))
        kinds = [_module_kind(str(entry.get("type", ""))) for entry in entries]
        paths = [folder / str(entry.get("path", "")) for entry in entries]
    else:  # a plain transformers folder: sentence-transformers adds mean pooling
        kinds, paths = ["Transformer", "Pooling"], [folder, folder]
    unsupported = [k for k in kinds if k not in SUPPORTED_MODULES]
    if unsupported or not kinds or kinds[0] != "Transformer":
        raise ExportError(
            f"{modules_path}: module types {unsupported or kinds} are not supported; a model must be a "
            f"Transformer followed by any of {', '.join(SUPPORTED_MODULES[1:])}"
        )
    pooling = "mean"
    if "Pooling" in kinds and modules_path.is_file():
        pooling_config = read_json_object(paths[kinds.index("Pooling")] / "config.json")
        if isinstance(pooling_config.get("pooling_mode"), str):  # sentence-transformers >= 5
            names = [pooling_config["pooling_mode"]]
        else:  # older models: one boolean flag per mode
            flags = [m for m, on in pooling_config.items() if m.startswith("pooling_mode_") and on]
            names = [
                m.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens") for m in flags
            ]
        if len(names) != 1 or names[0] not in SUPPORTED_POOLING:
            raise ExportError(
                f"{paths[kinds.index('Pooling')] / 'config.json'}: pooling {names} is not supported; "
                f"supported: one of {', '.join(SUPPORTED_POOLING)}"
            )
        pooling = names[0]
    bert_config = folder / "sentence_bert_config.json"
    st_config = read_json_object(bert_config) if bert_config.is_file() else {}
    declared = None
    if (folder / "config_sentence_transformers.json").is_file():
        declared = read_json_object(folder / "config_sentence_transformers.json").get("similarity_fn_name")
    if similarity is not None:
        chosen, source = similarity, "option"
    elif declared in ("cosine", "dot", "dot_product"):
        chosen, source = ("cosine" if declared == "cosine" else "dot"), "model config"
    elif "Normalize" in kinds:
        chosen, source = "cosine", "inferred: Normalize module"
    elif "Dense" in kinds or "LayerNorm" in kinds:
        # ANCE-style heads (CLS + Dense + LayerNorm, no Normalize) are trained for dot product
        chosen, source = "dot", "inferred: projection head without Normalize"
    else:
        chosen, source = "cosine", "inferred: default"
    heads = config.get("num_attention_heads", config.get("n_heads"))
    hidden = config.get("hidden_size", config.get("dim"))
    if not isinstance(heads, int) or not isinstance(hidden, int):
        raise ExportError(f"{config_path}: no attention head count or hidden size")
    positions = int(config.get("max_position_embeddings", 512))
    if architecture in ("roberta", "xlm-roberta"):  # positions start after the padding index
        positions -= int(config.get("pad_token_id") or 1) + 1
    max_length = int(st_config.get("max_seq_length") or positions)
    return ModelCard(
        architecture=architecture,
        modules=kinds,
        pooling=pooling,
        similarity=chosen,
        similarity_source=source,
        max_seq_length=max_length,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        pad_token_id=int(config.get("pad_token_id") or 0),
        num_heads=heads,
        hidden_size=hidden,
        max_positions=positions,
    )


# Every manifest field that changes an embedding: two exports differing in any of them must not mix.
EMBEDDING_SETTINGS: tuple[str, ...] = (
    "dim",
    "max_seq_length",
    "do_lower_case",
    "pad_token_id",
    "pooling",
    "modules",
    "normalized",
    "precision",
    "output",
)


# One-word and empty-of-content texts for static int8's calibration: a text of one or two tokens is
# almost all [CLS] and [SEP], whose activations a scale fitted to sentences clips (all-MiniLM-L6-v2,
# calibrated on the demo texts alone: the empty text's cosine to fp32 0.83; with these 0.977).
SHORTEST_TEXTS = ("x", "what", "how big", "?")


def _check_texts(precision: Precision) -> list[str]:
    """The parity texts; for a quantized precision the bundled demo passages too."""
    if not precision.quantized:
        return list(PARITY_TEXTS)
    from fastmarco.corpus.bundled import demo_corpus_path, demo_texts

    return [*PARITY_TEXTS, *demo_texts(demo_corpus_path())]


def _keep_only_sentence_embedding(graph: Any) -> None:
    """Drop the token_embeddings output so no (batch, length, hidden) tensor leaves the graph."""
    outputs = [o for o in graph.output if o.name == OUTPUT_NAME]
    if not outputs:
        raise ExportError(f"the exported graph has no '{OUTPUT_NAME}' output")
    del graph.output[:]
    graph.output.extend(outputs)


def _broadcast_mean_pooling_mask(graph: Any) -> int:
    """Let mean pooling broadcast the attention mask instead of expanding it to every hidden channel;
    returns how many poolings were rewritten (0 where the graph does not hold the pattern).

    sentence-transformers' mean pooling traces as
    `M = Cast(Expand(Unsqueeze(attention_mask, -1), Shape(T)))` and
    `Div(ReduceSum(Mul(T, M), 1), Clip(ReduceSum(M, 1)))`, T the token embeddings: the mask is copied
    (int64, then float) to T's (batch, length, hidden) shape and summed H times over. Without the
    Expand, M is (batch, length, 1): the Mul broadcasts it to T's shape, the mask's sum is (batch, 1)
    where it was H equal columns, and the Div broadcasts that over the hidden channels. Every value is
    the same. all-MiniLM-L6-v2, 32 x 128 tokens, one thread: 7% of a static int8 batch on OpenVINO
    (with AMX, and with CPUID masked to AVX512_CORE_BF16), 7% of a dynamic int8 and 11% of an fp32
    batch on ONNX Runtime (with AMX)."""
    import onnx

    constants = constant_values(graph)
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for output in graph.output:  # a graph output is a use whose shape must not change
        consumers.setdefault(output.name, []).append(onnx.helper.make_node("Identity", [output.name], []))

    def made_by(tensor: str, op_type: str) -> Any | None:
        node = producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    def axes(node: Any) -> list[int] | None:
        """NODE's axes (Unsqueeze, ReduceSum): an input since opset 13, an attribute before."""
        if len(node.input) > 1:
            value = constants.get(node.input[1])
            return None if value is None else [int(axis) for axis in value.ravel()]
        return next((list(a.ints) for a in node.attribute if a.name == "axes"), None)

    def keepdims(node: Any) -> int:
        return next((int(a.i) for a in node.attribute if a.name == "keepdims"), 1)

    rewritten = 0
    for expand in [node for node in graph.node if node.op_type == "Expand"]:
        shape, unsqueeze = made_by(expand.input[1], "Shape"), made_by(expand.input[0], "Unsqueeze")
        if shape is None or unsqueeze is None or unsqueeze.input[0] != "attention_mask":
            continue
        if axes(unsqueeze) not in ([-1], [2]):  # (batch, length) -> (batch, length, 1)
            continue
        tokens, users = shape.input[0], consumers.get(expand.output[0], [])
        if len(users) != 1 or users[0].op_type != "Cast":
            continue
        mask = users[0].output[0]
        by_type = {node.op_type: node for node in consumers.get(mask, [])}
        if len(consumers.get(mask, [])) != 2 or set(by_type) != {"Mul", "ReduceSum"}:
            continue
        multiply, count = by_type["Mul"], by_type["ReduceSum"]
        if sorted(multiply.input) != sorted([tokens, mask]) or count.input[0] != mask:
            continue
        summed = consumers.get(multiply.output[0], [])
        if len(summed) != 1 or summed[0].op_type != "ReduceSum":
            continue
        over_length = [axes(node) in ([1], [-2]) for node in (summed[0], count)]
        if not all(over_length) or keepdims(summed[0]) != keepdims(count):
            continue
        divisor = count.output[0]  # through clamps only, to the Div of the summed embeddings
        while len(consumers.get(divisor, [])) == 1 and consumers[divisor][0].op_type in ("Clip", "Max"):
            divisor = consumers[divisor][0].output[0]
        divides = consumers.get(divisor, [])
        if (
            len(divides) != 1
            or divides[0].op_type != "Div"
            or list(divides[0].input) != [summed[0].output[0], divisor]
        ):
            continue
        users[0].input[0] = unsqueeze.output[0]
        graph.node.remove(expand)
        if len(consumers[shape.output[0]]) == 1:
            graph.node.remove(shape)
        rewritten += 1
    return rewritten


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(norms > 0, (a64 * b64).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)


class BiEncoderKind:
    name = "bi-encoder"
    fallback = True
    fingerprint_settings = EMBEDDING_SETTINGS

    def claims(self, folder: Path) -> bool:
        """Every folder the other kinds decline: loading says whether it is an exportable model."""
        return True

    def load(
        self,
        folder: Path,
        *,
        max_seq_length: int | None,
        similarity: Similarity | None,
        attention_implementation: str | None = None,
    ) -> Source:
        from sentence_transformers import SentenceTransformer

        try:  # sentence-transformers >= 5.7 moved the modules
            from sentence_transformers.sentence_transformer.modules import Normalize
        except ImportError:
            from sentence_transformers.models import Normalize  # type: ignore[no-redef]

        card = read_model_card(folder, similarity)
        st_model = SentenceTransformer(
            str(folder),
            device="cpu",
            local_files_only=True,
            model_kwargs=model_kwargs(attention_implementation),
        )
        card.max_seq_length = int(max_seq_length or st_model.max_seq_length or card.max_seq_length)
        if card.max_seq_length > card.max_positions:
            raise ExportError(
                f"max_seq_length {card.max_seq_length} exceeds the {card.max_positions} positions this "
                f"{card.architecture} model has"
            )
        st_model.max_seq_length = card.max_seq_length
        if self._normalized(card) and "Normalize" not in card.modules:
            st_model.append(Normalize())
        return Source(folder, card, st_model)

    @staticmethod
    def _normalized(card: ModelCard) -> bool:
        return card.similarity == "cosine" or "Normalize" in card.modules

    def trace(self, source: Source, out: Path, opset: int | None, precision: Precision) -> Path:
        onnx_path = trace_to_onnx(
            source.reference, out, task="feature-extraction", library="sentence_transformers", opset=opset
        )
        import onnx

        model = onnx.load(str(onnx_path))
        _keep_only_sentence_embedding(model.graph)
        log.debug("mean poolings broadcasting the mask: %d", _broadcast_mean_pooling_mask(model.graph))
        onnx.save(model, str(onnx_path))
        return onnx_path

    def calibration(
        self, source: Source, passages: list[str] | None, *, static: bool = False
    ) -> list[dict[str, npt.NDArray[np.int64]]]:
        """The corpus's PASSAGES, or without them the bundled demo passages (written for fastmarco, not
        MS MARCO text, so no evaluated passage shapes the quantization), then the demo queries either
        way (queries are embedded too, and short); static int8 adds the shortest texts."""
        from fastmarco.corpus.bundled import demo_corpus_path, demo_queries_path, demo_texts

        texts = demo_texts(demo_corpus_path()) if passages is None else list(passages)
        texts += demo_texts(demo_queries_path())
        texts += list(SHORTEST_TEXTS) if static else []
        return tokenized_batches(source.reference.tokenizer, texts, source.card.max_seq_length)

    def expected(self, source: Source, precision: Precision) -> npt.NDArray[Any]:
        return np.asarray(
            source.reference.encode(
                _check_texts(precision), convert_to_numpy=True, batch_size=8, show_progress_bar=False
            )
        )

    def manifest_fields(self, source: Source, expected: npt.NDArray[Any]) -> dict[str, Any]:
        card = source.card
        assert isinstance(card, ModelCard)
        normalized = self._normalized(card)
        return {
            "output": OUTPUT_NAME,
            "dim": int(expected.shape[1]),
            "similarity": card.similarity,
            "similarity_source": card.similarity_source,
            "normalized": normalized,
            "search_metric": "ip",
            "max_seq_length": card.max_seq_length,
            "do_lower_case": card.do_lower_case,
            "pad_token_id": card.pad_token_id,
            "pooling": card.pooling,
            "modules": card.modules
            + (["Normalize (added)"] if normalized and "Normalize" not in card.modules else []),
            "architecture": card.architecture,
        }

    def check(
        self, source: Source, exported: Path, precision: Precision, expected: npt.NDArray[Any]
    ) -> tuple[str, Any]:
        """The check that makes an export trustworthy: the same texts through both stacks."""
        from fastmarco.model.encoder import Encoder

        texts = _check_texts(precision)
        got = Encoder.open(exported, device="cpu", runtime=precision.check_runtime).encode(texts)
        parity = float(_cosines(expected, got).min())
        floor = precision.min_cosine
        if parity < floor:
            raise ExportError(
                f"the {precision.name} export disagrees with sentence-transformers on {len(texts)} check "
                f"texts: min cosine {parity:.6f} < {floor}; nothing was published"
                + (" (this model does not quantize well: export fp32)" if precision.quantized else "")
            )
        return "parity_min_cosine", parity

    def parity_words(self, value: Any) -> str:
        return f"min cosine {value:.6f}"


register_model_kind(BiEncoderKind())
