"""Fuzz the readers of everything fastmarco loads from disk, with hypothesis.

    python benchmarks/fuzz_formats.py [--examples 100000] [--targets shard-file,...] [--seed 0] [--jobs 2]

Each target starts from valid files fastmarco itself wrote and feeds mutated copies to its reader: 1 to
6 edits each (byte flips, special bytes such as NUL, tab, CR, BOM or a lone UTF-8 lead byte, insertions,
deletions, truncation, duplicated spans) and, for JSON manifests, also a field anywhere in the document
replaced by an arbitrary JSON value. Hypothesis draws the edits from a seeded random source (one draw
per input keeps it at about a millisecond an input; atheris 3.0 was tried and its `instrument_all`
slowed every call a hundredfold on this machine). Every input must end in success or in a `FastmarcoError`
(the documented error types); anything else, a crash, a hang past the time limit, or a reader that
accepts a shard file or manifest whose checksummed bytes changed, is a failure. Each target runs in its
own process, so a segfault is counted, not fatal. The summary goes to results/fuzz.json.
tests/test_fuzz.py runs the same targets for a few hundred seeded inputs each.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fastmarco import _native
from fastmarco.errors import FastmarcoError
from fastmarco.model.manifest import ModelManifest
from fastmarco.search.index import IndexManifest
from fastmarco.store.formats import load_qrels, load_queries, read_collection, read_run, read_run_columns
from fastmarco.store.passages import PassageStore
from fastmarco.store.shards import ShardSet, write_shards

# ---------------------------------------------------------------------------------------------- inputs

SPECIAL = [
    b"\x00",
    b"\xff",
    b"\n",
    b"\t",
    b"\r",
    b" ",
    b'"',
    b"{",
    b"}",
    b"-",
    b"9",
    b"\xef\xbb\xbf",
    b"\xc3",
]
JSON_VALUES: list[Any] = [
    *(None, True, False, 0, -1, 2**63, 2**64, -(2**63) - 1, 1.5, "", "x"),
    *("fp16", "fp32", "int", "str", "Flat", "../x", "/", "ip"),
    *([], {}, [1], {"a": 1}, ["a", "b"], [["a", "b"]]),
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1 to 6 random edits of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randint(0, len(out))
        kind = rng.choice(("flip", "set", "insert", "delete", "truncate", "duplicate"))
        if kind == "flip" and out:
            out[at % len(out)] ^= rng.randint(1, 255)
        elif kind == "set" and out:
            out[at % len(out) : at % len(out) + 1] = rng.choice(SPECIAL)
        elif kind == "insert":
            out[at:at] = rng.choice([rng.randbytes(rng.randint(1, 8)), rng.choice(SPECIAL)])
        elif kind == "delete":
            del out[at : at + rng.randint(1, 64)]
        elif kind == "truncate":
            del out[at:]
        elif kind == "duplicate":
            out[at:at] = out[at : at + rng.randint(1, 64)]
    return bytes(out)


def replace_json_field(text: bytes, rng: random.Random) -> bytes:
    """Replace one field (chosen among every nested key and list slot) of a JSON document."""
    body = json.loads(text)
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in items:
            slots.append((node, key))
            walk(child)

    walk(body)
    if slots:
        container, key = rng.choice(slots)
        container[key] = rng.choice(JSON_VALUES)
    return json.dumps(body).encode()


# --------------------------------------------------------------------------------------------- targets


class Target:
    """Valid sample files, and a check that reads one mutated file and returns its outcome."""

    name = ""
    filename = ""
    json_document = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.samples: list[bytes] = []

    def check(self, data: bytes) -> str:
        raise NotImplementedError

    def outcome(self, data: bytes, read: Callable[[], object]) -> str:
        try:
            read()
        except FastmarcoError as exc:
            return type(exc).__name__
        return "accepted" if data not in self.samples else "accepted (unchanged)"


class ShardFileTarget(Target):
    """One vectors file: header checks, size checks, payload checksum."""

    name, filename = "shard-file", "vectors-00000.fms"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        rng = np.random.default_rng(0)
        for dtype, rows in (("fp16", 6), ("fp32", 3), ("fp16", 1)):
            directory = root / f"source-{dtype}-{rows}"
            write_shards(directory, rng.standard_normal((rows, 5)), range(rows), dtype=dtype)
            self.samples.append((directory / self.filename).read_bytes())
        self.path = root / self.filename

    def check(self, data: bytes) -> str:
        self.path.write_bytes(data)
        result = self.outcome(data, lambda: _native.ShardFile(str(self.path), True))
        if result == "accepted":
            raise AssertionError(f"a changed shard file passed every check: {data.hex()}")
        return result


class ShardManifestTarget(Target):
    """A whole shard directory opened with verify='checksum', manifest mutated."""

    name, filename, json_document = "shard-manifest", "manifest.json", True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.directory = root / "shards"
        write_shards(self.directory, np.arange(30.0).reshape(10, 3), range(10), rows_per_shard=4)
        self.samples.append((self.directory / self.filename).read_bytes())
        self.original = ShardSet.open(self.directory).manifest

    def check(self, data: bytes) -> str:
        (self.directory / self.filename).write_bytes(data)
        opened: list[ShardSet] = []
        result = self.outcome(
            data,
            lambda: opened.append(ShardSet.open(self.directory, verify="checksum", allow_incomplete=True)),
        )
        if opened:
            got, want = opened[0].manifest, self.original
            described = [(e.vectors, e.ids, e.rows, e.checksum, e.ids_checksum) for e in got.shards]
            if (got.dim, got.dtype, got.id_type) != (want.dim, want.dtype, want.id_type) or not set(
                described
            ) <= {(e.vectors, e.ids, e.rows, e.checksum, e.ids_checksum) for e in want.shards}:
                raise AssertionError(f"a manifest describing other files was accepted: {data!r}")
            opened[0].ids()
        return result


class IndexManifestTarget(Target):
    name, filename, json_document = "index-manifest", "index.json", True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        manifest = IndexManifest("flat", "Flat", 10, 3, "../shards", "00" * 8, shard_checksums=[["a", "b"]])
        manifest.save(root)
        self.samples.append((root / self.filename).read_bytes())

    def check(self, data: bytes) -> str:
        (self.root / self.filename).write_bytes(data)
        return self.outcome(data, lambda: IndexManifest.load(self.root))


class ModelManifestTarget(Target):
    name, filename, json_document = "model-manifest", "fastmarco.json", True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        body = {
            "format": "fastmarco-model",
            "version": 1,
            "model": "model.onnx",
            "output": "sentence_embedding",
            "dim": 384,
            "fingerprint": "ab" * 32,
            "max_seq_length": 256,
            "similarity": "cosine",
            "precision": "fp32",
            "do_lower_case": True,
            "pad_token_id": 0,
        }
        (root / "model.onnx").write_bytes(b"")
        (root / "tokenizer.json").write_bytes(b"{}")
        self.samples.append(json.dumps(body).encode())

    def check(self, data: bytes) -> str:
        (self.root / self.filename).write_bytes(data)
        return self.outcome(data, lambda: ModelManifest.load(self.root))


class TextTarget(Target):
    """A text format parser; `read` takes the path."""

    def __init__(self, root: Path, name: str, samples: list[bytes], read: Callable[[Path], object]) -> None:
        super().__init__(root)
        self.name, self.filename, self.samples, self.read = name, f"{name}.txt", samples, read

    def check(self, data: bytes) -> str:
        path = self.root / self.filename
        path.write_bytes(data)
        return self.outcome(data, lambda: self.read(path))


def read_run_both_ways(path: Path) -> None:
    """The columnar fast path must agree with the line parser whenever the file parses."""
    entries = list(read_run(path))
    columns = read_run_columns(path)
    if [e.pid for e in entries] != columns.pids.tolist() or [
        e.rank for e in entries
    ] != columns.ranks.tolist():
        raise AssertionError(f"read_run and read_run_columns disagree on {path.read_bytes()!r}")


def open_passages(path: Path) -> None:
    """Every pid's text as the file has it, also after two lines swap under the open store (same size,
    as `cp -p` leaves a file): never another pid's text."""
    with contextlib.suppress(FileNotFoundError):
        Path(str(path) + ".offsets.npz").unlink()
    with PassageStore.open(path) as store:
        for pid in ("7", "8", "x"):
            store.get(pid)
        lines = path.read_bytes().splitlines(keepends=True)
        if len(lines) < 2:
            return
        lines[0], lines[1] = lines[1], lines[0]
        path.write_bytes(b"".join(lines))
        try:
            truth = dict(read_collection(path))
        except FastmarcoError:
            return  # the swapped file does not parse (a line lost its newline): the store may refuse it too
        for pid, text in truth.items():
            got = store.get(pid)
            if got != text:
                raise AssertionError(f"pid {pid!r}: the store gave {got!r}, the file has {text!r}")


