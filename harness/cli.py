"""Typer commands: argument parsing and printing only; the work lives in the library."""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from harness.errors import ExperimentFileError, HarnessError
from harness.reporter import Reporter

if TYPE_CHECKING:
    from harness.comparison import CompareOutcome
    from harness.config import TrainConfig
    from harness.experiment import Experiment

app = typer.Typer(
    help="Train, track and compare image classifiers. Experiments live in experiments/<name>.py.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config field: key=value (every variant) or VARIANT.key=value."),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts "
                      "in ./mlruns)."),
]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Where datasets are read/downloaded (default: $HARNESS_DATA_DIR, else ./data).")
]
DeviceOption = Annotated[str | None, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]
SystemMetricsOption = Annotated[bool, typer.Option(
    help="Record MLflow's system metrics (CPU, memory, disk, network; GPU with the `gpu` extra) on every child run, "
         "sampled every 10 s ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL to change).")]
AliasOption = Annotated[str, typer.Option(help="With --register: the alias moved to the new version if it beats the "
                                               "one the alias points at (on best_val_acc).")]

NprocOption = Annotated[str | None, typer.Option(
    help="Train data-parallel on N processes per machine (PyTorch's torchrun launcher); auto = one per GPU (1 "
         "without). batch_size stays the global batch.")]
NnodesOption = Annotated[int, typer.Option(help="Machines taking part (run the same command on each, with --node-rank "
                                                "and --rdzv-endpoint); or use torchrun ... -m harness.")]
NodeRankOption = Annotated[int, typer.Option(help="This machine's number, 0 to nnodes-1 (0 records the runs).")]
RdzvEndpointOption = Annotated[str | None, typer.Option(help="HOST:PORT of machine 0, where the machines meet.")]
RdzvTimeoutOption = Annotated[int, typer.Option(help="Seconds to wait for the other machines before giving up.")]
BackendOption = Annotated[str, typer.Option(help="With several processes: auto (nccl on CUDA, gloo on CPU), gloo or "
                                                 "nccl.")]


@app.callback()
def _options(
    experiments_dir: Annotated[Path | None, typer.Option(
        help="Folder of experiment files (default: $HARNESS_EXPERIMENTS_DIR, else ./experiments, else the ones "
             "shipped with harness).")] = None,
) -> None:
    """Train, track and compare image classifiers. Experiments live in experiments/<name>.py."""
    if experiments_dir is not None:
        if not experiments_dir.is_dir():
            raise HarnessError(f"--experiments-dir {experiments_dir} is not a folder; give the folder that holds "
                               "your <name>.py experiment files.")
        # Through the environment, so the processes a run launches (ranks, trial workers) read the same folder.
        os.environ["HARNESS_EXPERIMENTS_DIR"] = str(experiments_dir.resolve())


def _load(name: str) -> Experiment:
    """The experiment `name` for a command: a broken file is a HarnessError; a Ctrl-C while the
    file is imported ends the command with exit code 130."""
    from harness.api import load_experiment

    try:
        return load_experiment(name)
    except KeyboardInterrupt:  # a real Ctrl-C (a file's own `raise KeyboardInterrupt` is a HarnessError)
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130) from None


def _resolve(name: str, overrides: list[str] | None, device: str | None = None
             ) -> tuple[Experiment, dict[str, TrainConfig]]:
    """(experiment, resolved variants) for a command (see `harness.resolve`)."""
    from harness.api import resolve

    return resolve(_load(name), overrides, device)


GLOBAL_BATCH_NOTE = ("batch_size is the global batch: with N processes (--nproc-per-node, torchrun) each takes "
                     "batch_size / N, so a recipe means the same at any world size; lr is never rescaled.")


