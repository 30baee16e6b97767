"""The model kind registry: what `fastmarco export` can export. A kind reads its source folder, traces
its graph (with the head that makes the graph's one output what sentence-transformers returns),
says what int8 calibrates on and what the manifest records, and checks the export against
sentence-transformers; export.py runs the one pipeline around those steps. A new kind (SPLADE,
ColBERT) is one module that registers itself, plus its import in model/export.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fastmarco.errors import ExportError
from fastmarco.model.precisions import Precision

Similarity = Literal["cosine", "dot"]


class Card(Protocol):
    """What a kind read from the source folder: enough for the fusions, and a line for the user."""

    @property
    def num_heads(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def max_seq_length(self) -> int: ...

    def describe(self) -> str: ...


@dataclass
class Source:
    """A loaded source model: its card and the sentence-transformers object the export must match."""

    folder: Path
    card: Card
    reference: Any


class ModelKind(Protocol):
    name: str  # the manifest's 'kind'
    fingerprint_settings: tuple[str, ...]  # manifest fields that change an output
    fallback: bool  # asked only after every other kind declined a folder

    def claims(self, folder: Path) -> bool:
        """Whether FOLDER holds a model of this kind."""
        ...

    def load(
        self,
        folder: Path,
        *,
        max_seq_length: int | None,
        similarity: Similarity | None,
        attention_implementation: str | None = None,
    ) -> Source:
        """The sentence-transformers model in FOLDER; `attention_implementation`: transformers' own name
        of the attention to trace (None: the model's default)."""
        ...

    def trace(self, source: Source, out: Path, opset: int | None, precision: Precision) -> Path:
        """Write OUT/model.onnx with the kind's one output, and the tokenizer files, traced for
        PRECISION; returns the graph."""
        ...

    def calibration(
        self, source: Source, passages: list[str] | None, *, static: bool = False
    ) -> list[dict[str, npt.NDArray[np.int64]]]:
        """The tokenized batches int8 calibrates on: dynamic int8 its outlier channels, static int8
        (`static`) every activation's fixed scale, which must also cover the kind's shortest inputs.
        PASSAGES: from the corpus to be encoded (`export --calibration`); None: the bundled demo's."""
        ...

    def expected(self, source: Source, precision: Precision) -> npt.NDArray[Any]:
        """What sentence-transformers answers on the kind's check inputs for this precision."""
        ...

    def manifest_fields(self, source: Source, expected: npt.NDArray[Any]) -> dict[str, Any]: ...

    def check(
        self, source: Source, exported: Path, precision: Precision, expected: npt.NDArray[Any]
    ) -> tuple[str, Any]:
        """Compare the exported directory with `expected`: (manifest field, value) to record, or
        ExportError when they disagree beyond the precision's tolerance."""
        ...

    def parity_words(self, value: Any) -> str: ...


MODEL_KINDS: list[ModelKind] = []


def register_model_kind(kind: ModelKind) -> ModelKind:
    if any(known.name == kind.name for known in MODEL_KINDS):
        raise ValueError(f"model kind {kind.name!r} is registered twice")
    MODEL_KINDS.append(kind)
    return kind


def model_kind_for(folder: Path) -> ModelKind:
    """The first kind that claims FOLDER, asking the fallback kinds last."""
    for kind in sorted(MODEL_KINDS, key=lambda kind: kind.fallback):
        if kind.claims(folder):
            return kind
    raise ExportError(
        f"{folder}: not a model any registered kind exports ({', '.join(k.name for k in MODEL_KINDS)})"
    )
