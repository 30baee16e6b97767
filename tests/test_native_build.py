"""The built extension really holds vectorized kernels (not just code written to be), whatever
-march it was built with, and FASTMARCO_SIMD picks among them."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastmarco import _native
from fastmarco.cli import main


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks x86-64 AVX instructions")
def test_every_build_holds_256_bit_fma_and_f16c_kernels() -> None:
    """The AVX2 variant is compiled into every x86-64 build, the portable default included."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    listing = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", _native.__file__], capture_output=True, text=True, check=True
    ).stdout
    assert len(re.findall(r"vfmadd\d+ps\s+.*%ymm", listing)) >= 12, "micro-kernel FMAs are not 8-wide"
    assert re.search(r"vcvtph2ps\s+.*%ymm", listing), "fp16 rows are not converted 8 at a time"


def _variant_under(forced: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastmarco", "info"],
        capture_output=True,
        text=True,
        env={**os.environ, "FASTMARCO_SIMD": forced},
        timeout=120,
    )


def test_fastmarco_simd_forces_a_variant_and_info_says_which() -> None:
    for variant in _native.simd_variants():
        done = _variant_under(variant)
        assert done.returncode == 0, done.stderr
        assert f"SIMD variant: {variant} " in done.stdout
    wrong = _variant_under("avx9")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "FASTMARCO_SIMD: 'avx9' is not a SIMD variant of this build" in wrong.stderr
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0 and f"SIMD variant: {_native.simd_variant()}" in result.output


@pytest.mark.parametrize(
    "defines", [[], ["-DFASTMARCO_BASELINE_ONLY"]], ids=["x86-variants", "baseline-only"]
)
def test_the_kernels_compile_warning_free_with_and_without_x86_variants(defines: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """baseline-only is what an aarch64 build compiles (no x86 intrinsics, no target regions): checked
    here on x86, where no ARM compiler is at hand."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    for source in ("exact_search.cpp", "refine.cpp", "hamming.cpp", "simd.cpp"):
        done = subprocess.run(
            [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", *defines, "-I", str(csrc), "-c",
             str(csrc / source), "-o", str(tmp_path / "out.o")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, f"{source}: {done.stderr[-2000:]}"
