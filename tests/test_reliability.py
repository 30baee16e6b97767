"""No silent wrong answers: each case here returned wrong data with exit 0, or crashed, before."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from fastmarco._locks import output_lock
from fastmarco.encode.local import encode_corpus
from fastmarco.errors import (
    BusyError,
    EncodeMismatchError,
    FormatError,
    IndexMismatchError,
    ShardChecksumError,
    StoreIOError,
)
from fastmarco.eval.metrics import evaluate, rank_columns
from fastmarco.model.encoder import Encoder
from fastmarco.progress import Update
from fastmarco.store.formats import load_qrels, load_queries, read_collection, read_run_columns
from fastmarco.store.shards import ShardSet, write_shards


@pytest.fixture(scope="module")
def model(exported: dict[tuple[str, str], Path]) -> Path:
    return exported["bert-mean-normalize", "fp32"]


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0x01]))


def test_a_flipped_bit_in_indexed_shards_is_refused_at_build_and_open(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    from fastmarco.search.backends import VectorIndex
    from fastmarco.search.index import build_index

    rng = np.random.default_rng(0)
    write_shards(tmp_path / "s", rng.standard_normal((300, 8)), range(300), rows_per_shard=100)
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    flip_byte(tmp_path / "s" / "vectors-00001.fms", 64 + 500)
    with pytest.raises(ShardChecksumError, match=r"vectors-00001\.fms' payload checksum mismatch"):
        VectorIndex.open(tmp_path / "i")
    with pytest.raises(ShardChecksumError, match="payload checksum mismatch"):
        build_index(tmp_path / "s", tmp_path / "j", kind="flat")
    assert len(VectorIndex.open(tmp_path / "i", verify=False).shard_set) == 300  # the opt-out


def test_swapped_id_files_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    from fastmarco.search.backends import VectorIndex
    from fastmarco.search.index import build_index

    write_shards(tmp_path / "s", np.ones((200, 4)), range(200), rows_per_shard=100)
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    a, b = tmp_path / "s" / "ids-00000.npy", tmp_path / "s" / "ids-00001.npy"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    with pytest.raises(ShardChecksumError, match=r"ids-00000\.npy' hashes to"):
        VectorIndex.open(tmp_path / "i")
    # verify=False (query --no-verify) skips hashing the vectors only: the id files are always checked
    with pytest.raises(ShardChecksumError, match=r"ids-00000\.npy' hashes to"):
        VectorIndex.open(tmp_path / "i", verify=False)


def test_an_index_over_shards_with_other_checksums_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    import json

    from fastmarco.search.backends import VectorIndex
    from fastmarco.search.index import build_index

    write_shards(tmp_path / "s", np.ones((20, 4)), range(20))
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    body = json.loads((tmp_path / "i" / "index.json").read_text())
    body["shard_checksums"][0][0] = "0" * 16
    (tmp_path / "i" / "index.json").write_text(json.dumps(body))
    with pytest.raises(IndexMismatchError, match="built from shard files with other checksums"):
        VectorIndex.open(tmp_path / "i")


def test_an_id_beyond_int64_keeps_the_corpus_ids_as_strings(model: Path, tmp_path: Path) -> None:
    """Ids are never reinterpreted (fastmarco.corpus.ids): one that int64 cannot hold is still an id,
    and the whole corpus keeps its ids as the strings they are."""
    corpus = tmp_path / "c.tsv"
    corpus.write_text(f"1\tone\n{2**64}\ttoo big\n{2**63}\tjust too big\n3\tthree\n")
    summary = encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s")
    assert (summary.rows, summary.skipped) == (4, 0)
    assert ShardSet.open(tmp_path / "s").ids().tolist() == ["1", str(2**64), str(2**63), "3"]


def test_another_export_of_the_same_model_cannot_resume_or_query(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    from fastmarco.engine import Engine
    from fastmarco.model.export import export_model
    from fastmarco.search.index import build_index

    long = export_model(str(tiny["bert-mean-normalize"]), tmp_path / "m48")
    short = export_model(str(tiny["bert-mean-normalize"]), tmp_path / "m16", max_seq_length=16)
    assert long.fingerprint != short.fingerprint  # same graph and tokenizer bytes, other truncation
    corpus = tmp_path / "c.tsv"
    corpus.write_text("".join(f"{i}\tpassage number {i} " + "word " * 40 + "\n" for i in range(40)))

    def stop(update: Update) -> None:
        if int(update.detail["shards"]) >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_corpus(
            Encoder.open(tmp_path / "m48", device="cpu"),
            corpus,
            tmp_path / "s",
            rows_per_shard=10,
            progress=stop,
        )
    with pytest.raises(EncodeMismatchError, match="another model or export of it"):
        encode_corpus(Encoder.open(tmp_path / "m16", device="cpu"), corpus, tmp_path / "s", rows_per_shard=10)
    encode_corpus(Encoder.open(tmp_path / "m48", device="cpu"), corpus, tmp_path / "s", rows_per_shard=10)
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    with pytest.raises(IndexMismatchError, match="another model, or another export of it"):
        Engine.open(tmp_path / "i", model=tmp_path / "m16", device="cpu")


def test_a_byte_order_mark_is_stripped_everywhere(model: Path, tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(bom + b"7\tseven\n8\teight\n")
    encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s")
    assert ShardSet.open(tmp_path / "s").ids().tolist() == [7, 8]  # int ids, the first one 7
    assert next(iter(read_collection(corpus))) == ("7", "seven")
    (tmp_path / "q.tsv").write_bytes(bom + b"1\tquery\n")
    assert load_queries(tmp_path / "q.tsv") == {"1": "query"}
    (tmp_path / "qrels").write_bytes(bom + b"1 0 7 1\n2 0 8 1\n")
    (tmp_path / "run").write_bytes(bom + b"1 Q0 7 1 2.0 t\n2 Q0 7 1 2.0 t\n2 Q0 8 2 1.0 t\n")
    run = rank_columns(read_run_columns(tmp_path / "run"))
    assert list(run) == ["1", "2"]  # no phantom '\ufeff1' query
    assert evaluate(load_qrels(tmp_path / "qrels"), run, ["mrr@10"]).metrics["mrr@10"] == 0.75


def test_cr_only_line_endings_are_refused_naming_the_file_and_line(model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(b"".join(f"{i}\tpassage {i}\r".encode() for i in range(30)))
    with pytest.raises(FormatError, match=r"c\.tsv:1: carriage return .* CR line endings"):
        encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s")
    with pytest.raises(FormatError, match=r"c\.tsv:1: carriage return"):
        list(read_collection(corpus))
    corpus.write_bytes(b"".join(f"{i}\tpassage {i}\r\n".encode() for i in range(30)))  # CRLF still reads
    assert encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "t").rows == 30


def test_nan_scores_and_empty_qrels_are_errors(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("1 Q0 7 1 2.0 t\n1 Q0 8 2 nan t\n")
    with pytest.raises(FormatError, match=r"run:2: score 'nan' is not a finite number"):
        read_run_columns(tmp_path / "run")
    (tmp_path / "qrels").write_text("")
    with pytest.raises(FormatError, match=r"qrels:1: no judgements: the qrels file is empty"):
        load_qrels(tmp_path / "qrels")


def test_a_second_writer_into_the_same_output_is_refused_naming_the_holder(
    model: Path, tmp_path: Path
) -> None:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    from fastmarco.search.index import build_index

    corpus = tmp_path / "c.tsv"
    corpus.write_text("1\tone\n2\ttwo\n")
    with (
        output_lock(tmp_path / "s" / ".lock", "s"),
        pytest.raises(BusyError, match=rf"\(pid {os.getpid()}\)"),
    ):
        encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s")
    encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s")  # released: runs
    with output_lock(tmp_path / ".i.lock", "i"), pytest.raises(BusyError, match="is writing it"):
        build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    assert (tmp_path / "s" / ".lock").read_bytes() == b""  # idle lock files are empty


def test_a_full_disk_during_encode_says_so_and_how_to_resume(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastmarco.store.shards import ShardWriter

    corpus = tmp_path / "c.tsv"
    corpus.write_text("".join(f"{i}\tpassage {i}\n" for i in range(50)))
    real_add = ShardWriter.add

    def add(self: ShardWriter, *args: object, **kwargs: object) -> None:
        if self.manifest.shards:  # the second shard hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardWriter, "add", add)
    with pytest.raises(StoreIOError, match=r"disk full .* rerun the same command to resume"):
        encode_corpus(
            Encoder.open(model, device="cpu"), corpus, tmp_path / "s", rows_per_shard=20, chunk_rows=20
        )
    monkeypatch.undo()
    summary = encode_corpus(
        Encoder.open(model, device="cpu"), corpus, tmp_path / "s", rows_per_shard=20, chunk_rows=20
    )
    assert (summary.rows, summary.resumed_at_row) == (50, 20)
