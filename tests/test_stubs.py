"""The checked-in _native.pyi must be what pybind11-stubgen generates from the built module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKED_IN = Path(__file__).resolve().parents[1] / "src" / "fastmarco" / "_native.pyi"


def test_native_stub_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("pybind11_stubgen")
    subprocess.run(
        [sys.executable, "-m", "pybind11_stubgen", "fastmarco._native", "-o", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = (tmp_path / "fastmarco" / "_native.pyi").read_text()
    assert generated == CHECKED_IN.read_text(), (
        "src/fastmarco/_native.pyi is stale; regenerate it with: "
        "python -m pybind11_stubgen fastmarco._native -o /tmp/stubs && "
        "cp /tmp/stubs/fastmarco/_native.pyi src/fastmarco/"
    )
