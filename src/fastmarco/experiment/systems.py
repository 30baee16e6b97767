"""The registered system kinds of an experiment: each says which keys it takes, which systems and
models it uses, and how it makes its run for a topic set out of stages. A new kind is a class here
(or in a module of its own) plus `register`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from fastmarco.errors import InputError
from fastmarco.eval.fusion import METHODS, NORMS
from fastmarco.experiment.stages import FileInput, Stage


class Workflow(Protocol):
    """What a system kind builds its stages from (fastmarco.experiment.runner.Workflow)."""

    device: str
    collection_format: str  # "auto" or the registered format the config forces

    @property
    def collection_params(self) -> Mapping[str, str]: ...

    def collection(self) -> FileInput: ...

    def queries(self, topic: str) -> FileInput: ...

    def model(self, name: str) -> Stage | FileInput: ...

    def index(self, model: str, kind: str) -> Stage: ...

    def run(self, system: str, topic: str) -> Stage | FileInput: ...


class SystemKind(Protocol):
    name: str
    keys: Mapping[str, type]  # the keys a system of this kind takes besides kind, topics, reference
    required: tuple[str, ...]
    files: tuple[str, ...]  # keys holding { topic = file } tables
    system_keys: tuple[str, ...]  # keys naming other systems
    model_key: str | None
    needs_collection: bool

    def check(self, settings: Mapping[str, Any]) -> None:
        """Values the types do not cover (a depth of 0, an unknown method): InputError."""
        ...

    def uses(self, settings: Mapping[str, Any]) -> list[str]:
        """The systems this one is made from."""
        ...

    def default_topics(self, settings: Mapping[str, Any], topics: Mapping[str, Any]) -> list[str]: ...

    def stage(self, name: str, settings: Mapping[str, Any], topic: str, flow: Workflow) -> Stage | FileInput:
        """What makes this system's run (a TREC file) for `topic`."""
        ...


SYSTEM_KINDS: dict[str, SystemKind] = {}


def register(kind: SystemKind) -> SystemKind:
    if kind.name in SYSTEM_KINDS:
        raise ValueError(f"system kind {kind.name!r} is registered twice")
    SYSTEM_KINDS[kind.name] = kind
    return kind


def _positive(settings: Mapping[str, Any], key: str) -> None:
    if key in settings and settings[key] < 1:
        raise InputError(f"{key} must be at least 1, got {settings[key]}")


class _Kind:
    """Defaults shared by the kinds."""

    required: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    system_keys: tuple[str, ...] = ()
    model_key: str | None = None
    needs_collection = False

    def check(self, settings: Mapping[str, Any]) -> None:
        _positive(settings, "depth")

    def uses(self, settings: Mapping[str, Any]) -> list[str]:
        return []

    def default_topics(self, settings: Mapping[str, Any], topics: Mapping[str, Any]) -> list[str]:
        return list(topics)


class RunFiles(_Kind):
    """Runs computed elsewhere (Pyserini's BM25, a paper's submission): one file per topic set."""

    name = "run"
    keys: Mapping[str, type] = {"runs": dict}
    required: tuple[str, ...] = ("runs",)
    files: tuple[str, ...] = ("runs",)

    def default_topics(self, settings: Mapping[str, Any], topics: Mapping[str, Any]) -> list[str]:
        return list(settings["runs"])

    def stage(self, name: str, settings: Mapping[str, Any], topic: str, flow: Workflow) -> Stage | FileInput:
        runs: Mapping[str, Path] = settings["runs"]
        if topic not in runs:
            raise InputError(f"system {name} has no run file for topic set {topic}")
        return FileInput(runs[topic])


class Bm25(_Kind):
    """fastmarco's BM25 (bm25s: Lucene BM25, k1 0.9, b 0.4) over the collection."""

    name = "bm25"
    keys: Mapping[str, type] = {"depth": int}
    needs_collection = True

    def stage(self, name: str, settings: Mapping[str, Any], topic: str, flow: Workflow) -> Stage | FileInput:
        depth = settings.get("depth", 1000)
        collection_format = flow.collection_format

        def action(folder: Path, inputs: list[Path]) -> None:
            from fastmarco.eval.bm25 import bm25_run
            from fastmarco.store.formats import load_queries, write_run

            collection, queries = inputs
            write_run(
                folder / "run.trec",
                bm25_run(collection, load_queries(queries), depth, format=collection_format).entries,
                "trec",
                tag=name,
            )

        return Stage(
            "bm25",
            f"{name} on {topic}",
            {"depth": depth, **flow.collection_params},
            [flow.collection(), flow.queries(topic)],
            action,
            "run.trec",
        )


