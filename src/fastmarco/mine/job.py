"""`fastmarco mine`: hard negatives for every query with positives, in resumable query blocks.

Per block of queries: each system retrieves `depth + max_positives` candidates per query (the most
positives any query has, so `depth` non-positive candidates are always left, as
sentence-transformers retrieves `range_max + max_positives`); the query's positives are removed; the
candidates of all systems are joined (first appearance wins); the cross-encoder scores every
(query, candidate) and (query, positive) pair of the block in one batched call, or without one the
single bi-encoder system's scores stand; `fastmarco.mine.select` filters and samples. The block is
written atomically to `blocks/`; a rerun (after a crash or a SIGKILL) skips finished blocks, and the
outputs are assembled from all blocks in query order, so they are the same bytes however often the
job was interrupted.

Memory: the queries and qrels, the collection's offsets (16 bytes per passage), each index system's
ids and their sort order (24 bytes per row) and its index, BM25's in-memory index with `--bm25`, and
one block's candidates and their texts; nothing grows with the number of blocks.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco import fingerprints
from fastmarco._atomic import write_bytes_atomic
from fastmarco._json import load_manifest, save_manifest
from fastmarco._locks import output_lock
from fastmarco._pause import pause_if_asked
from fastmarco._version import __version__
from fastmarco.corpus.ids import all_integer
from fastmarco.errors import InputError, ManifestError, MismatchError, OutputExistsError
from fastmarco.mine.outputs import (
    HARD_NEGATIVES,
    SCORES,
    OutputWriters,
    QueryRecord,
    TrainFormat,
    block_bytes,
    read_block,
    require_pyarrow,
)
from fastmarco.mine.select import Selection, pick
from fastmarco.mine.systems import BM25System, IndexSystem, Retrieved, System
from fastmarco.model.runtime import Device
from fastmarco.progress import Progress, Update
from fastmarco.store.formats import load_qrels, load_queries
from fastmarco.store.passages import PassageStore

# Testing aid, as encode's: pause (until killed) once this many blocks are written in this run.
PAUSE_ENV = "FASTMARCO_DEBUG_PAUSE_AFTER_BLOCKS"

STATE = "mine.json"
STATE_FORMAT = "fastmarco-mine"
STATE_VERSION = 1


@dataclass(frozen=True)
class JobState:
    """`mine.json`: what the job mines (fingerprints of its inputs, its settings) and whether it is done;
    a rerun with the same job resumes, one with another job refuses or (--overwrite) starts over."""

    job: dict[str, Any]
    complete: bool = False
    fastmarco: str | None = None  # the version that completed it

    def save(self, out: Path) -> None:
        save_manifest(out / STATE, self, format=STATE_FORMAT, version=STATE_VERSION)

    @classmethod
    def load(cls, out: Path) -> JobState:
        return load_manifest(
            out / STATE,
            cls,
            ManifestError,
            format=STATE_FORMAT,
            version=STATE_VERSION,
            missing="",
            implicit=True,  # written before the format was named
        )


BLOCKS = "blocks"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class MineSpec:
    queries: str
    qrels: str
    collection: str
    selection: Selection
    systems: tuple[tuple[str, str], ...] = ()  # (name, index directory)
    bm25: bool = False
    cross_encoder: str | None = None
    relevance_level: int = 1
    seed: int = 0
    block_queries: int = 1024
    train_format: TrainFormat = "parquet"
    collection_format: str = "auto"  # a registered corpus format, or detected from the file

    def check(self) -> None:
        names = [name for name, _ in self.systems] + (["bm25"] if self.bm25 else [])
        if not names:
            raise InputError("give at least one candidate system: --system NAME=INDEX_DIR or --bm25")
        if len(set(names)) != len(names):
            raise InputError(f"system names must be distinct, got {names} ('bm25' is --bm25's)")
        if self.cross_encoder is None and (len(names) > 1 or self.bm25):
            raise InputError(
                "without --cross-encoder exactly one --system (a bi-encoder index) may be given: the "
                "candidates of several systems, or BM25's, need one model to put them on one scale"
            )
        if self.block_queries < 1:
            raise InputError("block_queries must be at least 1")


@dataclass
class MineSummary:
    queries_in_file: int = 0
    queries_mined: int = 0
    queries_without_judged_positives: int = 0
    queries_whose_positives_are_absent: int = 0
    positives_absent_from_collection: int = 0
    positives: int = 0
    candidates_considered: int = 0
    skipped_by_rule: dict[str, int] = field(default_factory=dict)
    queries_with_too_few_negatives: int = 0
    queries_without_negatives: int = 0
    negatives: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    resumed_blocks: int = 0


@dataclass
class _Query:
    qid: str
    text: str
    positives: list[str]


def _queries_to_mine(spec: MineSpec, passages: PassageStore, summary: MineSummary) -> list[_Query]:
    texts = load_queries(spec.queries)
    qrels = load_qrels(spec.qrels)
    summary.queries_in_file = len(texts)
    found: list[_Query] = []
    for qid, text in texts.items():
        judged = [pid for pid, grade in qrels.get(qid, {}).items() if grade >= spec.relevance_level]
        if not judged:
            summary.queries_without_judged_positives += 1
            continue
        present = [pid for pid in judged if pid in passages]
        summary.positives_absent_from_collection += len(judged) - len(present)
        if not present:
            summary.queries_whose_positives_are_absent += 1
            continue
        found.append(_Query(qid, text, present))
    return found


def _open_systems(spec: MineSpec, device: Device, show_progress: bool) -> list[System]:
    systems: list[System] = []
    for name, directory in spec.systems:
        system = IndexSystem.open(name, directory)
        if device == "cuda" and not system.engine.describe().device.startswith("cuda"):
            raise InputError(f"system '{name}': --device cuda asked for, but its encoder runs on the CPU")
        systems.append(system)
    if spec.bm25:
        systems.append(
            BM25System(spec.collection, show_progress=show_progress, format=spec.collection_format)
        )
    return systems


def _fingerprint(spec: MineSpec, systems: list[System], cross_fingerprint: str | None) -> dict[str, Any]:
    return {
        "settings": {
            **asdict(spec.selection),
            "relevance_level": spec.relevance_level,
            "seed": spec.seed,
            "block_queries": spec.block_queries,
            "train_format": spec.train_format,
            "systems": [name for name, _ in spec.systems] + (["bm25"] if spec.bm25 else []),
        },
        "queries": fingerprints.of_file(spec.queries),
        "qrels": fingerprints.of_file(spec.qrels),
        "collection": fingerprints.of_file(spec.collection),
        # a forced format changes the texts; jobs that detected it (every one before) record nothing
        **({"collection_format": spec.collection_format} if spec.collection_format != "auto" else {}),
        "models": {system.name: system.fingerprint for system in systems},
        "cross_encoder": cross_fingerprint,
    }


def _prepare(out: Path, job: dict[str, Any], overwrite: bool) -> int:
    """Create or resume OUT; the number of finished blocks found."""
    state_path = out / STATE
    if state_path.is_file():
        if JobState.load(out).job != job:
            if not overwrite:
                raise MismatchError(
                    f"{out} holds a mining job with other inputs or settings; pass --overwrite to replace "
                    "it, or choose another --out"
                )
            shutil.rmtree(out / BLOCKS, ignore_errors=True)
        else:
            return len(list((out / BLOCKS).glob("block-*.json.gz")))
    elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise OutputExistsError(
            f"{out} exists and is not a mining output; --overwrite replaces only a mining output: "
            "choose another --out"
        )
    (out / BLOCKS).mkdir(parents=True, exist_ok=True)
    JobState(job).save(out)
    return 0


def _rng(seed: int, qid: str) -> np.random.Generator:
    """One generator per query: a query's sample does not depend on block boundaries or resumes."""
    return np.random.default_rng([seed, zlib.crc32(qid.encode())])


