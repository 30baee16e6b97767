"""What Ray costs at small scale: the same 2,000 real MS MARCO passages (the first of the mini
collection) encoded by the bundled all-MiniLM-L6-v2 (fp32 export) in one process, with
`--devices cpu,cpu` (two local processes) and with `--devices cpu,cpu --ray` (two Ray actors on a
local cluster, its start-up included), in one run on this machine. Each result is checked to be
byte-identical to the one-process shards.

    python benchmarks/bench_ray_encode.py [--passages 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save
from shaped_models import minilm_folder

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini"


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    with open(MINI / "collection.tsv", "rb") as source:
        (work / "corpus.tsv").write_bytes(b"".join(next(source) for _ in range(args.passages)))
    subprocess.run(["fastmarco", "export", str(minilm_folder()), "--out", str(work / "minilm")], check=True)
    base = ["fastmarco", "encode", "--model", str(work / "minilm"), "--corpus", str(work / "corpus.tsv")]
    base += ["--shard-size", str(args.passages // 4), "--quiet"]
    runs = {
        "one process": ["--device", "cpu"],
        "--devices cpu,cpu": ["--devices", "cpu,cpu"],
        "--devices cpu,cpu --ray": ["--devices", "cpu,cpu", "--ray"],
    }
    results: dict[str, dict[str, float | bool]] = {}
    for name, extra in runs.items():
        out = work / name.replace(" ", "_").replace(",", "_").replace("-", "")
        started = time.perf_counter()
        subprocess.run([*base, "--out", str(out), *extra], check=True, capture_output=True)
        seconds = time.perf_counter() - started
        results[name] = {
            "seconds": round(seconds, 2),
            "identical_to_one_process": files(out) == files(work / "one_process") if results else True,
        }
        print(name, json.dumps(results[name]), flush=True)
    one = float(results["one process"]["seconds"])
    local = float(results["--devices cpu,cpu"]["seconds"])
    on_ray = float(results["--devices cpu,cpu --ray"]["seconds"])
    overhead = {
        "ray_vs_local_processes_seconds": round(on_ray - local, 2),
        "ray_vs_local_processes_percent": round(100 * (on_ray - local) / local, 1),
        "ray_vs_one_process_seconds": round(on_ray - one, 2),
    }
    print(json.dumps(overhead))
    body = {"passages": args.passages, "runs": results, "overhead": overhead}
    print(save("ray_encode", body | {"environment": environment(["fastmarco", "ray", "onnxruntime"])}))


if __name__ == "__main__":
    main()
