"""BEIR's layout (corpus.jsonl, queries.jsonl, qrels/{split}.tsv) read by every verb, detected from
the file: the mini sample converted to it gives the same outputs as the MS MARCO files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.corpus.formats import detect, read_records
from fastmarco.errors import FormatError
from fastmarco.store.formats import load_qrels, load_queries
from fastmarco.store.passages import PassageStore


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def to_beir(collection: Path, queries: Path, qrels: Path, out: Path, title: str = "") -> dict[str, Path]:
    """Write MS MARCO files in BEIR's layout (BEIR's own msmarco conversion: an empty title)."""
    (out / "qrels").mkdir(parents=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for line in (
            collection.read_text(encoding="utf-8").removesuffix("\n").split("\n")
        ):  # not splitlines: U+2028
            pid, text = line.split("\t", 1)
            corpus.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as handle:
        for line in queries.read_text(encoding="utf-8").splitlines():
            qid, text = line.split("\t", 1)
            handle.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for line in qrels.read_text().splitlines():
            qid, _, pid, grade = line.split()
            handle.write(f"{qid}\t{pid}\t{grade}\n")
    return {
        "corpus": out / "corpus.jsonl",
        "queries": out / "queries.jsonl",
        "qrels": out / "qrels" / "test.tsv",
    }


@pytest.fixture(scope="module")
def sample(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """The passages of the DL19 BM25 top-100 and the DL19 topics, as MS MARCO files and as BEIR."""
    root = tmp_path_factory.mktemp("beir")
    wanted = {line.split()[2] for line in (mini / "run.dl19.bm25.trec").read_text().splitlines()}
    with open(mini / "collection.tsv", "rb") as source, open(root / "collection.tsv", "wb") as corpus:
        corpus.writelines(line for line in source if line.split(b"\t", 1)[0].decode() in wanted)
    msmarco = {
        "corpus": root / "collection.tsv",
        "queries": mini / "queries.dl19.tsv",
        "qrels": mini / "qrels.dl19.txt",
        "run": mini / "run.dl19.bm25.trec",
    }
    beir = to_beir(msmarco["corpus"], msmarco["queries"], msmarco["qrels"], root / "beir")
    return {"msmarco": msmarco, "beir": {**beir, "run": msmarco["run"]}}


def stripped_rows(path: Path) -> list[dict]:
    """A mined JSON Lines file with its texts stripped: BEIR's title join strips a passage's edges
    (`(title + " " + text).strip()`), where MS MARCO's TSV keeps them."""
    rows = [json.loads(line) for line in path.read_text().removesuffix("\n").split("\n")]  # not U+2028
    return [{k: v.strip() if isinstance(v, str) else v for k, v in row.items()} for row in rows]


def served_search(index: Path, corpus: Path) -> str:
    """`/search` with passage texts from `corpus`, as `fastmarco serve --collection` answers it."""
    pytest.importorskip("starlette", reason="needs the serve extra")
    from starlette.testclient import TestClient

    from fastmarco.engine import Engine
    from fastmarco.serve.app import ServeConfig, create_app

    with (
        Engine.open(index, device="cpu") as engine,
        PassageStore.open(corpus) as passages,
        TestClient(create_app(engine, passages, ServeConfig("tiny"))) as client,
    ):
        reply = client.post("/search", json={"query": "what is a corporation", "k": 5})
        assert reply.status_code == 200, reply.text
        return json.dumps(reply.json()["results"])


