"""A short seeded run of every fuzz target of benchmarks/fuzz_formats.py (which runs 100,000 inputs
each): every mutated input ends in success or a FastmarcoError, and no changed shard file or
manifest describing other files is accepted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fuzz_formats import TARGETS, run_target


@pytest.mark.parametrize("target", TARGETS)
def test_mutated_inputs_end_in_documented_errors(target: str) -> None:
    summary = run_target(target, examples=300, seed_value=20261124)
    assert summary["inputs"] == 300
    assert set(summary["outcomes"]) - {"accepted", "accepted (unchanged)"}, summary  # errors were exercised
