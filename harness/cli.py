"""Typer commands: argument parsing and printing only; the work lives in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.errors import HarnessError

app = typer.Typer(
    help="Train, track and compare image classifiers. Experiments live in experiments/<name>.py.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: key=value (every variant) or VARIANT.key=value."),
]
TrackingOption = Annotated[
    Optional[str],
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts in ./mlruns)."),
]
DataDirOption = Annotated[
    Optional[Path], typer.Option(help="Where datasets are read/downloaded (default: $HARNESS_DATA_DIR, else ./data).")
]
DeviceOption = Annotated[Optional[str], typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]


def _resolve(name: str, overrides: list[str] | None, device: str | None = None):  # noqa: ANN202
    from harness.config import parse_overrides
    from harness.experiment import load_experiment

    exp = load_experiment(name)
    parsed = parse_overrides(overrides)
    if device:
        parsed.common["device"] = device
    return exp, exp.resolve(parsed)


@app.command("list")
def list_cmd() -> None:
    """List the experiments found in the experiments folder."""
    from harness.experiment import experiment_names, experiments_dir, load_experiment

    names = experiment_names()
    if not names:
        raise HarnessError(f"No experiments found in {experiments_dir()}; add a file there defining `experiment = Experiment(...)`.")
    for name in names:
        exp = load_experiment(name)
        typer.echo(f"{name:<24} {', '.join(exp.variants):<40} {exp.description}")


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved variants as JSON.")] = False,
) -> None:
    """Print an experiment's resolved variants (after --set overrides)."""
    exp, configs = _resolve(name, set_)
    resolved = {variant: cfg.to_dict() for variant, cfg in configs.items()}
    if as_json:
        typer.echo(json.dumps({"name": exp.name, "description": exp.description, "variants": resolved}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{exp.name}: {exp.description}")
    table.add_column("field")
    for variant in resolved:
        table.add_column(variant)
    for key in next(iter(resolved.values())):
        table.add_row(key, *(str(resolved[v][key]) for v in resolved))
    Console().print(table)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `harness list`).")],
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    device: DeviceOption = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest interrupted run from its checkpoints.")] = False,
) -> None:
    """Train every variant of an experiment and record it in MLflow (one parent run, a child per variant)."""
    exp, configs = _resolve(name, set_, device)
    from harness.runner import run_experiment

    try:
        outcome = run_experiment(exp, configs, tracking_uri=tracking_uri, data_dir=data_dir, resume=resume)
    except KeyboardInterrupt:
        typer.echo(f"Interrupted: runs marked KILLED; checkpoints kept. Continue with `harness run {name} --resume`.", err=True)
        raise typer.Exit(130) from None
    _print_table(outcome.table, f"{exp.name} (parent run {outcome.parent_run_id})")
    for r in outcome.failed:
        typer.echo(f"error: variant '{r.variant}' {r.status}: {r.reason}", err=True)
    if outcome.failed:
        raise typer.Exit(1)


# Columns that fit a terminal; the full table (with run ids) is the parent run's comparison.csv.
_TERMINAL_COLUMNS = {"variant": "variant", "status": "status", "best_epoch": "best ep", "best_val_acc": "val acc",
                     "test_acc": "test acc", "test_loss": "test loss", "train_seconds": "train s",
                     "images_per_second": "img/s", "param_count": "params"}


def _print_table(frame, title: str) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    frame = frame[list(_TERMINAL_COLUMNS)]
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(_TERMINAL_COLUMNS[col], no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    Console(width=160 if not sys.stdout.isatty() else None).print(table)


def _cell(value: object) -> str:
    if value is None or value != value:  # missing (None or NaN)
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main() -> None:
    """Console entry point: user errors end in one line on stderr and exit code 2."""
    try:
        app()
    except HarnessError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
