from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastmarco import _native

# Tests run every model on onnxruntime unless they name a runtime, so figures and golden files do not
# hang on which runtime a host's calibration picks; the choice cache stays out of the home directory.
os.environ["FASTMARCO_RUNTIME"] = "onnxruntime"

MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msmarco-mini"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests (about 20 min each on 2 cores) run only when asked: FASTMARCO_SLOW=1, or a -m
    expression that names the marker (`-m slow`); `-m "not slow"` deselects them as usual."""
    if os.environ.get("FASTMARCO_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow (about 20 min on 2 cores); run with FASTMARCO_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["FASTMARCO_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastmarco-cache"))


@pytest.fixture(params=_native.simd_compiled())
def simd(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each SIMD variant the build holds, forced for one test (as FASTMARCO_SIMD would); one this CPU
    cannot run is skipped, saying so."""
    if request.param not in _native.simd_variants():
        pytest.skip(f"this CPU cannot run the {request.param} kernels (it runs {_native.simd_variants()})")
    before = _native.simd_variant()
    _native.set_simd_variant(request.param)
    yield request.param
    _native.set_simd_variant(before)


@pytest.fixture(scope="session")
def mini() -> Path:
    """The real MS MARCO sample beside the checkout (CI has it; a user's clone may not)."""
    if not (MINI / "collection.tsv").is_file():
        pytest.skip(f"MS MARCO mini data not found at {MINI} (it lives in ../shared beside the checkout)")
    return MINI


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random sentence-transformers models, one per family (needs the export extra)."""
    pytest.importorskip("sentence_transformers", reason="needs the export extra: pip install '.[export]'")
    from tiny_models import FAMILIES, build

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def exported(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Each tiny model exported in fp32 and fp16."""
    pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")
    from fastmarco.model.export import export_model

    root = tmp_path_factory.mktemp("exported")
    out = {}
    for family, folder in tiny.items():
        for precision in ("fp32", "fp16"):
            target = root / f"{family}-{precision}"
            export_model(str(folder), target, fp16=precision == "fp16")
            out[family, precision] = target
    return out
