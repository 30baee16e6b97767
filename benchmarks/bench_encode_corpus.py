"""`fastmarco encode` end to end on a corpus (read, tokenize, encode, write shards), timed.

    python benchmarks/bench_encode_corpus.py --model DIR --corpus synth.tsv [--device cuda] [--label name]

Runs the real command in a child process, samples its peak RSS (and GPU utilization through
nvidia-smi when there is one), records where the time went (read, tokenize, infer, write: the
summary's stage_seconds) and saves benchmarks/results/encode_corpus_<label>.json. With --time-limit the
encode is stopped there and the JSON reports the rows of the shards it had finished (complete: false),
so a capped step still says how fast it went.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, nvidia_smi, proc_status_bytes, save


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def gpu_sampler(samples: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        value = nvidia_smi("utilization.gpu")
        if value is None:
            return
        samples.append(float(value))
        stop.wait(0.5)


def watch(child: subprocess.Popen[str], shards: Path, deadline: float | None) -> dict[str, Any]:
    """Until the child exits: its peak RSS (VmHWM; ru_maxrss would include this process's image) and
    when each shard became durable (the manifest's row count), which is what a child stopped at
    `deadline` (SIGINT) has finished."""
    peak, rows_at = 0, [(0.0, 0)]
    started = time.perf_counter()
    stopped = False
    while child.poll() is None:
        peak = max(peak, proc_status_bytes("VmHWM", child.pid) or 0)
        try:
            rows = json.loads((shards / "manifest.json").read_text())["rows"]
        except (OSError, ValueError, KeyError):
            rows = rows_at[-1][1]
        if rows != rows_at[-1][1]:
            rows_at.append((time.perf_counter() - started, rows))
        if deadline is not None and not stopped and time.perf_counter() > deadline:
            child.send_signal(signal.SIGINT)
            stopped = True
        time.sleep(0.2)
    return {"peak_rss_bytes": peak, "rows_at": rows_at, "stopped_at_time_limit": stopped}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shard-size", type=int, default=1_000_000)
    parser.add_argument(
        "--time-limit",
        type=float,
        help="stop the encode after this many seconds and report the rows it had finished",
    )
    parser.add_argument("--label", default="run")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fastmarco-encode-bench-"))
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_sampler, args=(samples, stop), daemon=True)
    if shutil.which("nvidia-smi"):
        sampler.start()
    command = [
        sys.executable,
        "-m",
        "fastmarco",
        "encode",
        "--model",
        args.model,
        "--corpus",
        args.corpus,
        "--out",
        str(out / "shards"),
        "--device",
        args.device,
        "--shard-size",
        str(args.shard_size),
    ]
    started = time.perf_counter()
    deadline = started + args.time_limit if args.time_limit else None
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = watch(child, out / "shards", deadline)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    shutil.rmtree(out, ignore_errors=True)
    stopped = watched["stopped_at_time_limit"]
    if child.returncode != 0 and not stopped:
        sys.exit(f"encode failed:\n{stderr}")
    if stopped:
        # the rows of the shards made durable before the stop, over the time they took
        seconds, rows = watched["rows_at"][-1]
        summary: dict[str, Any] = {"rows": rows}
    else:
        summary = json.loads(stdout.strip().splitlines()[-1])
    body = {
        "benchmark": "fastmarco encode, end to end",
        "corpus_rows": count_lines(Path(args.corpus)),
        "complete": not stopped,
        "time_limit_seconds": args.time_limit,
        "wall_seconds": seconds,
        "passages_per_second_end_to_end": summary["rows"] / seconds if seconds else None,
        "stage_seconds": summary.get("stage_seconds"),
        "summary": summary,
        "rows_at_seconds": watched["rows_at"],
        "peak_rss_bytes": watched["peak_rss_bytes"],
        "gpu_utilization": {
            "samples": len(samples),
            "mean": sum(samples) / len(samples) if samples else None,
            "p50": float(np.median(samples)) if samples else None,
            "max": max(samples, default=None),
        },
        "gpu": nvidia_smi("name"),
        "environment": environment(["fastmarco", "onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy"]),
    }
    shown = ("complete", "wall_seconds", "passages_per_second_end_to_end", "stage_seconds", "peak_rss_bytes")
    print(json.dumps({k: body[k] for k in shown}, indent=2))
    print(f"saved {save(f'encode_corpus_{args.label}', body)}")


if __name__ == "__main__":
    main()
