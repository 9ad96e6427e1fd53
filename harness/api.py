"""The public Python API: what the `harness` commands do, as functions a notebook or a script calls.

`harness.run`, `harness.tune`, `harness.compare`, `harness.runs`, `harness.predict`,
`harness.lr_find`, `harness.report` and `harness.load_experiment` are exported lazily from the
package (`import harness` loads no PyTorch); the CLI parses its options and calls these (the
`*_outcome` variants give it everything a command prints). An
experiment is a name found under the experiments folder or an `Experiment` built in place;
`set` takes the keys `--set` takes (`{"epochs": 1, "lenet.lr": 0.01}`). User mistakes raise
`HarnessError` (one sentence); Ctrl-C (and SIGTERM / SIGHUP) raise `KeyboardInterrupt` after the
runs are marked KILLED with their checkpoints kept.

Data-parallel training: `run` and `tune` with `nproc_per_node=N` start N processes on this
machine (`harness.launch`, the CLI's `--nproc-per-node`), each running the same command from
the experiment's file, and return what they recorded once they end; under torchrun every
process calls `run` / `tune` alike and joins the process group here.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import reporter as reporting
from harness.config import Overrides, TrainConfig
from harness.errors import ConfigError, ExperimentFileError, HarnessError, TrackingError, UnknownNameError
from harness.experiment import Experiment, load_experiment
from harness.reporter import Reporter

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from torch import nn

    from harness.comparison import CompareOutcome, Comparison
    from harness.html_report import ReportOutcome
    from harness.lr_finder import LrFindOutcome
    from harness.prediction import PredictOutcome
    from harness.promotion import Promotion
    from harness.tracking import Tracker
    from harness.train import Callback
    from harness.tuning import TuneOptions

__all__ = ["RunResult", "TuneResult", "VariantRecord", "compare", "compare_outcome", "load_experiment", "lr_find",
           "predict", "predict_outcome", "report", "report_outcome", "resolve", "run", "runs", "tune"]

Settings = Mapping[str, Any]


# ----------------------------------------------------------------- experiments and overrides


def _as_text(value: Any) -> str:
    """A Python value as `--set` would spell it, so both take one parser (and one set of checks)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def overrides(settings: Settings | Sequence[str] | None) -> Overrides:
    """`set` as the Overrides `--set` gives: a mapping of `key` / `VARIANT.key` to values, or the
    CLI's own `key=value` strings."""
    from harness.config import parse_overrides

    return parse_overrides(_set_strings(settings))


def _set_strings(settings: Settings | Sequence[str] | None) -> list[str]:
    """`set` as `--set`'s `key=value` strings (what the launched processes are given too)."""
    if settings is None:
        return []
    if isinstance(settings, Mapping):
        return [f"{key}={_as_text(value)}" for key, value in settings.items()]
    if isinstance(settings, str):
        raise ConfigError(f"set must be a mapping such as {{'epochs': 1}} or a list of 'key=value' strings, "
                          f"not the string '{settings}'.")
    return list(settings)


def resolve(experiment: str | Experiment, set: Settings | Sequence[str] | None = None,  # noqa: A002 - `--set`
            device: str | None = None) -> tuple[Experiment, dict[str, TrainConfig]]:
    """(the experiment, its variants' configs with `set` and `device` applied): what `harness show`
    prints and what `run` trains. `experiment` is a name under the experiments folder or an
    `Experiment` object."""
    if isinstance(experiment, Experiment):
        exp = experiment
    elif isinstance(experiment, str):
        exp = load_experiment(experiment)
    else:
        raise ConfigError(f"experiment must be an experiment name or an Experiment, not {type(experiment).__name__}.")
    parsed = overrides(set)
    if device:
        parsed.common["device"] = device
    return exp, exp.resolve(parsed)


# ----------------------------------------------------------------- run


@dataclass(frozen=True)
class VariantRecord:
    """One trained (variant, seed): its config, MLflow run and how it ended."""

    variant: str
    label: str  # the run's name: the variant, or "variant seed=N" with repeats
    config: TrainConfig
    run_id: str
    status: str  # FINISHED | FAILED | KILLED
    metrics: dict[str, float]
    reason: str | None = None  # why it failed

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def best_val_acc(self) -> float | None:
        return self.metrics.get("best_val_acc")

    @property
    def test_acc(self) -> float | None:
        return self.metrics.get("test_acc")


