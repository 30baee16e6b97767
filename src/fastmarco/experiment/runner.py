"""Run an experiment: build the stage graph of every system on every topic set, run the stages not
cached, evaluate each topic set with significance tests and write the results.

Written into the experiment's output folder (atomically, each file):
- `results.json`: per topic set the comparison (means, p-values, per-query values), the published
  reference figures, and every stage with its fingerprint, whether it was cached and its seconds;
- `table.md` (and `table.tex`, ...: the `formats`), one table per topic set with significance markers;
- `delta-<topic>.png`: each system's per-query difference from the baseline on the first metric.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastmarco._atomic import write_bytes_atomic
from fastmarco.eval.compare import Comparison, Pair, compare_runs, render
from fastmarco.experiment.config import Experiment
from fastmarco.experiment.stages import Cache, FileInput, Stage, StageRecord, in_order
from fastmarco.experiment.systems import SYSTEM_KINDS
from fastmarco.progress import Progress, Update, noting

CACHE_NAME = "cache"


class Workflow:
    """Makes each stage once (a model's export, its collection encoding, each index kind) so systems
    that share them share one stage."""

    def __init__(self, experiment: Experiment, progress: Progress | None) -> None:
        self.experiment = experiment
        self.device = experiment.device
        self.collection_format = experiment.collection_format
        self.progress = progress
        self._stages: dict[tuple[str, ...], Stage | FileInput] = {}

    def _once(self, key: tuple[str, ...], make: Callable[[], Stage | FileInput]) -> Stage | FileInput:
        if key not in self._stages:
            self._stages[key] = make()
        return self._stages[key]

    @property
    def collection_params(self) -> Mapping[str, str]:
        """A forced collection format, as a parameter of every stage that reads the collection (none
        for "auto", so caches made before formats could be forced stay valid)."""
        return {"format": self.collection_format} if self.collection_format != "auto" else {}

    def collection(self) -> FileInput:
        assert self.experiment.collection is not None  # checked when the config was read
        return FileInput(self.experiment.collection)

    def queries(self, topic: str) -> FileInput:
        return FileInput(self.experiment.topics[topic].queries)

    def model(self, name: str) -> Stage | FileInput:
        model = self.experiment.models[name]
        source = Path(model.source)
        if (source / "fastmarco.json").is_file():  # already exported
            return FileInput(source)

        def make() -> Stage:
            options = {"int8": model.int8, "fp16": model.fp16}

            def action(folder: Path, inputs: list[Path]) -> None:
                from fastmarco.model.export import export_model

                export_model(model.source, folder / "model", int8=model.int8, fp16=model.fp16)

            inputs: list[Stage | FileInput] = [FileInput(source)] if source.exists() else []
            params = {**options, **({} if source.exists() else {"hub_id": model.source})}
            return Stage("export", name, params, inputs, action, "model")

        return self._once(("model", name), make)

    def _shards(self, model: str) -> Stage:
        def make() -> Stage:
            device, progress, collection_format = self.device, self.progress, self.collection_format

            def action(folder: Path, inputs: list[Path]) -> None:
                from fastmarco.encode.local import encode_corpus
                from fastmarco.model.encoder import Encoder

                model_dir, collection = inputs
                encoder = Encoder.open(model_dir, device=device)  # type: ignore[arg-type]
                encode_corpus(
                    encoder, collection, folder / "shards", format=collection_format, progress=progress
                )

            return Stage(
                "encode",
                f"{self.collection().label} with {model}",
                dict(self.collection_params),
                [self.model(model), self.collection()],
                action,
                "shards",
            )

        stage = self._once(("shards", model), make)
        assert isinstance(stage, Stage)
        return stage

    def index(self, model: str, kind: str) -> Stage:
        def make() -> Stage:
            progress = self.progress

            def action(folder: Path, inputs: list[Path]) -> None:
                from fastmarco.search.index import build_index

                build_index(inputs[0], folder / "index", kind=kind, progress=progress)

            return Stage(
                "index", f"{kind} over {model}", {"kind": kind}, [self._shards(model)], action, "index"
            )

        stage = self._once(("index", model, kind), make)
        assert isinstance(stage, Stage)
        return stage

    def run(self, system: str, topic: str) -> Stage | FileInput:
        spec = self.experiment.systems[system]
        if topic not in spec.topics:
            raise ValueError(f"system {system} does not run on {topic}")  # checked when the config was read
        kind = SYSTEM_KINDS[spec.kind]
        return self._once(("run", system, topic), lambda: kind.stage(system, spec.settings, topic, self))

    def evaluation(self, topic: str) -> Stage:
        experiment, spec = self.experiment, self.experiment.topics[topic]
        names = [name for name, system in experiment.systems.items() if topic in system.topics]
        baseline = experiment.baseline if experiment.baseline in names else None
        params = {
            "systems": names,
            "metrics": list(spec.metrics),
            "relevance_level": spec.relevance_level,
            "baseline": baseline,
            "pairwise": experiment.pairwise,
            "test": experiment.test,
            "permutations": experiment.permutations,
            "seed": experiment.seed,
            "correction": experiment.correction,
            "alpha": experiment.alpha,
        }

        def action(folder: Path, inputs: list[Path]) -> None:
            from fastmarco.eval.metrics import rank_columns
            from fastmarco.store.formats import load_qrels, read_run_columns

            qrels_path, *run_paths = inputs
            runs = {
                name: rank_columns(read_run_columns(p), source=str(p))
                for name, p in zip(names, run_paths, strict=True)
            }
            comparison = compare_runs(
                load_qrels(qrels_path),
                runs,
                spec.metrics,
                baseline=baseline,
                pairwise=experiment.pairwise,
                test=experiment.test,  # type: ignore[arg-type]
                permutations=experiment.permutations,
                seed=experiment.seed,
                correction=experiment.correction,  # type: ignore[arg-type]
                alpha=experiment.alpha,
                relevance_level=spec.relevance_level,
            )
            write_bytes_atomic(folder / "comparison.json", render(comparison, "json").encode())

        inputs = [FileInput(spec.qrels), *(self.run(name, topic) for name in names)]
        return Stage("eval", topic, params, inputs, action, "comparison.json")


@dataclass(frozen=True)
class ExperimentResult:
    output: Path
    comparisons: dict[str, Comparison]
    stages: list[StageRecord]

    @property
    def recomputed(self) -> list[StageRecord]:
        return [s for s in self.stages if not s.cached]


def plan(experiment: Experiment) -> list[Stage]:
    """Every stage of the experiment in the order it runs (nothing is run)."""
    flow = Workflow(experiment, None)
    return in_order([flow.evaluation(topic) for topic in experiment.topics])


def run_experiment(experiment: Experiment, progress: Progress | None = None) -> ExperimentResult:
    """Run what is not cached, then write results.json, the tables and the plots (module docstring)."""
    say = noting(progress, "experiment")
    flow = Workflow(experiment, progress)
    finals = {topic: flow.evaluation(topic) for topic in experiment.topics}
    stages = in_order(list(finals.values()))
    cache = Cache(experiment.output / CACHE_NAME, say)
    for position, stage in enumerate(stages, 1):
        cache.run(stage, position, len(stages))
    comparisons = {topic: _load_comparison(stage.path) for topic, stage in finals.items()}
    result = ExperimentResult(experiment.output, comparisons, cache.records)
    _write_outputs(experiment, result)
    if progress is not None:
        progress(Update("experiment", note=f"results in {experiment.output}"))
    return result


def _load_comparison(path: Path) -> Comparison:
    body: dict[str, Any] = json.loads(path.read_text())
    body["pairs"] = [Pair(**pair) for pair in body["pairs"]]
    return Comparison(**body)


def _write_outputs(experiment: Experiment, result: ExperimentResult) -> None:
    out = experiment.output
    references = {
        topic: {name: dict(system.reference.get(topic, {})) for name, system in experiment.systems.items()}
        for topic in experiment.topics
    }
    body = {
        "experiment": experiment.name,
        "config": str(experiment.path),
        "topics": {
            topic: {**asdict(comparison), "reference": references[topic]}
            for topic, comparison in result.comparisons.items()
        },
        "stages": [asdict(record) for record in result.stages],
    }
    write_bytes_atomic(out / "results.json", (json.dumps(body, indent=2) + "\n").encode())
    for table_format in experiment.formats:
        suffix = {"markdown": "md", "latex": "tex", "csv": "csv", "table": "txt"}[table_format]
        sections = []
        for topic, comparison in result.comparisons.items():
            title = (
                f"## {topic}"
                if table_format == "markdown"
                else f"% {topic}"
                if table_format == "latex"
                else topic
            )
            sections.append(f"{title}\n\n" + render(comparison, table_format, references=references[topic]))  # type: ignore[arg-type]
        write_bytes_atomic(out / f"table.{suffix}", "\n".join(sections).encode())
    for topic, comparison in result.comparisons.items():
        if comparison.baseline is not None and len(comparison.systems) > 1:
            _delta_plot(comparison, out / f"delta-{topic}.png", topic)


def _delta_plot(comparison: Comparison, path: Path, topic: str) -> None:
    """Per-query difference from the baseline on the first metric, sorted, one panel per system."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the experiment extra brings matplotlib; without it there is no plot
        return
    import numpy as np

    assert comparison.baseline is not None
    metric = comparison.metrics[0]
    others = [s for s in comparison.systems if s != comparison.baseline]
    base = np.array(comparison.per_query[comparison.baseline][metric])
    figure, axes = plt.subplots(
        len(others), 1, figsize=(7, 1.8 * len(others) + 0.6), squeeze=False, sharex=True
    )
    for axis, name in zip(axes[:, 0], others, strict=True):
        delta = np.sort(np.array(comparison.per_query[name][metric]) - base)[::-1]
        axis.bar(np.arange(len(delta)), delta, width=1.0, color=np.where(delta >= 0, "tab:green", "tab:red"))
        axis.axhline(0, color="black", linewidth=0.5)
        axis.set_ylabel(name, rotation=0, ha="right", fontsize=8)
    axes[0, 0].set_title(f"{topic}: per-query {metric} minus {comparison.baseline}", fontsize=9)
    axes[-1, 0].set_xlabel(f"queries ({comparison.queries}), sorted by difference")
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)
