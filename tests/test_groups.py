"""Grouped indexes (`fastmarco index --groups`): shard groups with their own indexes, searched as one
and merged with merge_topk; identical to searching the whole shard set where the kind is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_index import clustered, recall_at_10

pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")

from fastmarco.cli.app import main
from fastmarco.engine import Engine
from fastmarco.errors import IndexMismatchError, InputError, ManifestError
from fastmarco.search.backends import SearchResult, VectorIndex
from fastmarco.search.groups import GroupedIndex, merge_group_results
from fastmarco.search.index import (
    GROUPS_MANIFEST,
    build_index,
    build_index_groups,
    split_shard_groups,
)
from fastmarco.search.kernels import MISSING_ID
from fastmarco.store.shards import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9,000 rows in five shards, with exact duplicates across shards so ties cross group borders."""
    root = tmp_path_factory.mktemp("groups") / "shards"
    write_shards(root, VECTORS, np.arange(9_000) * 3 + 1, rows_per_shard=2_000)
    return root


VECTORS = clustered(9_000, 32, 4)
VECTORS[6_500:6_600] = VECTORS[100:200]  # shard 0 and shard 3 hold the same rows


def queries(n: int = 64) -> np.ndarray:
    q = clustered(n, 32, 99)
    q[:8] = VECTORS[100:108]  # queries equal to duplicated rows: tied best scores
    return q