class Dense(_Kind):
    """Full retrieval with a bi-encoder: export, encode the collection, index, search."""

    name = "dense"
    keys: Mapping[str, type] = {"model": str, "index": str, "depth": int}
    required: tuple[str, ...] = ("model",)
    model_key: str | None = "model"
    needs_collection = True

    def check(self, settings: Mapping[str, Any]) -> None:
        super().check(settings)
        from fastmarco.search.kinds import kind_names

        if settings.get("index", "flat") not in kind_names():
            raise InputError(f"index {settings['index']!r}; known kinds: {', '.join(kind_names())}")

    def stage(self, name: str, settings: Mapping[str, Any], topic: str, flow: Workflow) -> Stage | FileInput:
        depth, device = settings.get("depth", 1000), flow.device
        model = flow.model(settings["model"])

        def action(folder: Path, inputs: list[Path]) -> None:
            from fastmarco.engine import Engine
            from fastmarco.pipelines.retrieve import retrieve_run
            from fastmarco.store.formats import load_queries, write_run

            index, model_dir, queries = inputs
            with Engine.open(index, model=model_dir, device=device) as engine:  # type: ignore[arg-type]
                entries = retrieve_run(engine, load_queries(queries), depth)
            write_run(folder / "run.trec", entries, "trec", tag=name)

        index = flow.index(settings["model"], settings.get("index", "flat"))
        return Stage(
            "retrieve",
            f"{name} on {topic}",
            {"depth": depth},
            [index, model, flow.queries(topic)],
            action,
            "run.trec",
        )


class Rerank(_Kind):
    """Re-score the top `depth` of another system's run with a bi- or cross-encoder (TREC-DL's
    re-ranking protocol over BM25's top 100)."""

    name = "rerank"
    keys: Mapping[str, type] = {"model": str, "candidates": str, "depth": int}
    required: tuple[str, ...] = ("model", "candidates")
    system_keys: tuple[str, ...] = ("candidates",)
    model_key: str | None = "model"
    needs_collection = True

    def uses(self, settings: Mapping[str, Any]) -> list[str]:
        return [settings["candidates"]]

    def stage(self, name: str, settings: Mapping[str, Any], topic: str, flow: Workflow) -> Stage | FileInput:
        depth, device = settings.get("depth", 100), flow.device
        collection_format = flow.collection_format

        def action(folder: Path, inputs: list[Path]) -> None:
            from fastmarco.engine import Reranker
            from fastmarco.eval.metrics import rank_columns
            from fastmarco.pipelines.rerank import rerank
            from fastmarco.store.formats import load_queries, read_run_columns, write_run
            from fastmarco.store.passages import PassageStore

            model_dir, candidates_path, queries, collection = inputs
            candidates = rank_columns(read_run_columns(candidates_path), source=str(candidates_path))
            top = {q: pids[:depth] for q, pids in candidates.items()}
            reranker = Reranker.open(model_dir, device=device)  # type: ignore[arg-type]
            with PassageStore.open(collection, format=collection_format) as passages:
                entries = rerank(reranker, top, load_queries(queries), passages)
            write_run(folder / "run.trec", entries, "trec", tag=name)

        inputs = [
            flow.model(settings["model"]),
            flow.run(settings["candidates"], topic),
            flow.queries(topic),
            flow.collection(),
        ]
        params = {"depth": depth, **flow.collection_params}
        return Stage("rerank", f"{name} on {topic}", params, inputs, action, "run.trec")


class Fuse(_Kind):
    """Reciprocal rank fusion or a weighted sum of normalised scores of other systems (eval.fusion)."""

    name = "fuse"
    keys: Mapping[str, type] = {
        "systems": list,
        "method": str,
        "rrf_k": int,
        "norm": str,
        "weights": list,
        "depth": int,
    }
    required: tuple[str, ...] = ("systems",)
    system_keys: tuple[str, ...] = ("systems",)

    def check(self, settings: Mapping[str, Any]) -> None:
        super().check(settings)
        if len(settings["systems"]) < 2 or not all(isinstance(s, str) for s in settings["systems"]):
            raise InputError("systems: a list of at least two system names")
        if settings.get("method", "rrf") not in METHODS:
            raise InputError(f"method {settings['method']!r}; use {' or '.join(METHODS)}")
        if settings.get("norm", "min-max") not in NORMS:
            raise InputError(f"norm {settings['norm']!r}; use {', '.join(NORMS)}")
        weights = settings.get("weights")
        if weights is not None and (
            len(weights) != len(settings["systems"]) or not all(isinstance(w, (int, float)) for w in weights)
        ):
            raise InputError("weights: one number per system")

    def uses(self, settings: Mapping[str, Any]) -> list[str]:
        return list(settings["systems"])

    def stage(self, name: str, settings: Mapping[str, Any], topic: str, flow: Workflow) -> Stage | FileInput:
        params = {
            "method": settings.get("method", "rrf"),
            "rrf_k": settings.get("rrf_k", 60),
            "norm": settings.get("norm", "min-max"),
            "weights": settings.get("weights"),
            "depth": settings.get("depth", 1000),
        }

        def action(folder: Path, inputs: list[Path]) -> None:
            from fastmarco.eval.fusion import NamedRun, fuse
            from fastmarco.store.formats import read_run_columns, write_run

            runs = [NamedRun(str(path), read_run_columns(path)) for path in inputs]
            write_run(folder / "run.trec", fuse(runs, **params), "trec", tag=name)

        inputs = [flow.run(system, topic) for system in settings["systems"]]
        return Stage("fuse", f"{name} on {topic}", params, inputs, action, "run.trec")


register(RunFiles())
register(Bm25())
register(Dense())
register(Rerank())
register(Fuse())