@app.command("list")
def list_cmd() -> None:
    """List the experiments found in the experiments folder.

    A file that fails to load, or whose variants `show` would refuse, is listed as broken, with
    its error also on stderr as one `error:` line; the good ones are still listed, and the exit
    code is then 1. Nothing costly is imported (no PyTorch)."""
    from harness.experiment import experiment_names, experiments_dir, load_experiment

    names = experiment_names()
    if not names:
        raise ExperimentFileError(f"No experiments found in {experiments_dir()}; add a file there defining "
                                  "`experiment = Experiment(...)`.")
    broken = []
    for name in names:
        try:
            exp = load_experiment(name)
            exp.resolve(light=True)  # broken for `show` and `run` (an unknown model name...) is broken here too
        except HarnessError as exc:
            broken.append(str(exc))
            typer.echo(f"{name:<24} (broken: {exc})")
            continue
        except KeyboardInterrupt:  # a real Ctrl-C: stop listing
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"{name:<24} {', '.join(exp.variants):<40} {exp.description}")
    for message in broken:
        typer.echo(f"error: {message}", err=True)
    if broken:
        raise typer.Exit(1)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved variants as JSON.")] = False,
) -> None:
    """Print an experiment's resolved variants (after --set overrides)."""
    exp, configs = _resolve(name, set_)
    resolved = {variant: cfg.to_dict() for variant, cfg in configs.items()}
    from harness.search_space import describe

    space = describe(exp.search_space)
    if as_json:
        typer.echo(json.dumps({"name": exp.name, "description": exp.description, "variants": resolved,
                               "search_space": space, "notes": [GLOBAL_BATCH_NOTE]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{exp.name}: {exp.description}")
    table.add_column("field")
    for variant in resolved:
        table.add_column(variant)
    for key in next(iter(resolved.values())):
        table.add_row(key, *(str(resolved[v][key]) for v in resolved))
    console = Console()
    console.print(table)
    console.print("search space (harness tune): " + "; ".join(f"{k}: {v}" for k, v in space.items()))
    console.print(GLOBAL_BATCH_NOTE)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `harness list`).")],
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    device: DeviceOption = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest interrupted run from its checkpoints; "
                                              "`--resume auto`: that run if there is one, else a new run (one fixed "
                                              "command for a scheduler's requeue script).")] = False,
    resume_auto: Annotated[bool, typer.Option("--resume-auto", hidden=True)] = False,  # `--resume auto`, see main()
    repeat: Annotated[int | None, typer.Option(help="Train every variant K times, seeds from its config seed "
                                                    "upwards.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Train every variant once per seed, e.g. 0,1,2.")] = None,
    nproc_per_node: NprocOption = None,
    nnodes: NnodesOption = 1,
    node_rank: NodeRankOption = 0,
    rdzv_endpoint: RdzvEndpointOption = None,
    rdzv_timeout: RdzvTimeoutOption = 120,
    dist_backend: BackendOption = "auto",
    register: Annotated[str | None, typer.Option(
        help="Register the best variant's model (best mean best_val_acc) in MLflow's model registry under this name; "
             "then `harness predict models:/NAME@champion ...`.")] = None,
    alias: AliasOption = "champion",
    system_metrics: SystemMetricsOption = True,
) -> None:
    """Train every variant of an experiment and record it in MLflow (one parent run, a child per variant and seed).

    Under torchrun (`torchrun ... -m harness run NAME`), every process trains each variant
    data-parallel; rank 0 records the runs."""
    from harness import api, launch

    exp = _load(name)
    try:
        result = api.run(exp, set=set_, seeds=seeds, repeat=repeat, resume="auto" if resume_auto else resume,
                             device=device, tracking_uri=tracking_uri, data_dir=data_dir,
                             nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                             rdzv_endpoint=rdzv_endpoint, rdzv_timeout=rdzv_timeout, backend=dist_backend,
                             register=register, alias=alias, system_metrics=system_metrics)
    except KeyboardInterrupt as exc:
        if launch.says_interrupted(exc) and not launch.stopped_by_launcher(exc):
            typer.echo(f"Interrupted: runs marked KILLED; checkpoints kept. Continue with `harness run {name} "
                       "--resume`.", err=True)
        raise typer.Exit(130) from None
    except HarnessError as exc:
        code = launch.peer_lost_exit(exc)
        if code is not None:
            raise typer.Exit(code) from None
        raise
    if result.launched:  # the processes' rank 0 printed the table
        raise typer.Exit(1 if result.failed else 0)
    from harness.comparison import CompareOutcome

    if result.comparison is not None and len(result.failed) < len(result.variants):  # nothing finished: no table
        _print_tables(CompareOutcome(result.comparison))
    if result.promotion is not None:
        typer.echo(result.promotion.describe())
    for r in result.failed:
        typer.echo(f"error: variant '{r.label}' {r.status}: {r.reason}", err=True)
    if result.failed:
        raise typer.Exit(1)


