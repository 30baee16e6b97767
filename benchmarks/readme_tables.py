"""The README's benchmark tables, rendered from the committed JSON results (never typed by hand).

    python benchmarks/readme_tables.py          # rewrite the tables in README.md
    python benchmarks/readme_tables.py --check  # exit 1 if README.md differs (tests/test_readme.py)

Each table sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
SCALE_FILES = ("scale_8841823x384.json", "scale_8841823x768.json")


def _gb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e9:,.2f} GB"


def _cell(figures: dict[str, Any], *path: str, fmt: str = "{:,.0f}") -> str:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return "—"
        value = value[key]
    return fmt.format(value)


def scale_table(body: dict[str, Any]) -> str:
    """One row per kind of a bench_scale.py result."""
    environment = body["environment"]
    lines = [
        f"{body['rows']:,} x {body['dim']} synthetic rows "
        f"(`benchmarks/results/scale_{body['rows']}x{body['dim']}.json`), {environment['cpus']} cores, "
        f"{environment['cpu']} "
        f"({', '.join(environment.get('cpu_flags', []))}); one query's latency includes encoding it with "
        f"`{Path(body['model']).name}`; recall against exact search, {body['queries']:,} queries.",
        "",
        "| kind | factory | build | peak build RSS | on disk | serving RSS | open cold / warm s | batch q/s "
        "| p50 / p99 ms | search p50 ms | recall@10 | recall@100 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, figures in body["kinds"].items():
        build, measure = figures.get("build", {}), figures.get("measure", {})
        if "not_measured" in measure or build.get("fits") is False:
            why = measure.get("not_measured") or build.get("why", "")
            lines.append(f"| {kind} | {build.get('factory', '—')} | {why} |" + " |" * 9)
            continue
        seconds = build.get("build_seconds")
        base = kind.removeprefix("plain-")
        opened = measure.get("open_seconds", {})
        cold = opened.get("cold", opened.get("first"))
        lines.append(
            "| "
            + " | ".join(
                [
                    kind,
                    f"`{build['factory']}`" if "factory" in build else f"{base}, refine 0",
                    "—" if seconds is None else f"{seconds:,.0f} s",
                    _gb(build.get("peak_build_rss_bytes")),
                    _gb(build.get("index_bytes")),
                    _gb(measure.get("serving_rss_anon_bytes")),
                    f"{'—' if cold is None else f'{cold:.2f}'} / {opened.get('warm', 0):.2f}",
                    _cell(measure, "batch_qps"),
                    f"{_cell(measure, 'latency_ms', 'p50', fmt='{:.1f}')} / "
                    f"{_cell(measure, 'latency_ms', 'p99', fmt='{:.1f}')}",
                    _cell(measure, "search_latency_ms", "p50", fmt="{:.1f}"),
                    _cell(measure, "recall@10", fmt="{:.3f}"),
                    _cell(measure, "recall@100", fmt="{:.3f}"),
                ]
            )
            + " |"
        )
    goals = body.get("goals")
    if goals:
        met = ", ".join(goals["kinds_meeting_all"]) or "no kind"
        missed = "; ".join(
            f"{goal} {best['value']:,.4g} ({best['kind']}) against {best['target']:,.4g}"
            for goal, best in goals["best"].items()
            if not best["met"]
        )
        lines += ["", f"Against the goals ({met} meets all of them; best missed: {missed or 'none'}):", ""]
        lines += [f"- {line}" for line in goals["bounds"]]
    published = body.get("pyserini_published_bytes", {})
    if published:
        sizes = "; ".join(f"{name} {_gb(size)}" for name, size in published.items())
        lines += ["", f"For scale, Pyserini's prebuilt indexes of the real corpus: {sizes}."]
    return "\n".join(lines)


def rendered() -> dict[str, str]:
    tables = {}
    for name in SCALE_FILES:
        path = RESULTS / name
        if path.is_file():
            tables[name.removesuffix(".json").replace("_", "-")] = scale_table(json.loads(path.read_text()))
    return tables


def apply(text: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in text or end not in text:
            raise SystemExit(f"README.md has no {begin} ... {end} block for {name}")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{table}\n{end}{tail}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args()
    current = README.read_text()
    wanted = apply(current, rendered())
    if args.check:
        if wanted != current:
            print("README.md's benchmark tables are stale: run python benchmarks/readme_tables.py")
            sys.exit(1)
        return
    README.write_text(wanted)


if __name__ == "__main__":
    main()
