"""`fastmarco.json`, the manifest of an exported model directory: the fields every reader relies on,
typed; each model kind adds its own (how it was built, its parity checks), kept in `raw`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from fastmarco._json import Count, Positive, convert, read_manifest
from fastmarco.errors import ModelError

MANIFEST_NAME = "fastmarco.json"
MODEL_FORMAT = "fastmarco-model"
MODEL_FORMAT_VERSION = 1
RuntimeKind = Literal["bi-encoder", "cross-encoder"]  # the runtimes that open an export
# The graph formats a manifest's 'model' may name, by file suffix (each runtime says which it reads):
# ONNX, and OpenVINO's own graph, whose weights are a .bin beside its .xml (`export --int8-static`).
GRAPH_FORMATS = {".onnx": "an ONNX graph", ".xml": "an OpenVINO graph"}


@dataclass(frozen=True)
class ModelManifest:
    """The fields the encoder and the encode job rely on; `raw` keeps the whole JSON object."""

    model: str
    output: str
    dim: Positive
    fingerprint: str
    max_seq_length: Positive
    similarity: str | None = None
    search_metric: str = "ip"
    precision: str | None = None
    do_lower_case: bool = False
    pad_token_id: Count = 0
    kind: RuntimeKind = "bi-encoder"  # cross-encoder: `output` is one score per (query, passage) pair
    activation: str | None = None  # cross-encoders: what the graph applies to the logit
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> ModelManifest:
        root = Path(directory)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise ModelError(f"{root}: model directory not found")
        body = read_manifest(
            path,
            ModelError,
            format=MODEL_FORMAT,
            version=MODEL_FORMAT_VERSION,
            missing="export a model with `fastmarco export` first",
            implicit=True,
        )
        manifest = replace(convert(body, cls, path, ModelError), raw=body)
        suffix = Path(manifest.model).suffix
        if suffix not in GRAPH_FORMATS:
            raise ModelError(
                f"{path}: model {manifest.model!r} is not a graph format fastmarco reads "
                f"({', '.join(GRAPH_FORMATS)})"
            )
        for file in (*graph_files(root / manifest.model), root / "tokenizer.json"):
            if not file.is_file():
                raise ModelError(f"{file}: missing from the model directory (export it again)")
        return manifest


def graph_files(graph: Path) -> list[Path]:
    """The files a graph is stored in: an OpenVINO graph's .xml and its weights' .bin, else the one."""
    return [graph, graph.with_suffix(".bin")] if graph.suffix == ".xml" else [graph]