def _print_tables(outcome: CompareOutcome) -> None:
    """A comparison's rich tables, as wide as the terminal (200 columns when not one)."""
    from rich.console import Console

    from harness.comparison import rich_tables

    console = Console(width=200 if not sys.stdout.isatty() else None)
    for table in rich_tables(outcome):
        console.print(table)


StorageOption = Annotated[
    str | None,
    typer.Option(help="Optuna storage: a SQLAlchemy URL (default sqlite:///optuna.db, fine for several processes on "
                      "one machine; use postgresql://... to share a study across machines) or journal:PATH."),
]
VariantOption = Annotated[str | None, typer.Option(help="Variant to tune (default: the experiment's first).")]


@app.command()
def tune(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    variant: VariantOption = None,
    trials: Annotated[int, typer.Option(help="Finished (complete or pruned) trials the study should have in total; "
                                             "re-running the same command resumes the study up to this count.")] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")] = None,
    study_name: Annotated[str | None, typer.Option(help="Default: EXPERIMENT-VARIANT.")] = None,
    storage: StorageOption = None,
    sampler: Annotated[str, typer.Option(help="tpe, random, cmaes or gp.")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median, hyperband, wilcoxon (compares seeds: needs --repeat) or "
                                             "none.")] = "median",
    n_jobs: Annotated[int, typer.Option(help="Trials run at once in this process (torch threads are split).")] = 1,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    device: DeviceOption = None,
    retrain_best: Annotated[bool, typer.Option(help="Afterwards, train the best params on train+validation and test "
                                                    "once.")] = False,
    heartbeat: Annotated[int, typer.Option(help="Seconds between trial heartbeats; a trial silent for 3 is failed and "
                                                "retried.")] = 10,
    repeat: Annotated[int | None, typer.Option(help="Train each trial at K seeds (from the config seed up); its "
                                                       "value is their mean.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Train each trial at these seeds, e.g. 0,1,2.")] = None,
    nproc_per_node: NprocOption = None,
    nnodes: NnodesOption = 1,
    node_rank: NodeRankOption = 0,
    rdzv_endpoint: RdzvEndpointOption = None,
    rdzv_timeout: RdzvTimeoutOption = 120,
    dist_backend: BackendOption = "auto",
    register: Annotated[str | None, typer.Option(
        help="With --retrain-best: register the retrained model in MLflow's model registry under this name (judged "
             "by the study's best validation accuracy).")] = None,
    alias: AliasOption = "champion",
    system_metrics: SystemMetricsOption = True,
) -> None:
    """Search the experiment's search space with Optuna; every trial is a nested MLflow run."""
    from harness import api, launch

    exp = _load(name)
    try:
        result = api.tune(exp, variant=variant, trials=trials, timeout=timeout, study_name=study_name,
                              storage=storage, sampler=sampler, pruner=pruner, n_jobs=n_jobs, seed=seed, set=set_,
                              device=device, tracking_uri=tracking_uri, data_dir=data_dir, retrain_best=retrain_best,
                              heartbeat=heartbeat, repeat=repeat, seeds=seeds, register=register, alias=alias,
                              system_metrics=system_metrics, nproc_per_node=nproc_per_node, nnodes=nnodes,
                              node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, rdzv_timeout=rdzv_timeout,
                              backend=dist_backend)
    except KeyboardInterrupt as exc:
        if launch.says_interrupted(exc):
            typer.echo("Interrupted: re-run the same command to continue the study.", err=True)
        raise typer.Exit(130) from None
    if result is None:  # a rank other than 0 (or a machine other than 0): it trained, rank 0 reports
        return
    failed = result.retrained is not None and result.retrained.status != "FINISHED"
    if result.launched:  # the processes' rank 0 printed the summary
        raise typer.Exit(1 if failed else 0)
    from harness.study_store import best_summary

    typer.echo(best_summary(result.study) + f" (MLflow parent run {result.parent_run_id})")
    if result.retrained is not None:
        _print_tables(api.compare_outcome(exp.name, run_id=result.parent_run_id, tracking_uri=tracking_uri,
                                          only=[result.retrained.run_id]))
        if failed:
            typer.echo(f"error: retrain-best {result.retrained.status}: {result.retrained.reason}", err=True)
            raise typer.Exit(1)
    if result.promotion is not None:
        typer.echo(result.promotion.describe())