@dataclass
class RunResult:
    """What `harness.run` did: the parent run, one record per (variant, seed), the comparison."""

    experiment: str
    parent_run_id: str
    status: str  # of the parent: FINISHED, or FAILED if a variant failed
    variants: list[VariantRecord]
    tracking_uri: str
    comparison: Comparison | None = field(default=None, repr=False)  # None on ranks other than 0
    promotion: Promotion | None = None  # `register`: the new registry version
    # True when this call started the processes (`nproc_per_node`): their rank 0 printed the
    # progress and the table, and the records were read back from MLflow.
    launched: bool = False

    @property
    def table(self) -> pd.DataFrame:
        """The comparison as `harness compare` prints it: one row per variant, best first (with
        repeats, mean and std columns per metric)."""
        if self.comparison is None:
            raise ConfigError("This process is not rank 0 of the run: the comparison table is rank 0's.")
        return self.comparison.table

    @property
    def failed(self) -> list[VariantRecord]:
        return [v for v in self.variants if v.status != "FINISHED"]

    def record(self, variant: str, seed: int | None = None) -> VariantRecord:
        """The record of `variant` (at `seed`, with repeats: by default its best seed)."""
        mine = [v for v in self.variants if v.variant == variant and (seed is None or v.seed == seed)]
        if not mine:
            from harness.registry import unknown_name_message

            known = sorted({v.variant for v in self.variants}) if seed is None else \
                [f"{v.variant} seed={v.seed}" for v in self.variants]
            raise UnknownNameError(unknown_name_message("variant of this run", variant if seed is None else
                                                        f"{variant} seed={seed}", known))
        return max(mine, key=lambda v: (v.status == "FINISHED", v.best_val_acc or float("-inf")))

    def load_model(self, variant: str, seed: int | None = None) -> nn.Module:
        """The trained model of `variant` (its best seed with repeats, unless `seed`), as logged:
        a `torch.export` program in inference mode that takes [0, 1] float images."""
        from harness.tracking import Tracker

        chosen = self.record(variant, seed)
        if chosen.status != "FINISHED":
            raise UnknownNameError(f"Variant '{chosen.label}' {chosen.status} ({chosen.reason}); it logged no model.")
        model: nn.Module = Tracker.open(self.tracking_uri).load_model(f"runs:/{chosen.run_id}/model")
        return model


