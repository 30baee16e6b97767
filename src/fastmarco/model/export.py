"""Export a sentence-transformers model to one ONNX graph that outputs the final sentence embedding.

optimum's exporter traces the whole sentence-transformers pipeline (Transformer, Pooling, Dense,
LayerNorm, Normalize), so the graph's `sentence_embedding` output is what
`SentenceTransformer.encode` returns. Cosine models get a Normalize module appended (if they lack one)
so stored embeddings are unit vectors and search is a plain inner product. The directory is checked
against sentence-transformers before it is published, and published atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastmarco._atomic import publish_directory, refuse_existing, staging_directory
from fastmarco._version import __version__
from fastmarco.errors import ExportError
from fastmarco.model.export_cross import CrossEncoderCard, export_cross_encoder, is_cross_encoder
from fastmarco.model.manifest import MANIFEST_NAME, MODEL_FORMAT, MODEL_FORMAT_VERSION
from fastmarco.model.quantize import quantize_int8, tokenized_batches

log = logging.getLogger("fastmarco")

OUTPUT_NAME = "sentence_embedding"

Similarity = Literal["cosine", "dot"]
OptimizeLevel = Literal["O1", "O2", "O3", "O4"]

SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "LayerNorm", "Normalize")
SUPPORTED_POOLING = ("mean", "cls", "max")
SUPPORTED_ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "mpnet")

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


# An int8 export is checked on more text than that: the bundled demo passages too, every row at least
# this cosine to sentence-transformers' fp32 embedding. Dynamic int8 of all-MiniLM-L6-v2 measures 0.985
# at worst over 300 real MS MARCO passages (mean 0.994) and keeps DL19 nDCG@10 within 0.005.
INT8_MIN_COSINE = 0.97
PARITY_FLOORS = {"fp32": 0.9999, "fp16": 0.999, "int8": INT8_MIN_COSINE}


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


@dataclass
class ExportReport:
    directory: str
    card: ModelCard | CrossEncoderCard
    precision: str
    optimize: str | None
    fusions: dict[str, int] = field(default_factory=dict)
    parity: str = ""  # how the export agrees with sentence-transformers, in words
    fingerprint: str = ""


def _read_json(path: Path) -> dict[str, Any]:
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


def _module_kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def read_model_card(folder: Path, similarity: Similarity | None = None) -> ModelCard:
    """Check the module stack is exportable and work out pooling and similarity."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder}: no config.json; not a transformers / sentence-transformers model")
    config = _read_json(config_path)
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
        pooling_config = _read_json(paths[kinds.index("Pooling")] / "config.json")
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
    st_config = _read_json(bert_config) if bert_config.is_file() else {}
    declared = None
    if (folder / "config_sentence_transformers.json").is_file():
        declared = _read_json(folder / "config_sentence_transformers.json").get("similarity_fn_name")
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


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over the names and bytes of the files: identifies an exported model."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


# Every manifest field that changes an embedding: two exports differing in any of them must not mix.
EMBEDDING_SETTINGS = (
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


def embedding_fingerprint(
    files: list[Path], manifest: dict[str, Any], settings_names: tuple[str, ...] = EMBEDDING_SETTINGS
) -> str:
    """sha256 over the graph and tokenizer bytes plus the settings that change an embedding (or, for a
    cross-encoder, a score): the same graph exported with --max-seq-length 128 and 256 gets two."""
    settings = json.dumps({name: manifest.get(name) for name in settings_names}, sort_keys=True)
    digest = hashlib.sha256(fingerprint_files(files).encode() + b"\0" + settings.encode())
    return digest.hexdigest()


def build_record(
    onnx_path: Path,
    model: str,
    folder: Path,
    precision: str,
    level: str,
    fusions: dict[str, int],
    quantization: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest fields that say how a graph was built, for both kinds of model: precision,
    optimization, quantization, opset, source and the exporting versions."""
    import onnx

    return {
        "precision": precision,
        "optimize": level,
        "fusions": fusions,
        **({"quantization": quantization} if quantization else {}),
        "opset": int(onnx.load(str(onnx_path), load_external_data=False).opset_import[0].version),
        "source": {"model": model, "fingerprint": _source_fingerprint(folder)},
        "exported_by": {
            "fastmarco": __version__,
            **{
                name: _version(name)
                for name in ("optimum-onnx", "onnxruntime", "torch", "transformers", "sentence-transformers")
            },
        },
    }


def _source_fingerprint(folder: Path) -> str:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in ("README.md", ".gitattributes")
    )
    return fingerprint_files(files)


def _constant_values(graph: Any) -> dict[str, np.ndarray]:
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
    constants = _constant_values(graph)
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


def _optimize(
    path: Path, num_heads: int, hidden_size: int, level: OptimizeLevel, fp16: bool
) -> dict[str, int]:
    """ORT transformer fusions (O2+), GELU approximation (O3+), fp16 (O4 or --fp16).

    ORT's basic graph optimizations (opt_level 1: constant folding, provider-independent) run first so
    the attention-mask arithmetic folds into the pattern the attention fusion matches.
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
    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0 if level == "O1" else 1,
    )
    fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    if fp16 or level == "O4":
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(path))
    return fusions


def calibration_texts() -> list[str]:
    """What int8 calibration sees: the bundled demo passages and queries (written for fastmarco, not
    MS MARCO text, so no evaluated passage shapes the quantization)."""
    from fastmarco.corpus.bundled import demo_corpus_path, demo_queries_path, demo_texts

    return demo_texts(demo_corpus_path()) + demo_texts(demo_queries_path())


