"""benchmarks/gpu_session.sh cannot rot unnoticed: `all` runs here on the CPU at tiny sizes, the way the
GPU machine runs it at full size (docs/gpu-session.md), into a temporary folder (never over the
committed figures in benchmarks/results)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("distilbert-base", "minilm-l6")
ROWS = 1000

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("optimum") is None, reason="the export extra (optimum-onnx) is not installed"
    ),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("bash", "flock", "timeout")),
        reason="needs bash, flock and timeout (util-linux, coreutils)",
    ),
]


Steps = list[dict[str, object]]


def session(tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess[str], Steps]:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)  # each device call starts with an empty $OUT
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PASSAGES": "64",
        "ROWS": str(ROWS),
        "WORK": str(tmp_path / "work"),
        "OUT": str(out),
        "STAGE": str(tmp_path / "no-stage"),  # nothing staged: this environment's packages
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # a 2-core CI machine is slower than the GPU machine's 16 cores: caps that only stop a hang
        **{f"CAP_{step}": "600" for step in ("EXPORTS", "ENCODE", "CORPUS", "QUERY")},
        "BUDGET": "1800",
        "MIN_QUERY": "20",
        **settings,
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh", "all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # what the device call brings back: at most 8 files, here one archive
    assert [p.name for p in out.iterdir()] == ["results.tar.gz"]
    returned = tmp_path / "returned"
    shutil.rmtree(returned, ignore_errors=True)
    with tarfile.open(out / "results.tar.gz") as archive:
        archive.extractall(returned, filter="data")
    steps = [json.loads(line) for line in (returned / "steps.jsonl").read_text().splitlines()]
    return done, steps


def test_all_steps_run_on_the_cpu_and_return_every_json(tmp_path: Path) -> None:
    done, steps = session(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [s["step"] for s in steps] == ["exports", "encode", "corpus", "query"]
    assert {s["status"] for s in steps} == {"done"}, steps
    out = tmp_path / "returned"
    for shape in SHAPES:
        for runner in ("fastmarco", "sentence-transformers", "torch"):
            figures = json.loads((out / f"encode_{shape}_cpu_{runner}.json").read_text())
            assert figures["passages"] == 64 and figures["passages_per_second"] > 0
        corpus = json.loads((out / f"encode_corpus_cpu-{shape}-{ROWS}.json").read_text())
        assert corpus["complete"] and corpus["summary"]["rows"] == ROWS == corpus["corpus_rows"]
        assert set(corpus["stage_seconds"]) == {"read", "tokenize", "infer", "write"}
        assert corpus["stage_seconds"]["infer"] > 0
    scale = json.loads((out / f"scale_cpu-{ROWS}x768.json").read_text())
    assert set(scale["kinds"]) == {"binary", "int8", "faiss-flatip"}
    assert all(0 < k["measure"]["recall@10"] <= 1 for k in scale["kinds"].values())
    assert (out / "encode-report.txt").read_text().count("minilm-l6") == 3

    # A second call (after a cut-off one, say) skips what the first finished and still returns it all.
    again, steps = session(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {s["status"] for s in steps} == {"done-earlier"}, steps
    assert (tmp_path / "returned" / f"scale_cpu-{ROWS}x768.json").is_file()


def test_steps_past_the_budget_are_capped_or_not_started(tmp_path: Path) -> None:
    done, steps = session(tmp_path, CAP_EXPORTS="1", BUDGET="25")
    assert done.returncode == 0, done.stderr[-3000:]
    # exports: a cap under 20 s does not start; encode: stopped at the budget's 25 s; the rest: no time
    assert [s["status"] for s in steps] == ["no-time-left", "capped", "no-time-left", "no-time-left"]
    assert 20 <= steps[1]["seconds"] <= 25 + 15 + 5  # the cap, timeout's grace before SIGKILL, slack