def run(experiment: str | Experiment, *, set: Settings | Sequence[str] | None = None,  # noqa: A002 - `--set`
        seeds: Sequence[int] | str | None = None, repeat: int | None = None, resume: bool | str = False,
        device: str | None = None, tracking_uri: str | None = None, data_dir: str | Path | None = None,
        nproc_per_node: int | str | None = None, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
        rdzv_timeout: int = 120, backend: str = "auto", register: str | None = None, alias: str = "champion",
        callbacks: Sequence[Callback] = (), system_metrics: bool = True,
        reporter: str | Reporter = "auto") -> RunResult:
    """Train every variant of `experiment` (once per seed) into one MLflow parent run, as `harness run`.

    `seeds` (e.g. `[0, 1, 2]`) or `repeat` (K seeds from each config's seed up) train each variant
    several times; `resume=True` continues the latest interrupted run, `resume="auto"` that run if
    there is one, else a new one. `register` puts the best variant's model in MLflow's model
    registry under that name (the `alias` moves only on improvement). `callbacks` join the train
    loop of every variant (`harness.Callback`). Progress and status lines go to `reporter` ("auto",
    "rich", "plain", "notebook", "silent" or a `harness.Reporter`; see `harness.reporter`).

    `nproc_per_node=N` (or "auto": one per GPU) trains data-parallel on N processes started here,
    each running `python -m harness run NAME` with these options: the experiment must be a file
    under the experiments folder (not an `Experiment` built in Python) and `callbacks` cannot
    reach the processes. Once they end, the records are read back from MLflow (`launched` is
    True). `nnodes`, `node_rank`, `rdzv_endpoint` and `rdzv_timeout` spread them over machines;
    machine 0 records the runs, and on the others the result has no records. Under torchrun,
    every process calls this alike (`backend`: auto = nccl on CUDA, gloo on CPU)."""
    with reporting.using(reporter):
        from harness import launch
        from harness.seeds import SeedPlan

        options = launch.LaunchOptions(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_timeout, backend)
        with launch.quiet_launcher(options):  # before PyTorch loads
            plan = SeedPlan.parse(repeat, _seeds_text(seeds))  # bad values fail before any data is touched
            if resume not in (True, False, "auto"):
                raise ConfigError(f"resume must be True, False or 'auto' (got {resume!r}).")
            exp, configs = resolve(experiment, set, device)
            registration = None
            if register is not None:  # checked before any process starts (runner imports torch: only if asked)
                from harness.runner import Registration

                registration = Registration(register, alias)
                registration.check(configs)
            processes = launch.plan_launch(options, configs)
        if processes is not None:
            name = _launchable(exp, callbacks)
            worker = launch.worker_command("run", name, {
                "set": _set_strings(set), "seeds": _seeds_text(seeds), "repeat": repeat, "resume": resume,
                "device": device, "tracking_uri": tracking_uri, "data_dir": data_dir, "register": register,
                "alias": alias, "system_metrics": system_metrics, "backend": backend})
            handed = launch.start(processes, worker, name, tracking_uri, options.resume_hint("run", name, processes))
            return _launched_run(exp, configs, handed, tracking_uri, node_rank)

        from harness import distributed
        from harness.lifecycle import SYSTEM_METRICS_INTERVAL
        from harness.runner import run_experiment
        from harness.tracking import open_for

        with launch.rank_0_prints():
            try:
                dist = distributed.init_from_env(next(iter(configs.values())).device, backend)
                try:
                    tracker = open_for(tracking_uri, dist)
                    outcome = run_experiment(tracker, exp, configs, data_dir=Path(data_dir) if data_dir else None,
                                             resume=resume, seeds=plan, dist=dist, register=registration,
                                             callbacks=tuple(callbacks),
                                             system_metrics=SYSTEM_METRICS_INTERVAL if system_metrics else None)
                finally:
                    distributed.shutdown()
            except HarnessError as exc:
                launch.hand_back({"error": str(exc)})  # when this process was launched: the launcher raises it too
                raise
        status = "FINISHED" if not outcome.failed else "FAILED"
        launch.hand_back({"parent_run_id": outcome.parent_run_id, "status": status,
                          "promotion": _promotion_data(outcome.promotion)})
        records = [VariantRecord(r.variant, r.label or r.variant, r.config, r.run_id, r.status, dict(r.metrics),
                                 r.reason) for r in outcome.results]
        return RunResult(exp.name, outcome.parent_run_id, status, records, tracker.uri, outcome.comparison,
                         outcome.promotion)


def _launchable(exp: Experiment, callbacks: Sequence[Callback]) -> str:
    """The name the launched processes load `exp` by: they are new Python processes, so they
    can only re-create an experiment from its file, and never hold this process's callbacks."""
    from harness.experiment import experiments_dir

    if callbacks:
        raise ConfigError("callbacks cannot reach the processes nproc_per_node starts (each is a new Python "
                          "process); leave out nproc_per_node to train here with them, or callbacks to launch.")
    expected = experiments_dir() / f"{exp.name}.py"
    if exp.source_file is None or Path(exp.source_file).resolve() != expected.resolve():
        raise ExperimentFileError(f"Experiment '{exp.name}' was not loaded from {expected}, so the processes "
                                  "nproc_per_node starts cannot load it; save it there as "
                                  "`experiment = Experiment(...)` and pass its name, or leave out nproc_per_node to "
                                  "train in this process.")
    return exp.name


def _launched_run(exp: Experiment, configs: dict[str, TrainConfig], handed: dict[str, Any],
                  tracking_uri: str | None, node_rank: int) -> RunResult:
    """The RunResult of the parent run the launched processes made, read back from MLflow: one
    record per (variant, seed) of its seed plan, as `run` returns in-process."""
    from harness.comparison import load_comparison
    from harness.seeds import SeedPlan, plan_jobs
    from harness.tracking import VARIANT_TAG, Tracker, resolve_tracking_uri, run_seed

    parent_id = handed["parent_run_id"]
    if node_rank > 0:  # machine 0 recorded the runs, in its own store
        return RunResult(exp.name, parent_id, handed["status"], [], resolve_tracking_uri(tracking_uri), launched=True)
    tracker = Tracker.open(tracking_uri)
    parent = tracker.find_run(parent_id)
    if parent is None:
        raise TrackingError(f"The launched processes made run {parent_id}, but {tracker.uri} does not have it; "
                            "check that they wrote to the same tracking URI.")
    children = {(r.tags.get(VARIANT_TAG, r.name), run_seed(r)): r
                for r in tracker.children(parent.experiment_id, parent_id)}
    records = []
    for job in plan_jobs(configs, SeedPlan.from_params(parent.params)):  # the plan the run recorded
        child = children.get((job.variant, job.config.seed))
        if child is not None:
            records.append(_record(child, job.variant, job.config))
    status = "FINISHED" if all(r.status == "FINISHED" for r in records) else "FAILED"
    return RunResult(exp.name, parent_id, status, records, tracker.uri,
                     load_comparison(tracker, exp.name, run_id=parent_id), _promotion(handed.get("promotion")),
                     launched=True)


