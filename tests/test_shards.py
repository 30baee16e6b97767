from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash

from fastmarco import (
    FastmarcoError,
    InputError,
    ShardChecksumError,
    ShardFormatError,
    ShardSet,
    ShardWriter,
    StoreIOError,
    _native,
)
from fastmarco.search.exact import search_shards
from fastmarco.store.shards import write_shards

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import fixture_vectors  # noqa: E402


def make_set(tmp_path: Path, name: str = "set", rows: int = 10, dim: int = 4, **options: object) -> Path:
    directory = tmp_path / name
    vectors = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    write_shards(directory, vectors, np.arange(rows), rows_per_shard=4, **options)
    return directory


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


# --- round trips and fixtures ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["v1-fp16-int", "v1-fp32-str"])
def test_versioned_fixtures_still_load(name: str) -> None:
    shard_set = ShardSet.open(FIXTURES / name, verify="checksum")
    rows, dim = (10, 6) if "fp16" in name else (7, 3)
    expected = fixture_vectors(rows, dim).astype(np.float16 if "fp16" in name else np.float32)
    np.testing.assert_array_equal(np.concatenate(list(shard_set.shard_vectors())), expected)
    assert shard_set.metadata == {"fixture": 1}
    if "int" in name:
        np.testing.assert_array_equal(shard_set.ids(), np.arange(10) * 7 + 100)
    else:
        assert shard_set.ids().tolist() == [f"doc-{i}-é" for i in range(7)]


def test_round_trip_splits_into_shards_and_keeps_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((25, 8)).astype(np.float32)
    with ShardWriter(
        tmp_path / "s", dim=8, dtype="fp32", rows_per_shard=10, metadata={"model": "m1"}
    ) as writer:
        writer.add(vectors[:3], range(3))
        writer.add(vectors[3:], range(3, 25))
    shard_set = ShardSet.open(tmp_path / "s", verify="checksum")
    assert [f.rows for f in shard_set.files] == [10, 10, 5]
    assert len(shard_set) == 25 and shard_set.metadata == {"model": "m1"}
    np.testing.assert_array_equal(np.concatenate(list(shard_set.shard_vectors())), vectors)
    np.testing.assert_array_equal(shard_set.ids([[24, -1], [0, 11]]), [[24, -1], [0, 11]])


def test_string_ids_round_trip(tmp_path: Path) -> None:
    ids = ["D1555982", "doc with spaces", "Ã©mojibake"]
    write_shards(tmp_path / "s", np.ones((3, 2)), ids, id_type="str", rows_per_shard=2)
    shard_set = ShardSet.open(tmp_path / "s", verify="checksum")
    assert shard_set.ids().tolist() == ids
    assert shard_set.ids(np.array([2, -1])).tolist() == ["Ã©mojibake", ""]


