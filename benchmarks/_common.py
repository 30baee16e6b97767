"""What every benchmark records next to its numbers: machine, versions, command."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# FASTMARCO_RESULTS moves them (gpu_session.sh writes straight to the device call's $OUT; its CI dry
# run to a temporary folder, so the committed figures are never overwritten by a test).
RESULTS = Path(os.environ.get("FASTMARCO_RESULTS") or Path(__file__).parent / "results")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The instruction sets the native kernels and ONNX Runtime pick from: figures are kept per CPU family.
CPU_FLAGS = (
    "popcnt",
    "f16c",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vpopcntdq",
    "amx_tile",
)


def cpu_flags() -> list[str]:
    """The CPU_FLAGS this machine has (from /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS if flag in have]
    except OSError:
        pass
    return []


def cpu_family() -> str:
    """The family a result is kept under (results are never overwritten by another family's)."""
    flags = cpu_flags()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"


def environment(packages: list[str]) -> dict[str, Any]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def proc_status_bytes(field: str, pid: int | str = "self") -> int | None:
    """A memory field of /proc/PID/status (VmHWM: peak resident, reset by exec unlike ru_maxrss;
    RssAnon: anonymous resident, not the page cache of maps) in bytes; None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(f"{field}:")), None)


def nvidia_smi(field: str) -> str | None:
    """One `nvidia-smi --query-gpu` field of the first GPU (e.g. name, utilization.gpu); None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def save(name: str, body: dict[str, Any]) -> Path:
    """Write results/<name>.json atomically and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)
    return path


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically."""
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    tmp.replace(path)