@app.command("lr-find")
def lr_find_cmd(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    variant: VariantOption = None,
    set_: SetOption = None,
    min_lr: Annotated[float, typer.Option(help="Learning rate of the first step.")] = 1e-5,
    max_lr: Annotated[float, typer.Option(help="Learning rate the test grows to (it stops earlier if the loss "
                                               "diverges).")] = 10.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps from --min-lr to --max-lr.")] = 100,
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    device: DeviceOption = None,
) -> None:
    """Learning-rate range test: train with an exponentially growing lr until the loss diverges,
    and suggest an lr (one MLflow run with the plot and the curve; the experiment is not changed)."""
    from harness import api
    from harness.lr_finder import RULE

    exp = _load(name)
    try:
        outcome = api.lr_find(exp, variant=variant, set=set_, min_lr=min_lr, max_lr=max_lr, steps=steps,
                                  device=device, tracking_uri=tracking_uri, data_dir=data_dir)
    except KeyboardInterrupt:
        typer.echo("Interrupted: the lr-find run is marked KILLED.", err=True)
        raise typer.Exit(130) from None
    chosen = variant or next(iter(exp.variants))  # the API's default: the first variant
    found = f"suggested lr {outcome.suggestion:.3g}" if outcome.suggestion is not None \
        else "no suggestion (too few steps before the loss rose)"
    typer.echo(f"{chosen}: {found} ({RULE}); {len(outcome.test.lrs)} steps, stopped because {outcome.stop_reason}. "
               f"Plot and curve: MLflow run {outcome.run_id} (lr_find.png, lr_find.csv).")
    if outcome.suggestion is not None:
        typer.echo(f"Try it: harness run {name} --set {chosen}.lr={outcome.suggestion:.3g}")


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    variant: VariantOption = None,
    study_name: Annotated[str | None, typer.Option(help="Default: EXPERIMENT-VARIANT.")] = None,
    storage: StorageOption = None,
) -> None:
    """Show a study's best trial and its trials table (no training)."""
    from harness.experiment import load_experiment
    from harness.study_store import (
        best_summary,
        default_study_name,
        load_study,
        pick_variant,
        trials_table,
    )

    exp = load_experiment(name)
    loaded = load_study(storage, study_name or default_study_name(exp, pick_variant(exp, variant)))
    typer.echo(best_summary(loaded))
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        typer.echo(trials_table(loaded).to_string(index=False))