def parse_request(path: Path) -> None:
    """The server's request parsing: JSON, then /search's and /v1/embeddings' fields."""
    from fastmarco.serve.schema import Limits, embeddings_request, parse_json, search_request

    limits = Limits(max_inputs=8, max_k=100, payload_bytes=100_000, max_results=200)
    document = parse_json(path.read_bytes())
    with contextlib.suppress(FastmarcoError):
        search_request(document, limits)
    embeddings_request(document, limits, 384)


COLLECTIONS = [
    b"7\tthe first passage \xc3\xa9\n8\tanother one\n9\tthird\n",
    b"a\tstring ids\nb\tb text",
    b"\xef\xbb\xbf\xef\xbb\xbf7\ttwo byte order marks\n8\tb\n",
]
REQUESTS = [
    b'{"query": "do goldfish grow", "k": 10}',
    b'{"queries": ["a", "\\ud800b"], "k": 3}',
    b'{"input": ["x", "y"], "encoding_format": "base64"}',
    b'{"input": "\\udfff"}',
    b"[" * 5_000,
]
TEXT_TARGETS: dict[str, tuple[list[bytes], Callable[[Path], object]]] = {
    "collection": (COLLECTIONS, lambda p: list(read_collection(p))),
    "queries": (COLLECTIONS, load_queries),
    "qrels": (
        [b"1 0 7 1\n1 0 8 0\n2 Q0 9 3\n", b"1\t0\t7\t1\n", b"\xef\xbb\xbf\xef\xbb\xbf1 0 7 1\n"],
        load_qrels,
    ),
    "run": (
        [b"1 Q0 7 1 2.5 tag\n1 Q0 8 2 2.0 tag\n2 Q0 7 1 1.0 tag\n", b"1\t7\t1\n1\t8\t2\n2\t9\t1\n"],
        read_run_both_ways,
    ),
    "passage-store": (COLLECTIONS, open_passages),
    "request": (REQUESTS, parse_request),
}
FILE_TARGETS: dict[str, type[Target]] = {
    cls.name: cls for cls in (ShardFileTarget, ShardManifestTarget, IndexManifestTarget, ModelManifestTarget)
}
TARGETS = (*FILE_TARGETS, *TEXT_TARGETS)