def _record(run: Any, variant: str, config: TrainConfig) -> VariantRecord:
    """A VariantRecord from an MLflow child run: its name, status, metrics and failure reason."""
    from harness.tracking import FAILURE_TAG

    return VariantRecord(variant, run.name, config, run.run_id, run.status, dict(run.metrics),
                         run.tags.get(FAILURE_TAG))


def _promotion_data(promotion: Promotion | None) -> dict[str, Any] | None:
    return None if promotion is None else asdict(promotion)


def _promotion(data: dict[str, Any] | None) -> Promotion | None:
    """A Promotion handed back as JSON (its version pairs came back as lists)."""
    if data is None:
        return None
    from harness.promotion import Promotion

    pairs = {key: tuple(data[key]) if data[key] is not None else None for key in ("previous", "final")}
    return Promotion(**{**data, **pairs})


def _seeds_text(seeds: Sequence[int] | str | None) -> str | None:
    if seeds is None or isinstance(seeds, str):
        return seeds
    return ",".join(str(s) for s in seeds)


# ----------------------------------------------------------------- tune


@dataclass
class TuneResult:
    """What `harness.tune` did: the Optuna study, its MLflow parent run, the retrained best."""

    study: optuna.Study
    parent_run_id: str
    retrained: VariantRecord | None = None  # `retrain_best`: the best params on train + validation
    promotion: Promotion | None = None
    # True when this call started the processes (`nproc_per_node`): their rank 0 printed the
    # trials and the summary, and the study was read back from its storage.
    launched: bool = False

    @property
    def best_params(self) -> dict[str, Any]:
        """The best complete trial's params (empty while none is complete)."""
        best = self._best()
        return dict(best.params) if best is not None else {}

    @property
    def best_value(self) -> float | None:
        """The best complete trial's value (mean over seeds with repeats), or None."""
        best = self._best()
        return float(best.value) if best is not None and best.value is not None else None

    def _best(self) -> optuna.trial.FrozenTrial | None:
        try:
            return self.study.best_trial
        except ValueError:  # Optuna's answer while no trial is complete
            return None

    @property
    def trials_table(self) -> pd.DataFrame:
        """Number, state, value, params, duration and MLflow run of every trial (`harness study`)."""
        from harness.study_store import trials_table

        return trials_table(self.study)


