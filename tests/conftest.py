from __future__ import annotations

from pathlib import Path

import pytest

MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msmarco-mini"


@pytest.fixture(scope="session")
def mini() -> Path:
    """The real MS MARCO sample beside the checkout (CI has it; a user's clone may not)."""
    if not (MINI / "collection.tsv").is_file():
        pytest.skip(f"MS MARCO mini data not found at {MINI} (it lives in ../shared beside the checkout)")
    return MINI
