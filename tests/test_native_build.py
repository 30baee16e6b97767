"""The search kernel in the built extension really is vectorized (not just written to be)."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from fastmarco import _native


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks x86-64 AVX instructions")
def test_kernel_uses_256_bit_fma_and_f16c() -> None:
    if not _native.simd_fp16_enabled():
        pytest.skip("built without AVX2/F16C (FASTMARCO_MARCH does not include them)")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    listing = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", _native.__file__], capture_output=True, text=True, check=True
    ).stdout
    assert len(re.findall(r"vfmadd\d+ps\s+.*%ymm", listing)) >= 12, "micro-kernel FMAs are not 8-wide"
    assert re.search(r"vcvtph2ps\s+.*%ymm", listing), "fp16 rows are not converted 8 at a time"
