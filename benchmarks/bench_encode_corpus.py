"""`fastmarco encode` end to end on a corpus (read, tokenize, encode, write shards), timed.

    python benchmarks/bench_encode_corpus.py --model DIR --corpus synth.tsv [--device cuda] [--label name]

Runs the real command in a child process, samples its peak RSS (and GPU utilization through
nvidia-smi when there is one) and saves benchmarks/results/encode_corpus_<label>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import environment, nvidia_smi, save


def gpu_sampler(samples: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        value = nvidia_smi("utilization.gpu")
        if value is None:
            return
        samples.append(float(value))
        stop.wait(0.5)


def watch_peak_rss(child: subprocess.Popen[str]) -> int:
    """The child's VmHWM, read until it exits (ru_maxrss would include this process's image)."""
    peak = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shard-size", type=int, default=1_000_000)
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
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = watch_peak_rss(child)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    shutil.rmtree(out, ignore_errors=True)
    if child.returncode != 0:
        sys.exit(f"encode failed:\n{stderr}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    body = {
        "benchmark": "fastmarco encode, end to end",
        "wall_seconds": seconds,
        "passages_per_second_end_to_end": summary["rows"] / seconds,
        "summary": summary,
        "peak_rss_bytes": peak_rss,
        "gpu_utilization_mean": sum(samples) / len(samples) if samples else None,
        "gpu": nvidia_smi("name"),
        "environment": environment(["fastmarco", "onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy"]),
    }
    print(
        json.dumps(
            {
                k: body[k]
                for k in (
                    "wall_seconds",
                    "passages_per_second_end_to_end",
                    "peak_rss_bytes",
                    "gpu_utilization_mean",
                )
            },
            indent=2,
        )
    )
    print(f"saved {save(f'encode_corpus_{args.label}', body)}")


if __name__ == "__main__":
    main()