def tune(experiment: str | Experiment, *, variant: str | None = None, trials: int = 20, timeout: float | None = None,
         study_name: str | None = None, storage: str | None = None, sampler: str = "tpe", pruner: str = "median",
         n_jobs: int = 1, seed: int = 0, set: Settings | Sequence[str] | None = None,  # noqa: A002 - `--set`
         device: str | None = None, tracking_uri: str | None = None, data_dir: str | Path | None = None,
         retrain_best: bool = False, heartbeat: int = 10, repeat: int | None = None,
         seeds: Sequence[int] | str | None = None, register: str | None = None, alias: str = "champion",
         system_metrics: bool = True, nproc_per_node: int | str | None = None, nnodes: int = 1, node_rank: int = 0,
         rdzv_endpoint: str | None = None, rdzv_timeout: int = 120, backend: str = "auto",
         reporter: str | Reporter = "auto") -> TuneResult | None:
    """Search `variant`'s hyperparameters (the experiment's search space) with Optuna, as
    `harness tune`: every trial a nested MLflow run under the study's parent run. Calling it again
    with the same study continues it up to `trials` finished trials. Returns None on ranks other
    than 0 under torchrun (rank 0 holds the study). Progress goes to `reporter`, as in `run`.

    `nproc_per_node=N` trains each trial data-parallel on N processes started here (as `run`
    does: the experiment must be a file under the experiments folder), and returns the study
    read back from its storage once they end (`launched` is True); None on machines other than
    0 (`node_rank` > 0)."""
    with reporting.using(reporter):
        from harness import launch

        options = launch.LaunchOptions(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_timeout, backend)
        with launch.quiet_launcher(options):  # before PyTorch loads
            from harness.lifecycle import SYSTEM_METRICS_INTERVAL
            from harness.seeds import SeedPlan
            from harness.study_store import pick_variant
            from harness.tuning import TuneOptions

            exp, configs = resolve(experiment, set, device)
            chosen = pick_variant(exp, variant)
            study_options = TuneOptions(trials=trials, timeout=timeout, study_name=study_name, storage=storage,
                                        sampler=sampler, pruner=pruner, n_jobs=n_jobs, seed=seed,
                                        retrain_best=retrain_best,
                                        heartbeat_seconds=heartbeat, seeds=SeedPlan.parse(repeat, _seeds_text(seeds)),
                                        register=register, alias=alias,
                                        system_metrics=SYSTEM_METRICS_INTERVAL if system_metrics else None)
            if n_jobs > 1 and options.several:
                raise ConfigError("n_jobs above 1 cannot be combined with nproc_per_node; each trial already "
                                  "uses every process.")
            processes = launch.plan_launch(options, {chosen: configs[chosen]})
        if processes is not None:
            name = _launchable(exp, ())
            worker = launch.worker_command("tune", name, {
                "variant": chosen, "trials": trials, "timeout": timeout, "study_name": study_name, "storage": storage,
                "sampler": sampler, "pruner": pruner, "n_jobs": n_jobs, "seed": seed, "set": _set_strings(set),
                "device": device, "tracking_uri": tracking_uri, "data_dir": data_dir, "retrain_best": retrain_best,
                "heartbeat": heartbeat, "repeat": repeat, "seeds": _seeds_text(seeds), "register": register,
                "alias": alias, "system_metrics": system_metrics, "backend": backend})
            handed = launch.start(processes, worker, name, tracking_uri, "the same command (the study goes on)")
            if node_rank > 0:  # machine 0 holds the study
                return None
            return _launched_tune(exp, chosen, configs[chosen], study_options, handed, tracking_uri)

        from harness import distributed
        from harness.tracking import open_for
        from harness.tuning import tune as run_study

        with launch.rank_0_prints():
            try:
                dist = distributed.init_from_env(configs[chosen].device, backend)
                try:
                    outcome = run_study(open_for(tracking_uri, dist), exp, chosen, configs[chosen], study_options,
                                        data_dir=Path(data_dir) if data_dir else None, dist=dist)
                finally:
                    distributed.shutdown()
            except HarnessError as exc:
                launch.hand_back({"error": str(exc)})  # when this process was launched: the launcher raises it too
                raise
        r = outcome.retrained if outcome is not None else None
        launch.hand_back({"parent_run_id": outcome.parent_run_id if outcome is not None else None,
                          "retrained_run_id": r.run_id if r is not None else None,
                          "promotion": _promotion_data(outcome.promotion if outcome is not None else None)})
        if outcome is None:
            return None
        retrained = None if r is None else VariantRecord(r.variant, r.label or r.variant, r.config, r.run_id, r.status,
                                                         dict(r.metrics), r.reason)
        return TuneResult(outcome.study, outcome.parent_run_id, retrained, outcome.promotion)


def _launched_tune(exp: Experiment, variant: str, base: TrainConfig, options: TuneOptions, handed: dict[str, Any],
                   tracking_uri: str | None) -> TuneResult:
    """The TuneResult of the study the launched processes ran: the study from its storage, the
    retrained best (with its logged config) from MLflow."""
    from harness.study_store import default_study_name, load_study
    from harness.tracking import Tracker

    study = load_study(options.storage, options.study_name or default_study_name(exp, variant))
    retrained = None
    if handed.get("retrained_run_id"):
        tracker = Tracker.open(tracking_uri)
        run = tracker.find_run(handed["retrained_run_id"])
        if run is not None:
            retrained = _record(run, variant, _logged_config(tracker, run.run_id) or base)
    return TuneResult(study, handed["parent_run_id"], retrained, _promotion(handed.get("promotion")), launched=True)


