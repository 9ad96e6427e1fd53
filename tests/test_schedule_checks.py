"""Cross-field checks of the learning-rate schedule (issue 24): a warmup, epochs and milestones
that cannot work together are refused when the config is built, in one line and before any
MLflow run exists; every combination the checks accept builds and steps for all its epochs."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import torch
from conftest import harness
from helpers import cli_error_line, runs_in, write_experiment
from torch import nn

from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.optim import PER_STEP, SCHEDULERS, build_optimizer, build_scheduler

# (--set items, the fields the one-line error must name)
REFUSED = [
    (["scheduler=onecycle", "warmup_epochs=5", "epochs=3"], ["warmup_epochs", "epochs"]),  # torch: pct_start 5/3
    (["scheduler=onecycle", "warmup_epochs=3", "epochs=3"], ["warmup_epochs", "epochs"]),  # torch: ZeroDivisionError
    (["scheduler=cosine", "warmup_epochs=3", "epochs=3"], ["warmup_epochs", "epochs"]),  # cosine never runs
    (["scheduler=step", "step_size=1", "warmup_epochs=4", "epochs=3"], ["warmup_epochs", "epochs"]),
    (["scheduler=exponential", "warmup_epochs=2", "epochs=2"], ["warmup_epochs", "epochs"]),
    (["scheduler=multistep", "milestones=2", "warmup_epochs=3", "epochs=3"], ["warmup_epochs", "epochs"]),
    (["warmup_epochs=5", "epochs=3"], ["warmup_epochs", "epochs"]),  # scheduler none: never reaches lr
    (["scheduler=multistep", "milestones=4,2", "epochs=6"], ["milestones"]),  # torch ignores the order
    (["scheduler=multistep", "milestones=2,2", "epochs=6"], ["milestones"]),  # torch decays twice at 2
    # optim would move milestone 2 to epoch 3, the one after the warmup
    (["scheduler=multistep", "milestones=2,4", "warmup_epochs=2", "epochs=6"], ["milestones", "warmup_epochs"]),
]
# Fields other schedules do not read, or decays that just never fire in a short run: accepted.
ACCEPTED = [
    ["epochs=3"],  # step_size's default 10 is not step's
    ["scheduler=step", "epochs=3"],  # a shortened run: the decay after it never fires
    ["scheduler=multistep", "milestones=2,5", "epochs=3"],
    ["scheduler=cosine", "milestones=3,2", "epochs=3"],  # milestones are multistep's only
    ["scheduler=none", "warmup_epochs=3", "epochs=3"],  # a warmup filling the run
    ["scheduler=onecycle", "warmup_epochs=2", "epochs=3"],
    ["scheduler=multistep", "milestones=3,5", "warmup_epochs=2", "epochs=6"],
]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _assert_one_line(code: int, out: str, err: str, fields: list[str]) -> None:
    cli_error_line((code, out, err))
    assert err.startswith("error: ") and all(f in err for f in fields), err
    assert "pct_start" not in err and "division" not in err  # torch's words, not ours


@pytest.mark.parametrize(("items", "fields"), REFUSED, ids=[" ".join(i) for i, _ in REFUSED])
def test_show_refuses_in_one_line(workdir: Path, capsys: pytest.CaptureFixture[str], items: list[str],
                                  fields: list[str]) -> None:
    _assert_one_line(*harness(capsys, "show", "quickstart", *_sets(items)), fields)


@pytest.mark.parametrize(("items", "fields"), REFUSED, ids=[" ".join(i) for i, _ in REFUSED])
def test_run_refuses_before_any_run_exists(workdir: Path, capsys: pytest.CaptureFixture[str], items: list[str],
                                           fields: list[str]) -> None:
    _assert_one_line(*harness(capsys, "run", "quickstart", *_sets(items)), fields)
    assert runs_in(workdir) == []


@pytest.mark.parametrize("items", ACCEPTED, ids=[" ".join(i) for i in ACCEPTED])
def test_show_accepts_fields_the_schedule_does_not_use(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                       items: list[str]) -> None:
    code, _out, err = harness(capsys, "show", "quickstart", *_sets(items))
    assert code == 0, err


def test_messages_say_how_to_fix() -> None:
    """Each message gives the values it got and the way out."""
    with pytest.raises(HarnessError) as info:
        TrainConfig(scheduler="onecycle", warmup_epochs=5, epochs=3)
    assert "warmup_epochs=5, epochs=3" in str(info.value) and "lower warmup_epochs or raise epochs" in str(info.value)
    with pytest.raises(HarnessError) as info:
        TrainConfig(scheduler="multistep", milestones=(4, 2, 2), epochs=6)
    assert "(got 4,2,2)" in str(info.value) and "milestones=2,4" in str(info.value)


# ------------------------------------------------------------------ validation and optim.py agree

_MILESTONES = [(), (1,), (2,), (3,), (5,), (1, 2), (2, 3), (3, 2), (2, 2), (1, 4), (2, 7)]


def _grid() -> list[tuple[TrainConfig, int]]:
    """(config, optimizer steps per epoch) for every accepted combination of small values, over
    every registered schedule: the fields each one does not read are varied too."""
    cases = []
    for name in SCHEDULERS.names():
        sizes = range(1, 7) if name == "step" else [10]
        milestones = _MILESTONES if name in ("multistep", "cosine") else [()]
        for epochs, warmup, size, ms, steps in itertools.product(range(1, 6), range(7), sizes, milestones, (1, 2, 3)):
            try:
                config = TrainConfig(scheduler=name, epochs=epochs, warmup_epochs=warmup, step_size=size,
                                     milestones=ms, lr=0.1, gamma=0.5)
            except HarnessError:
                continue
            cases.append((config, steps))
    return cases


def _lrs(config: TrainConfig, steps: int) -> list[float]:
    """The lr of each epoch's first optimizer step, stepping the schedule as `harness.train` does."""
    optimizer = build_optimizer(nn.Linear(2, 2), config)
    scheduler = build_scheduler(optimizer, config, steps)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps):
            optimizer.step()
            if config.scheduler in PER_STEP:
                scheduler.step()
        if config.scheduler not in PER_STEP:
            scheduler.step()
    return lrs


