"""A cross-encoder exported by `fastmarco export`, scoring (query, passage) pairs with ONNX Runtime.

`sentence_transformers.CrossEncoder.predict` is called once per query in most mining and re-ranking
code and pads each batch to its longest pair. Here every pair of a call is tokenized together (as a
pair, truncated longest-first to the model's max_seq_length, as transformers does), sorted by length
and cut into batches under a token budget across queries; the scores come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.model.runtime import OnnxModel, checked_texts
from fastmarco.progress import Progress, Update

CHUNK_PAIRS = 8_192  # pairs tokenized at once: bounds the token lists held in memory


class CrossEncoderScorer(OnnxModel):
    """The `Scorer` for a cross-encoder directory: `score` returns what `CrossEncoder.predict` returns
    (the manifest's `activation` says whether a sigmoid is applied to the logit)."""

    kind = "cross-encoder"
    pairs = True
    wrong_kind = (
        "{root} holds a {held}, not a cross-encoder; export one with `fastmarco export` from a "
        "sentence-transformers CrossEncoder"
    )

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
        checked_texts(queries, "queries")
        checked_texts(passages, "passages")
        scores = np.empty(len(queries), dtype=np.float32)
        scored = 0
        for start in range(0, len(queries), CHUNK_PAIRS):
            stop = min(start + CHUNK_PAIRS, len(queries))
            encodings = self.tokenizer.encode_batch(
                [
                    (self.bounded(query), self.bounded(passage))
                    for query, passage in zip(queries[start:stop], passages[start:stop], strict=True)
                ]
            )
            lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
            for rows in self.budget.plan(lengths):
                feeds = self.pad([encodings[r] for r in rows], int(lengths[rows[0]]))
                scores[rows + start] = self.run(feeds)
                scored += len(rows)
                if progress is not None:
                    progress(Update("score", scored, len(queries), "pairs"))
        return scores
