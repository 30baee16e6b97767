"""Ray on a local cluster (127.0.0.1, 2 CPUs). `fastmarco encode --ray`: the same bytes as one process,
an actor killed mid-part restarted by Ray, a stopped driver resumed, bad lines named globally.
Sharded search: shard groups on actors answer like one process; a dead actor is retried or named."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_encode import all_files, encode_cli, write_corpus
from test_groups import assert_same
from test_index import clustered

from fastmarco.cli.app import main
from fastmarco.encode.parallel import encode_corpus_on_devices
from fastmarco.errors import WorkerError
from fastmarco.progress import Update
from fastmarco.search.backends import VectorIndex
from fastmarco.search.groups import GroupedIndex
from fastmarco.search.index import build_index, build_index_groups
from fastmarco.store.shards import write_shards

ray = pytest.importorskip("ray", reason="needs Ray: pip install '.[ray]'")

from fastmarco.encode.ray_runner import RayRunner, wait_for_actor  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> object:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="fastmarco",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(exported: dict[tuple[str, str], Path]) -> Path:
    return exported["bert-mean-normalize", "fp32"]


def test_ray_workers_write_the_same_bytes_as_one_process(
    cluster: object, model: Path, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 700, seed=3)
    one = encode_cli(model, corpus, tmp_path / "one", "--device", "cpu", "--shard-size", "100")
    two = encode_cli(model, corpus, tmp_path / "two", "--devices", "cpu,cpu", "--ray", "--shard-size", "100")
    assert one["rows"] == two["rows"] == 700 and two["shards"] == 7
    assert all_files(tmp_path / "two") == all_files(tmp_path / "one")


def test_an_actor_killed_mid_part_is_restarted_and_the_result_is_unchanged(
    cluster: object, model: Path, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 3000, seed=8)
    encode_cli(model, corpus, tmp_path / "one", "--device", "cpu", "--shard-size", "100")
    killed = threading.Event()

    def kill_part_0_once(update: Update) -> None:
        # some shards written, the parts still running
        if int(update.detail["shards"]) >= 1 and not killed.is_set():
            killed.set()
            ray.kill(wait_for_actor(0), no_restart=False)

    summary = encode_corpus_on_devices(
        model,
        corpus,
        tmp_path / "ray",
        ["cpu", "cpu"],
        rows_per_shard=100,
        runner=RayRunner(poll_seconds=0.05),
        progress=kill_part_0_once,
    )
    assert killed.is_set() and summary.rows == 3000
    assert all_files(tmp_path / "ray") == all_files(tmp_path / "one")


class StopDriver(Exception):
    pass


def test_a_stopped_driver_resumes_from_finished_parts(cluster: object, model: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.tsv", 2000, seed=9)
    encode_cli(model, corpus, tmp_path / "one", "--device", "cpu", "--shard-size", "100")

    def stop_after_a_shard(update: Update) -> None:
        # both parts started (an actor can start late on a busy machine), some shards finished
        if int(update.detail["shards"]) >= 2 and len(list((tmp_path / "ray" / ".parts").glob("part-*"))) == 2:
            raise StopDriver

    with pytest.raises(StopDriver):
        encode_corpus_on_devices(
            model,
            corpus,
            tmp_path / "ray",
            ["cpu", "cpu"],
            rows_per_shard=100,
            runner=RayRunner(poll_seconds=0.05),
            progress=stop_after_a_shard,
        )
    parts = sorted((tmp_path / "ray" / ".parts").glob("part-*"))
    assert len(parts) == 2  # left for the rerun, with finished shards in them
    summary = encode_corpus_on_devices(
        model, corpus, tmp_path / "ray", ["cpu", "cpu"], rows_per_shard=100, runner=RayRunner()
    )
    assert summary.resumed_at_row > 0 and summary.rows == 2000
    assert all_files(tmp_path / "ray") == all_files(tmp_path / "one")


def test_a_bad_line_names_the_worker_and_the_global_line(
    cluster: object, model: Path, tmp_path: Path
) -> None:
    lines = write_corpus(tmp_path / "c.tsv", 300, seed=5).read_bytes().splitlines(keepends=True)
    lines[250] = b"no tab in this line\n"
    corpus = tmp_path / "c.tsv"
    corpus.write_bytes(b"".join(lines))
    reason = "expected '<id><TAB><passage>', found no tab"
    with pytest.raises(WorkerError, match=rf"Ray worker 1 \(cpu\): FormatError: {corpus}:251: {reason}"):
        encode_corpus_on_devices(
            model, corpus, tmp_path / "s", ["cpu", "cpu"], rows_per_shard=100, runner=RayRunner()
        )


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8,000 rows in four shards: a flat index over all of them, and flat and HNSW indexes in 2 groups."""
    root = tmp_path_factory.mktemp("ray-groups")
    write_shards(root / "shards", clustered(8_000, 32, 6), np.arange(8_000) + 100, rows_per_shard=2_000)
    build_index(root / "shards", root / "whole", kind="flat")
    build_index_groups(root / "shards", root / "flat", 2, kind="flat")
    build_index_groups(root / "shards", root / "hnsw", 2, kind="hnsw")
    return root


