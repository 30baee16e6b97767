"""Scorers: a relevance score for each (query, passage) pair. Re-ranking and hard-negative mining take
any `Scorer`; a bi-encoder scores by embedding similarity, a cross-encoder by reading the pair
(fastmarco.model.cross_encoder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.model.cross_encoder import CrossEncoderScorer
from fastmarco.model.encoder import Encoder
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.runtime import Device


class Scorer(Protocol):
    device: str

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> npt.NDArray[np.float32]:
        """Score pair i = (queries[i], passages[i]); (n,) float32, higher is more relevant."""
        ...


class BiEncoderScorer:
    """Inner product of the embeddings (cosine for normalized exports); each distinct text is encoded
    once, so a query's 100 candidates cost one query encoding."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.device = encoder.device

    def _embed(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        distinct: dict[str, int] = {}
        where = np.fromiter(
            (distinct.setdefault(t, len(distinct)) for t in texts), dtype=np.int64, count=len(texts)
        )
        return self.encoder.encode(list(distinct)).astype(np.float32, copy=False), where

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> npt.NDArray[np.float32]:
        if len(queries) != len(passages):
            raise InputError(f"got {len(queries)} queries but {len(passages)} passages; pairs must match")
        query_vectors, query_rows = self._embed(queries)
        passage_vectors, passage_rows = self._embed(passages)
        scores: npt.NDArray[np.float32] = (query_vectors[query_rows] * passage_vectors[passage_rows]).sum(
            axis=1, dtype=np.float32
        )
        return scores


def open_scorer(
    directory: str | os.PathLike[str], device: Device = "auto", *, threads: int = 0, runtime: str = "auto"
) -> Scorer:
    """The scorer a model directory calls for: its manifest says bi-encoder or cross-encoder."""
    if ModelManifest.load(Path(directory)).kind == "cross-encoder":
        return CrossEncoderScorer.open(directory, device=device, threads=threads, runtime=runtime)
    return BiEncoderScorer(Encoder.open(directory, device=device, threads=threads, runtime=runtime))