@app.command()
def bench(
    epochs: Annotated[int, typer.Option(help="Epochs per contender; the first is a warm-up.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    cifar: Annotated[bool, typer.Option(help="Also measure ResNet-18 on CIFAR-shaped data with flip + crop.")] = True,
    startup: Annotated[bool, typer.Option(help="Measure `harness run quickstart`'s time to its first training "
                                               "step.")] = True,
    study_budget: Annotated[int, typer.Option(help="Training epochs per study in the sampler/pruner comparison "
                                                   "(0 skips it; 36 = 12 unpruned 3-epoch trials).")] = 36,
    study_seeds: Annotated[int, typer.Option(help="Sampler seeds per strategy in the study comparison.")] = 3,
    scaling: Annotated[bool, typer.Option(help="Measure data-parallel scaling: LeNet and ResNet-18 in 1 process vs "
                                               "N (2 CPU processes, or every GPU) at the same global batch.")] = True,
    recipes: Annotated[bool, typer.Option(help="Measure what each recipe primitive (auto-augment, MixUp, CutMix, "
                                               "random erasing, EMA) costs per training image vs the plain "
                                               "path.")] = True,
    folders: Annotated[bool, typer.Option(help="Measure the streamed image-folder path (2,000 generated JPEGs) vs "
                                               "torchvision's ImageFolder tutorial pipeline, and what limits "
                                               "it.")] = True,
    predict: Annotated[bool, typer.Option(help="Measure `harness predict` (2,000 MNIST PNGs, the quickstart's LeNet) "
                                               "vs MLflow's pyfunc predict on the same batches.")] = True,
    system_metrics: Annotated[bool, typer.Option(help="Measure what MLflow's system-metrics monitor costs training "
                                                      "(off vs sampling every 10 s and every 1 s).")] = True,
    out: Annotated[Path, typer.Option(help="Where to write the results as JSON.")] = Path("bench-results.json"),
) -> None:
    """Measure training images/s (harness vs a tutorial-style loop vs the compute floor, in one run),
    start-up time, data-parallel scaling, the cost of each training-recipe primitive, the streamed
    image-folder path vs torchvision's tutorial pipeline, and how fast TPE + pruning vs random
    search find a good configuration."""
    import pandas as pd

    from harness.bench import run_benchmark

    report = run_benchmark(epochs=epochs, device=device, cifar=cifar, out=out, log=lambda m: typer.echo(m, err=True),
                           startup=startup, study_budget=study_budget, study_seeds=tuple(range(study_seeds)),
                           scaling=scaling, recipes=recipes, folders=folders, predict=predict,
                           system_metrics=system_metrics)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:,.2f}".format):
        if "startup" in report:
            s = report["startup"]
            typer.echo(f"start-up to first training step: {s['first_run_seconds']:.2f} s (new MLflow store), "
                       f"{s['median_later_seconds']:.2f} s (existing store); bare torch + optimizer + mlflow "
                       f"{s['floor_seconds']:.2f} s (harness/floor {s['harness/floor']:.2f}), with a run started "
                       f"{s['tracked_floor_seconds']:.2f} s (harness/tracked floor "
                       f"{s['harness/tracked_floor']:.2f}); imports: "
                       + ", ".join(f"{k} {v:.2f} s" for k, v in s["imports"].items()))
        typer.echo(pd.DataFrame(report["throughput"]).to_string(index=False))
        if report.get("scaling"):
            typer.echo(pd.DataFrame(report["scaling"]).to_string(index=False))
        for note in report.get("scaling_notes", []):
            typer.echo(f"note: {note}")
        if report.get("recipes"):
            typer.echo(pd.DataFrame(report["recipes"]).to_string(index=False))
        for note in report.get("recipes_notes", []):
            typer.echo(f"note: {note}")
        if report.get("folders"):
            typer.echo(pd.DataFrame(report["folders"]).to_string(index=False))
        if report.get("system_metrics"):
            typer.echo(pd.DataFrame(report["system_metrics"]).to_string(index=False))
        if report.get("predict"):
            typer.echo(pd.DataFrame(report["predict"]).to_string(index=False))
        for note in report.get("predict_notes", []):
            typer.echo(f"note: {note}")
        if "study" in report:
            typer.echo(pd.DataFrame(report["study"]).to_string(index=False))
    typer.echo(f"results written to {out}")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="runs:/<run_id>/model, models:/<name>@<alias>, models:/<name>/<version>, "
                                              "or an experiment name: the best variant (best_val_acc) of its latest "
                                              "finished `harness run`.")],
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders (searched recursively for .jpg .jpeg "
                                                     ".png .bmp .webp, any case).")],
    top_k: Annotated[int, typer.Option(help="Most probable classes shown per image.")] = 3,
    fmt: Annotated[str, typer.Option("--format", help="table, csv (path,class_1,prob_1,...) or json (a list of "
                                                      "objects); csv and json go to stdout, messages to "
                                                      "stderr.")] = "table",
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 256,
    device: Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu or cuda.")] = "auto",
    tracking_uri: TrackingOption = None,
    trust_model: Annotated[bool, typer.Option(
        help="Also load a model logged in a format that can run code as it loads (MLflow's pickle format, a pyfunc "
             "python_model); by default only the pt2 models harness logs are loaded. Only for a model you "
             "trust.")] = False,
) -> None:
    """Classify image files with a logged model: top-k classes and their probabilities (softmax) per image.

    The logged model takes raw float images in [0, 1] at its dataset's native
    size and channel count: each file is read with PIL, converted to the
    model's channels (grayscale or RGB) and resized to that size. Unreadable
    files are listed on stderr and skipped; the command fails only if no image
    could be read."""
    from harness import api
    from harness import prediction as predicting

    predicting.check_options(fmt, top_k, batch_size, device)  # --format too, before anything is read
    try:
        outcome = api.predict_outcome(model, paths, top_k=top_k, batch_size=batch_size, device=device,
                                      tracking_uri=tracking_uri, trust_model=trust_model,
                                      reporter=Reporter(stream=sys.stderr),  # stdout is the predictions'
                                      progress=predicting.progress_bar)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130) from None
    if fmt == "table":
        from rich.console import Console

        Console(width=200 if not sys.stdout.isatty() else None).print(predicting.rich_table(outcome))
    else:
        typer.echo(predicting.render(outcome, fmt), nl=False)


