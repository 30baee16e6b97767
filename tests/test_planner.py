"""The index planner: every registered kind estimated by its family, the choice within the limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmarco.cli import main
from fastmarco.errors import InputError
from fastmarco.search.kinds import MODEL_RSS_PER_FILE_BYTE, kind_names, server_rss_bytes
from fastmarco.search.planner import choose_kind, estimate_kinds, parse_bytes, query_model_bytes
from fastmarco.store.shards import ShardSet, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planner") / "s"
    vectors = np.random.default_rng(0).standard_normal((3_000, 32)).astype(np.float16)
    write_shards(root, vectors, np.arange(3_000))
    return root


@pytest.mark.parametrize(
    ("text", "size"),
    [("2G", 2 << 30), ("1.5GiB", 3 << 29), ("800M", 800 << 20), ("4096", 4096), ("1kb", 1024)],
)
def test_sizes_read_like_people_write_them(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "0"])
def test_a_bad_size_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="--max-ram"):
        parse_bytes(text)


def test_every_kind_is_estimated_and_the_choice_is_the_best_within_the_limits(shards: Path) -> None:
    choice = choose_kind(shards, max_ram=8 << 30, target_ms=1_000)
    assert {e.kind for e in choice.estimates} == set(kind_names()) - {"auto"}
    assert choice.chosen is not None and choice.chosen.refused is None
    within = [e for e in choice.estimates if e.refused is None]
    assert all((e.recall_at_10 or 0) <= (choice.chosen.recall_at_10 or 0) for e in within)
    assert choice.chosen.kind in choice.why and "highest expected recall@10" in choice.why


def test_kinds_that_cannot_train_on_so_few_rows_say_so(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", np.ones((200, 16), dtype=np.float16), np.arange(200))
    estimates = {e.kind: e for e in choose_kind(tmp_path / "s", max_ram=8 << 30).estimates}
    assert "needs at least 256 training rows" in (estimates["pq"].refused or "")
    assert estimates["flat"].refused is None and estimates["binary"].refused is None


def test_a_tight_latency_target_rules_out_the_slow_kinds_and_nothing_fits_is_said(shards: Path) -> None:
    fast = choose_kind(shards, max_ram=8 << 30, target_ms=1e-6)
    assert fast.chosen is None and "no kind fits" in fast.why
    assert all(e.refused for e in fast.estimates)


def test_the_cli_plans_with_limits_and_builds_the_choice(shards: Path, tmp_path: Path) -> None:
    planned = CliRunner().invoke(
        main, ["index", str(shards), "--plan", "--max-ram", "4G", "--target-ms", "500"]
    )
    assert planned.exit_code == 0, planned.output
    assert "chosen:" in planned.output and "search ms" in planned.output
    # --plan builds nothing, also where --out is given (it once went on to build)
    with_out = CliRunner().invoke(main, ["index", str(shards), "--plan", "--out", str(tmp_path / "p")])
    assert with_out.exit_code == 0 and "plan:" in with_out.output and not (tmp_path / "p").exists()
    built = CliRunner().invoke(main, ["index", str(shards), "--out", str(tmp_path / "i"), "--max-ram", "4G"])
    assert built.exit_code == 0, built.output
    mixed = CliRunner().invoke(main, ["index", str(shards), "--plan", "--kind", "hnsw", "--max-ram", "4G"])
    assert mixed.exit_code == 2 and "use them with --kind auto" in mixed.output


def test_a_server_is_estimated_with_the_query_model_the_shards_were_encoded_by(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"\0" * 1_000_000)
    vectors = np.random.default_rng(1).standard_normal((500, 16)).astype(np.float16)
    write_shards(tmp_path / "with", vectors, np.arange(500), metadata={"model": {"directory": str(model)}})
    write_shards(tmp_path / "without", vectors, np.arange(500))
    with_model = ShardSet.open(tmp_path / "with")
    assert query_model_bytes(with_model) == 1_000_000
    assert query_model_bytes(ShardSet.open(tmp_path / "without")) is None
    flat = {e.kind: e for e in estimate_kinds(with_model)}["flat"]
    assert flat.serving_rss_bytes == server_rss_bytes(1_000_000)
    # a bigger model costs its file's size, and then some, in the server's memory
    bigger = {e.kind: e for e in estimate_kinds(with_model, model_bytes=101_000_000)}["flat"]
    assert bigger.serving_rss_bytes - flat.serving_rss_bytes == int(MODEL_RSS_PER_FILE_BYTE * 100_000_000)
