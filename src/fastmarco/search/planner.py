"""The index planner: which registered kind to build for a shard set, given the RAM a server (and the
build) may use and a one-query latency target. Every kind is estimated by its own family (build RAM,
disk and time from `cost`; serving memory and search time from `serving`; expected recall@10 from the
kind's measured figure); the planner keeps the kinds within both limits and picks the one with the
highest expected recall, then the fastest, then the smallest, and says why the others lost."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from fastmarco.errors import FastmarcoError, InputError
from fastmarco.search.index import resolve_shape
from fastmarco.search.kinds import INDEX_KINDS, family_for, server_rss_bytes
from fastmarco.store.shards import ShardSet

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """'2G', '1.5GiB', '800M', '2000000000' -> bytes (K, M, G, T are powers of 1,024)."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in _UNITS else (cleaned, "")
    try:
        value = float(number)
    except ValueError:
        raise InputError(f"--max-ram: {text!r} is not a size such as 2G, 1.5GiB or 800M") from None
    if value <= 0:
        raise InputError(f"--max-ram must be positive, got {text!r}")
    return int(value * _UNITS[unit])


def available_ram() -> int:
    """MemAvailable of this machine (what a build or server here could use), 0 where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class KindEstimate:
    kind: str
    factory: str
    build_ram_bytes: int
    index_bytes: int
    build_seconds: float
    serving_rss_bytes: int  # the index's anonymous memory plus a server's own (server_rss_bytes)
    query_ms: float
    recall_at_10: float | None
    refused: str | None = None  # why it is out: over the limits, or it cannot be built here

    def row(self) -> str:
        gib = 1 << 30
        recall = "?" if self.recall_at_10 is None else f"{self.recall_at_10:.3f}"
        sizes = f"{self.index_bytes / gib:>8.2f} {self.serving_rss_bytes / gib:>8.2f}"
        return (
            f"{self.kind:<12} {self.factory:<24} {self.build_seconds:>9,.0f} s {sizes} "
            f"{self.query_ms:>10.1f} {recall:>7}  {self.refused or 'ok'}"
        )


HEADER = (
    f"{'kind':<12} {'factory':<24} {'build':>11} {'disk GiB':>8} {'RSS GiB':>8} {'search ms':>10} "
    f"{'recall':>7}  limits"
)


@dataclass(frozen=True)
class IndexChoice:
    chosen: KindEstimate | None
    estimates: list[KindEstimate]
    max_ram: int
    target_ms: float | None
    why: str

    def describe(self) -> str:
        lines = [
            f"estimates for {', '.join(self._limits())} (search: one query, k 10, without encoding):",
            HEADER,
            *(estimate.row() for estimate in self.estimates),
            self.why,
        ]
        return "\n".join(lines)

    def _limits(self) -> list[str]:
        limits = [f"RAM {self.max_ram / (1 << 30):.2f} GiB"]
        if self.target_ms is not None:
            limits.append(f"a {self.target_ms:g} ms search")
        return limits


def query_model_bytes(shard_set: ShardSet) -> int | None:
    """The ONNX file size of the model that encoded `shard_set` (the one a server would load), where
    its manifest names a model directory still on this machine; None otherwise."""
    model = shard_set.manifest.metadata.get("model")
    directory = model.get("directory") if isinstance(model, dict) else None
    if not isinstance(directory, str):
        return None
    try:
        return sum(path.stat().st_size for path in Path(directory).glob("*.onnx*"))
    except OSError:
        return None


def estimate_kinds(shard_set: ShardSet, *, model_bytes: int | None = None) -> list[KindEstimate]:
    """Every registered kind at its defaults over `shard_set`; kinds that cannot be built here say so.
    `model_bytes`: the query model's ONNX file size (default: the shards' own model's, else MiniLM int8's)."""
    rows, dim = len(shard_set), shard_set.dim
    server = server_rss_bytes(model_bytes if model_bytes is not None else query_model_bytes(shard_set))
    out = []
    for kind in INDEX_KINDS.values():
        try:
            shape, train = resolve_shape(kind.name, None, None, rows, dim)
        except FastmarcoError as exc:
            out.append(KindEstimate(kind.name, kind.preset(rows, dim), 0, 0, 0.0, 0, 0.0, None, str(exc)))
            continue
        family = family_for(shape.factory)
        cost = family.cost(shard_set, shape, train)
        serving = family.serving(shard_set, shape, kind.refine if shape.lossy else 0)
        out.append(
            KindEstimate(
                kind.name,
                shape.factory,
                cost.ram_bytes,
                cost.disk_bytes,
                cost.seconds,
                serving.rss_bytes + server,
                serving.query_ms,
                kind.recall_at_10,
            )
        )
    return out


def choose_kind(
    shard_dir: str | os.PathLike[str], *, max_ram: int | None = None, target_ms: float | None = None
) -> IndexChoice:
    """The kind to build within `max_ram` (default: this machine's available RAM) for both the build and
    a server, and a one-query search of at most `target_ms`; None when no kind fits, with what comes
    closest."""
    if target_ms is not None and target_ms <= 0:
        raise InputError(f"--target-ms must be positive, got {target_ms}")
    shard_set = ShardSet.open(shard_dir)
    limit = max_ram or available_ram()
    judged = []
    for estimate in estimate_kinds(shard_set):
        refused = estimate.refused
        if refused is None and estimate.serving_rss_bytes > limit:
            refused = f"serving needs {estimate.serving_rss_bytes / (1 << 30):.2f} GiB"
        elif refused is None and estimate.build_ram_bytes > limit:
            refused = f"the build needs {estimate.build_ram_bytes / (1 << 30):.2f} GiB"
        elif refused is None and target_ms is not None and estimate.query_ms > target_ms:
            refused = f"{estimate.query_ms:.1f} ms a query"
        judged.append(replace(estimate, refused=refused))
    fitting = [e for e in judged if e.refused is None]
    ranked = sorted(fitting, key=lambda e: (-(e.recall_at_10 or 0.0), e.query_ms, e.index_bytes))
    if not ranked:
        within_ram = [e for e in judged if e.refused is not None and e.refused.endswith(" ms a query")]
        nearest = min(within_ram, key=lambda e: e.query_ms, default=None)
        hint = (
            f"; the fastest within the RAM is {nearest.kind} ({nearest.query_ms:.1f} ms)" if nearest else ""
        )
        why = f"no kind fits these limits{hint}: raise --max-ram or --target-ms"
        return IndexChoice(None, judged, limit, target_ms, why)
    best = ranked[0]
    others = [e.kind for e in ranked[1:] if (e.recall_at_10 or 0.0) == (best.recall_at_10 or 0.0)]
    why = (
        f"chosen: {best.kind} ({best.factory}), the highest expected recall@10 "
        f"({best.recall_at_10 or 0.0:.3f}) of the {len(ranked)} kinds within the limits"
        + (f", and faster than {', '.join(others)}" if others else "")
        + f"; about {best.query_ms:.1f} ms a query, {best.serving_rss_bytes / (1 << 30):.2f} GiB serving, "
        f"{best.build_seconds / 60:,.0f} min to build"
    )
    return IndexChoice(best, judged, limit, target_ms, why)
