"""A cross-encoder exported by `fastmarco export`, scoring (query, passage) pairs with ONNX Runtime.

`sentence_transformers.CrossEncoder.predict` is called once per query in most mining and re-ranking
code and pads each batch to its longest pair. Here every pair of a call is tokenized together (as a
pair, truncated longest-first to the model's max_seq_length, as transformers does), sorted by length
and cut into batches under a token budget across queries; the scores come back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError, ModelError
from fastmarco.model.encoder import DEFAULT_GPU_MAX_TOKENS, DEFAULT_MAX_TOKENS, plan_batches
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.runtime import Device, load_tokenizer, open_session

CHUNK_PAIRS = 8_192  # pairs tokenized at once: bounds the token lists held in memory


class CrossEncoderScorer:
    """The `Scorer` for a cross-encoder directory: `score` returns what `CrossEncoder.predict` returns
    (the manifest's `activation` says whether a sigmoid is applied to the logit)."""

    def __init__(
        self,
        directory: Path,
        model: ModelManifest,
        session: Any,
        tokenizer: Any,
        device: str,
        max_tokens: int,
        max_batch: int,
    ) -> None:
        self.directory = directory
        self.model = model
        self.session = session
        self.tokenizer = tokenizer
        self.device = device
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.input_names = {i.name for i in session.get_inputs()}

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        device: Device = "auto",
        *,
        device_id: int = 0,
        threads: int = 0,
        max_tokens: int | None = None,
        max_batch: int = 1024,
    ) -> CrossEncoderScorer:
        root = Path(directory)
        model = ModelManifest.load(root)
        if model.kind != "cross-encoder":
            raise ModelError(
                f"{root} holds a {model.kind}, not a cross-encoder; export one with `fastmarco export` "
                "from a sentence-transformers CrossEncoder"
            )
        session, chosen = open_session(root, model, device, device_id=device_id, threads=threads)
        budget = max_tokens or (DEFAULT_GPU_MAX_TOKENS if chosen.startswith("cuda") else DEFAULT_MAX_TOKENS)
        return cls(root, model, session, load_tokenizer(root, model), chosen, budget, max_batch)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def score(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Score pair i = (queries[i], passages[i]): (n,) float32 in input order."""
        if isinstance(queries, str) or isinstance(passages, str):
            raise InputError("queries and passages must be sequences of str, not one str")
        if len(queries) != len(passages):
            raise InputError(f"got {len(queries)} queries but {len(passages)} passages; pairs must match")
        for name, texts in (("queries", queries), ("passages", passages)):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise InputError(f"{name}[{i}] is {type(text).__name__}, expected str")
        scores = np.empty(len(queries), dtype=np.float32)
        for start in range(0, len(queries), CHUNK_PAIRS):
            stop = min(start + CHUNK_PAIRS, len(queries))
            encodings = self.tokenizer.encode_batch(
                list(zip(queries[start:stop], passages[start:stop], strict=True))
            )
            lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
            for rows in plan_batches(lengths, self.max_tokens, self.max_batch):
                scores[rows + start] = self._run([encodings[r] for r in rows], int(lengths[rows[0]]))
                if progress is not None:
                    progress(len(rows))
        return scores

    def _run(self, encodings: list[Any], width: int) -> npt.NDArray[np.float32]:
        pad = self.model.pad_token_id
        ids = np.full((len(encodings), width), pad, dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for j, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[j, :n] = encoding.ids
            types[j, :n] = encoding.type_ids
            mask[j, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = types
        result: npt.NDArray[np.float32] = self.session.run([self.model.output], feeds)[0]
        return result
