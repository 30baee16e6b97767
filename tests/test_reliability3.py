"""Reliability, round 3: each test reproduces a case a hostile probe found (or a stricter one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco._atomic import OUTPUT_MARKER
from fastmarco.cli import main
from fastmarco.errors import OutputExistsError
from fastmarco.store.shards import ShardSet, write_shards

faiss = pytest.importorskip("faiss", reason="needs faiss (the cpu extra)")

from fastmarco.search.index import build_index  # noqa: E402 - after the faiss check


def shards(path: Path, rows: int = 200) -> Path:
    write_shards(path, np.random.default_rng(0).standard_normal((rows, 8)), range(rows), rows_per_shard=100)
    return path


def listing(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the empty lock files a writer leaves beside its output."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# 1. --overwrite replaces only a folder the same verb wrote, never its inputs, never other files


def test_index_overwrite_never_replaces_the_shards_it_reads(tmp_path: Path) -> None:
    inner = shards(tmp_path / "work" / "shards")
    (tmp_path / "work" / "notes.txt").write_text("mine")
    before = listing(tmp_path / "work")
    for out in (inner, tmp_path / "work"):  # W == S, and W holding S
        command = ["index", str(inner), "--out", str(out), "--overwrite", "--kind", "flat"]
        ran = CliRunner().invoke(main, command)
        assert ran.exit_code == 1, ran.output
        assert "holds this command's own input" in ran.output and "Traceback" not in ran.output
    assert listing(tmp_path / "work") == before
    assert len(ShardSet.open(inner)) == 200


def test_overwrite_refuses_a_folder_fastmarco_did_not_write(tmp_path: Path) -> None:
    source = shards(tmp_path / "s")
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OutputExistsError, match=r"not a folder fastmarco index wrote \(it holds cat\.jpg\)"):
        build_index(source, user, kind="flat", overwrite=True)
    assert (user / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_overwrite_replaces_an_earlier_index_but_not_files_added_to_it(tmp_path: Path) -> None:
    source = shards(tmp_path / "s")
    out = tmp_path / "i"
    build_index(source, out, kind="flat")
    assert (out / OUTPUT_MARKER).is_file()
    build_index(source, out, kind="binary", overwrite=True)  # same verb: replaced
    assert "BFlat" in (out / "index.json").read_text()
    (out / "results.tsv").write_text("a run I kept here")
    with pytest.raises(OutputExistsError, match=r"did not write \(results\.tsv\)"):
        build_index(source, out, kind="flat", overwrite=True)
    assert (out / "results.tsv").read_text() == "a run I kept here"


def test_overwrite_refuses_another_verbs_output(tmp_path: Path) -> None:
    from fastmarco.model.export import export_model

    source = shards(tmp_path / "s")
    build_index(source, tmp_path / "i", kind="flat")
    with pytest.raises(OutputExistsError, match="written by fastmarco index, not export"):
        export_model(str(tmp_path / "no-model-needed"), tmp_path / "i", overwrite=True)
    assert (tmp_path / "i" / "index.json").is_file()


def test_an_empty_folder_may_be_replaced(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    build_index(shards(tmp_path / "s"), tmp_path / "i", kind="flat", overwrite=True)
    assert (tmp_path / "i" / "index.json").is_file()
