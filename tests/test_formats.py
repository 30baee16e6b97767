from __future__ import annotations

from pathlib import Path

import pytest

from fastmarco.store.formats import (
    FormatError,
    RunEntry,
    load_qrels,
    load_queries,
    load_run,
    read_collection,
    read_qrels,
    read_run,
    read_run_columns,
    write_id_text,
    write_run,
)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_collection_round_trips_bytes_exactly(tmp_path: Path) -> None:
    data = "1\tCafÃ© au lait  with  spaces\t and a tab\n22\tline two\u00e9\n".encode()
    source = write(tmp_path, "c.tsv", data)
    pairs = list(read_collection(source))
    assert pairs == [("1", "CafÃ© au lait  with  spaces\t and a tab"), ("22", "line two\u00e9")]
    assert write_id_text(tmp_path / "out.tsv", pairs) == 2
    assert (tmp_path / "out.tsv").read_bytes() == data


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    assert list(read_collection(write(tmp_path, "c.tsv", b"1\ta\n2\tb"))) == [("1", "a"), ("2", "b")]


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        (b"1\tok\n2 no tab here\n", 2, "found no tab"),
        (b"1\tok\n2\t   \n", 2, "empty passage for id 2"),
        (b"1\tok\n\n", 2, "found no tab"),
        (b"1\tok\n3\tbad \xff byte\n", 2, "invalid UTF-8 at byte 6"),
        (b"\tno id\n", 1, "empty or space-padded id"),
    ],
)
def test_malformed_collection_lines_name_file_and_line(
    tmp_path: Path, data: bytes, line: int, message: str
) -> None:
    path = write(tmp_path, "c.tsv", data)
    with pytest.raises(FormatError, match=message) as info:
        list(read_collection(path))
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert info.value.line == line


def test_duplicate_query_id_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"q\.tsv:2: duplicate query id 7"):
        load_queries(write(tmp_path, "q.tsv", b"7\ta\n7\tb\n"))


def test_qrels_both_forms(tmp_path: Path) -> None:
    trec = write(tmp_path, "trec.txt", b"19335 Q0 1017759 0\n19335 Q0 109063 3\n")
    marco = write(tmp_path, "marco.tsv", b"300674\t0\t7067032\t1\n")
    assert load_qrels(trec) == {"19335": {"1017759": 0, "109063": 3}}
    assert load_qrels(marco) == {"300674": {"7067032": 1}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"1 Q0 2 1\n1 Q0 3\n", r":2: expected 4 fields"),
        (b"1 Q0 2 1\n1 Q0 3 high\n", r":2: grade 'high' is not an integer"),
        (b"1 Q0 2 1\n1 Q0 2 2\n", r":2: query 1 passage 2 judged 1 before, now 2"),
    ],
)
def test_malformed_qrels(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        load_qrels(write(tmp_path, "qrels", data))


def test_runs_both_formats_round_trip(tmp_path: Path) -> None:
    entries = [RunEntry("1", "10", 1, 2.5), RunEntry("1", "11", 2, 1.25), RunEntry("2", "10", 1, -0.5)]
    write_run(tmp_path / "run.trec", entries, "trec", tag="mine")
    assert list(read_run(tmp_path / "run.trec")) == entries
    assert (tmp_path / "run.trec").read_text().splitlines()[0] == "1 Q0 10 1 2.5 mine"
    write_run(tmp_path / "run.tsv", entries, "msmarco")
    assert list(read_run(tmp_path / "run.tsv")) == [e._replace(score=None) for e in entries]
    assert [e.pid for e in load_run(tmp_path / "run.tsv")["1"]] == ["10", "11"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"1\t10\t1\n1\t11\tsecond\n", r":2: rank 'second' is not an integer"),
        (b"1\t10\t1\n1\t11\n", r":2: expected 3 fields of a msmarco run, found 2"),
        (b"1 Q0 10 1 2.0 t\n1 Q0 11 x 1.0 t\n", r":2: rank 'x' is not an integer"),
        (b"1 Q0 10 1 2.0 t\n1 Q0 11 2 big t\n", r":2: score 'big' is not a number"),
        (b"just words\n", r":1: not a run file"),
        (b"", r":1: empty run file"),
    ],
)
def test_malformed_runs(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        list(read_run(write(tmp_path, "run", data)))


def test_trec_run_needs_scores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no score"):
        write_run(tmp_path / "r", [RunEntry("1", "2", 1, None)], "trec")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.tmp").exists()


def test_real_collection_round_trips_byte_for_byte(mini: Path, tmp_path: Path) -> None:
    source = mini / "collection.tsv"
    count = write_id_text(tmp_path / "copy.tsv", read_collection(source))
    assert count == 31_362
    assert (tmp_path / "copy.tsv").read_bytes() == source.read_bytes()


def test_real_qrels_queries_and_run(mini: Path) -> None:
    qrels = load_qrels(mini / "qrels.dl19.txt")
    assert len(qrels) == 43 and sum(map(len, qrels.values())) == 9_260
    assert sum(1 for _ in read_qrels(mini / "qrels.dev.small.tsv")) == 7_437
    assert len(load_queries(mini / "queries.dev.small.tsv")) == 6_980
    run = load_run(mini / "run.dl19.bm25.trec")
    assert set(run) == set(load_queries(mini / "queries.dl19.tsv")) and all(
        len(v) == 100 for v in run.values()
    )


@pytest.mark.parametrize("run_format", ["msmarco", "trec"])
@pytest.mark.parametrize("block_bytes", [5, 64, 1 << 20])
def test_columnar_reader_equals_the_line_reader(tmp_path: Path, run_format: str, block_bytes: int) -> None:
    entries = [
        RunEntry(str(q), f"p{q}x{r}", r, float(q * 10 - r) / 3) for q in range(1, 9) for r in range(1, 14)
    ]
    path = tmp_path / "run"
    write_run(path, entries, run_format)  # type: ignore[arg-type]
    columns = read_run_columns(path, block_bytes=block_bytes)
    expected = list(read_run(path))
    assert columns.qids.tolist() == [e.qid for e in expected]
    assert columns.pids.tolist() == [e.pid for e in expected]
    assert columns.ranks.tolist() == [e.rank for e in expected]
    if run_format == "trec":
        assert columns.scores is not None and columns.scores.tolist() == [e.score for e in expected]
    else:
        assert columns.scores is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"1\t10\t1\n1\t11\t2\t9\n1\t12\t3\n", r":2: expected 3 fields of a msmarco run, found 4"),
        (b"1\t10\t1\n1\t11\t2x\n", r":2: rank '2x' is not an integer"),
        (b"1 Q0 10 1 2.0 t\n1 Q0 11 2 1.0\n1 Q0 11 2 1.0 t x\n", r":2: expected 6 fields"),
        (b"1\t10\t1\n1\t\xff\t2\n", r":2: invalid UTF-8"),
    ],
)
def test_columnar_reader_names_the_bad_line(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        read_run_columns(write(tmp_path, "run", data))


def test_columnar_reader_accepts_what_the_line_reader_accepts(tmp_path: Path) -> None:
    # str.split() also splits on a non-breaking space; the byte-level fast path does not, so it falls back
    path = write(tmp_path, "run", "1 Q0 a 1 2.5\u00a0t\n".encode() + b"1 Q0 b 2 1.5 t\n")
    columns = read_run_columns(path)
    assert columns.pids.tolist() == [e.pid for e in read_run(path)] == ["a", "b"]
    assert columns.scores is not None and columns.scores.tolist() == [2.5, 1.5]