QUERIES = clustered(48, 32, 7)


def test_groups_on_actors_answer_like_one_process(cluster: object, grouped: Path) -> None:
    whole = VectorIndex.open(grouped / "whole").search(QUERIES, 20)
    with GroupedIndex.open(grouped / "flat", ray=True) as on_ray:
        assert_same(on_ray.search(QUERIES, 20), whole)
    local = GroupedIndex.open(grouped / "hnsw").search(QUERIES, 20)
    with GroupedIndex.open(grouped / "hnsw", ray=True) as on_ray:  # same graphs, same answers
        assert_same(on_ray.search(QUERIES, 20), local)
        assert_same(on_ray.search(QUERIES[:1], 5), GroupedIndex.open(grouped / "hnsw").search(QUERIES[:1], 5))


def test_a_killed_group_actor_is_restarted_and_the_search_retried(cluster: object, grouped: Path) -> None:
    expected = VectorIndex.open(grouped / "whole").search(QUERIES, 10)
    with GroupedIndex.open(grouped / "flat", ray=True, max_restarts=1) as on_ray:
        ray.kill(on_ray.searcher.actors[1], no_restart=False)
        assert_same(on_ray.search(QUERIES, 10), expected)


def test_a_dead_group_actor_is_an_error_naming_the_group(cluster: object, grouped: Path) -> None:
    with GroupedIndex.open(grouped / "flat", ray=True, max_restarts=0) as on_ray:
        ray.kill(on_ray.searcher.actors[1], no_restart=True)
        with pytest.raises(
            WorkerError,
            match=r"shard group group-001 \(shards 2-3, rows 4,000-7,999\) failed while searching: .*"
            "no results returned",
        ):
            on_ray.search(QUERIES, 10)


def test_a_group_that_cannot_open_is_named(cluster: object, grouped: Path, tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", clustered(4_000, 16, 3), np.arange(4_000), rows_per_shard=1_000)
    build_index_groups(tmp_path / "shards", tmp_path / "g", 2, kind="flat")
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    shard = tmp_path / "shards" / manifest["shards"][3]["vectors"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only a checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(
        WorkerError, match=r"shard group group-001 \(shards 2-3, .*could not be opened: ShardChecksumError"
    ):
        GroupedIndex.open(tmp_path / "g", ray=True)


def test_query_cli_on_ray_prints_what_one_process_prints(
    cluster: object, model: Path, tmp_path: Path
) -> None:
    from fastmarco.corpus.bundled import demo_corpus_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.model.encoder import Encoder

    encode_corpus(Encoder.open(model, device="cpu"), demo_corpus_path(), tmp_path / "s", rows_per_shard=16)
    build_index_groups(tmp_path / "s", tmp_path / "g", 2)
    runner = CliRunner()
    command = ["query", str(tmp_path / "g"), "tea", "-k", "8", "--device", "cpu", "--json"]
    answers = [runner.invoke(main, command + ray_args) for ray_args in ([], ["--ray"])]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    assert json.loads(answers[0].output) == json.loads(answers[1].output)