def _check_texts(precision: str) -> list[str]:
    if precision != "int8":
        return list(PARITY_TEXTS)
    from fastmarco.corpus.bundled import demo_corpus_path, demo_texts

    return [*PARITY_TEXTS, *demo_texts(demo_corpus_path())]


def _keep_only_sentence_embedding(path: Path) -> None:
    """Drop the token_embeddings output so no (batch, length, hidden) tensor leaves the graph."""
    import onnx

    model = onnx.load(str(path))
    outputs = [o for o in model.graph.output if o.name == OUTPUT_NAME]
    if not outputs:
        raise ExportError(f"the exported graph has no '{OUTPUT_NAME}' output")
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    onnx.save(model, str(path))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(norms > 0, (a64 * b64).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)


def export_model(
    model: str,
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    int8: bool = False,
    int8_attention: bool = False,
    optimize: OptimizeLevel | None = None,
    max_seq_length: int | None = None,
    similarity: Similarity | None = None,
    opset: int | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export MODEL (folder or hub id) to OUT; see the module docstring. A sentence-transformers
    CrossEncoder is exported as a cross-encoder (see fastmarco.model.export_cross)."""
    from optimum.exporters.onnx import onnx_export_from_model
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 5.7 moved the modules
        from sentence_transformers.sentence_transformer.modules import Normalize
    except ImportError:
        from sentence_transformers.models import Normalize  # type: ignore[no-redef]

    from fastmarco.model.encoder import Encoder

    if int8 and (fp16 or optimize == "O4"):
        raise ExportError("int8 (for the CPU) and fp16 (for the GPU) exclude each other: choose one")
    if int8_attention and not int8:
        raise ExportError(
            "int8_attention (--int8-attention) quantizes the attention of an int8 export: add int8"
        )
    target = Path(out)
    refuse_existing(target, overwrite)
    folder = resolve_model(model)
    if is_cross_encoder(folder):
        if similarity is not None:
            raise ExportError(f"{folder} is a cross-encoder: it scores pairs, so --similarity does not apply")
        cross_card, precision, cross_level, fusions, difference, fingerprint = export_cross_encoder(
            folder,
            model,
            target,
            fp16=fp16,
            int8=int8,
            int8_attention=int8_attention,
            optimize=optimize,
            max_seq_length=max_seq_length,
            opset=opset,
        )
        log.info("exported cross-encoder %s to %s (%s, parity %.3g)", model, target, precision, difference)
        return ExportReport(
            str(target),
            cross_card,
            precision,
            cross_level,
            fusions,
            f"largest score difference from CrossEncoder.predict {difference:.3g}",
            fingerprint,
        )
    card = read_model_card(folder, similarity)
    st_model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    card.max_seq_length = int(max_seq_length or st_model.max_seq_length or card.max_seq_length)
    if card.max_seq_length > card.max_positions:
        raise ExportError(
            f"max_seq_length {card.max_seq_length} exceeds the {card.max_positions} positions this "
            f"{card.architecture} model has"
        )
    st_model.max_seq_length = card.max_seq_length
    normalized = card.similarity == "cosine" or "Normalize" in card.modules
    if normalized and "Normalize" not in card.modules:
        st_model.append(Normalize())
    staging = staging_directory(target)
    try:
        # torch/optimum warn about their own internals (TorchScript exporter, tracer); not actionable
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            onnx_export_from_model(
                st_model,
                staging,
                task="feature-extraction",
                library_name="sentence_transformers",
                opset=opset,
                do_validation=False,
            )
        for warning in caught:
            log.debug("exporter warning: %s: %s", warning.category.__name__, warning.message)
        onnx_path = staging / "model.onnx"
        _keep_only_sentence_embedding(onnx_path)
        level: OptimizeLevel = optimize or "O2"  # the transformer fusions help ORT's CPU kernels too
        fusions = _optimize(onnx_path, card.num_heads, card.hidden_size, level, fp16)
        quantization = None
        if int8:
            calibration = tokenized_batches(st_model.tokenizer, calibration_texts(), card.max_seq_length)
            quantization = quantize_int8(onnx_path, calibration, attention=int8_attention)
        if not (staging / "tokenizer.json").is_file():
            raise ExportError(f"{folder}: no fast tokenizer (tokenizer.json) could be saved for this model")

        precision = "int8" if int8 else "fp16" if fp16 or optimize == "O4" else "fp32"
        check_texts = _check_texts(precision)
        expected = st_model.encode(check_texts, convert_to_numpy=True, batch_size=8, show_progress_bar=False)
        manifest = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "model": "model.onnx",
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
            **build_record(onnx_path, model, folder, precision, level, fusions, quantization),
        }
        manifest["fingerprint"] = fingerprint = embedding_fingerprint(
            [onnx_path, staging / "tokenizer.json"], manifest
        )
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        # the check that makes an export trustworthy: the same texts through both stacks
        got = Encoder.open(staging, device="cpu").encode(check_texts)
        parity = float(_cosines(expected, got).min())
        floor = PARITY_FLOORS[precision]
        if parity < floor:
            raise ExportError(
                f"the {precision} export disagrees with sentence-transformers on {len(check_texts)} check "
                f"texts: min cosine {parity:.6f} < {floor}; nothing was published"
                + ("" if precision != "int8" else " (this model does not quantize well: export fp32)")
            )
        manifest["parity_min_cosine"] = parity
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        publish_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s (%s, fusions %s, parity %.6f)", model, target, precision, fusions, parity)
    return ExportReport(str(target), card, precision, level, fusions, f"min cosine {parity:.6f}", fingerprint)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
