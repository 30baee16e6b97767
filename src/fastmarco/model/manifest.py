"""`fastmarco.json`, the manifest of an exported model directory, read and checked field by field."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmarco._json import read_field, read_manifest
from fastmarco.errors import ModelError

MANIFEST_NAME = "fastmarco.json"
MODEL_FORMAT = "fastmarco-model"
MODEL_FORMAT_VERSION = 1
MODEL_KINDS = ("bi-encoder", "cross-encoder")


@dataclass(frozen=True)
class ModelManifest:
    """The fields the encoder and the encode job rely on; `raw` keeps the whole JSON object."""

    model: str
    output: str
    dim: int
    fingerprint: str
    max_seq_length: int
    similarity: str | None = None
    search_metric: str = "ip"
    precision: str | None = None
    do_lower_case: bool = False
    pad_token_id: int = 0
    kind: str = "bi-encoder"  # or "cross-encoder": `output` is then one score per (query, passage) pair
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

        need = functools.partial(read_field, body, path, ModelError)

        manifest = cls(
            model=need("model", str),
            output=need("output", str),
            dim=need("dim", int),
            fingerprint=need("fingerprint", str),
            max_seq_length=need("max_seq_length", int),
            similarity=need("similarity", str, optional=True),
            search_metric=need("search_metric", str, default="ip"),
            precision=need("precision", str, optional=True),
            do_lower_case=need("do_lower_case", bool, default=False),
            pad_token_id=need("pad_token_id", int, default=0),
            kind=need("kind", str, default="bi-encoder"),
            activation=need("activation", str, optional=True),
            raw=body,
        )
        if manifest.kind not in MODEL_KINDS:
            raise ModelError(f"{path}: field 'kind' must be one of {', '.join(MODEL_KINDS)}")
        if manifest.dim == 0 or manifest.max_seq_length == 0:
            raise ModelError(f"{path}: fields 'dim' and 'max_seq_length' must be positive")
        for name in (manifest.model, "tokenizer.json"):
            if not (root / name).is_file():
                raise ModelError(f"{root / name}: missing from the model directory (export it again)")
        return manifest
