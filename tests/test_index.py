"""faiss indexes from shards, exact refine, the Engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")

from fastmarco.engine import Engine
from fastmarco.errors import IndexMismatchError, InputError, ManifestError
from fastmarco.search.backends import VectorIndex
from fastmarco.search.exact import search_shards
from fastmarco.search.index import IndexManifest, build_index, factory_for, plan_index
from fastmarco.store.shards import ShardSet, write_shards


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 256 centres: closer to real embeddings than isotropic noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index") / "shards"
    write_shards(root, clustered(20_000, 64, 0), np.arange(20_000) * 2 + 7, rows_per_shard=7_000)
    return root


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)]))


def test_presets_are_sized_from_the_data() -> None:
    assert factory_for("opq-ivfpq", 8_841_823, 768) == "OPQ96_768,IVF8192,PQ96"
    assert factory_for("ivfpq", 31_362, 384) == "IVF512,PQ48"
    assert factory_for("pq", 1000, 7) == "PQ1"


def test_flat_index_is_the_native_exact_search_and_agrees_with_faiss(shards: Path, tmp_path: Path) -> None:
    import faiss

    manifest = build_index(shards, tmp_path / "flat", kind="flat")
    assert manifest.build["index_bytes"] == 0 and not (tmp_path / "flat" / "index.faiss").exists()
    index = VectorIndex.open(tmp_path / "flat")
    queries = clustered(50, 64, 1)
    scores, rows, _ = index.search(queries, 10)
    exact_scores, exact_rows = search_shards(ShardSet.open(shards), queries, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_array_equal(scores, exact_scores)
    reference = faiss.IndexFlatIP(64)  # the fp16 rows, widened exactly, searched by faiss
    reference.add(np.concatenate(list(ShardSet.open(shards).shard_vectors())).astype(np.float32))
    faiss_scores, faiss_rows = reference.search(queries, 10)
    np.testing.assert_array_equal(rows, faiss_rows)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivfpq", "opq-ivfpq"])
def test_pq_indexes_with_refine_recall_exact_neighbours(shards: Path, tmp_path: Path, kind: str) -> None:
    manifest = build_index(shards, tmp_path / kind, kind=kind)  # type: ignore[arg-type]
    assert manifest.refine == 50 and manifest.build["index_bytes"] > 0
    index = VectorIndex.open(tmp_path / kind)
    queries = clustered(200, 64, 1)
    _, exact = search_shards(ShardSet.open(shards), queries, 10)
    refined = index.search(queries, 10).rows
    unrefined = index.search(queries, 10, refine=1).rows
    assert recall_at_10(refined, exact) >= 0.95
    assert recall_at_10(refined, exact) > recall_at_10(unrefined, exact)


def test_hnsw_recall_holds_for_deep_k(shards: Path, tmp_path: Path) -> None:
    """efSearch grows with k (at least 4k) per call, so a deep top-100 is not starved by a fixed efSearch."""
    build_index(shards, tmp_path / "hnsw", kind="hnsw")
    index = VectorIndex.open(tmp_path / "hnsw")
    queries = clustered(200, 64, 1)
    _, exact = search_shards(ShardSet.open(shards), queries, 100)
    found10 = index.search(queries, 10).rows
    found100 = index.search(queries, 100).rows
    assert recall_at_10(found10, exact[:, :10]) >= 0.95
    assert np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found100, exact, strict=True)]) >= 0.95


def test_cuda_build_without_faiss_gpus_is_an_error_not_a_cpu_fallback(shards: Path, tmp_path: Path) -> None:
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("this faiss sees a GPU; the error path needs one that does not")
    with pytest.raises(ValueError, match=r"faiss sees no GPU .*faiss-gpu-cu12"):
        build_index(shards, tmp_path / "i", kind="ivfpq", device="cuda")
    assert not (tmp_path / "i").exists()


def test_index_refuses_a_changed_shard_set(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    write_shards(copy, clustered(500, 64, 3), np.arange(500), rows_per_shard=200)
    build_index(copy, tmp_path / "i", kind="flat")
    body = json.loads((copy / "manifest.json").read_text())
    body["metadata"]["note"] = "changed"
    (copy / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(IndexMismatchError, match="built for another state"):
        VectorIndex.open(tmp_path / "i")


def test_plan_estimates_peak_rss_within_25_percent(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", clustered(60_000, 128, 4), np.arange(60_000), rows_per_shard=25_000)
    script = textwrap.dedent(
        f"""
        import json
        from fastmarco.search.index import build_index, plan_index
        plan = plan_index({str(tmp_path / "s")!r}, "opq-ivfpq")
        build_index({str(tmp_path / "s")!r}, {str(tmp_path / "i")!r}, kind="opq-ivfpq")
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec (the forked pytest image counts)
        peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(json.dumps({{"plan": plan.ram_bytes, "peak": peak}}))
        """
    )
    result = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout.splitlines()[-1]
    )
    assert abs(result["plan"] - result["peak"]) <= 0.25 * result["peak"], result


def test_engine_is_thread_safe_and_matches_serial(
    exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    from fastmarco.corpus.bundled import demo_corpus_path, demo_queries_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder
    from fastmarco.store.formats import load_queries

    model = exported["bert-mean-normalize", "fp32"]
    encode_corpus(Encoder.open(model, device="cpu"), demo_corpus_path(), tmp_path / "s", rows_per_shard=16)
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    engine = Engine.open(tmp_path / "i", device="cpu")
    texts = list(load_queries(demo_queries_path()).values()) * 4
    serial = [engine.search([t], 5) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda t: engine.search([t], 5), texts))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert engine.search(["x"], 50).ids.shape == (1, 40)  # k is capped at the 40 passages there are


def test_engine_refuses_another_model(exported: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    from fastmarco.corpus.bundled import demo_corpus_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder

    encode_corpus(
        Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu"),
        demo_corpus_path(),
        tmp_path / "s",
    )
    build_index(tmp_path / "s", tmp_path / "i", kind="flat")
    with pytest.raises(IndexMismatchError, match="another model"):
        Engine.open(tmp_path / "i", model=exported["bert-mean-normalize", "fp16"], device="cpu")


def test_plan_reports_sizes(shards: Path) -> None:
    plan = plan_index(shards, "opq-ivfpq")
    assert plan.factory == "OPQ8_64,IVF512,PQ8" and plan.train_rows == 20_000
    assert 20_000 * 16 <= plan.disk_bytes < 2_000_000 and "peak RAM" in plan.describe()


@pytest.mark.parametrize(
    ("factory", "refine", "train_rows", "min_recall"),
    [
        ("IVF64,Flat", 0, 20_000, 0.99),  # StopIteration traceback before: no PQ in the string
        ("IVF64,PQ8x4fs", 50, 20_000, 0.5),  # int('8x4fs') error before; 4-byte codes: 0.61 measured
        ("IVF64,SQ8", 50, 20_000, 0.95),  # lossy SQ codes are refined too
        ("SQ8", 50, 20_000, 0.95),
        ("HNSW64", 0, 0, 0.95),  # trains nothing
    ],
)
def test_custom_factories_plan_and_build_from_the_faiss_object(
    shards: Path, tmp_path: Path, factory: str, refine: int, train_rows: int, min_recall: float
) -> None:
    plan = plan_index(shards, factory=factory)
    assert plan.factory == factory and plan.train_rows == train_rows and plan.disk_bytes > 0
    manifest = build_index(shards, tmp_path / "i", factory=factory)
    assert manifest.kind == "custom" and manifest.refine == refine
    queries = clustered(50, 64, 1)
    exact = search_shards(ShardSet.open(shards), queries, 10)[1]
    assert recall_at_10(VectorIndex.open(tmp_path / "i").search(queries, 10).rows, exact) >= min_recall


def test_a_bad_factory_or_too_few_rows_is_a_clear_error(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"factory 'IVF64,Nope' is not a faiss index_factory string"):
        plan_index(shards, factory="IVF64,Nope")
    write_shards(tmp_path / "few", clustered(100, 64, 5), np.arange(100))
    with pytest.raises(InputError, match=r"needs at least 256 training rows.*--kind flat"):
        build_index(tmp_path / "few", tmp_path / "i", kind="opq-ivfpq")
    assert build_index(tmp_path / "few", tmp_path / "i").factory == "Flat"  # auto picks what fits


def test_index_and_shards_moved_together_still_open(tmp_path: Path) -> None:
    write_shards(tmp_path / "a" / "shards", clustered(500, 64, 3), np.arange(500), rows_per_shard=200)
    build_index(tmp_path / "a" / "shards", tmp_path / "a" / "index", kind="ivfpq", train_rows=500)
    assert IndexManifest.load(tmp_path / "a" / "index").shards == "../shards"
    assert not (tmp_path / "a" / "index" / "shards").exists()  # no unread symlink beside it
    (tmp_path / "a").rename(tmp_path / "b")
    moved = VectorIndex.open(tmp_path / "b" / "index")
    assert moved.search(clustered(3, 64, 1), 5).ids.shape == (3, 5)


def test_version_1_index_with_an_absolute_path_still_opens(shards: Path, tmp_path: Path) -> None:
    build_index(shards, tmp_path / "i", kind="flat")
    body = json.loads((tmp_path / "i" / "index.json").read_text())
    body.update(version=1, shards=str(shards.resolve()))
    for key in ("shard_checksums", "metric"):
        del body[key]
    (tmp_path / "i" / "index.json").write_text(json.dumps(body))
    assert len(VectorIndex.open(tmp_path / "i").shard_set) == 20_000


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda body: body.pop("factory"), r"index\.json: field 'factory' is missing"),
        (lambda body: body.update(rows="many"), r"index\.json: field 'rows' must be int, got str"),
        (lambda body: body.update(rows=-1), r"index\.json: field 'rows' must be int >= 0"),
        (lambda body: body.update(metric="l2"), r"field 'metric' must be one of \['ip'\], got 'l2'"),
        (lambda body: body.update(version=9), r"index\.json: field 'version' is 9"),
        (lambda body: body.update(shard_checksums=[1]), r"field 'shard_checksums\[0\]' must be array"),
    ],
)
def test_a_bad_index_manifest_names_the_file_and_field(
    shards: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    build_index(shards, tmp_path / "i", kind="flat")
    body = json.loads((tmp_path / "i" / "index.json").read_text())
    edit(body)
    (tmp_path / "i" / "index.json").write_text(json.dumps(body))
    with pytest.raises(ManifestError, match=message):
        VectorIndex.open(tmp_path / "i")


def test_a_truncated_index_manifest_names_the_file_and_line(shards: Path, tmp_path: Path) -> None:
    build_index(shards, tmp_path / "i", kind="flat")
    text = (tmp_path / "i" / "index.json").read_text()
    (tmp_path / "i" / "index.json").write_text(text[: len(text) // 2])
    with pytest.raises(ManifestError, match=r"index\.json:\d+: invalid JSON"):
        VectorIndex.open(tmp_path / "i")


INDEX_FIXTURES = Path(__file__).parent / "fixtures" / "index-v2"


@pytest.mark.parametrize("name", ["flat", "hnsw", "pq", "grouped"])
def test_indexes_built_before_the_kind_registry_still_open(name: str) -> None:
    """tests/fixtures/index-v2 was written by fastmarco 0.1.0 before index kinds were registered
    (make_index_fixtures.py): each index opens and finds what exact search finds."""
    from fastmarco.search.groups import open_search_index

    vectors = np.random.default_rng(7).standard_normal((300, 8)).astype(np.float32)  # as the maker's
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[::10] + 0.01
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5] * 3 + 1
    found = open_search_index(INDEX_FIXTURES / name).search(queries, 5)
    assert found.ids.shape == (30, 5)
    agree = np.mean(
        [len(set(a) & set(b)) / 5 for a, b in zip(found.ids.tolist(), expected.tolist(), strict=True)]
    )
    assert agree >= (1.0 if name in ("flat", "grouped") else 0.9)
