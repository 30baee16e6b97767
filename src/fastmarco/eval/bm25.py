"""BM25 baseline runs with bm25s.

Tokenization, stated because BM25 figures depend on it: lower-cased, tokens are runs of two or more
word characters (bm25s' default pattern), English stopwords removed, Snowball English stemming
(PyStemmer), close to Lucene's EnglishAnalyzer that Pyserini uses. Scoring is Lucene's BM25 with
Pyserini's MS MARCO passage defaults, k1 = 0.9 and b = 0.4.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from fastmarco.errors import InputError
from fastmarco.store.formats import RunEntry, read_collection

K1 = 0.9
B = 0.4


def bm25_run(
    collection: str | os.PathLike[str],
    queries: Mapping[str, str],
    k: int = 1000,
    *,
    k1: float = K1,
    b: float = B,
    show_progress: bool = False,
) -> list[RunEntry]:
    """Retrieve the top k passages of the collection for each query; TREC entries with scores."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    pids, texts = [], []
    for pid, text in read_collection(collection):
        pids.append(pid)
        texts.append(text)
    if not pids:
        raise InputError(f"{collection}: the collection is empty")
    corpus_tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=show_progress)
    del texts
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(corpus_tokens, show_progress=show_progress)
    qids = list(queries)
    query_tokens = bm25s.tokenize(
        [queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=show_progress
    )
    depth = min(k, len(pids))
    rows, scores = retriever.retrieve(query_tokens, k=depth, show_progress=show_progress)
    entries: list[RunEntry] = []
    for i, qid in enumerate(qids):
        kept = np.flatnonzero(scores[i] > 0)  # passages sharing no term with the query are not retrieved
        entries.extend(
            RunEntry(qid, pids[int(rows[i, j])], rank, float(scores[i, j])) for rank, j in enumerate(kept, 1)
        )
    return entries