def make_target(name: str, root: Path) -> Target:
    if name in FILE_TARGETS:
        return FILE_TARGETS[name](root)
    samples, read = TEXT_TARGETS[name]
    return TextTarget(root, name, samples, read)


def run_target(name: str, examples: int, seed_value: int = 0) -> dict[str, Any]:
    """Fuzz one target in this process; raises on the first failing input."""
    root = Path(tempfile.mkdtemp(prefix=f"fastmarco-fuzz-{name}-"))
    try:
        target = make_target(name, root)
        outcomes: collections.Counter[str] = collections.Counter()

        @seed(seed_value)
        @settings(
            max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck)
        )
        @given(st.randoms(use_true_random=False))
        def fuzz(rng: random.Random) -> None:
            data = rng.choice(target.samples)
            structural = target.json_document and rng.random() < 0.3
            if structural:
                data = replace_json_field(data, rng)
            if not structural or rng.random() < 0.5:
                data = mutate(data, rng)
            outcomes[target.check(data)] += 1

        started = time.perf_counter()
        fuzz()
        return {
            "inputs": sum(outcomes.values()),
            "outcomes": dict(outcomes),
            "seconds": time.perf_counter() - started,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=float, default=3600, help="Seconds per target before it counts as a hang."
    )
    parser.add_argument("--jobs", type=int, default=2, help="Targets fuzzed at once, one process each.")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one target, print its JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_target(args.one, args.examples, args.seed)))
        return

    from _common import environment, save

    summary: dict[str, Any] = {"environment": environment(["hypothesis", "numpy"]), "examples": args.examples}

    def run_one(name: str) -> dict[str, Any]:
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--examples",
            str(args.examples),
            "--seed",
            str(args.seed),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"failure": f"hang: no result within {args.timeout:.0f} s"}
        if done.returncode == 0:
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            return result
        kind = "crash (signal)" if done.returncode < 0 else "failing input"
        return {"failure": f"{kind}, exit {done.returncode}", "output": (done.stdout + done.stderr)[-4000:]}

    names = args.targets.split(",")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for name, result in zip(names, pool.map(run_one, names), strict=True):
            summary[name] = result
            print(f"{name:>15}: {json.dumps(result)[:300]}", flush=True)
    failures = sum("failure" in summary[name] for name in names)
    summary["failures"] = failures
    print(f"saved {save('fuzz', summary)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
