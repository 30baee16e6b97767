"""Every command, given bad input, prints one `Error:` line and exits non-zero: never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.store.shards import write_shards


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, exported: dict[tuple[str, str], Path]) -> dict[str, Path]:
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    from fastmarco.corpus.bundled import demo_corpus_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder
    from fastmarco.search.index import build_index

    root = tmp_path_factory.mktemp("cli-errors")
    model = exported["bert-mean-normalize", "fp32"]
    encode_corpus(Encoder.open(model, device="cpu"), demo_corpus_path(), root / "shards", rows_per_shard=16)
    build_index(root / "shards", root / "index", kind="flat")

    write_shards(root / "truncated", np.ones((10, 4)), range(10), rows_per_shard=4)
    shard = root / "truncated" / "vectors-00001.fms"
    shard.write_bytes(shard.read_bytes()[:-8])
    write_shards(root / "truncated-src", np.ones((10, 4)), range(10), rows_per_shard=4)
    build_index(root / "truncated-src", root / "truncated-index", kind="flat")
    shard = root / "truncated-src" / "vectors-00000.fms"
    shard.write_bytes(shard.read_bytes()[:-8])

    write_shards(root / "few", np.ones((10, 4)), range(10))
    write_shards(root / "bad-manifest", np.ones((10, 4)), range(10))
    (root / "bad-manifest" / "manifest.json").write_text(
        '{"format": "fastmarco-shards", "version": 1, "dim": '
    )
    build_index(root / "shards", root / "bad-index", kind="flat")
    (root / "bad-index" / "index.json").write_text('{"format": "fastmarco-index", "version": 2}')

    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "config.json").write_text("{}")
    (root / "bad.tsv").write_text("1\tfine\n2 no tab here\n")
    (root / "queries.tsv").write_text("1\thow big is london\n")
    (root / "qrels.txt").write_text("1 0 7 1\n")
    (root / "run.trec").write_text("1 Q0 7 1 2.5 x\n")
    (root / "bad-run.trec").write_text("1 Q0 7 1 2.5 x\n1 Q0 8 two 2.0 x\n")
    return {"model": model, **{p.name: p for p in root.iterdir()}, "missing": root / "missing"}


CASES: list[tuple[str, list[str], str]] = [
    # (case, argv with {placeholders}, expected part of the error)
    ("shards info: missing", ["shards", "info", "{missing}"], "does not exist"),
    ("shards info: bad manifest", ["shards", "info", "{bad-manifest}"], "invalid JSON"),
    ("export: missing", ["export", "{missing}", "--out", "{out}"], "not a model folder"),
    (
        "export: wrong model",
        ["export", "{not-a-model}", "--out", "{out}"],
        "model_type '' is not supported",
    ),
    (
        "encode: missing corpus",
        ["encode", "--model", "{model}", "--corpus", "{missing}", "--out", "{out}"],
        "corpus not found",
    ),
    (
        "encode: wrong model",
        ["encode", "--model", "{not-a-model}", "--corpus", "{bad.tsv}", "--out", "{out}"],
        "fastmarco.json: not found",
    ),
    (
        "encode: missing model",
        ["encode", "--model", "{missing}", "--corpus", "{bad.tsv}", "--out", "{out}"],
        "model directory not found",
    ),
    (
        "encode: bad line",
        ["encode", "--model", "{model}", "--corpus", "{bad.tsv}", "--out", "{out}", "--device", "cpu"],
        "bad.tsv:2: expected '<id><TAB><passage>', found no tab",
    ),
    (
        "encode: shard size 0",
        ["encode", "--model", "{model}", "--corpus", "demo", "--out", "{out}", "--shard-size", "0"],
        "0 is not in the range x>=1",
    ),
    (
        "encode: device and devices",
        [
            "encode",
            "--model",
            "{model}",
            "--corpus",
            "demo",
            "--out",
            "{missing}",
            "--device",
            "cpu",
            "--devices",
            "cpu,cpu",
        ],
        "exclude each other",
    ),
    ("index: missing", ["index", "{missing}", "--out", "{out}"], "does not exist"),
    ("index: truncated shard", ["index", "{truncated}", "--out", "{out}"], "is truncated"),
    ("index: bad manifest", ["index", "{bad-manifest}", "--out", "{out}"], "invalid JSON"),
    (
        "index: too few rows",
        ["index", "{truncated-src}", "--out", "{out}", "--kind", "pq"],
        "is truncated",
    ),
    ("query: missing", ["query", "{missing}", "x"], "does not exist"),
    ("query: bad manifest", ["query", "{bad-index}", "x"], "field 'kind' is missing"),
    ("query: truncated shard", ["query", "{truncated-index}", "x"], "is truncated"),
    ("query: not an index", ["query", "{shards}", "x"], "index.json: not found"),
    (
        "query: wrong model",
        ["query", "{index}", "x", "--model", "{not-a-model}"],
        "fastmarco.json: not found",
    ),
    (
        "query: bad line",
        ["query", "{index}", "--queries", "{bad.tsv}", "--run", "{out}", "--device", "cpu"],
        "bad.tsv:2: expected '<id><TAB><query>'",
    ),
    ("query: k 0", ["query", "{index}", "x", "-k", "0"], "0 is not in the range x>=1"),
    ("query: k negative", ["query", "{index}", "x", "-k", "-3"], "-3 is not in the range x>=1"),
    (
        "query: bad collection",
        ["query", "{index}", "x", "--collection", "{bad.tsv}", "--device", "cpu"],
        "bad.tsv:2: expected '<id><TAB><passage>'",
    ),
    ("serve: missing", ["serve", "{missing}"], "does not exist"),
    ("serve: bad manifest", ["serve", "{bad-index}"], "field 'kind' is missing"),
    ("serve: truncated shard", ["serve", "{truncated-index}"], "is truncated"),
    ("serve: not an index", ["serve", "{shards}"], "index.json: not found"),
    ("serve: wrong model", ["serve", "{index}", "--model", "{not-a-model}"], "fastmarco.json: not found"),
    (
        "serve: bad collection",
        ["serve", "{index}", "--collection", "{bad.tsv}", "--device", "cpu"],
        "bad.tsv:2: expected '<id><TAB><passage>'",
    ),
    ("serve: max-k 0", ["serve", "{index}", "--max-k", "0"], "0 is not in the range x>=1"),
    ("eval: missing", ["eval", "--qrels", "{missing}", "--run", "{run.trec}"], "does not exist"),
    (
        "eval: bad run line",
        ["eval", "--qrels", "{qrels.txt}", "--run", "{bad-run.trec}"],
        "bad-run.trec:2: rank 'two' is not an integer",
    ),
    (
        "eval: bad qrels line",
        ["eval", "--qrels", "{bad.tsv}", "--run", "{run.trec}"],
        "bad.tsv:1: expected 4 fields",
    ),
    (
        "bm25: missing",
        ["bm25", "--collection", "{missing}", "--queries", "{queries.tsv}", "--out", "{out}"],
        "does not exist",
    ),
    (
        "bm25: k 0",
        ["bm25", "--collection", "{bad.tsv}", "--queries", "{queries.tsv}", "--out", "{out}", "-k", "0"],
        "0 is not in the range x>=1",
    ),
    (
        "bm25: bad line",
        ["bm25", "--collection", "{bad.tsv}", "--queries", "{queries.tsv}", "--out", "{out}"],
        "bad.tsv:2: expected '<id><TAB><passage>'",
    ),
    (
        "rerank: wrong model",
        [
            "rerank",
            "--model",
            "{not-a-model}",
            "--run",
            "{run.trec}",
            "--queries",
            "{queries.tsv}",
            "--collection",
            "{bad.tsv}",
            "--out",
            "{missing}",
        ],
        "fastmarco.json: not found",
    ),
    (
        "rerank: bad run line",
        [
            "rerank",
            "--model",
            "{model}",
            "--run",
            "{bad-run.trec}",
            "--queries",
            "{queries.tsv}",
            "--collection",
            "{bad.tsv}",
            "--out",
            "{missing}",
            "--device",
            "cpu",
        ],
        "bad-run.trec:2: rank 'two'",
    ),
    (
        "rerank: bad collection line",
        [
            "rerank",
            "--model",
            "{model}",
            "--run",
            "{run.trec}",
            "--queries",
            "{queries.tsv}",
            "--collection",
            "{bad.tsv}",
            "--out",
            "{missing}",
            "--device",
            "cpu",
        ],
        "bad.tsv:2: expected '<id><TAB><passage>'",
    ),
    ("demo: rows 0", ["demo", "--synthetic", "--rows", "0"], "0 is not in the range x>=1"),
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(argv, expected) for _, argv, expected in CASES],
    ids=[case for case, _, _ in CASES],
)
def test_bad_input_gives_one_error_line_and_no_traceback(
    files: dict[str, Path], tmp_path: Path, argv: list[str], expected: str
) -> None:
    if argv[0] == "bm25":
        pytest.importorskip("bm25s", reason="needs the bm25 extra")
    places = {**files, "out": tmp_path / "out"}  # outputs go to a fresh path each time
    args = [str(places[arg[1:-1]]) if arg.startswith("{") else arg for arg in argv]
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert expected in result.output, result.output


def test_shards_info_reports_a_truncated_shard_without_a_traceback(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["shards", "info", str(files["truncated"])])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "checksums: 1 bad" in result.output and "is truncated" in result.output