def test_readers_detect_beir_and_keep_ids(sample: dict, tmp_path: Path) -> None:
    beir, msmarco = sample["beir"], sample["msmarco"]
    assert detect(beir["corpus"]).name == "beir" and detect(msmarco["corpus"]).name == "msmarco-tsv"
    assert load_queries(beir["queries"]) == load_queries(msmarco["queries"])
    assert load_qrels(beir["qrels"]) == load_qrels(msmarco["qrels"])
    tsv = {r.id: r.text for r in read_records(msmarco["corpus"])}
    jsonl = {r.id: r.text for r in read_records(beir["corpus"])}
    assert jsonl.keys() == tsv.keys() and all(jsonl[p] == tsv[p].strip() for p in tsv)

    # titles joined as BEIR and sentence-transformers join them; "beir-text" leaves them out
    titled = tmp_path / "titled.jsonl"
    titled.write_text(
        '{"_id": "MED-10", "title": "Statins", "text": "lower cholesterol."}\n'
        '{"_id": "007", "title": "", "text": " spaced "}\n'
        '{"_id": 7, "text": "a number id keeps its spelling"}\n'
    )
    assert [(r.id, r.text, r.title) for r in read_records(titled)] == [
        ("MED-10", "Statins lower cholesterol.", "Statins"),
        ("007", "spaced", None),
        ("7", "a number id keeps its spelling", None),
    ]
    assert next(r.text for r in read_records(titled, format="beir-text")) == "lower cholesterol."
    with PassageStore.open(titled) as store:
        assert store.get("MED-10") == "Statins lower cholesterol." and store.get("007") == "spaced"
        assert store.get("10") is None

    for body, message in (
        ('{"_id": "a", "text": "x"}\n{"text": "no id"}\n', ":2: _id must be a non-empty"),
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": ""}\n', ":2: empty passage for _id b"),
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "x"\n', ":2: not a JSON object"),
        ('{"_id": "a", "text": "x"}\n["a", "b"]\n', ":2: expected a JSON object"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body)
        with pytest.raises(FormatError, match=message):
            list(read_records(bad))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n")
    with pytest.raises(FormatError, match=r"qrels.tsv:3: expected 3 fields 'query-id corpus-id score'"):
        load_qrels(qrels)


def test_every_verb_gives_the_same_output_on_beir(
    sample: dict, exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    pytest.importorskip("bm25s", reason="needs the bm25 extra")
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    model = str(exported["bert-mean-normalize", "fp32"])
    outputs: dict[str, dict[str, str]] = {}
    for layout in ("msmarco", "beir"):
        files, out = sample[layout], tmp_path / layout
        out.mkdir()
        run(
            "bm25",
            "--collection",
            str(files["corpus"]),
            "--queries",
            str(files["queries"]),
            "--out",
            str(out / "bm25.trec"),
            "-k",
            "100",
        )
        run(
            "encode",
            "--model",
            model,
            "--corpus",
            str(files["corpus"]),
            "--out",
            str(out / "shards"),
            "--device",
            "cpu",
            "--quiet",
        )
        run("index", str(out / "shards"), "--out", str(out / "flat"), "--kind", "flat")
        run(
            "query",
            str(out / "flat"),
            "--queries",
            str(files["queries"]),
            "--run",
            str(out / "dense.trec"),
            "-k",
            "100",
            "--device",
            "cpu",
        )
        run(
            "rerank", "--model", model, "--run", str(files["run"]), "--queries", str(files["queries"]),
            "--collection", str(files["corpus"]), "--out", str(out / "rerank.trec"), "--device", "cpu",
        )  # fmt: skip
        evaluated = {
            name: run(
                "eval",
                "--qrels",
                str(files["qrels"]),
                "--run",
                str(out / f"{name}.trec"),
                "--metrics",
                "ndcg@10,recall@100",
            )
            for name in ("bm25", "dense", "rerank")
        }
        run(
            "mine", "--queries", str(files["queries"]), "--qrels", str(files["qrels"]),
            "--collection", str(files["corpus"]), "--system", f"dense={out / 'flat'}", "--depth", "30",
            "--num-negatives", "3", "--format", "jsonl", "--device", "cpu", "--out", str(out / "mined"),
        )  # fmt: skip
        mined = {p.name: stripped_rows(p) for p in sorted((out / "mined").glob("*.jsonl"))}
        assert mined and all(mined.values())
        shown = run(
            "query",
            str(out / "flat"),
            "what is a corporation",
            "--collection",
            str(files["corpus"]),
            "--device",
            "cpu",
        )
        outputs[layout] = {
            **{name: (out / f"{name}.trec").read_text() for name in ("bm25", "dense", "rerank")},
            **{f"eval {name}": text for name, text in evaluated.items()},
            "shown": shown,
            "served": served_search(out / "flat", files["corpus"]),
            **{f"mined {name}": text for name, text in mined.items()},
        }
        ids = np.load(next((out / "shards").glob("ids-*.npy")))
        assert ids.dtype.kind == "i"  # MS MARCO's ids stay integer-stored from either layout
    for key, text in outputs["msmarco"].items():
        assert outputs["beir"][key] == text, key
    assert "ndcg@10" in outputs["beir"]["eval rerank"]


def test_a_forced_corpus_format_reaches_every_verb(
    exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """`--corpus-format beir-text` reads a titled BEIR corpus without its titles in each verb (detection
    alone can never pick it), is recorded where a rerun must match it, and a format that does not fit
    the file fails on its first line."""
    pytest.importorskip("bm25s", reason="needs the bm25 extra")
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    corpus, queries = tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl"
    corpus.write_text(
        '{"_id": "d1", "title": "Zebra", "text": "stripes on a horse"}\n'
        '{"_id": "d2", "title": "", "text": "zebra crossing rules"}\n'
        '{"_id": "d3", "title": "Moon", "text": "craters and dust"}\n'
    )
    queries.write_text('{"_id": "q1", "text": "zebra"}\n')
    bm25 = {}
    for forced in ("auto", "beir-text"):
        out = tmp_path / f"bm25-{forced}.trec"
        run("bm25", "--collection", str(corpus), "--queries", str(queries), "--out", str(out),
            "--corpus-format", forced)  # fmt: skip
        bm25[forced] = sorted(line.split()[2] for line in out.read_text().splitlines())
    assert bm25 == {"auto": ["d1", "d2"], "beir-text": ["d2"]}  # d1's "zebra" is only in its title

    with PassageStore.open(corpus, format="beir-text") as store:
        assert store.get("d1") == "stripes on a horse"
    with PassageStore.open(corpus) as store:  # the offsets file records its format: not reused here
        assert store.get("d1") == "Zebra stripes on a horse"

    model, shards = str(exported["bert-mean-normalize", "fp32"]), tmp_path / "shards"
    encode = ["encode", "--model", model, "--corpus", str(corpus), "--out", str(shards), "--device", "cpu"]
    run(*encode, "--corpus-format", "beir-text", "--quiet")
    assert json.loads((shards / "manifest.json").read_text())["metadata"]["corpus"]["format"] == "beir-text"
    refused = CliRunner().invoke(main, [*encode, "--quiet"])
    assert refused.exit_code == 1 and "read the corpus as format 'beir-text', not 'beir'" in refused.output

    run("index", str(shards), "--out", str(tmp_path / "flat"), "--kind", "flat")
    shown = run("query", str(tmp_path / "flat"), "zebra", "--collection", str(corpus), "--device", "cpu",
                "--corpus-format", "beir-text", "--json")  # fmt: skip
    assert "stripes on a horse" in shown and "Zebra stripes" not in shown

    wrong = CliRunner().invoke(main, [*encode[:-4], "--out", str(tmp_path / "tsv"), "--corpus-format",
                                      "msmarco-tsv", "--quiet"])  # fmt: skip
    assert wrong.exit_code == 1 and f"{corpus}:1:" in wrong.output and "Traceback" not in wrong.output