@app.command()
def compare(
    name: Annotated[str | None, typer.Argument(help="Experiment name (default: that of the latest run in the "
                                                    "store, or of --run).")] = None,
    run: Annotated[str | None, typer.Option(help="Parent run id (default: the latest `harness run`); a study's "
                                                    "parent run compares its trials.")] = None,
    study: Annotated[bool, typer.Option(help="Compare the trials of the latest `harness tune` study.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, markdown or json.")] = "table",
    metric: Annotated[str, typer.Option(help="Sort (and, with repeats, test) on this metric; a per-epoch metric "
                                             "such as val_loss means its last epoch.")] = "best_val_acc",
    out: Annotated[Path | None, typer.Option(help="Folder for the figures and CSVs (default: compare/NAME).")] = None,
    confusion: Annotated[bool, typer.Option(help="Also compare the most-confused class pairs, first vs last "
                                                 "epoch.")] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Compare the variants of a run (mean ± std with --repeat) from MLflow: table, curves, confusion matrices."""
    from harness import api
    from harness.comparison import check_format, render

    check_format(fmt)  # before anything is read
    outcome = api.compare_outcome(name, run_id=run, study=study, metric=metric, tracking_uri=tracking_uri, write=True,
                                  out=out, confusion=confusion)
    if fmt == "table":
        _print_tables(outcome)
    else:
        typer.echo(render(outcome, fmt), nl=False)
    for note in outcome.notes:
        typer.echo(note if note.startswith("warning:") else f"note: {note}", err=True)
    for path in outcome.files:  # stderr: keeps csv/json on stdout parseable
        typer.echo(f"wrote {path} (also on run {outcome.comparison.parent_run_id} as compare/{path.name})", err=True)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    run: Annotated[str | None, typer.Option(help="Parent run id, whatever its status (default: the latest "
                                                    "finished `harness run`; a study's parent run gives the study "
                                                    "report; `harness runs NAME` lists them).")] = None,
    study: Annotated[bool, typer.Option(help="Report the latest finished `harness tune` study (trials, Optuna's "
                                             "plots).")] = False,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: reports/NAME-run.html, "
                                                     "reports/NAME-study.html or reports/NAME-<run id>.html).")] = None,
    tracking_uri: TrackingOption = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage of the study (default: the one its run "
                                                        "recorded, else sqlite:///optuna.db).")] = None,
) -> None:
    """Write one self-contained HTML report of a run or study (readable without MLflow); also logged to its parent run.

    Without --run: the latest FINISHED run (or study), as `harness predict NAME` picks."""
    from harness import api

    outcome = api.report_outcome(name, run_id=run, study=study, out=out, tracking_uri=tracking_uri, storage=storage)
    for note in outcome.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {outcome.path} ({outcome.size / 1e6:.1f} MB; also on run {outcome.parent_run_id} "
               f"as {outcome.artifact})")


@app.command()
def runs(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    limit: Annotated[int, typer.Option(help="How many recent parent runs to list.")] = 10,
    tracking_uri: TrackingOption = None,
) -> None:
    """List an experiment's recent runs: status, duration, failure reason, and how to continue unfinished ones."""
    from rich.console import Console

    from harness import api, reports
    from harness.history import runs_note

    frame = api.runs(name, limit=limit, tracking_uri=tracking_uri)
    Console(width=220 if not sys.stdout.isatty() else None).print(reports.rich_table(frame, f"{name}: recent runs",
                                                                                     runs_note(name)))


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the UI (0 picks a free one).")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only); 0.0.0.0 is "
                                           "reachable by private IPs, a named address by that address.")] = "127.0.0.1",
    tracking_uri: TrackingOption = None,
) -> None:
    """Open the MLflow UI on the store `harness run` writes to (artifacts from ./mlruns); Ctrl-C stops it.

    With an http(s) tracking server nothing is started: its own UI address is printed.
    """
    from harness.ui import serve

    try:
        serve(tracking_uri, host=host, port=port, echo=typer.echo)  # Ctrl-C once serving: a clean stop, exit 0
    except KeyboardInterrupt:  # Ctrl-C before the server was started
        raise typer.Exit(130) from None


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(help="Port for the dashboard (0 picks a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only; the dashboard "
                                           "has no login and can delete studies).")] = "127.0.0.1",
    storage: StorageOption = None,
    study: Annotated[str | None, typer.Option(help="Print this study's page (e.g. quickstart-lenet_relu) "
                                                      "instead of the list of studies.")] = None,
) -> None:
    """Open optuna-dashboard on the study storage `harness tune` writes to (needs the dashboard extra); Ctrl-C
    stops it."""
    from harness.dashboard import serve

    try:
        serve(storage, host=host, port=port, study=study, echo=typer.echo)  # Ctrl-C once serving: a clean stop, exit 0
    except KeyboardInterrupt:  # Ctrl-C before the server was started
        raise typer.Exit(130) from None


