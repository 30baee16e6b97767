"""`fastmarco encode`: streaming, resumable, strict about bad lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reference import row_cosines

from fastmarco.cli import main
from fastmarco.encode.local import PAUSE_ENV, encode_corpus
from fastmarco.encode.parallel import encode_corpus_on_devices, parse_devices
from fastmarco.encode.reader import line_offsets, plan_parts
from fastmarco.errors import EncodeMismatchError, WorkerError
from fastmarco.model.encoder import Encoder
from fastmarco.progress import Update
from fastmarco.store.formats import FormatError, read_collection
from fastmarco.store.shards import ShardSet

WORDS = [
    "london",
    "river",
    "goldfish",
    "bread",
    "yeast",
    "heart",
    "ocean",
    "moon",
    "coffee",
    "solar",
    "wind",
    "battery",
    "bees",
    "forest",
    "paris",
]


def write_corpus(path: Path, lines: int, seed: int = 0, start_id: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(lines):
            words = rng.choice(WORDS, size=int(rng.integers(3, 40)))
            handle.write(f"{start_id + i * 3}\t{' '.join(words)} Ã© {i}\n")
    return path


@pytest.fixture(scope="module")
def model(exported: dict[tuple[str, str], Path]) -> Path:
    return exported["bert-mean-normalize", "fp32"]


def all_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_shards_hold_the_encoder_output_in_corpus_order(model: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 230)
    encoder = Encoder.open(model, device="cpu")
    summary = encode_corpus(encoder, corpus, tmp_path / "s", rows_per_shard=64, dtype="fp32", chunk_rows=50)
    assert (summary.rows, summary.shards, summary.skipped) == (230, 4, 0)
    # where the time went: every stage timed, none longer than the run (tokenize overlaps infer)
    assert list(summary.stage_seconds) == ["read", "tokenize", "infer", "write"]
    assert summary.stage_seconds["infer"] > 0 and summary.stage_seconds["tokenize"] > 0
    assert all(0 <= s <= summary.seconds for s in summary.stage_seconds.values())
    shard_set = ShardSet.open(tmp_path / "s", verify="checksum")
    pids, texts = zip(*read_collection(corpus), strict=True)
    np.testing.assert_array_equal(shard_set.ids(), [int(p) for p in pids])
    stored = np.concatenate(list(shard_set.shard_vectors()))
    cos = row_cosines(stored, encoder.encode(list(texts)))
    assert cos.min() >= 0.99999  # unit vectors; chunking differs, so equal up to float rounding
    assert shard_set.metadata["model"]["fingerprint"] == encoder.fingerprint


def test_rerun_of_a_complete_directory_does_nothing(model: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 40)
    encoder = Encoder.open(model, device="cpu")
    encode_corpus(encoder, corpus, tmp_path / "s", rows_per_shard=16)
    before = all_files(tmp_path / "s")
    again = encode_corpus(encoder, corpus, tmp_path / "s", rows_per_shard=16)
    assert again.rows == 40 and again.resumed_at_row == 40 and all_files(tmp_path / "s") == before


def run_encode(
    model: Path, corpus: Path, out: Path, *extra: str, pause_after: int | None = None
) -> subprocess.Popen[bytes]:
    """The CLI in a subprocess; `pause_after` makes it stop (until killed) once that many rows are in
    finished shards, so a test kills it at a known point instead of racing it."""
    command = [
        sys.executable,
        "-m",
        "fastmarco",
        "encode",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--shard-size",
        "300",
        "--quiet",
        *extra,
    ]
    if "--devices" not in extra:
        command += ["--device", "cpu"]
    env = dict(os.environ)
    if pause_after is not None:
        env[PAUSE_ENV] = str(pause_after)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def kill_when_paused(process: subprocess.Popen[bytes], pauses: int = 1) -> None:
    """Wait for `pauses` workers to report their pause on stderr, then SIGKILL the process."""
    assert process.stderr is not None
    seen = 0
    while seen < pauses:
        line = process.stderr.readline()
        assert line, f"the encode ended before pausing (exit {process.wait()})"
        seen += b"paused after" in line
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def finished_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("kill_after_rows", [0, 300, 600, 1200])
def test_sigkill_then_rerun_is_byte_identical(model: Path, tmp_path: Path, kill_after_rows: int) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 3000, seed=1)
    reference = tmp_path / "reference"
    process = run_encode(model, corpus, reference)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()

    target = tmp_path / "killed"
    kill_when_paused(run_encode(model, corpus, target, pause_after=kill_after_rows))
    assert not json.loads((target / "manifest.json").read_text())["complete"]
    assert finished_shards(target) == kill_after_rows // 300

    process = run_encode(model, corpus, target)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["resumed_at_row"] == kill_after_rows  # continued from the last whole shard
    assert all_files(target) == all_files(reference)


def test_resume_refuses_another_model_or_corpus(
    exported: dict[tuple[str, str], Path], model: Path, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 100)
    encoder = Encoder.open(model, device="cpu")
    with pytest.raises(RuntimeError, match="stop"):
        encode_corpus(encoder, corpus, tmp_path / "s", rows_per_shard=20, progress=stop_after_first_shard)
    other = Encoder.open(exported["distilbert-mean-cosine", "fp32"], device="cpu")
    with pytest.raises(EncodeMismatchError, match=r"another model.*--restart"):
        encode_corpus(other, corpus, tmp_path / "s", rows_per_shard=20)
    with open(corpus, "a") as handle:
        handle.write("999999\tone more passage\n")
    with pytest.raises(EncodeMismatchError, match="the corpus changed since"):
        encode_corpus(encoder, corpus, tmp_path / "s", rows_per_shard=20)
    summary = encode_corpus(encoder, corpus, tmp_path / "s", rows_per_shard=20, restart=True)
    assert summary.rows == 101 and summary.resumed_at_row == 0


def stop_after_first_shard(update: Update) -> None:
    if int(update.detail["shards"]) >= 1:
        raise RuntimeError("stop")


BAD_LINES = [
    (b"7\tno problem\n8 no tab here\n", 2, "expected '<id><TAB><passage>', found no tab"),
    (b"7\tno problem\n8\t   \n", 2, "empty passage for id 8"),
    (b"7\tno problem\n8\tbad \xff byte\n", 2, "invalid UTF-8 at byte 6"),
    (b"7\tno problem\n9\tfine\n7\tagain\n", 3, "duplicate id 7"),
]


@pytest.mark.parametrize(("data", "line", "reason"), BAD_LINES)
def test_bad_lines_stop_with_file_and_line(
    model: Path, tmp_path: Path, data: bytes, line: int, reason: str
) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(data + b"10\tafter the bad line\n")
    with pytest.raises(FormatError, match=reason) as info:
        encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s")
    assert str(info.value).startswith(f"{corpus}:{line}: ")


@pytest.mark.parametrize(("data", "line", "reason"), BAD_LINES)
def test_bad_lines_skipped_are_reported(
    model: Path, tmp_path: Path, data: bytes, line: int, reason: str
) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(data + b"10\tafter the bad line\n")
    summary = encode_corpus(Encoder.open(model, device="cpu"), corpus, tmp_path / "s", on_bad_line="skip")
    assert (summary.rows, summary.skipped) == (
        data.count(b"\n"),
        1,
    )  # every line but the bad one, plus line 10
    report = (tmp_path / "s" / "skipped-lines.tsv").read_text().splitlines()
    assert len(report) == 1 and report[0].startswith(f"{line}\t") and reason in report[0]
    assert 10 in ShardSet.open(tmp_path / "s").ids().tolist()


def test_cli_encodes_the_bundled_demo_corpus(model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["encode", "--model", str(model), "--corpus", "demo", "--out", str(tmp_path / "s"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["rows"] == 40 and summary["skipped"] == 0 and summary["device"] == "cpu"


def test_cli_reports_a_bad_line(model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(b"1\tfine\n2\n")
    result = CliRunner().invoke(
        main,
        [
            "encode",
            "--model",
            str(model),
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "s"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    assert f"{corpus}:2: expected '<id><TAB><passage>', found no tab" in result.output
    assert os.path.exists(tmp_path / "s" / "manifest.json")  # the (empty, incomplete) set stays resumable


def test_parts_are_cut_at_shard_boundaries_and_start_on_their_line(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 1050)
    corpus.write_bytes(corpus.read_bytes().rstrip(b"\n"))  # a last line without newline still counts
    starts = [0]
    with open(corpus, "rb") as handle:
        for raw in handle:
            starts.append(starts[-1] + len(raw))
    parts = plan_parts(corpus, workers=3, rows_per_shard=100)
    assert [(p.start_line, p.stop_line) for p in parts] == [(0, 300), (300, 700), (700, 1050)]
    assert [p.start_byte for p in parts] == [starts[0], starts[300], starts[700]]
    assert line_offsets(corpus, [0, 1, 1049, 1050]) == [0, starts[1], starts[1049], starts[1050]]
    assert len(plan_parts(corpus, workers=30, rows_per_shard=500)) == 3  # never more parts than shards


def test_parse_devices() -> None:
    assert parse_devices("0,1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu, cpu") == ["cpu", "cpu"] and parse_devices("cuda:3") == ["cuda:3"]
    with pytest.raises(ValueError, match="'gpu0' is not a GPU number"):
        parse_devices("gpu0")


def encode_cli(model: Path, corpus: Path, out: Path, *extra: str) -> dict[str, object]:
    result = CliRunner().invoke(
        main,
        ["encode", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--quiet", *extra],
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.output.strip().splitlines()[-1])
    return summary


def test_two_cpu_workers_write_the_same_bytes_as_one(model: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 700, seed=3)
    one = encode_cli(model, corpus, tmp_path / "one", "--device", "cpu", "--shard-size", "100")
    two = encode_cli(model, corpus, tmp_path / "two", "--devices", "cpu,cpu", "--shard-size", "100")
    assert one["rows"] == two["rows"] == 700 and two["shards"] == 7 and two["device"] == "cpu,cpu"
    assert set(two["stage_seconds"]) == {"read", "tokenize", "infer", "write"}  # summed over parts
    assert two["stage_seconds"]["infer"] > 0
    assert all_files(tmp_path / "two") == all_files(tmp_path / "one")  # no .parts left, same bytes


def test_two_workers_skip_bad_lines_like_one(model: Path, tmp_path: Path) -> None:
    lines = write_corpus(tmp_path / "c.tsv", 400, seed=4).read_bytes().splitlines(keepends=True)
    lines[50] = b"no tab in this line\n"  # part 0
    lines[320] = b"9999\t  \n"  # part 1
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(b"".join(lines))
    options = ("--shard-size", "100", "--on-bad-line", "skip")
    one = encode_cli(model, corpus, tmp_path / "one", "--device", "cpu", *options)
    two = encode_cli(model, corpus, tmp_path / "two", "--devices", "cpu,cpu", *options)
    assert one["rows"] == two["rows"] == 398 and one["skipped"] == two["skipped"] == 2
    skipped = (tmp_path / "two" / "skipped-lines.tsv").read_text()
    assert skipped == (tmp_path / "one" / "skipped-lines.tsv").read_text()
    assert [line.split("\t")[0] for line in skipped.splitlines()] == ["51", "321"]
    a, b = (
        ShardSet.open(tmp_path / "one", verify="checksum"),
        ShardSet.open(tmp_path / "two", verify="checksum"),
    )
    np.testing.assert_array_equal(a.ids(), b.ids())
    vectors = [np.concatenate(list(s.shard_vectors())).astype(np.float32) for s in (a, b)]
    assert row_cosines(*vectors).min() >= 0.9999  # shards split differently around the skipped line
    cursor = b.manifest.shards[-1].cursor
    assert cursor is not None and cursor["skipped"] == 2 and cursor["line"] == 400
    again = encode_cli(model, corpus, tmp_path / "two", "--devices", "cpu,cpu", *options)
    assert (again["rows"], again["skipped"], again["resumed_at_row"]) == (398, 2, 398)  # nothing redone


def test_a_bad_line_in_a_worker_names_the_worker_file_and_line(model: Path, tmp_path: Path) -> None:
    lines = write_corpus(tmp_path / "c.tsv", 300, seed=5).read_bytes().splitlines(keepends=True)
    lines[250] = b"no tab in this line\n"
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(b"".join(lines))
    reason = "expected '<id><TAB><passage>', found no tab"
    with pytest.raises(WorkerError, match=rf"worker 1 \(cpu\): FormatError: {corpus}:251: {reason}"):
        encode_corpus_on_devices(model, corpus, tmp_path / "s", ["cpu", "cpu"], rows_per_shard=100)


def test_a_duplicate_id_across_parts_is_an_error_naming_both_lines(model: Path, tmp_path: Path) -> None:
    lines = write_corpus(tmp_path / "c.tsv", 300, seed=6).read_bytes().splitlines(keepends=True)
    lines[260] = lines[10].split(b"\t")[0] + b"\tthe same id again\n"
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(b"".join(lines))
    for mode in ("error", "skip"):
        with pytest.raises(FormatError, match=r"also on line 11.*different workers") as info:
            encode_corpus_on_devices(
                model, corpus, tmp_path / mode, ["cpu", "cpu"], rows_per_shard=100, on_bad_line=mode
            )
        assert str(info.value).startswith(f"{corpus}:261: duplicate id 30 ")


def test_sigkill_of_a_two_worker_run_then_rerun_is_byte_identical(model: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 3000, seed=1)
    reference = tmp_path / "reference"
    process = run_encode(model, corpus, reference)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()

    target = tmp_path / "killed"
    kill_when_paused(run_encode(model, corpus, target, "--devices", "cpu,cpu", pause_after=300), pauses=2)
    time.sleep(0.5)  # the workers die with their parent (PR_SET_PDEATHSIG)
    assert [finished_shards(target / ".parts" / f"part-{k}") for k in (0, 1)] == [1, 1]
    assert not (target / "manifest.json").exists()  # killed mid-way: parts, no final manifest

    process = run_encode(model, corpus, target, "--devices", "cpu,cpu")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["resumed_at_row"] == 600
    assert all_files(target) == all_files(reference)
