"""Reliability, round 3: each test reproduces a case a hostile probe found (or a stricter one)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco._atomic import OUTPUT_MARKER
from fastmarco.cli import main
from fastmarco.errors import InputError, OutputExistsError, StoreIOError
from fastmarco.search.index import build_index
from fastmarco.store.passages import PassageStore
from fastmarco.store.shards import ShardSet, ShardWriter, write_shards

needs_faiss = pytest.mark.skipif(
    importlib.util.find_spec("faiss") is None, reason="needs faiss (the cpu extra)"
)


def shards(path: Path, rows: int = 200) -> Path:
    write_shards(path, np.random.default_rng(0).standard_normal((rows, 8)), range(rows), rows_per_shard=100)
    return path


def listing(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the empty lock files a writer leaves beside its output."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# 1. --overwrite replaces only a folder the same verb wrote, never its inputs, never other files


@needs_faiss
def test_index_overwrite_never_replaces_the_shards_it_reads(tmp_path: Path) -> None:
    inner = shards(tmp_path / "work" / "shards")
    (tmp_path / "work" / "notes.txt").write_text("mine")
    before = listing(tmp_path / "work")
    for out in (inner, tmp_path / "work"):  # W == S, and W holding S
        command = ["index", str(inner), "--out", str(out), "--overwrite", "--kind", "flat"]
        ran = CliRunner().invoke(main, command)
        assert ran.exit_code == 1, ran.output
        assert "holds this command's own input" in ran.output and "Traceback" not in ran.output
    assert listing(tmp_path / "work") == before
    assert len(ShardSet.open(inner)) == 200


@needs_faiss
def test_overwrite_refuses_a_folder_fastmarco_did_not_write(tmp_path: Path) -> None:
    source = shards(tmp_path / "s")
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OutputExistsError, match=r"not a folder fastmarco index wrote \(it holds cat\.jpg\)"):
        build_index(source, user, kind="flat", overwrite=True)
    assert (user / "cat.jpg").read_bytes() == b"\xff\xd8"


@needs_faiss
def test_overwrite_replaces_an_earlier_index_but_not_files_added_to_it(tmp_path: Path) -> None:
    source = shards(tmp_path / "s")
    out = tmp_path / "i"
    build_index(source, out, kind="flat")
    assert (out / OUTPUT_MARKER).is_file()
    build_index(source, out, kind="binary", overwrite=True)  # same verb: replaced
    assert "BFlat" in (out / "index.json").read_text()
    (out / "results.tsv").write_text("a run I kept here")
    with pytest.raises(OutputExistsError, match=r"did not write \(results\.tsv\)"):
        build_index(source, out, kind="flat", overwrite=True)
    assert (out / "results.tsv").read_text() == "a run I kept here"


@needs_faiss
def test_overwrite_refuses_another_verbs_output(tmp_path: Path) -> None:
    from fastmarco.model.export import export_model

    source = shards(tmp_path / "s")
    build_index(source, tmp_path / "i", kind="flat")
    with pytest.raises(OutputExistsError, match="written by fastmarco index, not export"):
        export_model(str(tmp_path / "no-model-needed"), tmp_path / "i", overwrite=True)
    assert (tmp_path / "i" / "index.json").is_file()


@needs_faiss
def test_an_empty_folder_may_be_replaced(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    build_index(shards(tmp_path / "s"), tmp_path / "i", kind="flat", overwrite=True)
    assert (tmp_path / "i" / "index.json").is_file()


# 3. the shard writer refuses a repeated id, within a call and across calls (and after a resume)


@pytest.mark.parametrize(
    ("id_type", "first", "second", "message"),
    [
        ("int", [5, 5], None, "id 5 of row 1 was already added"),
        ("int", [1, 2, 3], [4, 2], "id 2 of row 4 was already added"),
        ("int", [-7, 2**40], [2**40], f"id {2**40} of row 2 was already added"),  # beyond the bitmap
        ("str", ["a", "b"], ["c", "a"], "id 'a' of row 3 was already added"),
    ],
)
def test_the_writer_refuses_a_repeated_id(
    tmp_path: Path, id_type: str, first: list, second: list | None, message: str
) -> None:
    writer = ShardWriter(tmp_path / "s", dim=4, id_type=id_type, rows_per_shard=2)  # type: ignore[arg-type]
    vectors = np.ones((len(first), 4), dtype=np.float32)
    if second is None:
        with pytest.raises(InputError, match=message):
            writer.add(vectors, first)
        return
    writer.add(vectors, first)
    with pytest.raises(InputError, match=message):
        writer.add(np.ones((len(second), 4), dtype=np.float32), second)


def test_a_resumed_writer_still_refuses_the_ids_written_before(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "s", dim=4, rows_per_shard=2)
    writer.add(np.ones((3, 4), dtype=np.float32), [10, 11, 12])  # one shard finished, one in flight
    writer.abort()
    resumed = ShardWriter.resume(tmp_path / "s")
    with pytest.raises(InputError, match="id 11 of row 2 was already added"):
        resumed.add(np.ones((1, 4), dtype=np.float32), [11])
    resumed.add(np.ones((1, 4), dtype=np.float32), [12])  # the unfinished shard's id was never written
    assert ShardSet.open(tmp_path / "s", allow_incomplete=True).ids().tolist() == [10, 11]


# 2. the passage store never returns another pid's text when the collection changes under it


def swap_lines_keeping_size_and_mtime(path: Path, a: int, b: int) -> None:
    info = path.stat()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[a], lines[b] = lines[b], lines[a]
    path.write_bytes(b"".join(lines))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # as cp -p, rsync -t or tar put it back
    assert path.stat().st_size == info.st_size and path.stat().st_mtime_ns == info.st_mtime_ns


def test_swapped_lines_of_the_same_size_never_show_another_pids_text(tmp_path: Path) -> None:
    collection = tmp_path / "collection.tsv"
    collection.write_text("0\tpassage zero\n1\tpassage one\n421\tpassage 42\n")  # lines 1 and 3: 15 bytes
    serving = PassageStore.open(collection)  # open before the change, as a running server is
    assert serving.get("0") == "passage zero"
    swap_lines_keeping_size_and_mtime(collection, 0, 2)  # same length: pid 0's offset now holds 421
    assert serving.get("0") == "passage zero" and serving.get("421") == "passage 42"
    with PassageStore.open(collection) as fresh:  # the stale offsets file is not trusted either
        texts = fresh.texts(["0", "1", "421"])
    assert texts == {"0": "passage zero", "1": "passage one", "421": "passage 42"}
    serving.close()


def test_a_collection_changed_to_lack_a_pid_says_so(tmp_path: Path) -> None:
    collection = tmp_path / "collection.tsv"
    collection.write_text("0\tpassage zero\n1\tpassage one\n")
    with PassageStore.open(collection) as store:
        collection.write_text("5\tpassage fiv\n1\tpassage one\n")  # same size, pid 0 replaced
        assert store.get("0") is None and store.get("5") == "passage fiv"
        collection.unlink()
        with pytest.raises(StoreIOError, match="the collection is gone"):
            store.get("1")


# 12. a huge k is capped at the rows there are (said so on the command line), never terabytes allocated


@needs_faiss
@pytest.mark.parametrize("k", [10**12, 99999999999999999999])
def test_a_huge_k_is_capped_at_the_index_rows(tmp_path: Path, k: int) -> None:
    from fastmarco.search.backends import VectorIndex

    source = shards(tmp_path / "s")
    build_index(source, tmp_path / "i", kind="flat")
    result = VectorIndex.open(tmp_path / "i").search(np.ones((2, 8), dtype=np.float32), k)
    assert result.scores.shape == result.rows.shape == result.ids.shape == (2, 200)
    assert sorted(result.ids[0].tolist()) == list(range(200))


def test_the_command_line_says_a_k_was_capped(exported: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder

    corpus = tmp_path / "collection.tsv"
    corpus.write_text("".join(f"{i}\tpassage number {i} about goldfish\n" for i in range(30)))
    encode_corpus(Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu"), corpus, tmp_path / "s")
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    ran = CliRunner().invoke(main, ["query", str(tmp_path / "i"), "goldfish", "-k", str(10**12), "--json"])
    assert ran.exit_code == 0, ran.output
    assert f"-k {10**12:,} is more than the index's 30 rows" in ran.stderr
    assert len(json.loads(ran.stdout)) == 30


def test_an_index_of_an_empty_corpus_says_so(tmp_path: Path) -> None:
    from fastmarco.search.backends import VectorIndex

    with ShardWriter(tmp_path / "s", dim=8):
        pass
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    with pytest.raises(InputError, match="the index holds no rows"):
        VectorIndex.open(tmp_path / "i").search(np.ones((1, 8), dtype=np.float32), 10)


# 10. a lone surrogate is an input error naming the text, not a TypeError from the tokenizer


def test_a_lone_surrogate_is_an_input_error(exported: dict[tuple[str, str], Path]) -> None:
    from fastmarco.model.encoder import Encoder

    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu")
    with pytest.raises(InputError, match=r"texts\[1\] is not valid Unicode: a lone surrogate \('\\ud800'\)"):
        encoder.encode(["fine", "\ud800abc"])


# 16. two byte order marks: the second is a file:line error, never part of an id


@pytest.mark.parametrize(
    ("name", "content", "read"),
    [
        ("collection.tsv", b"1\tone\n2\ttwo\n", "collection"),
        ("queries.tsv", b"1\tone\n", "queries"),
        ("qrels.txt", b"1 0 7 1\n", "qrels"),
        ("run.trec", b"1 Q0 7 1 2.0 t\n", "run"),
    ],
)
def test_a_second_byte_order_mark_is_a_line_error(
    tmp_path: Path, name: str, content: bytes, read: str
) -> None:
    from fastmarco.errors import FormatError
    from fastmarco.store.formats import load_qrels, load_queries, read_collection, read_run_columns

    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" * 2 + content)
    readers = {
        "collection": lambda: list(read_collection(path)),
        "queries": lambda: load_queries(path),
        "qrels": lambda: load_qrels(path),
        "run": lambda: read_run_columns(path),
    }
    with pytest.raises(FormatError, match=rf"{name}:1: .*byte order mark \(U\+FEFF\)"):
        readers[read]()


# 17. precise messages: a run sharing no query with the qrels, shards whose manifest.json is missing


def test_eval_of_a_run_sharing_no_query_with_the_qrels_fails_saying_so(tmp_path: Path) -> None:
    (tmp_path / "qrels").write_text("1 0 7 1\n2 0 8 1\n")
    (tmp_path / "run").write_text("9 Q0 7 1 2.0 t\n")
    command = ["eval", "--qrels", str(tmp_path / "qrels"), "--run", str(tmp_path / "run")]
    ran = CliRunner().invoke(main, command)
    assert ran.exit_code == 1 and "none of its 1 queries (e.g. 9) is judged" in ran.output, ran.output


@needs_faiss
def test_shards_missing_their_manifest_are_named_so(tmp_path: Path) -> None:
    from fastmarco.errors import IndexMismatchError
    from fastmarco.search.backends import VectorIndex

    build_index(shards(tmp_path / "s"), tmp_path / "i", kind="flat")
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(IndexMismatchError, match=r"has no readable manifest\.json"):
        VectorIndex.open(tmp_path / "i")


# 14. BM25: a collection of stopwords only is a named error; queries that retrieve nothing are listed


def test_bm25_over_stopwords_only_and_queries_that_match_nothing(tmp_path: Path) -> None:
    pytest.importorskip("bm25s", reason="needs the bm25 extra")
    (tmp_path / "q.tsv").write_text("1\tgoldfish growth\n2\tthe of and\n3\tzebra\n")

    def bm25(collection: str) -> Any:
        (tmp_path / "c.tsv").write_text(collection)
        command = ["bm25", "--collection", str(tmp_path / "c.tsv"), "--queries", str(tmp_path / "q.tsv")]
        return CliRunner().invoke(main, [*command, "--out", str(tmp_path / "r")])

    stop = bm25("1\tthe and of\n2\tis it a\n")
    assert stop.exit_code == 1 and "none of its 2 passages has a word left" in stop.output, stop.output
    ran = bm25("1\tgoldfish grow as large as their tank\n2\tcats sleep all day\n")
    assert ran.exit_code == 0, ran.output
    assert "note: 2 queries retrieved nothing" in ran.stderr and ran.stderr.rstrip().endswith(": 2, 3")
    assert {line.split()[0] for line in (tmp_path / "r").read_text().splitlines()} == {"1"}


# 15. a 10 MB line is cut before tokenizing (it cost 1.75 GB and 19 s), to the same tokens


def test_a_huge_text_is_cut_before_tokenizing_to_the_same_embedding(
    exported: dict[tuple[str, str], Path],
) -> None:
    from fastmarco.model.encoder import Encoder
    from fastmarco.model.runtime import CHARS_PER_TOKEN_BOUND

    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu")
    huge = "goldfish grow to the size of their tank " * 250_000  # 10 MB
    bound = encoder.model.max_seq_length * CHARS_PER_TOKEN_BOUND
    assert encoder.max_chars == bound < len(huge)
    vectors, stats = encoder.encode_with_stats([huge, huge[: bound // 4]])
    assert stats.truncated == 2  # both reach max_seq_length tokens; the huge one is also cut
    np.testing.assert_array_equal(vectors[0], vectors[1])  # the same first max_seq_length tokens
    assert encoder.tokenize([huge]).lengths[0] == encoder.model.max_seq_length
