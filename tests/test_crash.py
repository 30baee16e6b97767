"""A writer killed with SIGKILL at any moment leaves a directory that reads back whole shards only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fastmarco import ShardFormatError, ShardSet

ROWS_PER_SHARD = 2000
DIM = 64

WRITER = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    from fastmarco import ShardWriter

    with ShardWriter(sys.argv[1], dim={DIM}, dtype="fp16", rows_per_shard={ROWS_PER_SHARD}) as writer:
        for block in range(10_000):
            rows = np.arange(block * 100, block * 100 + 100)
            vectors = (rows[:, None] % 251 + np.arange({DIM})[None, :]).astype(np.float32)
            writer.add(vectors, rows)
            if block == 3:
                print("writing", flush=True)
    """
)


def expected_vectors(rows: np.ndarray) -> np.ndarray:
    return (rows[:, None] % 251 + np.arange(DIM)[None, :]).astype(np.float16)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_sigkill_leaves_only_whole_checksummed_shards(tmp_path: Path, delay: float) -> None:
    directory = tmp_path / "shards"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, env={**os.environ}
    )
    assert process.stdout is not None
    with process.stdout:
        assert process.stdout.readline() == b"writing\n"  # the writer is inside the loop, mid-shard
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL

    with pytest.raises(ShardFormatError, match="incomplete"):
        ShardSet.open(directory)
    shard_set = ShardSet.open(directory, allow_incomplete=True, verify="checksum")
    assert all(f.rows == ROWS_PER_SHARD for f in shard_set.files)
    rows = shard_set.ids()
    np.testing.assert_array_equal(rows, np.arange(len(shard_set)))
    vectors = np.concatenate(
        [np.asarray(v) for v in shard_set.shard_vectors()] or [np.empty((0, DIM), np.float16)]
    )
    np.testing.assert_array_equal(vectors, expected_vectors(rows))
    listed = {e.vectors for e in shard_set.manifest.shards} | {e.ids for e in shard_set.manifest.shards}
    leftovers = {p.name for p in directory.iterdir()} - listed - {"manifest.json"}
    # only the shard in flight may have left files, and the manifest does not list them
    in_flight = len(shard_set.files)
    allowed = {f"vectors-{in_flight:05d}.fms.tmp", f"vectors-{in_flight:05d}.fms", f"ids-{in_flight:05d}.npy"}
    assert leftovers <= allowed | {name + ".tmp" for name in allowed} | {"manifest.json.tmp"}
