from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastmarco.eval.metrics import evaluate, rank_entries
from fastmarco.store.formats import RunEntry, load_qrels, read_run

pytrec_eval = pytest.importorskip("pytrec_eval", reason="needs pytrec-eval-terrier (the dev extra)")

TREC_METRICS = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "recall@10": "recall_10", "map": "map"}


def pytrec(qrels: dict, entries: list[RunEntry], relevance_level: int) -> dict[str, float]:
    run: dict[str, dict[str, float]] = {}
    for e in entries:
        run.setdefault(e.qid, {})[e.pid] = float(e.score)  # type: ignore[arg-type]
    measures = {"ndcg_cut.10", "recall.10", "recall.100", "map"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=relevance_level).evaluate(run)
    return {
        ours: float(np.mean([m[theirs] for m in per_query.values()])) for ours, theirs in TREC_METRICS.items()
    }


def random_case(seed: int) -> tuple[dict, list[RunEntry]]:
    rng = np.random.default_rng(seed)
    qrels: dict[str, dict[str, int]] = {}
    entries = []
    for q in range(30):
        qid = str(1000 + q)
        pool = [f"p{rng.integers(0, 400)}" for _ in range(60)]
        if q % 7 != 3:  # some queries are in the run but not judged
            qrels[qid] = {pid: int(rng.integers(-1, 4)) for pid in pool[: rng.integers(1, 40)]}
        if q % 11 != 5:  # some judged queries are missing from the run
            ranked = list(dict.fromkeys(pool))[: rng.integers(5, 50)]
            scores = rng.integers(0, 8, size=len(ranked)).astype(float)  # many exact ties
            entries += [RunEntry(qid, pid, 0, s) for pid, s in zip(ranked, scores, strict=True)]
    return qrels, entries


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("relevance_level", [1, 2])
def test_trec_metrics_agree_with_pytrec_eval_on_random_runs(seed: int, relevance_level: int) -> None:
    qrels, entries = random_case(seed)
    ours = evaluate(qrels, rank_entries(entries), list(TREC_METRICS), relevance_level=relevance_level)
    for metric, value in pytrec(qrels, entries, relevance_level).items():
        assert ours.metrics[metric] == pytest.approx(value, abs=1e-4), metric


def test_dl19_bm25_run_agrees_with_pytrec_eval_and_pyserini(mini: Path) -> None:
    qrels = load_qrels(mini / "qrels.dl19.txt")
    entries = list(read_run(mini / "run.dl19.bm25.trec"))
    ours = evaluate(qrels, rank_entries(entries), list(TREC_METRICS), relevance_level=2)
    theirs = pytrec(qrels, entries, 2)
    for metric in ("recall@100", "recall@10", "map"):
        assert ours.metrics[metric] == pytest.approx(theirs[metric], abs=1e-4)
    graded = evaluate(qrels, rank_entries(entries), ["ndcg@10"])
    assert graded.metrics["ndcg@10"] == pytest.approx(pytrec(qrels, entries, 1)["ndcg@10"], abs=1e-4)
    assert round(graded.metrics["ndcg@10"], 4) == 0.5058  # Pyserini's published figure
    assert graded.queries_evaluated == 43


def mrr(qrels: dict, rows: list[tuple[str, str, int]], **options: bool) -> float:
    run = rank_entries(RunEntry(q, p, r, None) for q, p, r in rows)
    return evaluate(qrels, run, ["mrr@10"], **options).metrics["mrr@10"]


def test_mrr_official_definition_edge_cases() -> None:
    qrels = {"1": {"a": 1}, "2": {"b": 1, "c": 1}, "3": {"d": 1}, "4": {"e": 1}}
    rows = [
        ("1", "x", 1),
        ("1", "a", 3),  # first relevant at rank 3 -> 1/3
        ("2", "c", 2),
        ("2", "b", 5),
        ("2", "y", 1),  # first relevant at rank 2 -> 1/2
        *(("3", f"n{i}", i) for i in range(1, 11)),
        ("3", "d", 11),  # relevant only at rank 11 -> 0
        # query 4 is missing from the run -> 0, but still counts in the denominator
        ("9", "a", 1),  # a query without judgements is ignored
    ]
    assert mrr(qrels, rows) == pytest.approx((1 / 3 + 1 / 2 + 0 + 0) / 4)


def test_mrr_uses_the_rank_column_not_file_order() -> None:
    assert mrr({"1": {"a": 1}}, [("1", "a", 2), ("1", "b", 1)]) == pytest.approx(0.5)


def test_mrr_with_no_relevant_passage_anywhere_is_zero() -> None:
    assert mrr({"1": {"a": 1}}, [("1", "x", 1), ("1", "y", 2)]) == 0.0


def test_rank_gaps_keep_positions_and_repeated_ranks_are_refused() -> None:
    assert mrr({"1": {"a": 1}}, [("1", "x", 1), ("1", "a", 3)]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="query 1 has rank 1 twice"):
        mrr({"1": {"a": 1}}, [("1", "x", 1), ("1", "a", 1)])
    with pytest.raises(ValueError, match="ranks start at 1"):
        mrr({"1": {"a": 1}}, [("1", "x", 0)])


def test_duplicate_passage_in_a_query_is_refused() -> None:
    with pytest.raises(ValueError, match="query 1 ranks passage a more than once"):
        mrr({"1": {"a": 1}}, [("1", "a", 1), ("1", "a", 2)])


def test_include_missing_counts_unrun_queries_as_zero() -> None:
    qrels = {"1": {"a": 2}, "2": {"b": 2}}
    run = {"1": ["a"]}
    assert evaluate(qrels, run, ["ndcg@10"]).metrics["ndcg@10"] == 1.0
    full = evaluate(qrels, run, ["ndcg@10"], include_missing=True)
    assert full.metrics["ndcg@10"] == 0.5 and full.queries_evaluated == 2


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric 'p@5'"):
        evaluate({}, {}, ["p@5"])
