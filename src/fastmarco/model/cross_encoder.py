"""A cross-encoder exported by `fastmarco export`, scoring (query, passage) pairs (either runtime).

`sentence_transformers.CrossEncoder.predict` is called once per query in most mining and re-ranking
code and pads each batch to its longest pair. Here every pair of a call is tokenized together (as a
pair, truncated longest-first to the model's max_seq_length, as transformers does), sorted by length
and cut into batches under a token budget across queries; the scores come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.model.runtime import BULK_ROWS, OnnxModel, checked_texts
from fastmarco.progress import Progress, Update

CHUNK_PAIRS = 8_192  # pairs tokenized at once: bounds the token lists held in memory


@dataclass(frozen=True)
class PairTokens:
    """Pairs after tokenization (each truncated to max_seq_length, no padding): what a caller queues
    before scoring, so the server can tokenize on one thread while another batch is scored."""

    encodings: list[Any]
    lengths: npt.NDArray[np.int64]

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.encodings)

    @staticmethod
    def concat(parts: Sequence[PairTokens]) -> PairTokens:
        return PairTokens(
            [e for part in parts for e in part.encodings],
            np.concatenate([part.lengths for part in parts]) if parts else np.zeros(0, np.int64),
        )


class CrossEncoderScorer(OnnxModel):
    """The `Scorer` for a cross-encoder directory: `score` returns what `CrossEncoder.predict` returns
    (the manifest's `activation` says whether a sigmoid is applied to the logit)."""

    kind = "cross-encoder"
    pairs = True
    wrong_kind = (
        "{root} holds a {held}, not a cross-encoder; export one with `fastmarco export` from a "
        "sentence-transformers CrossEncoder"
    )

    def tokenize_pairs(self, queries: Sequence[str], passages: Sequence[str]) -> PairTokens:
        """Tokenize pair i = (queries[i], passages[i]) as a pair, truncated longest-first."""
        if isinstance(queries, str) or isinstance(passages, str):
            raise InputError("queries and passages must be sequences of str, not one str")
        if len(queries) != len(passages):
            raise InputError(f"got {len(queries)} queries but {len(passages)} passages; pairs must match")
        checked_texts(queries, "queries")
        checked_texts(passages, "passages")
        encodings = self.tokenizer.encode_batch(
            [(self.bounded(q), self.bounded(p)) for q, p in zip(queries, passages, strict=True)]
        )
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        return PairTokens(encodings, lengths)

    def score_tokens(
        self,
        pairs: PairTokens,
        progress: Progress | None = None,
        done: int = 0,
        total: int = 0,
        *,
        bulk: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Scores of tokenized pairs, in their order: batches of similar length under the token budget
        (`bulk`: its bulk widths, and several in flight where the runtime gains from it, see
        `OnnxModel.run_batches`)."""
        scores = np.empty(len(pairs), dtype=np.float32)
        batches = (
            (rows, self.pad([pairs.encodings[r] for r in rows], width))
            for rows, width in self.budget.plan(pairs.lengths, bulk=bulk)
        )
        for rows, result, _ in self.run_batches(batches, bulk=bulk):
            scores[rows] = result
            done += len(rows)
            if progress is not None:
                progress(Update("score", done, total or len(pairs), "pairs"))
        return scores

    def score(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        *,
        progress: Progress | None = None,
    ) -> npt.NDArray[np.float32]:
        """Score pair i = (queries[i], passages[i]): (n,) float32 in input order."""
        if isinstance(queries, str) or isinstance(passages, str):
            raise InputError("queries and passages must be sequences of str, not one str")
        if len(queries) != len(passages):
            raise InputError(f"got {len(queries)} queries but {len(passages)} passages; pairs must match")
        scores = np.empty(len(queries), dtype=np.float32)
        for start in range(0, len(queries), CHUNK_PAIRS):
            stop = min(start + CHUNK_PAIRS, len(queries))
            pairs = self.tokenize_pairs(queries[start:stop], passages[start:stop])
            scores[start:stop] = self.score_tokens(
                pairs, progress, start, len(queries), bulk=len(queries) >= BULK_ROWS
            )
        return scores