def test_every_accepted_schedule_steps_through_all_its_epochs() -> None:
    """What validation accepts, optim.py builds and runs for every epoch at a finite lr in (0, lr];
    multistep decays exactly at its milestones (none is moved by the warmup)."""
    cases = _grid()
    assert {c.scheduler for c, _ in cases} == set(SCHEDULERS.names())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" and the like
        for config, steps in cases:
            try:
                lrs = _lrs(config, steps)
            except Exception as exc:  # any failure is the finding
                raise AssertionError(f"{config.scheduler} epochs={config.epochs} warmup_epochs={config.warmup_epochs} "
                                     f"step_size={config.step_size} milestones={config.milestones} "
                                     f"steps={steps}: {exc!r}") from exc
            assert all(torch.isfinite(torch.tensor(lr)) and 0 <= lr <= config.lr + 1e-12 for lr in lrs), lrs
            if config.scheduler == "multistep":
                after = lrs[config.warmup_epochs:]
                expected = [config.lr * config.gamma ** sum(m <= e for m in config.milestones)
                            for e in range(config.warmup_epochs, config.epochs)]
                assert after == pytest.approx(expected), (config.milestones, config.warmup_epochs, lrs)


def test_one_cycle_with_a_one_step_warmup_trains_at_the_peak_first() -> None:
    """One optimizer step per epoch and warmup_epochs=1 (e.g. a small train_limit): torch would
    divide by zero; instead the one warmup step trains at lr, then the cycle anneals."""
    config = TrainConfig(scheduler="onecycle", warmup_epochs=1, epochs=3, lr=0.1)
    lrs = _lrs(config, 1)
    assert lrs[0] == pytest.approx(0.1) and lrs[0] > lrs[1] > lrs[2]


SAMPLED_WARMUP = """
from harness.config import TrainConfig
from harness.experiment import Experiment
from harness.search_space import IntRange

experiment = Experiment(name="sampled", description="warmup sampled against 2 epochs", variants={
    "net": TrainConfig(model="lenet_relu", dataset="synthetic", epochs=2, train_limit=64, batch_size=32,
                       scheduler="cosine"),
}, search_space={"warmup_epochs": IntRange(1, 2)})
"""


def test_tune_prunes_sampled_values_the_checks_refuse(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sampled warmup as long as the epochs is a pruned trial with our one-line reason, no trial
    run and no traceback; the trials that can train do."""
    write_experiment(workdir, "sampled", SAMPLED_WARMUP)
    code, out, err = harness(capsys, "tune", "sampled", "--trials", "8", "--sampler", "random")
    assert code == 0, err
    assert "Traceback" not in err
    import optuna

    from harness.tuning import open_storage

    study = optuna.load_study(study_name="sampled-net", storage=open_storage(None))
    states = [(t.params["warmup_epochs"], t.state) for t in study.trials]
    refused = [w for w, state in states if w >= 2]
    assert refused and all(state == optuna.trial.TrialState.PRUNED for w, state in states if w >= 2), states
    trained = [w for w, state in states if w < 2]
    assert trained and all(state == optuna.trial.TrialState.COMPLETE for w, state in states if w < 2), states
    trial_runs = [r for r in runs_in(workdir) if r.data.tags.get("harness.kind") == "trial"]
    assert len(trial_runs) == len(trained)  # a refused sample creates no run
