"""What an encode job is: the model, the corpus (fingerprinted once), the settings, and the parts of
the corpus a worker encodes. A `JobSpec` is plain data, so it travels to worker processes (or, later,
to cluster actors) without anyone hashing the corpus again."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from fastmarco import fingerprints
from fastmarco.corpus.formats import CorpusFormat, corpus_format, detect
from fastmarco.corpus.ids import integer_key
from fastmarco.errors import EncodeMismatchError, InputError
from fastmarco.model.manifest import ModelManifest
from fastmarco.progress import Update
from fastmarco.store.shards import DEFAULT_ROWS_PER_SHARD, MANIFEST_NAME, DType, IdType, Manifest, ShardSet

OnBadLine = Literal["error", "skip"]
SKIPPED_NAME = "skipped-lines.tsv"
LOCK_NAME = ".lock"
DEFAULT_CHUNK_ROWS = 16_384


def count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(16 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def detect_id_type(corpus: Path, corpus_format: CorpusFormat) -> IdType:
    """'int' when every id of the corpus may be stored as an integer (fastmarco.corpus.ids), else
    'str': `007` beside `7` keeps every id a string. A line without an id is judged by the reader."""
    if any(integer_key(ident) is None for ident in corpus_format.ids(corpus)):
        return "str"
    return "int"


@dataclass(frozen=True)
class Cursor:
    """Where an encode stands after a finished shard: the corpus line and byte it has read to, and
    the lines skipped so far with the size of the skipped-lines file then. Recorded with each shard
    (its JSON object in manifest.json), so a rerun resumes exactly there."""

    line: int
    byte: int
    skipped: int = 0
    skipped_bytes: int = 0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Cursor:
        return cls(int(body["line"]), int(body["byte"]), int(body["skipped"]), int(body["skipped_bytes"]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def after(self, skipped_lines: int, skipped_bytes: int) -> Cursor:
        """This cursor of a part, made global: the parts before it skipped these."""
        return replace(
            self, skipped=self.skipped + skipped_lines, skipped_bytes=self.skipped_bytes + skipped_bytes
        )


@dataclass(frozen=True)
class LineRange:
    """Corpus lines start_line+1 .. stop_line (1-based), the first at byte start_byte: one worker's part."""

    start_line: int
    start_byte: int
    stop_line: int

    @property
    def lines(self) -> int:
        return self.stop_line - self.start_line


