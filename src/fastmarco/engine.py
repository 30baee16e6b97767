"""The importable query engine: text in, ranked passage ids out, everything loaded once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.encoder import Device, Encoder
from fastmarco.index import IndexMismatchError, VectorIndex


class Engine:
    """Encoder + index + id map. `search` is safe to call from many threads at once: the ONNX
    Runtime session, the faiss index and the native re-scoring are all read-only after `open`."""

    def __init__(self, encoder: Encoder, index: VectorIndex) -> None:
        self.encoder = encoder
        self.index = index
        index.shard_set.ids()  # load the id map now, not lazily inside concurrent searches

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        device: Device = "auto",
        nprobe: int | None = None,
    ) -> Engine:
        """`model` defaults to the model directory recorded when the shards were encoded."""
        index = VectorIndex.open(index_dir, nprobe=nprobe)
        model_dir = model or index.shard_set.metadata.get("model", {}).get("directory")
        if model_dir is None:
            raise IndexMismatchError(f"{index_dir}: no model directory recorded; pass model=")
        encoder = Encoder.open(model_dir, device=device, busy_wait=False)
        if index.model_fingerprint is not None and encoder.fingerprint != index.model_fingerprint:
            raise IndexMismatchError(
                f"{index_dir} was built from embeddings of another model than {model_dir}"
                " (fingerprints differ)"
            )
        return cls(encoder, index)

    def search(
        self, texts: Sequence[str], k: int = 10, *, refine: int | None = None
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]:
        """(ids, scores), each (len(texts), k), best first; ids are the corpus's pids
        (-1, or '' for string ids, where fewer than k passages exist)."""
        vectors = self.encoder.encode(texts)
        scores, rows = self.index.search(vectors, k, refine=refine)
        return self.index.shard_set.ids(rows), scores
