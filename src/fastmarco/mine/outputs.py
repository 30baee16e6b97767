"""What `fastmarco mine` writes, streamed block by block (memory stays bounded) and each file
published atomically: deterministic bytes, so a resumed run ends with the same files.

* `hard-negatives.jsonl.gz`: the MS MARCO v3 data set's form, one line per query:
  `{"qid": 1, "pos": [pids], "neg": {system: [pids]}}`; a system's list is its retrieved candidates,
  best first, that passed the margin rule (all of them without a margin).
* `scores.parquet`: (qid, pid, score) for every positive and candidate scored: the columnar
  counterpart of v3's cross-encoder score pickle.
* training rows in sentence-transformers' column layouts, Parquet (or JSONL):
  `triplet` (anchor, positive, negative), `n-tuple` (anchor, positive, negative_1..negative_n),
  `n-tuple-scores` (the same plus `scores`: [positive, negative_1, ..., negative_n]).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastmarco._atomic import AtomicFile
from fastmarco.errors import InputError

TrainFormat = Literal["parquet", "jsonl"]

HARD_NEGATIVES = "hard-negatives.jsonl.gz"
SCORES = "scores.parquet"
LAYOUTS = ("triplet", "n-tuple", "n-tuple-scores")


def require_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise InputError(
            "fastmarco mine writes Parquet with pyarrow: pip install 'fastmarco[mine]'"
        ) from None
    return pyarrow


def id_value(pid: str, integers: bool) -> int | str:
    return int(pid) if integers else pid


class OutputWriters:
    """Every output file, open at once; `add` takes one query record at a time."""

    def __init__(
        self, out: Path, systems: list[str], num_negatives: int, train_format: TrainFormat, integers: bool
    ) -> None:
        self.pa = require_pyarrow()
        import pyarrow.parquet as pq

        self.pq = pq
        self.systems = systems
        self.num_negatives = num_negatives
        self.train_format = train_format
        self.integers = integers
        self.files: list[AtomicFile] = []
        self.hard = self._open(out / HARD_NEGATIVES)
        self.hard_gzip = gzip.GzipFile(fileobj=self.hard.handle, mode="wb", mtime=0)
        id_type = self.pa.int64() if integers else self.pa.string()
        self.scores_schema = self.pa.schema(
            [("qid", id_type), ("pid", id_type), ("score", self.pa.float32())]
        )
        self.scores_file = self._open(out / SCORES)
        self.scores_writer = pq.ParquetWriter(self.scores_file.handle, self.scores_schema)
        self.layout_files = {layout: self._open(out / f"{layout}.{train_format}") for layout in LAYOUTS}
        self.layout_writers: dict[str, Any] = {}
        self.pending_scores: list[tuple[Any, Any, float]] = []
        self.pending_rows: dict[str, list[dict[str, Any]]] = {layout: [] for layout in LAYOUTS}
        self.rows = dict.fromkeys(LAYOUTS, 0)

    def _open(self, path: Path) -> AtomicFile:
        handle = AtomicFile(path)
        self.files.append(handle)
        return handle

    def add(self, record: QueryRecord, texts: dict[str, str], query: str) -> None:
        qid = id_value(record.qid, self.integers)
        pos = [pid for pid, _ in record.pos]
        line = {
            "qid": qid,
            "pos": [id_value(p, self.integers) for p in pos],
            "neg": {name: [id_value(p, self.integers) for p in record.neg[name]] for name in self.systems},
        }
        self.hard_gzip.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        for pid, score in [*record.pos, *record.cand]:
            self.pending_scores.append((qid, id_value(pid, self.integers), score))
        negatives = record.negatives
        scored = dict(record.pos) | dict(record.cand)
        for pid in pos:
            for negative in negatives:
                self.pending_rows["triplet"].append(
                    {"anchor": query, "positive": texts[pid], "negative": texts[negative]}
                )
            if len(negatives) == self.num_negatives:
                row = {"anchor": query, "positive": texts[pid]} | {
                    f"negative_{i}": texts[n] for i, n in enumerate(negatives, 1)
                }
                self.pending_rows["n-tuple"].append(row)
                scores = [scored[pid], *(scored[n] for n in negatives)]
                self.pending_rows["n-tuple-scores"].append(row | {"scores": scores})

    def flush(self) -> None:
        """Write what `add` gathered (one block's worth) as one row group per file."""
        if self.pending_scores:
            qids, pids, scores = zip(*self.pending_scores, strict=True)
            table = self.pa.table(
                {"qid": list(qids), "pid": list(pids), "score": list(scores)}, schema=self.scores_schema
            )
            self.scores_writer.write_table(table)
            self.pending_scores = []
        for layout, rows in self.pending_rows.items():
            if not rows:
                continue
            self.rows[layout] += len(rows)
            if self.train_format == "jsonl":
                handle = self.layout_files[layout].handle
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            else:
                table = self.pa.Table.from_pylist(rows, schema=self._layout_schema(layout))
                if layout not in self.layout_writers:
                    self.layout_writers[layout] = self.pq.ParquetWriter(
                        self.layout_files[layout].handle, table.schema
                    )
                self.layout_writers[layout].write_table(table)
            self.pending_rows[layout] = []

    def _layout_schema(self, layout: str) -> Any:
        text = self.pa.string()
        if layout == "triplet":
            return self.pa.schema([("anchor", text), ("positive", text), ("negative", text)])
        fields = [("anchor", text), ("positive", text)] + [
            (f"negative_{i}", text) for i in range(1, self.num_negatives + 1)
        ]
        if layout == "n-tuple-scores":
            fields.append(("scores", self.pa.list_(self.pa.float32())))
        return self.pa.schema(fields)

    def commit(self) -> None:
        self.flush()
        self.hard_gzip.close()
        self.scores_writer.close()
        for layout in LAYOUTS:
            if self.train_format == "parquet":
                if layout not in self.layout_writers:  # no rows at all: still a readable, empty file
                    empty = self._layout_schema(layout).empty_table()
                    self.layout_writers[layout] = self.pq.ParquetWriter(
                        self.layout_files[layout].handle, empty.schema
                    )
                    self.layout_writers[layout].write_table(empty)
                self.layout_writers[layout].close()
        for handle in self.files:
            handle.commit()

    def abort(self) -> None:
        """Drop every output. The parquet writers and the gzip stream are closed first: left open, each
        would try to finish its file when collected, after it is gone (an 'Exception ignored' trace)."""
        for closer in [self.scores_writer, *self.layout_writers.values(), self.hard_gzip]:
            with contextlib.suppress(Exception):
                closer.close()
        self.layout_writers.clear()
        for handle in self.files:
            handle.abort()


@dataclass(frozen=True)
class QueryRecord:
    """What mining decided for one query, kept in its block file until the outputs are written:
    positives and candidates with their scores, each system's kept candidates, the negatives picked
    and how many candidates each margin rule dropped."""

    qid: str
    pos: list[tuple[str, float]]
    cand: list[tuple[str, float]]
    neg: dict[str, list[str]]
    negatives: list[str]
    skipped: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "qid": self.qid,
            "pos": [list(pair) for pair in self.pos],
            "cand": [list(pair) for pair in self.cand],
            "neg": self.neg,
            "negatives": self.negatives,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> QueryRecord:
        return cls(
            body["qid"],
            [(pid, score) for pid, score in body["pos"]],
            [(pid, score) for pid, score in body["cand"]],
            body["neg"],
            body["negatives"],
            body["skipped"],
        )


def read_block(path: Path) -> list[QueryRecord]:
    with gzip.open(path, "rb") as handle:
        body: list[dict[str, Any]] = json.loads(handle.read())
    return [QueryRecord.from_json(record) for record in body]


def block_bytes(records: list[QueryRecord]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
        handle.write(json.dumps([r.to_json() for r in records], separators=(",", ":")).encode())
    return buffer.getvalue()