def _spell_resume_auto(argv: list[str]) -> list[str]:
    """`--resume auto` (or `--resume=auto`) as the hidden flag `--resume-auto`: Typer's boolean
    flags take no value, and `--resume` alone must keep working."""
    out: list[str] = []
    for arg in argv:
        if arg == "auto" and out and out[-1] == "--resume":
            out[-1] = "--resume-auto"
        else:
            out.append("--resume-auto" if arg == "--resume=auto" else arg)
    return out


def main() -> None:
    """The commands: user errors end in one line on stderr and exit code 2 (or the exit code of
    the launched processes whose rank 0 printed it)."""
    sys.argv[1:] = _spell_resume_auto(sys.argv[1:])
    try:
        app()
    except HarnessError as exc:
        if not getattr(exc, "reported", False):  # launched processes' errors: their rank 0 printed them
            typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))


def console_main() -> None:
    """Entry point of the `harness` command and `python -m harness`: `main`, then a quick exit.

    Once MLflow (and PyTorch) are loaded, the interpreter's own teardown of their thousands of
    modules takes about 0.75 s here after the command's work is done (measured: `import` of
    MLflow's sqlite store, then a normal exit vs `os._exit`). Exit handlers still run and the
    output is flushed first; only that teardown is skipped. An uncaught error exits normally,
    with its traceback."""
    try:
        main()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"): print it, as Python does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # logging's flush and any library's own clean-up
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    console_main()
