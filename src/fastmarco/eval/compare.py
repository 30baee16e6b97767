"""Several runs on one topic set: means, paired significance tests against a baseline (or between every
pair), corrected for multiple comparisons, and the table in text, Markdown, LaTeX, CSV or JSON.

Per-query values are paired by query id over every judged query: a query a run lacks scores 0 in it,
as trec_eval -c scores it (the table says how many each run lacks). Systems get letters a, b, c, ...
in the order given, and a value is marked with the letters of the systems it is significantly
better than (ranx's convention); with a baseline only comparisons against it are made.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from fastmarco.errors import InputError
from fastmarco.eval.metrics import Qrels, RankedRun, evaluate
from fastmarco.eval.significance import Correction, Test, corrected, run_test

Format = Literal["table", "markdown", "latex", "csv", "json"]
FORMATS: tuple[Format, ...] = ("table", "markdown", "latex", "csv", "json")


@dataclass(frozen=True)
class Pair:
    """One test of `treatment` against `control` on `metric`; `significant` when corrected p <= alpha."""

    metric: str
    control: str
    treatment: str
    p_value: float
    corrected_p_value: float
    significant: bool


@dataclass(frozen=True)
class Comparison:
    systems: list[str]
    metrics: list[str]
    means: dict[str, dict[str, float]]
    missing: dict[str, int]  # judged queries absent from each run (scored 0)
    queries: int
    test: str
    permutations: int | None
    seed: int | None
    correction: str
    alpha: float
    baseline: str | None
    pairwise: bool
    pairs: list[Pair]
    per_query: dict[str, dict[str, list[float]]]  # system -> metric -> values in `qids` order
    qids: list[str]

    def letters(self) -> dict[str, str]:
        return {name: _letter(i) for i, name in enumerate(self.systems)}

    def beats(self, system: str, metric: str) -> list[str]:
        """The systems `system` is significantly better than on `metric`."""
        out = []
        for pair in self.pairs:
            if pair.metric != metric or not pair.significant or system not in (pair.control, pair.treatment):
                continue
            other = pair.treatment if system == pair.control else pair.control
            if self.means[system][metric] > self.means[other][metric]:
                out.append(other)
        return sorted(out, key=self.systems.index)


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else f"s{i}"


def compare_runs(
    qrels: Qrels,
    runs: Mapping[str, RankedRun],
    metrics: Sequence[str],
    *,
    baseline: str | None = None,
    pairwise: bool = False,
    test: Test = "paired-t",
    permutations: int = 10_000,
    seed: int = 42,
    correction: Correction = "holm",
    alpha: float = 0.05,
    relevance_level: int = 1,
) -> Comparison:
    """Evaluate every run over every judged query and test the differences (see the module docstring)."""
    names = list(runs)
    if not names:
        raise InputError("no runs to compare")
    if baseline is not None and baseline not in runs:
        raise InputError(f"baseline {baseline!r} is not one of the runs: {', '.join(names)}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha}")
    qids = sorted(qrels)
    means: dict[str, dict[str, float]] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    missing: dict[str, int] = {}
    for name, run in runs.items():
        if run and not any(qid in run for qid in qrels):
            raise InputError(f"run {name}: none of its {len(run):,} queries is judged in the qrels")
        result = evaluate(qrels, run, metrics, relevance_level=relevance_level, include_missing=True)
        means[name] = result.metrics
        vectors[name] = {
            m: np.array([result.per_query[q][m] for q in qids], dtype=np.float64) for m in result.metrics
        }
        missing[name] = sum(1 for q in qids if q not in run)
    metric_names = list(means[names[0]])

    if pairwise:
        tested = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    elif baseline is not None:
        tested = [(baseline, other) for other in names if other != baseline]
    else:
        tested = []
    pairs: list[Pair] = []
    for metric in metric_names:
        raw = [run_test(test, vectors[a][metric], vectors[b][metric], permutations, seed) for a, b in tested]
        for (a, b), p, adjusted in zip(tested, raw, corrected(raw, correction), strict=True):
            pairs.append(Pair(metric, a, b, p, adjusted, adjusted <= alpha))
    return Comparison(
        systems=names,
        metrics=metric_names,
        means=means,
        missing=missing,
        queries=len(qids),
        test=test,
        permutations=permutations if test == "fisher" else None,
        seed=seed if test == "fisher" else None,
        correction=correction,
        alpha=alpha,
        baseline=baseline,
        pairwise=pairwise,
        pairs=pairs,
        per_query={n: {m: v.tolist() for m, v in vectors[n].items()} for n in names},
        qids=qids,
    )


def render(
    comparison: Comparison,
    format: Format,
    *,
    digits: int = 4,
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The comparison as a table in `format` (json carries p-values and per-query values too);
    `references` (system -> metric -> published figure) add a "(published)" column per metric."""
    if format == "json":
        return json.dumps(asdict(comparison), indent=2)
    references = references or {}
    published = [m for m in comparison.metrics if any(m in references.get(s, {}) for s in comparison.systems)]
    letters = comparison.letters()
    header = ["", "system", *comparison.metrics, *(f"{m} (published)" for m in published)]
    rows = []
    for name in comparison.systems:
        cells = [letters[name], name]
        for metric in comparison.metrics:
            marks = "".join(letters[o] for o in comparison.beats(name, metric))
            value = f"{comparison.means[name][metric]:.{digits}f}"
            cells.append(_marked(value, marks, format))
        own = references.get(name, {})
        cells += [f"{own[m]:.{digits}f}" if m in own else "-" for m in published]
        rows.append(cells)
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["letter", "system", *comparison.metrics, *(f"{m} beats" for m in comparison.metrics)]
        )
        for name in comparison.systems:
            beats = [" ".join(comparison.beats(name, m)) for m in comparison.metrics]
            writer.writerow(
                [
                    letters[name],
                    name,
                    *(f"{comparison.means[name][m]:.{digits}f}" for m in comparison.metrics),
                    *beats,
                ]
            )
        return buffer.getvalue()
    if format == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    elif format == "latex":
        lines = [
            "\\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
            "\\toprule",
            " & ".join(_latex_escape(h) for h in header) + " \\\\",
            "\\midrule",
            *(" & ".join([row[0], _latex_escape(row[1]), *row[2:]]) + " \\\\" for row in rows),
            "\\bottomrule",
            "\\end{tabular}",
        ]
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
        ]
    return "\n".join([*lines, "", *_notes(comparison, format)]) + "\n"


def _marked(value: str, marks: str, format: Format) -> str:
    if not marks:
        return value
    if format == "latex":
        return f"{value}$^{{{marks}}}$"
    if format == "markdown":
        return f"{value}<sup>{marks}</sup>"
    return f"{value} {marks}"


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, f"\\{char}")
    return text


def _notes(comparison: Comparison, format: Format) -> list[str]:
    prefix = "% " if format == "latex" else ""
    if not comparison.pairs:
        tests = "no significance tests (give a baseline or ask for every pair)"
    else:
        against = "between every pair" if comparison.pairwise else f"against {comparison.baseline}"
        what = (
            f"Fisher's randomization test ({comparison.permutations:,} permutations, seed {comparison.seed})"
            if comparison.test == "fisher"
            else "two-sided paired t-test"
        )
        tests = (
            f"letters: significantly better than that system ({what} {against}, {comparison.correction} "
            f"correction per metric, p <= {comparison.alpha})"
        )
    lacking = [f"{name} lacks {count:,}" for name, count in comparison.missing.items() if count]
    scope = f"{comparison.queries:,} judged queries" + (
        f"; absent queries score 0 (trec_eval -c): {', '.join(lacking)}" if lacking else ""
    )
    return [prefix + tests, prefix + scope]
