"""BM25 baseline runs with bm25s.

Tokenization, stated because BM25 figures depend on it: lower-cased, tokens are runs of two or more
word characters (bm25s' default pattern), English stopwords removed, Snowball English stemming
(PyStemmer), close to Lucene's EnglishAnalyzer that Pyserini uses. Scoring is Lucene's BM25 with
Pyserini's MS MARCO passage defaults, k1 = 0.9 and b = 0.4.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco import fingerprints
from fastmarco.corpus.formats import detect
from fastmarco.errors import InputError
from fastmarco.store.formats import RunEntry, read_collection

K1 = 0.9
B = 0.4


class BM25Index:
    """A collection indexed once in memory, searched in batches (a run, or mining's query blocks)."""

    def __init__(
        self, pids: list[str], retriever: Any, stemmer: Any, show_progress: bool, fingerprint: str
    ) -> None:
        self.pids = pids
        self.retriever = retriever
        self.stemmer = stemmer
        self.show_progress = show_progress
        self.fingerprint = fingerprint  # of the collection and every setting that changes a score

    @classmethod
    def build(
        cls,
        collection: str | os.PathLike[str],
        *,
        k1: float = K1,
        b: float = B,
        show_progress: bool = False,
        format: str = "auto",
    ) -> BM25Index:
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
        reader = detect(collection, format)
        pids, texts = [], []
        for pid, text in read_collection(collection, format=reader.name):
            pids.append(pid)
            texts.append(text)
        if not pids:
            raise InputError(f"{collection}: the collection is empty")
        corpus_tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=show_progress)
        del texts
        if not corpus_tokens.vocab:
            raise InputError(
                f"{collection}: none of its {len(pids):,} passages has a word left after English stopword "
                "removal; BM25 has nothing to index"
            )
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index(corpus_tokens, show_progress=show_progress)
        settings = {
            "k1": k1,
            "b": b,
            "stopwords": "en",
            "stemmer": "english",
            "bm25s": bm25s.__version__,
            "format": reader.name,
        }
        fingerprint = fingerprints.combine(
            fingerprints.of_file(collection), fingerprints.of_settings(settings)
        )
        return cls(pids, retriever, stemmer, show_progress, fingerprint)

    def search(self, texts: Sequence[str], k: int) -> list[tuple[list[str], npt.NDArray[np.float32]]]:
        """Per query: (pids best first, their scores); passages sharing no term with it are left out."""
        import bm25s

        if not texts:
            return []
        tokens = bm25s.tokenize(
            list(texts), stopwords="en", stemmer=self.stemmer, show_progress=self.show_progress
        )
        rows, scores = self.retriever.retrieve(
            tokens, k=min(k, len(self.pids)), show_progress=self.show_progress
        )
        found = []
        for i in range(len(texts)):
            kept = np.flatnonzero(scores[i] > 0)
            found.append(([self.pids[int(r)] for r in rows[i, kept]], scores[i, kept].astype(np.float32)))
        return found


@dataclass(frozen=True)
class BM25Run:
    entries: list[RunEntry]
    unmatched: list[str]  # qids that retrieved nothing: only stopwords, or no word the collection has


def bm25_run(
    collection: str | os.PathLike[str],
    queries: Mapping[str, str],
    k: int = 1000,
    *,
    k1: float = K1,
    b: float = B,
    show_progress: bool = False,
    format: str = "auto",
) -> BM25Run:
    """Retrieve the top k passages of the collection for each query: TREC entries with scores, and
    which queries retrieved nothing (they have no line in a run file, so a caller says so)."""
    index = BM25Index.build(collection, k1=k1, b=b, show_progress=show_progress, format=format)
    qids = list(queries)
    entries: list[RunEntry] = []
    unmatched: list[str] = []
    for qid, (pids, scores) in zip(qids, index.search([queries[q] for q in qids], k), strict=True):
        if not pids:
            unmatched.append(qid)
        entries.extend(
            RunEntry(qid, pid, rank, float(score))
            for rank, (pid, score) in enumerate(zip(pids, scores, strict=True), 1)
        )
    return BM25Run(entries, unmatched)