def _logged_config(tracker: Tracker, run_id: str) -> TrainConfig | None:
    """The config a run logged (its config.json), or None if it logged none."""
    with tempfile.TemporaryDirectory() as folder:
        path = tracker.download_artifact(run_id, "config.json", Path(folder))
        return TrainConfig.from_dict(json.loads(path.read_text())) if path is not None else None


# ----------------------------------------------------------------- reading what is recorded


def compare(experiment: str | None = None, *, run_id: str | None = None, study: bool = False,
            metric: str = "best_val_acc", tracking_uri: str | None = None, write: bool = False,
            out: str | Path | None = None, confusion: bool = False, only: Sequence[str] | None = None) -> pd.DataFrame:
    """The comparison table of a parent run (`run_id`, else the experiment's latest `harness run`;
    the latest study with `study`; with no experiment, the latest of the whole store): the numbers
    `harness compare` prints, one row per variant (or trial), best first. Nothing is written
    unless `write` (see `compare_outcome`)."""
    return compare_outcome(experiment, run_id=run_id, study=study, metric=metric, tracking_uri=tracking_uri,
                           write=write, out=out, confusion=confusion, only=only).comparison.table


def compare_outcome(experiment: str | None = None, *, run_id: str | None = None, study: bool = False,
                    metric: str = "best_val_acc", tracking_uri: str | None = None, write: bool = False,
                    out: str | Path | None = None, confusion: bool = False,
                    only: Sequence[str] | None = None) -> CompareOutcome:
    """`compare` with everything `harness compare` shows: the comparison (table, runs, title,
    note), and with `write` (implied by `out` or `confusion`) the figures and CSVs written to
    `out` (default compare/NAME) and logged to the parent run, the most-confused class pairs with
    `confusion`, and notes on what could not be drawn. `only`: the child run ids to keep (it
    reads, it does not write). With no `experiment` (and no `run_id`), the store's latest parent
    run of that kind is compared, and the first note says which."""
    from harness.comparison import CompareOutcome, compare_experiment, load_comparison
    from harness.tracking import Tracker

    writing = write or out is not None or confusion
    if writing and only is not None:
        raise ConfigError("only= picks child runs to read, not to write; leave out write, out and confusion with it.")
    tracker = Tracker.open(tracking_uri)
    chosen: list[str] = []
    if experiment is None:
        experiment, run_id = _latest_parent(tracker, run_id, study)
        chosen.append(f"comparing {experiment} run {run_id}, the latest {'study' if study else 'run'} in the store "
                      f"(`harness compare {experiment}` names the experiment)")
    if writing:
        # The folder is checked (and the name, for the default one) before MLflow is read.
        outcome = compare_experiment(tracker, experiment, run_id=run_id, study=study, metric=metric,
                                     out=Path(out) if out is not None else None, confusion=confusion)
    else:
        outcome = CompareOutcome(load_comparison(tracker, experiment, run_id=run_id, study=study, metric=metric,
                                                 only=list(only) if only is not None else None))
    outcome.notes[:0] = chosen
    return outcome


def _latest_parent(tracker: Tracker, run_id: str | None, study: bool) -> tuple[str, str]:
    """(experiment name, parent run id) when no experiment is named: that of `run_id`, else the
    store's latest `harness run` (`harness tune` with `study`)."""
    if run_id is not None:
        record = tracker.find_run(run_id)
        name = tracker.experiment_name(record.experiment_id) if record is not None else None
        if name is None:
            raise ConfigError(f"No run {run_id} is recorded in this tracking store; `harness runs NAME` lists the "
                              "runs of an experiment.")
        return name, run_id
    found = tracker.latest_parent_anywhere("study" if study else "run")
    if found is None:
        command = "harness tune" if study else "harness run"
        raise ConfigError(f"No `{command}` is recorded in this tracking store yet; run `{command} NAME` first, or "
                          "name the experiment to compare.")
    return found[0], found[1].run_id


def runs(experiment: str, *, limit: int = 10, tracking_uri: str | None = None) -> pd.DataFrame:
    """The experiment's recent parent runs and their children, how they ended and how to continue
    them (`harness runs`)."""
    from harness.history import recent_runs
    from harness.tracking import Tracker

    return recent_runs(Tracker.open(tracking_uri), experiment, limit)


