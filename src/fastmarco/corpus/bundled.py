"""A small corpus written for fastmarco's demo (not MS MARCO text), with queries and graded qrels."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _data(name: str) -> Path:
    return Path(str(resources.files("fastmarco.corpus") / "data" / name))


def demo_corpus_path() -> Path:
    """40 passages on everyday topics, `pid<TAB>passage`."""
    return _data("demo_corpus.tsv")


def demo_queries_path() -> Path:
    return _data("demo_queries.tsv")


def demo_qrels_path() -> Path:
    """TREC qrels (grades 1-3) of the demo queries."""
    return _data("demo_qrels.txt")


def demo_texts(path: Path) -> list[str]:
    """The text column of a bundled `id<TAB>text` file (its passages or its queries), in file order."""
    return [line.split("\t", 1)[1] for line in path.read_text("utf-8").splitlines()]
