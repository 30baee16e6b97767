"""The README's two set-up commands are the ones CI and users actually run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    assert "fastmarco demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in ci_lines


def test_readme_imports_work() -> None:
    """Every `from fastmarco... import ...` line in the README's Python examples imports."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.+?)\n```", readme, flags=re.S)
    imports = [line for block in blocks for line in block.splitlines() if line.startswith("from fastmarco")]
    assert imports
    for line in imports:
        exec(compile(line, "README.md", "exec"), {})


def test_benchmark_tables_are_the_rendering_of_the_committed_results() -> None:
    """Every table in the README and docs/benchmarks.md is benchmarks/report.py's rendering of
    benchmarks/results/*.json: none stale, none typed by hand outside a generated block."""
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    tables = report.rendered()
    for page in report.PAGES:
        text = page.read_text()
        assert report.apply(text, tables) == text, f"{page.name}: run python benchmarks/report.py"
        if page.name != "README.md":
            assert report.unmarked_tables(text, tables) == [], f"{page.name}: a table typed by hand"
    readme = (ROOT / "README.md").read_text()
    assert report.unmarked_tables(readme, tables) == []
