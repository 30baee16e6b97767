"""Comparing runs (significance tests, corrections) and fusing them, checked against ranx on real
TREC-DL 2019 judgements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.errors import InputError
from fastmarco.eval.compare import compare_runs, render
from fastmarco.eval.fusion import NamedRun, fuse
from fastmarco.eval.metrics import rank_entries
from fastmarco.eval.significance import corrected, fisher_randomization, paired_t
from fastmarco.store.formats import (
    RunEntry,
    columns_from_entries,
    load_qrels,
    load_run,
    read_run_columns,
    write_run,
)

ranx = pytest.importorskip("ranx", reason="needs ranx (the dev extra)")
pytest.importorskip("numba", reason="needs numba (the experiment extra)")
# ranx's own numba kernels warn while compiling (an unsafe uint64 cast in its nDCG): theirs, not ours.
# numba may wrap the message in terminal colour codes (with the docs extra's packages installed), so
# the pattern allows a prefix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*unsafe cast from uint64 to int64:numba.core.errors.NumbaTypeSafetyWarning"
)


def _rescored(run: dict[str, list[RunEntry]], score, seed: int) -> list[RunEntry]:
    """The same candidates per query, scored by `score(qid, pid, rng)`: distinct scores, best first."""
    rng = np.random.default_rng(seed)
    entries = []
    for qid, candidates in run.items():
        scored = sorted(((score(qid, e.pid, rng), e.pid) for e in candidates), reverse=True)
        entries += [RunEntry(qid, pid, rank, value) for rank, (value, pid) in enumerate(scored, 1)]
    return entries


@pytest.fixture(scope="module")
def systems(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """DL19 qrels and three runs over the BM25 candidates: BM25's own order (rescored without ties), a
    judgement-informed one (better), and noise (worse); written to disk too."""
    qrels = load_qrels(mini / "qrels.dl19.txt")
    bm25 = load_run(mini / "run.dl19.bm25.trec")
    runs = {
        "bm25": _rescored(bm25, lambda q, p, rng: -next(e.rank for e in bm25[q] if e.pid == p), 0),
        "oracle": _rescored(bm25, lambda q, p, rng: qrels[q].get(p, 0) + rng.normal(0, 1.2), 1),
        "noise": _rescored(bm25, lambda q, p, rng: rng.random(), 2),
    }
    folder = tmp_path_factory.mktemp("runs")
    paths = {}
    for name, entries in runs.items():
        paths[name] = folder / f"{name}.trec"
        write_run(paths[name], entries, "trec", tag=name)
    return {"qrels": qrels, "runs": runs, "paths": paths, "mini": mini}


def _ranx_run(entries: list[RunEntry], name: str):
    run: dict[str, dict[str, float]] = {}
    for e in entries:
        run.setdefault(e.qid, {})[e.pid] = float(e.score)
    return ranx.Run(run, name=name)


def test_paired_t_and_fisher_match_ranx(systems: dict) -> None:
    qrels = systems["qrels"]
    ranked = {name: rank_entries(entries) for name, entries in systems["runs"].items()}
    ours = compare_runs(
        qrels, ranked, ["ndcg@10", "map"], pairwise=True, correction="none", relevance_level=2
    )
    ranx_runs = [_ranx_run(entries, name) for name, entries in systems["runs"].items()]
    ranx_qrels = ranx.Qrels({q: dict(j) for q, j in qrels.items()})
    report = ranx.compare(ranx_qrels, ranx_runs, ["ndcg@10"], stat_test="student", max_p=0.05)
    for pair in (p for p in ours.pairs if p.metric == "ndcg@10"):
        theirs = report.comparisons[pair.control, pair.treatment]["ndcg@10"]["p_value"]
        assert pair.p_value == pytest.approx(theirs, abs=1e-6), (pair.control, pair.treatment)
    assert ours.means["oracle"]["ndcg@10"] == pytest.approx(report.results["oracle"]["ndcg@10"], abs=1e-9)

    # Fisher at 10,000 permutations: within Monte-Carlo error (each p has sd <= 0.005; allow 5 sd of the
    # difference) of ranx on the same per-query vectors, for a clear and a borderline difference
    from ranx.statistical_tests import fisher_randomization_test

    vectors = {n: np.array(v["ndcg@10"]) for n, v in ours.per_query.items()}
    for a, b in (("bm25", "oracle"), ("bm25", "noise")):
        mine = fisher_randomization(vectors[a], vectors[b], 10_000, seed=7)
        theirs, _ = fisher_randomization_test(vectors[a], vectors[b], 10_000, 0.05, 7)
        assert mine == pytest.approx(theirs, abs=0.035), (a, b)
        assert mine == fisher_randomization(vectors[a], vectors[b], 10_000, seed=7)  # seeded: repeatable
    assert paired_t(vectors["bm25"], vectors["bm25"]) == 1.0


def test_corrections() -> None:
    assert corrected([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert corrected([0.01, 0.04, 0.5], "bonferroni") == pytest.approx([0.03, 0.12, 1.0])
    assert corrected([0.2, 0.01], "none") == [0.2, 0.01]


@pytest.mark.parametrize(
    ("method", "norm", "ranx_norm"),
    [("rrf", "none", None), ("wsum", "min-max", "min-max"), ("wsum", "zscore", "zmuv")],
)
def test_fusion_matches_ranx(systems: dict, method: str, norm: str, ranx_norm: str | None) -> None:
    names = ("bm25", "oracle", "noise")
    runs = [NamedRun(n, columns_from_entries(systems["runs"][n])) for n in names]
    weights = [1.0, 0.5, 0.25] if method == "wsum" else None
    ours = fuse(runs, method=method, norm=norm, weights=weights, depth=10_000)  # type: ignore[arg-type]
    params = {"k": 60} if method == "rrf" else {"weights": weights}
    theirs = ranx.fuse(
        [_ranx_run(systems["runs"][n], n) for n in names], norm=ranx_norm, method=method, params=params
    )
    by_query: dict[str, list[RunEntry]] = {}
    for entry in ours:
        by_query.setdefault(entry.qid, []).append(entry)
    assert set(by_query) == set(theirs.run)
    for qid, entries in by_query.items():
        ours_scores = {e.pid: e.score for e in entries}
        assert ours_scores.keys() == theirs.run[qid].keys()
        pids = list(ours_scores)
        np.testing.assert_allclose(
            [ours_scores[p] for p in pids], [theirs.run[qid][p] for p in pids], rtol=0, atol=1e-9
        )
        # best first, ties (RRF has many) broken by passage id descending, as trec_eval breaks them
        assert pids == [
            p for p, _ in sorted(ours_scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        ]


def test_fusion_of_partial_runs_and_errors(systems: dict) -> None:
    bm25 = systems["runs"]["bm25"]
    only_one_query = [e for e in systems["runs"]["oracle"] if e.qid == bm25[0].qid]
    fused = fuse(
        [NamedRun("a", columns_from_entries(bm25)), NamedRun("b", columns_from_entries(only_one_query))]
    )
    assert {e.qid for e in fused} == {e.qid for e in bm25}  # a query in one run only is fused from it
    unscored = columns_from_entries([e._replace(score=None) for e in bm25])
    with pytest.raises(InputError, match="without scores"):
        fuse([NamedRun("ms", unscored), NamedRun("b", columns_from_entries(bm25))], method="wsum")
    doubled = columns_from_entries([*bm25[:3], bm25[1]])
    with pytest.raises(InputError, match="more than once"):
        fuse([NamedRun("dup.trec", doubled), NamedRun("b", columns_from_entries(bm25))])
    with pytest.raises(InputError, match="at least two"):
        fuse([NamedRun("a", columns_from_entries(bm25))])


def test_eval_compare_and_fuse_cli(systems: dict, tmp_path: Path) -> None:
    paths, mini = systems["paths"], systems["mini"]
    qrels = str(mini / "qrels.dl19.txt")
    runner = CliRunner()
    fused = tmp_path / "rrf.trec"
    result = runner.invoke(
        main, ["fuse", "--run", str(paths["bm25"]), "--run", str(paths["oracle"]), "--out", str(fused)]
    )
    assert result.exit_code == 0, result.output
    assert len(read_run_columns(fused).qids) == paths["bm25"].read_text().count("\n")  # same candidates

    args = ["eval", "--qrels", qrels, "--metrics", "ndcg@10", "--relevance-level", "2"]
    runs = [f"--run=bm25={paths['bm25']}", f"--run=oracle={paths['oracle']}", f"--run=rrf={fused}"]
    result = runner.invoke(main, [*args, *runs, "--baseline", "bm25", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [p["treatment"] for p in report["pairs"]] == ["oracle", "rrf"]
    assert all(p["control"] == "bm25" for p in report["pairs"])
    assert report["pairs"][0]["significant"]
    assert len(report["per_query"]["oracle"]["ndcg@10"]) == report["queries"] == 43

    result = runner.invoke(main, [*args, *runs, "--baseline", "bm25"])
    assert result.exit_code == 0, result.output
    oracle_row = next(line for line in result.output.splitlines() if " oracle " in line)
    assert oracle_row.split()[-1] == "a"  # beats the baseline (letter a)
    assert "holm correction" in result.output

    result = runner.invoke(main, [*args, *runs, "--pairwise", "--test", "fisher", "--format", "latex"])
    assert result.exit_code == 0, result.output
    assert "\\begin{tabular}" in result.output and "$^{a" in result.output

    # one run, no comparison options: the single-run output as before
    single = runner.invoke(
        main, ["eval", "--qrels", qrels, "--run", str(paths["bm25"]), "--metrics", "ndcg@10"]
    )
    assert single.output.startswith("queries: 43 judged, 43 in the run, 43 evaluated")

    # a query absent from a run: scored 0 and said so
    partial = tmp_path / "partial.trec"
    write_run(
        partial, [e for e in systems["runs"]["oracle"] if e.qid != systems["runs"]["oracle"][0].qid], "trec"
    )
    result = runner.invoke(
        main, [*args, f"--run=bm25={paths['bm25']}", f"--run=partial={partial}", "--baseline", "bm25"]
    )
    assert "absent queries score 0 (trec_eval -c): partial lacks 1" in result.output

    for bad, message in (
        (["--run", f"x={paths['bm25']}", "--run", f"x={paths['oracle']}"], "two runs are named 'x'"),
        (["--run", f"a={paths['bm25']}", "--run", f"b={paths['oracle']}", "--baseline", "c"], "baseline 'c'"),
        (["--run", "a=missing.trec", "--run", f"b={paths['oracle']}"], "missing.trec is not a file"),
    ):
        result = runner.invoke(main, [*args, *bad])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, (
            result.output
        )


def test_render_formats(systems: dict) -> None:
    ranked = {name: rank_entries(entries) for name, entries in systems["runs"].items()}
    comparison = compare_runs(systems["qrels"], ranked, ["ndcg@10"], baseline="bm25")
    markdown = render(comparison, "markdown")
    assert markdown.splitlines()[0] == "|  | system | ndcg@10 |"
    assert "<sup>a</sup>" in markdown
    csv_text = render(comparison, "csv")
    assert csv_text.splitlines()[0] == "letter,system,ndcg@10,ndcg@10 beats"
    assert csv_text.splitlines()[2].endswith(",bm25")
