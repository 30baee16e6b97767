"""`fastmarco encode --ray` on a local Ray cluster (127.0.0.1, 2 CPUs): the same bytes as one process,
an actor killed mid-part restarted by Ray, a stopped driver resumed, bad lines named globally."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_encode import all_files, encode_cli, write_corpus

from fastmarco.encode.parallel import encode_corpus_on_devices
from fastmarco.errors import WorkerError

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

    def kill_part_0_once(rows: int, total: int, tokens: int, shards: int) -> None:
        if shards >= 1 and not killed.is_set():  # some shards written, the parts still running
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

    def stop_after_a_shard(rows: int, total: int, tokens: int, shards: int) -> None:
        if shards >= 2:
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
    with pytest.raises(WorkerError, match=rf"Ray worker 1 \(cpu\): FormatError: {corpus}:251: no tab"):
        encode_corpus_on_devices(
            model, corpus, tmp_path / "s", ["cpu", "cpu"], rows_per_shard=100, runner=RayRunner()
        )
