"""benchmarks/cpuid_mask: an emulated CPU family is what every library in the process, and in its
children, reads from CPUID; the program's own crash handlers still run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastmarco.model.runtimes import cpu_flags


def load_cpuid_mask() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpuid_mask.py"
    spec = importlib.util.spec_from_file_location("cpuid_mask", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpuid_mask = load_cpuid_mask()

SEEN = (  # what numpy read from CPUID in this process
    "from numpy._core._multiarray_umath import __cpu_features__ as f; "
    "print(sorted(k for k, v in f.items() if v))"
)


def cleared(isa: str) -> dict[tuple[int, int, str], int]:
    """CPUID_MASK for ISA, read back: (leaf, subleaf, register) -> bits cleared."""
    rules = {}
    for rule in cpuid_mask.mask(isa).split(","):
        where, bits = rule.split("=")
        leaf, subleaf, register = where.split(".")
        rules[(int(leaf, 16), int(subleaf, 16), register)] = int(bits, 16)
    return rules


def is_cleared(isa: str, feature: str) -> bool:
    leaf, subleaf, register, bit, _ = cpuid_mask.FEATURES[feature]
    return bool(cleared(isa).get((leaf, subleaf, register), 0) >> bit & 1)


@pytest.mark.parametrize(
    ("isa", "kept", "gone"),
    [
        (
            "AVX2",
            [],
            ["avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8"],
        ),
        ("AVX2_VNNI", ["avx_vnni"], ["avx512f", "avx512_vnni", "amx_int8"]),
        (
            "AVX512_CORE_VNNI",
            ["avx512f", "avx512bw", "avx512_vnni"],
            ["avx512_bf16", "avx512ifma", "amx_tile"],
        ),
        (
            "AVX512_CORE_BF16",  # Zen 4: Ice Lake's extensions and bf16, no fp16, no AMX, no VEX VNNI
            ["avx512f", "avx512_vnni", "avx512_bf16", "avx512vbmi", "avx512_vpopcntdq"],
            ["avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni"],
        ),
        ("AVX512_CORE_AMX", ["avx512_fp16", "amx_tile", "amx_int8", "avx_vnni"], ["amx_fp16"]),
    ],
)
def test_a_family_keeps_what_its_onednn_isa_holds(isa: str, kept: list[str], gone: list[str]) -> None:
    assert [f for f in kept if is_cleared(isa, f)] == []
    assert [f for f in gone if not is_cleared(isa, f)] == []


def masked_python(
    tmp_path: Path, isa: str, *args: str, mask: str | None = None
) -> subprocess.CompletedProcess[str]:
    why = cpuid_mask.unavailable() or (None if shutil.which(os.environ.get("CC", "cc")) else "no C compiler")
    if why:
        pytest.skip(why)
    env = os.environ | cpuid_mask.environment(isa, tmp_path)
    if mask is not None:
        env[cpuid_mask.MASK] = mask
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="needs a CPU with AVX-512 to mask it away")
def test_masked_avx2_is_what_numpy_and_a_grandchild_see(tmp_path: Path) -> None:
    child = f"import subprocess, sys; {SEEN}; subprocess.run([sys.executable, '-c', {SEEN!r}], check=True)"
    done = masked_python(tmp_path, "AVX2", "-c", child)
    assert done.returncode == 0, done.stderr
    seen, grandchild = done.stdout.splitlines()
    assert seen == grandchild
    assert "AVX2" in seen and "FMA3" in seen
    assert "AVX512F" not in seen and "AVX512VNNI" not in seen and "AVX512BF16" not in seen


def test_a_crash_still_reaches_pythons_faulthandler(tmp_path: Path) -> None:
    done = masked_python(tmp_path, "AVX2", "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)")
    assert done.returncode == -11
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "string_at" in done.stderr


def test_a_malformed_mask_stops_the_process_before_it_measures_anything(tmp_path: Path) -> None:
    done = masked_python(tmp_path, "AVX2", "-c", "print('ran')", mask="7.0.esi=10")
    assert done.returncode == 3
    assert done.stdout == ""
    assert "cpuid_mask: CPUID_MASK is not leaf.subleaf.reg=bits" in done.stderr