def test_payload_checksum_is_xxh3_64(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    shard = ShardSet.open(directory).files[0]
    raw = (directory / "vectors-00000.fms").read_bytes()[_native.HEADER_BYTES :]
    assert shard.checksum == xxhash.xxh3_64_intdigest(raw)
    assert _native.checksum(b"fastmarco") == xxhash.xxh3_64_intdigest(b"fastmarco")


@pytest.mark.parametrize(
    ("vectors", "ids", "options", "message"),
    [
        (np.ones((2, 3)), [1, 2], {}, r"shape \(n, 4\)"),
        (np.ones((2, 4)), [1], {}, "got 2 vectors but 1 ids"),
        (np.array([[1, 2, 3, np.nan]]), [1], {}, "row 0 is not finite"),
        (np.array([[1, 2, 3, 70000.0]]), [1], {}, "beyond the fp16 range"),
        (np.ones((2, 4)), [1, "x"], {}, "id of row 1 must be an integer"),
        (np.ones((2, 4)), ["a", "b\tc"], {"id_type": "str"}, "id of row 1 must be a non-empty str"),
        (np.ones((1, 4), dtype=np.int32), [1], {}, "must be floating point"),
    ],
)
def test_writer_rejects_bad_rows_without_writing_them(tmp_path: Path, vectors, ids, options, message) -> None:  # type: ignore[no-untyped-def]
    with ShardWriter(tmp_path / "s", dim=4, **options) as writer:
        with pytest.raises(ValueError, match=message):
            writer.add(vectors, ids)
        assert writer.rows == 0


def test_writer_refuses_existing_set(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    with pytest.raises(FileExistsError, match="already holds a shard set"):
        ShardWriter(directory, dim=4)


def test_exception_inside_writer_keeps_finished_shards_only(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        ShardWriter(tmp_path / "s", dim=2, rows_per_shard=4) as writer,
    ):
        writer.add(np.ones((6, 2)), range(6))
        raise RuntimeError("boom")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "ids-00000.npy",
        "manifest.json",
        "vectors-00000.fms",
    ]
    with pytest.raises(ShardFormatError, match="incomplete"):
        ShardSet.open(tmp_path / "s")
    assert len(ShardSet.open(tmp_path / "s", allow_incomplete=True)) == 4


# --- corruption: each case names the file ------------------------------------------------------


def test_bad_magic(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    poke(directory / "vectors-00001.fms", 0, b"XX")
    with pytest.raises(
        ShardFormatError, match=r"vectors-00001\.fms' is not a fastmarco shard \(bad magic bytes\)"
    ):
        ShardSet.open(directory)


def test_unknown_format_version(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    poke(directory / "vectors-00000.fms", 8, struct.pack("<I", 7))
    with pytest.raises(
        ShardFormatError, match=r"vectors-00000\.fms' has format version 7; this build .* reads version 1"
    ):
        ShardSet.open(directory)


def test_corrupt_header(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    poke(directory / "vectors-00000.fms", 24, struct.pack("<Q", 3))
    with pytest.raises(ShardFormatError, match=r"vectors-00000\.fms' has a corrupt header"):
        ShardSet.open(directory)


@pytest.mark.parametrize("keep", [10, 64 + 8])
def test_truncated_payload(tmp_path: Path, keep: int) -> None:
    directory = make_set(tmp_path)
    path = directory / "vectors-00002.fms"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ShardFormatError, match=r"vectors-00002\.fms' is truncated"):
        ShardSet.open(directory)


def test_trailing_bytes(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    with open(directory / "vectors-00000.fms", "ab") as handle:
        handle.write(b"\0" * 4)
    with pytest.raises(ShardFormatError, match="has trailing bytes"):
        ShardSet.open(directory)


def test_payload_checksum_mismatch(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    poke(directory / "vectors-00001.fms", 64 + 5, b"\x7f")
    ShardSet.open(directory, verify="size")  # a size check cannot see a flipped byte
    with pytest.raises(ShardChecksumError, match=r"vectors-00001\.fms' payload checksum mismatch"):
        ShardSet.open(directory, verify="checksum")
    _, statuses = ShardSet.verify(directory)
    assert [s.error is None for s in statuses] == [True, False, True]


def test_id_file_checksum_mismatch(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    ids = directory / "ids-00000.npy"
    ids.write_bytes(ids.read_bytes()[:-1] + b"\x09")
    with pytest.raises(ShardChecksumError, match=r"ids-00000\.npy' hashes to"):
        ShardSet.open(directory, verify="checksum")


def test_dim_mismatch_across_shards(tmp_path: Path) -> None:
    directory = make_set(tmp_path, dim=4)
    other = make_set(tmp_path, "other", dim=2, rows=4)
    shutil.copy(other / "vectors-00000.fms", directory / "vectors-00001.fms")
    with pytest.raises(ShardFormatError, match=r"vectors-00001\.fms' has dim 2, but the shard set has dim 4"):
        ShardSet.open(directory)


def test_shard_replaced_by_another_with_same_shape(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    shutil.copy(directory / "vectors-00000.fms", directory / "vectors-00001.fms")
    with pytest.raises(
        ShardChecksumError, match=r"vectors-00001\.fms' has checksum .* but the manifest lists"
    ):
        ShardSet.open(directory)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ShardFormatError, match=r"manifest\.json: not found"):
        ShardSet.open(tmp_path)


def test_manifest_invalid_json_names_the_line(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    text = (directory / "manifest.json").read_text().replace('"dim": 4,', '"dim": 4,,')
    (directory / "manifest.json").write_text(text)
    with pytest.raises(ShardFormatError, match=r"manifest\.json:4: invalid JSON"):
        ShardSet.open(directory)


def test_manifest_bad_field_is_named(tmp_path: Path) -> None:
    directory = make_set(tmp_path)
    body = json.loads((directory / "manifest.json").read_text())
    body["dtype"] = "int8"
    (directory / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(
        ShardFormatError, match=r"field 'dtype' must be one of \['fp16', 'fp32'\], got 'int8'"
    ):
        ShardSet.open(directory)


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_manifest_id_type_must_match_the_id_files(tmp_path: Path, id_type: str) -> None:
    # found by benchmarks/fuzz_formats.py: id_type flipped over unchanged .npy files was accepted
    ids = range(6) if id_type == "int" else [f"p{i}" for i in range(6)]
    write_shards(tmp_path, np.ones((6, 3)), ids, rows_per_shard=4, id_type=id_type)
    body = json.loads((tmp_path / "manifest.json").read_text())
    body["id_type"] = "str" if id_type == "int" else "int"
    (tmp_path / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(ShardFormatError, match=r"shards\[0\]\.ids.*field 'id_type'"):
        ShardSet.open(tmp_path, verify="checksum")


def test_an_unreadable_id_file_is_refused_at_open(tmp_path: Path) -> None:
    write_shards(tmp_path, np.ones((4, 3)), range(4))
    (tmp_path / "ids-00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ShardChecksumError, match=r"ids-00000\.npy' hashes to"):
        ShardSet.open(tmp_path, verify="size")  # the id files are hashed even without verify


def test_native_writer_never_publishes_a_partial_file(tmp_path: Path) -> None:
    writer = _native.ShardFileWriter(str(tmp_path / "a.fms"), "fp32", 3)
    writer.append(np.ones((2, 3), np.float32))
    assert not (tmp_path / "a.fms").exists() and (tmp_path / "a.fms.tmp").exists()
    with pytest.raises(ShardFormatError, match="bad magic"):
        _native.ShardFile(str(tmp_path / "a.fms.tmp"))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            np.ones((2, 1), np.float16),
            r"rows must have shape \(n, 4\), got \(2, 1\)",
        ),  # published 28 bytes before
        (
            np.ones((200_000, 1), np.float32),
            r"rows must have shape \(n, 4\), got \(200000, 1\)",
        ),  # read OOB before
        (np.ones((2, 4), np.float16), "rows must be float32 for this fp32 shard, got float16"),
        (np.ones((2, 8), np.float32)[:, ::2], "rows must be C-contiguous"),
        (np.ones((2, 4), np.float64), "rows must be float32 or float16"),
        (np.ones(4, np.float32), r"rows must have shape \(n, 4\), got \(4,\)"),
    ],
)
def test_native_writer_checks_every_array_against_its_own_dtype_and_dim(
    tmp_path: Path, rows: np.ndarray, message: str
) -> None:
    writer = _native.ShardFileWriter(str(tmp_path / "a.fms"), "fp32", 4)
    assert (writer.dtype, writer.dim) == ("fp32", 4)
    with pytest.raises(InputError, match=message):
        writer.append(rows)
    assert writer.rows == 0
    assert writer.finalize() == _native.checksum(b"")  # nothing of the bad arrays was written
    assert _native.ShardFile(str(tmp_path / "a.fms"), True).rows == 0


def test_native_errors_are_fastmarco_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreIOError, match=r"cannot open shard '.*missing\.fms': No such file"):
        _native.ShardFile(str(tmp_path / "missing.fms"))
    (tmp_path / "junk.fms").write_bytes(b"x" * 100)
    with pytest.raises(ShardFormatError, match="bad magic") as info:
        _native.ShardFile(str(tmp_path / "junk.fms"))
    assert isinstance(info.value, FastmarcoError) and isinstance(info.value, ValueError)


def test_checksum_mismatch_is_reported_in_hex_like_the_manifest(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", np.ones((5, 3)), range(5))
    with open(tmp_path / "s" / "vectors-00000.fms", "r+b") as handle:
        handle.seek(70)
        handle.write(b"\x01")
    with pytest.raises(ShardChecksumError, match=r"header says [0-9a-f]{16}, payload hashes to [0-9a-f]{16}"):
        ShardSet.open(tmp_path / "s", verify="checksum")


def test_nonzero_reserved_header_bytes_are_refused(tmp_path: Path) -> None:
    """No checksum covers header bytes 48-63, so a flip there must not pass silently."""
    write_shards(tmp_path / "s", np.ones((5, 3)), range(5))
    with open(tmp_path / "s" / "vectors-00000.fms", "r+b") as handle:
        handle.seek(50)
        handle.write(b"\x01")
    with pytest.raises(ShardFormatError, match="reserved byte 50 is not zero"):
        ShardSet.open(tmp_path / "s")


def test_a_shard_edited_in_place_while_open_is_refused_not_a_sigbus(tmp_path: Path) -> None:
    write_shards(tmp_path / "big", np.ones((4000, 8)), range(4000))
    write_shards(tmp_path / "small", np.zeros((10, 8)), range(10))
    write_shards(tmp_path / "same", np.full((4000, 8), 2.0), range(4000))
    shard_set = ShardSet.open(tmp_path / "big")
    assert search_shards(shard_set, np.ones(8), 1)[0][0, 0] == 8.0
    big_file = tmp_path / "big" / "vectors-00000.fms"
    # `cp small big`: the same inode truncated and rewritten under the map
    big_file.write_bytes((tmp_path / "small" / "vectors-00000.fms").read_bytes())
    with pytest.raises(ShardFormatError, match="was modified in place since it was opened"):
        search_shards(shard_set, np.ones(8), 1)

    write_shards(tmp_path / "big2", np.ones((4000, 8)), range(4000))
    shard_set = ShardSet.open(tmp_path / "big2")
    time.sleep(0.01)  # a distinct modification time
    (tmp_path / "big2" / "vectors-00000.fms").write_bytes(
        (tmp_path / "same" / "vectors-00000.fms").read_bytes()
    )
    with pytest.raises(ShardFormatError, match="was modified in place"):
        search_shards(shard_set, np.ones(8), 1)

    write_shards(tmp_path / "big3", np.ones((4000, 8)), range(4000))
    shard_set = ShardSet.open(tmp_path / "big3")
    os.replace(tmp_path / "same" / "vectors-00000.fms", tmp_path / "big3" / "vectors-00000.fms")
    with pytest.raises(ShardFormatError, match="was replaced or removed"):
        search_shards(shard_set, np.ones(8), 1)


def test_ids_beyond_int64_are_refused_never_wrapped_or_rounded(tmp_path: Path) -> None:
    for ids, message in (
        ([1, 2**63], "id of row 1 is 9223372036854775808, outside the int64 range"),
        ([2**64], "id of row 0 is 18446744073709551616, outside the int64 range"),
        (np.array([1, 2**63], dtype=np.uint64), "id of row 1 is 9223372036854775808, beyond the int64 range"),
        ([1, 2.0], r"id of row 1 must be an integer, got 2\.0"),
    ):
        with pytest.raises(InputError, match=message), ShardWriter(tmp_path / "w", dim=2) as writer:
            writer.add(np.ones((len(ids), 2)), ids)
        shutil.rmtree(tmp_path / "w")
    big = [1, 1152921504606846977, 2**63 - 1]  # as a NumPy float64 array these would round
    write_shards(tmp_path / "ok", np.ones((3, 2)), big)
    assert ShardSet.open(tmp_path / "ok").ids().tolist() == big