@dataclass(frozen=True)
class JobSpec:
    """One encode job. Build it with `JobSpec.create`, which reads the model manifest and hashes the
    corpus once; `part` narrows it to a line range for one worker."""

    model_directory: str
    model: ModelManifest
    corpus: str
    corpus_fingerprint: str
    id_type: IdType
    corpus_format: str  # the registered format's name, detected (or forced) once at create
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    dtype: DType = "fp16"
    on_bad_line: OnBadLine = "error"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    line_range: LineRange | None = field(default=None)

    @classmethod
    def create(
        cls,
        model_directory: str | os.PathLike[str],
        corpus: str | os.PathLike[str],
        *,
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        dtype: DType = "fp16",
        on_bad_line: OnBadLine = "error",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        model: ModelManifest | None = None,
        format: str = "auto",
    ) -> JobSpec:
        corpus_path = Path(corpus)
        if not corpus_path.is_file():
            raise InputError(f"{corpus_path}: corpus not found")
        reader = detect(corpus_path, format)
        if rows_per_shard <= 0 or chunk_rows <= 0:
            raise InputError(
                f"rows per shard and chunk rows must be positive, got {rows_per_shard}, {chunk_rows}"
            )
        if dtype not in ("fp16", "fp32"):
            raise InputError(f"dtype must be 'fp16' or 'fp32', got {dtype!r}")
        if on_bad_line not in ("error", "skip"):
            raise InputError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        directory = Path(model_directory).resolve()
        return cls(
            model_directory=str(directory),
            model=model or ModelManifest.load(directory),
            corpus=str(corpus_path),
            corpus_fingerprint=fingerprints.of_file(corpus_path),
            id_type=detect_id_type(corpus_path, reader),
            corpus_format=reader.name,
            rows_per_shard=rows_per_shard,
            dtype=dtype,
            on_bad_line=on_bad_line,
            chunk_rows=chunk_rows,
        )

    def reader(self) -> CorpusFormat:
        """The corpus format that reads this job's corpus."""
        return corpus_format(self.corpus_format)

    def part(self, line_range: LineRange) -> JobSpec:
        return replace(self, line_range=line_range)

    def metadata(self) -> dict[str, Any]:
        """What a shard directory records about the job that wrote it; a resume must match it exactly."""
        encode: dict[str, Any] = {"dtype": self.dtype, "id_type": self.id_type, "chunk_rows": self.chunk_rows}
        if self.line_range is not None:
            encode["lines"] = [self.line_range.start_line, self.line_range.stop_line]
        return {
            "model": {
                "directory": self.model_directory,
                "fingerprint": self.model.fingerprint,
                "dim": self.model.dim,
                "similarity": self.model.similarity,
                "search_metric": self.model.search_metric,
                "precision": self.model.precision,
            },
            "corpus": {
                "name": Path(self.corpus).name,
                "fingerprint": self.corpus_fingerprint,
                "format": self.corpus_format,
            },
            "encode": encode,
        }

    def check_same_job(self, existing: Manifest, out: Path) -> None:
        """Refuse to continue a directory written by another model, corpus or settings."""
        have, wanted = existing.metadata, self.metadata()
        problems = []
        if have.get("model", {}).get("fingerprint") != wanted["model"]["fingerprint"]:
            problems.append("was written with another model or export of it (fingerprints differ)")
        had_corpus = have.get("corpus", {})
        if had_corpus.get("fingerprint") != wanted["corpus"]["fingerprint"]:
            problems.append("was written from another corpus, or the corpus changed since")
        # directories from before formats were recorded were written in the detected format
        elif had_corpus.get("format", self.corpus_format) != self.corpus_format:
            problems.append(f"read the corpus as format {had_corpus['format']!r}, not {self.corpus_format!r}")
        if have.get("encode") != wanted["encode"] or existing.rows_per_shard != self.rows_per_shard:
            problems.append(
                f"was written with other settings ({have.get('encode')}, "
                f"{existing.rows_per_shard} rows/shard)"
            )
        if problems:
            raise EncodeMismatchError(f"{out}: " + "; ".join(problems) + "; pass --restart to start over")


# Where an encode's time goes (EncodeSummary.stage_seconds), in pipeline order.
STAGES = ("read", "tokenize", "infer", "write")


@dataclass
class EncodeSummary:
    out: str
    rows: int
    shards: int
    skipped: int
    truncated: int
    tokens: int
    seconds: float
    passages_per_second: float
    resumed_at_row: int
    device: str
    # Busy seconds per stage: read (corpus lines), tokenize (and pad, on a background thread that
    # overlaps infer), infer (the model), write (shards). Summed over parts when several ran.
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def of_complete(cls, out: Path, device: str) -> EncodeSummary:
        """What a rerun over an already finished directory reports (after checking its shards are
        whole): nothing encoded this time."""
        done = ShardSet.open(out)
        rows = len(done)
        return cls(str(out), rows, len(done.files), skipped_count(out), 0, 0, 0.0, 0.0, rows, device)


def skipped_count(out: Path) -> int:
    path = out / SKIPPED_NAME
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def remove_shard_set(out: Path) -> None:
    for path in out.iterdir():
        if path.name.startswith(("vectors-", "ids-", MANIFEST_NAME, SKIPPED_NAME)):
            path.unlink() if path.is_file() else shutil.rmtree(path)


def encode_update(rows: int, total: int, tokens: int, shards: int) -> Update:
    """Where an encode stands: rows of an estimated total, with the tokens so far and shards written."""
    return Update("encode", rows, total, "rows", detail={"tokens": tokens, "shards": shards})