def predict(model: str, images: str | Path | Sequence[str | Path], *, top_k: int = 3, batch_size: int = 256,
            device: str = "auto", tracking_uri: str | None = None, trust_model: bool = False,
            reporter: str | Reporter = "auto") -> pd.DataFrame:
    """Classify image files (or folders of them) with a logged model, as `harness predict`: one row
    per image with its top-k classes and probabilities. `model` is a model URI (`runs:/ID/model`,
    `models:/NAME@ALIAS`, `models:/NAME/VERSION`) or an experiment name (its best variant).
    Unreadable files are left out (`reporter` is told each one, and which run a name picked);
    `trust_model` also loads a model in a format that can run code as it loads (only for a model
    whose author you trust)."""
    import pandas as pd

    from harness import prediction as predicting

    outcome = predict_outcome(model, images, top_k=top_k, batch_size=batch_size, device=device,
                              tracking_uri=tracking_uri, trust_model=trust_model, reporter=reporter)
    return pd.DataFrame(predicting.rows(outcome))


def predict_outcome(model: str, images: str | Path | Sequence[str | Path], *, top_k: int = 3, batch_size: int = 256,
                    device: str = "auto", tracking_uri: str | None = None, trust_model: bool = False,
                    reporter: str | Reporter = "auto",
                    progress: Callable[[int], AbstractContextManager[Callable[[int], None] | None]] | None = None,
                    ) -> PredictOutcome:
    """`predict` with everything `harness predict` shows: the model used (its resolved URI and
    classes), each image's prediction and the unreadable files with why. `progress(total)` may
    give a context whose value is called with the number of files done after each batch."""
    from harness import prediction as predicting
    from harness.tracking import Tracker

    predicting.check_options("table", top_k, batch_size, device)  # before the store is opened
    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    with reporting.using(reporter) as chosen:
        return predicting.predict(Tracker.open(tracking_uri), model, paths, top_k=top_k, batch_size=batch_size,
                                  device=device, log=chosen.status, progress=progress, trust_model=trust_model)


def lr_find(experiment: str | Experiment, *, variant: str | None = None, set: Settings | Sequence[str] | None = None,  # noqa: A002
            min_lr: float = 1e-5, max_lr: float = 10.0, steps: int = 100, device: str | None = None,
            tracking_uri: str | None = None, data_dir: str | Path | None = None,
            reporter: str | Reporter = "auto") -> LrFindOutcome:
    """The learning-rate range test of `variant` (default: the experiment's first), as `harness
    lr-find`: one MLflow run; the outcome has the suggestion, the curve and any warning about the
    grid, which the reporter warns about before the test runs (progress goes to `reporter`, see
    `harness.reporter`)."""
    from harness.lr_finder import coarse_grid_warning
    from harness.lr_finder import lr_find as range_test
    from harness.study_store import pick_variant
    from harness.tracking import Tracker

    with reporting.using(reporter):
        # An int bound is that float: recorded as `harness lr-find` records it ("1.0", not "1").
        min_lr, max_lr = (float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in (min_lr, max_lr))
        exp, configs = resolve(experiment, set, device)
        chosen = pick_variant(exp, variant)
        warning = coarse_grid_warning(min_lr, max_lr, steps)  # known from the arguments
        if warning:
            reporting.warning(warning)
        return range_test(Tracker.open(tracking_uri), exp, chosen, configs[chosen], min_lr, max_lr, steps,
                          Path(data_dir) if data_dir else None)


def report(experiment: str, *, run_id: str | None = None, study: bool = False, out: str | Path | None = None,
           tracking_uri: str | None = None, storage: str | None = None) -> Path:
    """Write one self-contained HTML report of a run or study (the latest finished one unless
    `run_id`), as `harness report`; it is also logged to the parent run. Returns the file."""
    return report_outcome(experiment, run_id=run_id, study=study, out=out, tracking_uri=tracking_uri,
                          storage=storage).path


def report_outcome(experiment: str, *, run_id: str | None = None, study: bool = False, out: str | Path | None = None,
                   tracking_uri: str | None = None, storage: str | None = None) -> ReportOutcome:
    """`report` with everything `harness report` shows: the file, its size, the parent run it
    describes and is logged to (as which artifact), and notes (a newer unfinished run skipped)."""
    from harness.html_report import write_report
    from harness.tracking import Tracker

    return write_report(Tracker.open(tracking_uri), experiment, run_id=run_id, study=study,
                        out=Path(out) if out else None, storage=storage)
