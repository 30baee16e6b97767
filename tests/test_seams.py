"""The seams later features build on: passage store, scorer, job spec and runner, thread budget."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from fastmarco.encode.job import JobSpec, LineRange
from fastmarco.encode.parallel import link_or_copy
from fastmarco.errors import FormatError, InputError
from fastmarco.store.formats import read_collection
from fastmarco.store.passages import OFFSETS_SUFFIX, PassageStore


def test_passage_store_reads_any_passage_by_pid_like_the_collection_reader(
    mini: Path, tmp_path: Path
) -> None:
    collection = tmp_path / "collection.tsv"
    collection.write_bytes((mini / "collection.tsv").read_bytes())
    expected = dict(read_collection(collection))
    with PassageStore.open(collection) as store:
        assert len(store) == len(expected) == 31_362
        for pid in list(expected)[::997]:
            assert store.get(pid) == expected[pid]
        assert store.get("999999999") is None and "007" not in store and store.get("x") is None
        with pytest.raises(InputError, match="no passage with id 42424242"):
            store.texts(["42424242"])
    assert (tmp_path / ("collection.tsv" + OFFSETS_SUFFIX)).is_file()  # built once, then reused
    with PassageStore.open(collection) as again:
        pid = next(iter(expected))
        assert again.get(pid) == expected[pid]


def test_passage_store_rebuilds_after_an_edit_and_checks_every_line(tmp_path: Path) -> None:
    collection = tmp_path / "c.tsv"
    collection.write_bytes(b"\xef\xbb\xbfa\tfirst\nb\tsecond\r\n")
    with PassageStore.open(collection) as store:
        assert (store.get("a"), store.get("b")) == ("first", "second\r")  # as read_collection reads them
    collection.write_bytes(b"a\tfirst\nb\tsecond\nc\tthird")
    with PassageStore.open(collection) as store:
        assert store.get("c") == "third"  # the stale offsets were noticed and rebuilt
    collection.write_bytes(b"a\tfirst\nb\tsecond\na\tagain\n")
    with pytest.raises(FormatError, match=r"c\.tsv:3: duplicate id a \(also on line 1\)"):
        PassageStore.open(collection)
    collection.write_bytes(b"a\tfirst\nno tab\n")
    with pytest.raises(FormatError, match=r"c\.tsv:2: expected '<id><TAB><passage>'"):
        PassageStore.open(collection)


def test_bi_encoder_scorer_scores_pairs_like_the_embeddings(exported: dict[tuple[str, str], Path]) -> None:
    from fastmarco.model.encoder import Encoder
    from fastmarco.model.scorer import BiEncoderScorer

    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu")
    queries = ["how big is london", "how big is london", "bees"]
    passages = ["london is big", "goldfish", "bees make honey"]
    scores = BiEncoderScorer(encoder).score(queries, passages)
    q, p = encoder.encode(queries), encoder.encode(passages)
    np.testing.assert_allclose(scores, (q * p).sum(axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="pairs must match"):
        BiEncoderScorer(encoder).score(queries, passages[:2])


def test_tokenized_requests_concatenate_and_encode_like_encode(exported: dict[tuple[str, str], Path]) -> None:
    """The server's path: tokenize each request, concatenate, one encode_tokenized for all."""
    from fastmarco.model.encoder import Encoder, Tokenized

    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu", max_tokens=64)
    requests = [["how big is london"], ["bees make honey", "", "word " * 600], ["goldfish"]]
    parts = [encoder.tokenize(texts) for texts in requests]
    joined = Tokenized.concat(parts)
    flat = [text for texts in requests for text in texts]
    expected, stats = encoder.encode_with_stats(flat)
    assert len(joined) == 5 and joined.tokens == stats.tokens
    assert joined.truncated.tolist() == [False, False, False, True, False] and stats.truncated == 1
    np.testing.assert_allclose(encoder.encode_tokenized(joined), expected, atol=1e-5)
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        encoder.tokenize(["fine", 3])  # type: ignore[list-item]


def test_job_spec_hashes_the_corpus_once_and_travels_as_plain_data(
    exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    import pickle

    corpus = tmp_path / "c.tsv"
    corpus.write_text("1\tone\n2\ttwo\n")
    spec = JobSpec.create(exported["bert-mean-normalize", "fp32"], corpus, rows_per_shard=10)
    part = spec.part(LineRange(1, 6, 2))
    assert pickle.loads(pickle.dumps(part)) == part  # what a worker process or actor receives
    assert part.corpus_fingerprint == spec.corpus_fingerprint and part.metadata()["encode"]["lines"] == [1, 2]
    with pytest.raises(InputError, match="dtype must be"):
        JobSpec.create(exported["bert-mean-normalize", "fp32"], corpus, dtype="int8")  # type: ignore[arg-type]


def test_merge_copies_where_hard_links_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "part" / "vectors-00000.fms"
    source.parent.mkdir()
    source.write_bytes(b"shard bytes")

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    link_or_copy(source, tmp_path / "vectors-00000.fms")
    assert (tmp_path / "vectors-00000.fms").read_bytes() == b"shard bytes"
    assert not (tmp_path / "vectors-00000.fms.tmp").exists()


def test_engine_threads_budget_reaches_onnx_runtime_and_keeps_results(
    exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    from fastmarco.corpus.bundled import demo_corpus_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.engine import Engine
    from fastmarco.model.encoder import Encoder
    from fastmarco.search.index import build_index

    model = exported["bert-mean-normalize", "fp32"]
    encode_corpus(Encoder.open(model, device="cpu"), demo_corpus_path(), tmp_path / "s", rows_per_shard=16)
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    one = Engine.open(tmp_path / "i", device="cpu", threads=1)
    assert one.encoder.runtime == "onnxruntime"  # tests run on it unless they say (conftest)
    assert one.encoder.session.session.get_session_options().intra_op_num_threads == 1
    every = Engine.open(tmp_path / "i", device="cpu")
    a, b = one.search(["bees and honey"], 5), every.search(["bees and honey"], 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.rows, b.rows)
    with pytest.raises(InputError, match="threads must be"):
        Engine.open(tmp_path / "i", device="cpu", threads=-1)
