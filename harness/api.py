"""The public Python API: what the `harness` commands do, as functions a notebook or a script calls.

`harness.run`, `harness.tuning`, `harness.comparison`, `harness.runs`, `harness.prediction`,
`harness.lr_finder`, `harness.report` and `harness.load_experiment` are exported lazily from the
package (`import harness` loads no PyTorch); the CLI parses its options and calls these. An
experiment is a name found under the experiments folder or an `Experiment` built in place;
`set` takes the keys `--set` takes (`{"epochs": 1, "lenet.lr": 0.01}`). User mistakes raise
`HarnessError` (one sentence); Ctrl-C (and SIGTERM / SIGHUP) raise `KeyboardInterrupt` after the
runs are marked KILLED with their checkpoints kept.

Data-parallel training on several processes is started by the CLI (`--nproc-per-node`) or by
torchrun; under torchrun every process calls `run` / `tune` alike and joins the process group here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import Overrides, TrainConfig
from harness.errors import HarnessError
from harness.experiment import Experiment, load_experiment

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from torch import nn

    from harness.comparison import Comparison
    from harness.lr_finder import LrFindOutcome
    from harness.promotion import Promotion
    from harness.train import Callback

__all__ = ["RunResult", "TuneResult", "VariantRecord", "compare", "load_experiment", "lr_find", "predict", "report",
           "resolve", "run", "runs", "tune"]

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
    if settings is None:
        return Overrides({}, {})
    if isinstance(settings, Mapping):
        settings = [f"{key}={_as_text(value)}" for key, value in settings.items()]
    elif isinstance(settings, str):
        raise HarnessError(f"set must be a mapping such as {{'epochs': 1}} or a list of 'key=value' strings, "
                           f"not the string '{settings}'.")
    from harness.config import parse_overrides

    return parse_overrides(list(settings))


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
        raise HarnessError(f"experiment must be an experiment name or an Experiment, not {type(experiment).__name__}.")
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

    @property
    def table(self) -> pd.DataFrame:
        """The comparison as `harness compare` prints it: one row per variant, best first (with
        repeats, mean and std columns per metric)."""
        if self.comparison is None:
            raise HarnessError("This process is not rank 0 of the run: the comparison table is rank 0's.")
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
            raise HarnessError(unknown_name_message("variant of this run", variant if seed is None else
                                                    f"{variant} seed={seed}", known))
        return max(mine, key=lambda v: (v.status == "FINISHED", v.best_val_acc or float("-inf")))

    def load_model(self, variant: str, seed: int | None = None) -> nn.Module:
        """The trained model of `variant` (its best seed with repeats, unless `seed`), as logged:
        a `torch.export` program in inference mode that takes [0, 1] float images."""
        from harness.tracking import Tracker

        chosen = self.record(variant, seed)
        if chosen.status != "FINISHED":
            raise HarnessError(f"Variant '{chosen.label}' {chosen.status} ({chosen.reason}); it logged no model.")
        return Tracker.open(self.tracking_uri).load_model(f"runs:/{chosen.run_id}/model")


def run(experiment: str | Experiment, *, set: Settings | Sequence[str] | None = None,  # noqa: A002 - `--set`
        seeds: Sequence[int] | str | None = None, repeat: int | None = None, resume: bool | str = False,
        device: str | None = None, tracking_uri: str | None = None, data_dir: str | Path | None = None,
        register: str | None = None, alias: str = "champion", callbacks: Sequence[Callback] = (),
        system_metrics: bool = True, backend: str = "auto") -> RunResult:
    """Train every variant of `experiment` (once per seed) into one MLflow parent run, as `harness run`.

    `seeds` (e.g. `[0, 1, 2]`) or `repeat` (K seeds from each config's seed up) train each variant
    several times; `resume=True` continues the latest interrupted run, `resume="auto"` that run if
    there is one, else a new one. `register` puts the best variant's model in MLflow's model
    registry under that name (the `alias` moves only on improvement). `callbacks` join the train
    loop of every variant (`harness.Callback`). Under torchrun, every process calls this alike
    (`backend`: auto = nccl on CUDA, gloo on CPU)."""
    from harness import distributed
    from harness.lifecycle import SYSTEM_METRICS_INTERVAL
    from harness.runner import Registration, run_experiment
    from harness.seeds import SeedPlan
    from harness.tracking import open_for

    plan = SeedPlan.parse(repeat, _seeds_text(seeds))  # bad values fail before any data is touched
    exp, configs = resolve(experiment, set, device)
    registration = None
    if register is not None:
        registration = Registration(register, alias)
        registration.check(configs)
    dist = distributed.init_from_env(next(iter(configs.values())).device, backend)
    try:
        tracker = open_for(tracking_uri, dist)
        outcome = run_experiment(tracker, exp, configs, data_dir=Path(data_dir) if data_dir else None, resume=resume,
                                 seeds=plan, dist=dist, register=registration, callbacks=tuple(callbacks),
                                 system_metrics=SYSTEM_METRICS_INTERVAL if system_metrics else None)
    finally:
        distributed.shutdown()
    records = [VariantRecord(r.variant, r.label or r.variant, r.config, r.run_id, r.status, dict(r.metrics), r.reason)
               for r in outcome.results]
    return RunResult(exp.name, outcome.parent_run_id, "FINISHED" if not outcome.failed else "FAILED", records,
                     tracker.uri, outcome.comparison, outcome.promotion)


def _seeds_text(seeds: Sequence[int] | str | None) -> str | None:
    if seeds is None or isinstance(seeds, str):
        return seeds
    return ",".join(str(s) for s in seeds)


# ----------------------------------------------------------------- tune


@dataclass
class TuneResult:
    """What `harness.tuning` did: the Optuna study, its MLflow parent run, the retrained best."""

    study: optuna.Study
    parent_run_id: str
    retrained: VariantRecord | None = None  # `retrain_best`: the best params on train + validation
    promotion: Promotion | None = None

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
        from harness.tuning import trials_table

        return trials_table(self.study)


def tune(experiment: str | Experiment, *, variant: str | None = None, trials: int = 20, timeout: float | None = None,
         study_name: str | None = None, storage: str | None = None, sampler: str = "tpe", pruner: str = "median",
         n_jobs: int = 1, seed: int = 0, set: Settings | Sequence[str] | None = None,  # noqa: A002 - `--set`
         device: str | None = None, tracking_uri: str | None = None, data_dir: str | Path | None = None,
         retrain_best: bool = False, heartbeat: int = 10, repeat: int | None = None,
         seeds: Sequence[int] | str | None = None, register: str | None = None, alias: str = "champion",
         system_metrics: bool = True, backend: str = "auto") -> TuneResult | None:
    """Search `variant`'s hyperparameters (the experiment's search space) with Optuna, as
    `harness tune`: every trial a nested MLflow run under the study's parent run. Calling it again
    with the same study continues it up to `trials` finished trials. Returns None on ranks other
    than 0 under torchrun (rank 0 holds the study)."""
    from harness import distributed
    from harness.lifecycle import SYSTEM_METRICS_INTERVAL
    from harness.seeds import SeedPlan
    from harness.tracking import open_for
    from harness.tuning import TuneOptions, pick_variant
    from harness.tuning import tune as run_study

    exp, configs = resolve(experiment, set, device)
    chosen = pick_variant(exp, variant)
    options = TuneOptions(trials=trials, timeout=timeout, study_name=study_name, storage=storage, sampler=sampler,
                          pruner=pruner, n_jobs=n_jobs, seed=seed, retrain_best=retrain_best,
                          heartbeat_seconds=heartbeat, seeds=SeedPlan.parse(repeat, _seeds_text(seeds)),
                          register=register, alias=alias,
                          system_metrics=SYSTEM_METRICS_INTERVAL if system_metrics else None)
    dist = distributed.init_from_env(configs[chosen].device, backend)
    try:
        outcome = run_study(open_for(tracking_uri, dist), exp, chosen, configs[chosen], options,
                            data_dir=Path(data_dir) if data_dir else None, dist=dist)
    finally:
        distributed.shutdown()
    if outcome is None:
        return None
    r = outcome.retrained
    retrained = None if r is None else VariantRecord(r.variant, r.label or r.variant, r.config, r.run_id, r.status,
                                                     dict(r.metrics), r.reason)
    return TuneResult(outcome.study, outcome.parent_run_id, retrained, outcome.promotion)


# ----------------------------------------------------------------- reading what is recorded


def compare(experiment: str, *, run_id: str | None = None, study: bool = False, metric: str = "best_val_acc",
            tracking_uri: str | None = None) -> pd.DataFrame:
    """The comparison table of a parent run (`run_id`, else the experiment's latest `harness run`;
    the latest study with `study`): the numbers `harness compare` prints, one row per variant (or
    trial), best first. Nothing is written."""
    from harness.comparison import load_comparison
    from harness.tracking import Tracker

    return load_comparison(Tracker.open(tracking_uri), experiment, run_id=run_id, study=study, metric=metric).table


def runs(experiment: str, *, limit: int = 10, tracking_uri: str | None = None) -> pd.DataFrame:
    """The experiment's recent parent runs and their children, how they ended and how to continue
    them (`harness runs`)."""
    from harness.history import recent_runs
    from harness.tracking import Tracker

    return recent_runs(Tracker.open(tracking_uri), experiment, limit)


def predict(model: str, images: str | Path | Sequence[str | Path], *, top_k: int = 3, batch_size: int = 256,
            device: str = "auto", tracking_uri: str | None = None, trust_model: bool = False) -> pd.DataFrame:
    """Classify image files (or folders of them) with a logged model, as `harness predict`: one row
    per image with its top-k classes and probabilities. `model` is a model URI (`runs:/ID/model`,
    `models:/NAME@ALIAS`, `models:/NAME/VERSION`) or an experiment name (its best variant).
    Unreadable files are left out (`harness predict` lists them); `trust_model` also loads a model
    in a format that can run code as it loads (only for a model whose author you trust)."""
    import pandas as pd

    from harness import prediction as predicting
    from harness.tracking import Tracker

    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    outcome = predicting.predict(Tracker.open(tracking_uri), model, paths, top_k=top_k, batch_size=batch_size,
                                 device=device, trust_model=trust_model)
    return pd.DataFrame(predicting.rows(outcome))


def lr_find(experiment: str | Experiment, *, variant: str | None = None, set: Settings | Sequence[str] | None = None,  # noqa: A002
            min_lr: float = 1e-5, max_lr: float = 10.0, steps: int = 100, device: str | None = None,
            tracking_uri: str | None = None, data_dir: str | Path | None = None) -> LrFindOutcome:
    """The learning-rate range test of `variant`, as `harness lr-find`: one MLflow run; the
    outcome has the suggestion, the curve and any warning about the grid."""
    from harness.lr_finder import lr_find as range_test
    from harness.tracking import Tracker
    from harness.tuning import pick_variant

    exp, configs = resolve(experiment, set, device)
    chosen = pick_variant(exp, variant)
    return range_test(Tracker.open(tracking_uri), exp, chosen, configs[chosen], min_lr, max_lr, steps,
                      Path(data_dir) if data_dir else None)


def report(experiment: str, *, run_id: str | None = None, study: bool = False, out: str | Path | None = None,
           tracking_uri: str | None = None, storage: str | None = None) -> Path:
    """Write one self-contained HTML report of a run or study (the latest finished one unless
    `run_id`), as `harness report`; it is also logged to the parent run. Returns the file."""
    from harness.html_report import write_report
    from harness.tracking import Tracker

    outcome = write_report(Tracker.open(tracking_uri), experiment, run_id=run_id, study=study,
                           out=Path(out) if out else None, storage=storage)
    return outcome.path
