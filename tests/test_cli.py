from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco import __version__
from fastmarco.cli import main
from fastmarco.store.shards import write_shards


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"fastmarco, version {__version__}\n"


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastmarco", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fastmarco, version {__version__}"


def test_shards_info_reports_counts_and_checksums(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", np.ones((5, 3)), range(5), rows_per_shard=2, metadata={"model": "x"})
    result = CliRunner().invoke(main, ["shards", "info", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["rows"], info["shards"], info["dim"], info["dtype"]) == (5, 3, 3, "fp16")
    assert info["checksums"] == "ok" and info["complete"] and info["metadata"] == {"model": "x"}


def test_shards_info_flags_a_corrupt_shard(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", np.ones((5, 3)), range(5), rows_per_shard=2)
    with open(tmp_path / "s" / "vectors-00001.fms", "r+b") as handle:
        handle.seek(70)
        handle.write(b"\x01")
    result = CliRunner().invoke(main, ["shards", "info", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert "checksums: 1 bad" in result.output
    assert "BAD vectors-00001.fms" in result.output and "payload checksum mismatch" in result.output


def test_shards_info_on_a_non_shard_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["shards", "info", str(tmp_path)])
    assert result.exit_code == 1 and "not a fastmarco shard directory" in result.output


def test_demo_runs_and_checks_itself(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--synthetic", "--rows", "5000", "--queries", "20", "--out", str(tmp_path / "d")]
    )
    assert result.exit_code == 0, result.output
    assert "ranked first: 20/20; identical to NumPy brute force: yes" in result.output


def test_eval_reports_the_published_bm25_figure(mini: Path) -> None:
    result = CliRunner().invoke(
        main, ["eval", "--qrels", str(mini / "qrels.dl19.txt"), "--run", str(mini / "run.dl19.bm25.trec")]
    )
    assert result.exit_code == 0, result.output
    assert "43 judged, 43 in the run, 43 evaluated" in result.output
    assert "ndcg@10      0.5058" in result.output


def test_eval_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "qrels").write_text("1 0 a 1\n")
    (tmp_path / "run").write_text("1\ta\t1\n1\tb\ttwo\n")
    result = CliRunner().invoke(
        main, ["eval", "--qrels", str(tmp_path / "qrels"), "--run", str(tmp_path / "run")]
    )
    assert result.exit_code == 1 and f"{tmp_path / 'run'}:2: rank 'two' is not an integer" in result.output


def test_bm25_over_the_mini_collection(mini: Path, tmp_path: Path) -> None:
    pytest.importorskip("bm25s", reason="needs the bm25 extra")
    out = tmp_path / "bm25.trec"
    args = ["bm25", "--collection", str(mini / "collection.tsv"), "--queries", str(mini / "queries.dl19.tsv")]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "-k", "100"])
    assert result.exit_code == 0, result.output
    assert "for 43 queries" in result.output
    scored = CliRunner().invoke(
        main,
        [
            "eval",
            "--qrels",
            str(mini / "qrels.dl19.txt"),
            "--run",
            str(out),
            "--json",
            "--metrics",
            "ndcg@10",
        ],
    )
    ndcg = json.loads(scored.output)["metrics"]["ndcg@10"]
    assert ndcg == pytest.approx(0.4538, abs=0.002)  # a smaller corpus than Pyserini's 8.8M, so not 0.5058