def assert_same(a: SearchResult, b: SearchResult) -> None:
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_groups_are_contiguous_and_balanced_by_rows() -> None:
    assert split_shard_groups([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert split_shard_groups([100, 1, 1, 1, 100], 2) == [(0, 2), (2, 5)]
    assert split_shard_groups([5, 5, 5], 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(InputError, match="cannot cut 3 shards into 4 groups"):
        split_shard_groups([5, 5, 5], 4)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_flat_groups_equal_the_whole_shard_set(shards: Path, tmp_path: Path, groups: int) -> None:
    whole = build_index(shards, tmp_path / "whole", kind="flat")
    manifest = build_index_groups(shards, tmp_path / "grouped", groups, kind="flat")
    assert [g.rows for g in manifest.groups] and sum(g.rows for g in manifest.groups) == whole.rows
    single = VectorIndex.open(tmp_path / "whole")
    with GroupedIndex.open(tmp_path / "grouped") as grouped:
        assert grouped.rows == 9_000 and grouped.kind == f"flat x {groups} groups"
        for k in (1, 10, 100):
            assert_same(grouped.search(queries(), k), single.search(queries(), k))
    found = single.search(queries(8), 2)
    assert (found.rows[:, 1] - found.rows[:, 0] == 6_400).all()  # the ties, lower row first


def test_missing_slots_stay_missing_and_string_ids_merge(tmp_path: Path) -> None:
    vectors = clustered(30, 16, 1)
    write_shards(tmp_path / "s", vectors, [f"doc-{i}" for i in range(30)], rows_per_shard=10, id_type="str")
    build_index(tmp_path / "s", tmp_path / "whole", kind="flat")
    build_index_groups(tmp_path / "s", tmp_path / "g", 3, kind="flat")
    expected = VectorIndex.open(tmp_path / "whole").search(vectors[:4], 40)
    found = GroupedIndex.open(tmp_path / "g").search(vectors[:4], 40)
    assert_same(found, expected)
    # k 40 over 30 rows is capped at 30 (each group of 10 returned 10, widened before the merge)
    assert found.ids.shape == (4, 30) and found.ids[0, 0] == "doc-0" and "" not in found.ids.tolist()[0]


def test_exhaustive_ivf_groups_equal_exact_search(shards: Path, tmp_path: Path) -> None:
    build_index(shards, tmp_path / "whole", kind="flat")
    build_index_groups(shards, tmp_path / "ivf", 2, factory="IVF8,Flat", nprobe=8)
    grouped = GroupedIndex.open(tmp_path / "ivf")
    assert grouped.factory == "IVF8,Flat"
    assert_same(grouped.search(queries(), 10), VectorIndex.open(tmp_path / "whole").search(queries(), 10))


def test_hnsw_groups_each_build_their_own_graph(shards: Path, tmp_path: Path) -> None:
    build_index(shards, tmp_path / "whole", kind="flat")
    manifest = build_index_groups(shards, tmp_path / "hnsw", 2, kind="hnsw")
    assert {g.factory for g in manifest.groups} == {"HNSW32"}
    for group in manifest.groups:  # each group index covers only its own shards
        body = json.loads((tmp_path / "hnsw" / group.directory / "index.json").read_text())
        assert body["shard_range"] == list(group.shards) and body["rows"] == group.rows
        assert body["version"] == 3
    exact = VectorIndex.open(tmp_path / "whole").search(queries(), 10)
    found = GroupedIndex.open(tmp_path / "hnsw").search(queries(), 10)
    assert recall_at_10(found.rows, exact.rows) >= 0.95
    hit = found.rows == exact.rows
    np.testing.assert_array_equal(found.scores[hit], exact.scores[hit])  # exact refine in every group


def test_auto_is_decided_from_the_whole_set_and_lists_from_each_group(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", clustered(4_000, 16, 2), np.arange(4_000), rows_per_shard=1_000)
    manifest = build_index_groups(tmp_path / "s", tmp_path / "g", 2)
    assert manifest.kind == "auto" and {g.factory for g in manifest.groups} == {"Flat"}


def test_a_group_merge_matches_a_hand_merge() -> None:
    inf = -np.inf
    a = SearchResult(
        np.array([[0.9, 0.5, inf]], np.float32),
        np.array([[1, 0, MISSING_ID]]),
        np.array([[11, 10, -1]]),
    )
    b = SearchResult(np.array([[0.9, 0.7, 0.1]], np.float32), np.array([[0, 2, 1]]), np.array([[20, 22, 21]]))
    merged = merge_group_results([a, b], [0, 5])  # b's rows start at 5: 0.9 ties go to row 1 first
    assert merged.ids.tolist() == [[11, 20, 22]] and merged.rows.tolist() == [[1, 5, 7]]
    empty = SearchResult(np.full((1, 3), inf, np.float32), np.full((1, 3), MISSING_ID), np.full((1, 3), -1))
    merged = merge_group_results([empty, empty], [0, 0])
    assert merged.ids.tolist() == [[-1, -1, -1]] and (merged.rows == MISSING_ID).all()


def test_a_changed_or_inconsistent_grouped_index_is_refused(shards: Path, tmp_path: Path) -> None:
    build_index_groups(shards, tmp_path / "g", 2, kind="flat")
    body = json.loads((tmp_path / "g" / GROUPS_MANIFEST).read_text())
    body["groups"][1]["first_row"] += 1
    (tmp_path / "g" / GROUPS_MANIFEST).write_text(json.dumps(body))
    with pytest.raises(ManifestError, match=r"groups\.json: field 'groups\[1\]' does not follow"):
        GroupedIndex.open(tmp_path / "g")

    build_index_groups(shards, tmp_path / "h", 2, kind="flat")
    body = json.loads((tmp_path / "h" / GROUPS_MANIFEST).read_text())
    body["groups"][0]["shards"][1] -= 1
    body["groups"][1]["shards"][0] -= 1
    (tmp_path / "h" / GROUPS_MANIFEST).write_text(json.dumps(body))
    mismatch = r"group-000/index\.json: covers shards \[0, 2\], but .*lists group-000 \(shards 0-0"
    with pytest.raises(IndexMismatchError, match=mismatch):
        GroupedIndex.open(tmp_path / "h")


def test_ray_is_only_for_grouped_indexes(shards: Path, tmp_path: Path) -> None:
    from fastmarco.search.groups import open_search_index

    build_index(shards, tmp_path / "one", kind="flat")
    with pytest.raises(InputError, match="one index, not a grouped one"):
        open_search_index(tmp_path / "one", ray=True)


def test_cli_grouped_index_answers_like_the_single_one(
    exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    from fastmarco.corpus.bundled import demo_corpus_path, demo_queries_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder
    from fastmarco.store.formats import load_queries

    model = exported["bert-mean-normalize", "fp32"]
    encode_corpus(Encoder.open(model, device="cpu"), demo_corpus_path(), tmp_path / "s", rows_per_shard=16)
    runner = CliRunner()
    built = runner.invoke(main, ["index", str(tmp_path / "s"), "--out", str(tmp_path / "g"), "--groups", "2"])
    assert built.exit_code == 0, built.output
    assert "built 2 groups (Flat) over 40 rows" in built.output
    runner.invoke(main, ["index", str(tmp_path / "s"), "--out", str(tmp_path / "one")])
    text = next(iter(load_queries(demo_queries_path()).values()))
    answers = [
        runner.invoke(main, ["query", str(tmp_path / name), text, "-k", "12", "--device", "cpu", "--json"])
        for name in ("g", "one")
    ]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    assert json.loads(answers[0].output) == json.loads(answers[1].output)
    with Engine.open(tmp_path / "g", device="cpu") as engine:
        assert engine.search([text], 3).ids.shape == (1, 3)
    refused = runner.invoke(
        main, ["index", str(tmp_path / "s"), "--out", str(tmp_path / "x"), "--groups", "9"]
    )
    assert refused.exit_code == 1 and "cannot cut 3 shards into 9 groups" in refused.output
