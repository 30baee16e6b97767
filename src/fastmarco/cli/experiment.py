"""`fastmarco experiment`."""

from __future__ import annotations

import click

from fastmarco.cli.app import EXISTING_FILE, main
from fastmarco.cli.progress import Reporter


@main.command()
@click.argument("config", type=EXISTING_FILE)
@click.option(
    "--plan", "plan_only", is_flag=True, help="List the stages and whether each is cached; run nothing."
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Results and cache folder instead of the file's output.",
)
@click.option("--quiet", is_flag=True, help="No progress bars (stage lines stay).")
def experiment(config: str, plan_only: bool, output: str | None, quiet: bool) -> None:
    """Run CONFIG.toml: systems x topic sets as cached stages, then a table with significance tests.

    A second run reuses every stage whose inputs and parameters are unchanged; results.json,
    table.md (+ the other formats) and per-query delta plots go to the experiment's output folder.
    """
    from fastmarco.experiment.config import load
    from fastmarco.experiment.runner import CACHE_NAME, plan, run_experiment
    from fastmarco.experiment.stages import DONE_NAME, Cache

    spec = load(config, output=output)
    if plan_only:
        cache = Cache(spec.output / CACHE_NAME, lambda message: None)
        stages = plan(spec)
        for position, stage in enumerate(stages, 1):
            cache.fingerprint(stage)
            state = "cached" if (stage.folder / DONE_NAME).is_file() else "to run"
            click.echo(f"[{position}/{len(stages)}] {stage.kind} {stage.label}: {state}")
        return
    progress = Reporter(bars=False if quiet else None)
    try:
        result = run_experiment(spec, progress=progress)
    finally:
        progress.close()
    table = spec.output / "table.md"
    if table.is_file():
        click.echo(table.read_text(), nl=False)
    recomputed = len(result.recomputed)
    seconds = sum(s.seconds for s in result.stages)
    click.echo(
        f"{len(result.stages)} stages: {recomputed} run ({seconds:.1f} s), "
        f"{len(result.stages) - recomputed} cached; results in {result.output}"
    )