def _mine_block(
    block: list[_Query],
    systems: list[System],
    cross_encoder: Any,
    passages: PassageStore,
    spec: MineSpec,
    depth: int,
    seconds: dict[str, float],
) -> list[QueryRecord]:
    texts = [q.text for q in block]
    positives = [q.positives for q in block]
    started = time.perf_counter()
    retrieved: list[list[Retrieved]] = [s.retrieve(texts, depth, positives) for s in systems]
    seconds["retrieve"] = seconds.get("retrieve", 0.0) + time.perf_counter() - started

    pools: list[tuple[list[str], list[npt.NDArray[np.int64]], npt.NDArray[np.float32]]] = []
    for i, query in enumerate(block):
        excluded = set(query.positives)
        where: dict[str, int] = {}
        by_system: list[npt.NDArray[np.int64]] = []
        first_scores: list[float] = []
        for per_system in retrieved:
            own = []
            for pid, score in zip(per_system[i].pids, per_system[i].scores, strict=True):
                if pid in excluded:
                    continue
                if pid not in where:
                    where[pid] = len(where)
                    first_scores.append(float(score))
                own.append(where[pid])
            by_system.append(np.asarray(own, dtype=np.int64))
        pools.append((list(where), by_system, np.asarray(first_scores, dtype=np.float32)))

    started = time.perf_counter()
    if cross_encoder is not None:
        pair_pids = [
            pid for (pids, _, _), q in zip(pools, block, strict=True) for pid in [*pids, *q.positives]
        ]
        pair_queries = [
            q.text
            for (pids, _, _), q in zip(pools, block, strict=True)
            for _ in range(len(pids) + len(q.positives))
        ]
        passage_texts = passages.texts(set(pair_pids))
        scored = cross_encoder.score(pair_queries, [passage_texts[p] for p in pair_pids])
    seconds["score"] = seconds.get("score", 0.0) + time.perf_counter() - started

    started = time.perf_counter()
    records: list[QueryRecord] = []
    offset = 0
    for i, (query, (pids, by_system, system_scores)) in enumerate(zip(block, pools, strict=True)):
        if cross_encoder is not None:
            candidate_scores = scored[offset : offset + len(pids)]
            positive_scores = scored[offset + len(pids) : offset + len(pids) + len(query.positives)]
            offset += len(pids) + len(query.positives)
        else:
            candidate_scores = system_scores
            own_positive_scores = retrieved[0][i].positive_scores
            assert own_positive_scores is not None  # spec.check: a lone system scores positives
            positive_scores = own_positive_scores
        picked = pick(
            candidate_scores, by_system, positive_scores, spec.selection, _rng(spec.seed, query.qid)
        )
        records.append(
            QueryRecord(
                qid=query.qid,
                pos=[(p, float(s)) for p, s in zip(query.positives, positive_scores, strict=True)],
                cand=[(p, float(s)) for p, s in zip(pids, candidate_scores, strict=True)],
                neg={
                    system.name: [pids[j] for j in order if picked.kept[j]]
                    for system, order in zip(systems, by_system, strict=True)
                },
                negatives=[pids[j] for j in picked.negatives],
                skipped=picked.skipped,
            )
        )
    seconds["select"] = seconds.get("select", 0.0) + time.perf_counter() - started
    return records


def mine(
    spec: MineSpec,
    out: str | Path,
    *,
    overwrite: bool = False,
    device: Device = "auto",
    progress: Progress | None = None,
    show_progress: bool = False,
) -> MineSummary:
    """Run (or resume) the job into OUT; see the module docstring. Returns the summary it writes."""
    from fastmarco.model.cross_encoder import CrossEncoderScorer

    spec.check()
    require_pyarrow()
    target = Path(out)
    summary = MineSummary()
    wall = time.perf_counter()
    with (
        PassageStore.open(spec.collection, format=spec.collection_format) as passages,
        output_lock(target / ".lock", str(target)),
    ):
        queries = _queries_to_mine(spec, passages, summary)
        if not queries:
            raise InputError(
                f"{spec.qrels}: no query of {spec.queries} has a positive (grade >= {spec.relevance_level}) "
                f"in {spec.collection}"
            )
        systems = _open_systems(spec, device, show_progress)
        cross_encoder = (
            CrossEncoderScorer.open(spec.cross_encoder, device=device) if spec.cross_encoder else None
        )
        job = _fingerprint(spec, systems, cross_encoder.fingerprint if cross_encoder else None)
        summary.resumed_blocks = _prepare(target, job, overwrite)
        max_positives = max(len(q.positives) for q in queries)
        depth = min(spec.selection.depth + max_positives, len(passages))  # no deeper than the collection
        blocks = [queries[i : i + spec.block_queries] for i in range(0, len(queries), spec.block_queries)]
        seconds: dict[str, float] = {}
        done = written = 0
        for number, block in enumerate(blocks):
            path = target / BLOCKS / f"block-{number:06d}.json.gz"
            if not path.is_file():
                records = _mine_block(block, systems, cross_encoder, passages, spec, depth, seconds)
                write_bytes_atomic(path, block_bytes(records))
                written += 1
                pause_if_asked(PAUSE_ENV, written, "blocks")
            done += len(block)
            if progress is not None:
                progress(Update("mine", done, len(queries), "queries"))

        started = time.perf_counter()
        names = [s.name for s in systems]
        integers = all_integer(q.qid for q in queries) and passages.integer_ids
        writers = OutputWriters(target, names, spec.selection.num_negatives, spec.train_format, integers)
        try:
            for number, block in enumerate(blocks):
                records = read_block(target / BLOCKS / f"block-{number:06d}.json.gz")
                if [r.qid for r in records] != [q.qid for q in block]:
                    raise MismatchError(f"{target / BLOCKS}: block {number} belongs to another job")
                wanted = {p for r in records for p in [*(pid for pid, _ in r.pos), *r.negatives]}
                texts = passages.texts(wanted)
                for record, query in zip(records, block, strict=True):
                    writers.add(record, texts, query.text)
                    _count(summary, record, spec.selection.num_negatives)
                writers.flush()
            writers.commit()
        except BaseException:
            writers.abort()
            raise
        seconds["write"] = time.perf_counter() - started
        summary.queries_mined = len(queries)
        summary.rows = dict(writers.rows)
        summary.seconds = {k: round(v, 3) for k, v in seconds.items()} | {
            "total": round(time.perf_counter() - wall, 3)
        }
        summary.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        write_bytes_atomic(target / SUMMARY, (json.dumps(asdict(summary), indent=2) + "\n").encode())
        JobState(job, complete=True, fastmarco=__version__).save(target)
    return summary


def _count(summary: MineSummary, record: QueryRecord, wanted: int) -> None:
    summary.positives += len(record.pos)
    summary.candidates_considered += len(record.cand)
    for rule, count in record.skipped.items():
        summary.skipped_by_rule[rule] = summary.skipped_by_rule.get(rule, 0) + count
    found = len(record.negatives)
    summary.negatives += found
    summary.queries_with_too_few_negatives += found < wanted
    summary.queries_without_negatives += found == 0


def outputs_of(out: str | Path, train_format: TrainFormat = "parquet") -> list[Path]:
    """The files a finished job leaves in OUT (for users and tests)."""
    root = Path(out)
    return (
        [root / HARD_NEGATIVES, root / SCORES]
        + [root / f"{layout}.{train_format}" for layout in ("triplet", "n-tuple", "n-tuple-scores")]
        + [root / SUMMARY]
    )
