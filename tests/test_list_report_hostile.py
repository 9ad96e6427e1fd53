"""`harness list` and `harness report` against hostile inputs (issue 24): an experiment file that
calls `os._exit` at import, and a store whose latest run FAILED.

`os._exit` would end an in-process test runner, so those commands run as `python -m harness` in a
subprocess; the report cases run in-process on their own small synthetic-data runs (`workdir`),
never on the shared quickstart store, whose latest run the other tests rely on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import harness
from helpers import GOOD_EXPERIMENT, experiment_runs, python, write_experiment
from helpers import harness as harness_process

OS_EXIT = "import os\n\nos._exit(0)\n"  # os._exit at line 3: no exception, no flush, the process just ends

# One small variant on synthetic data (seconds on a CPU); the --set below makes it diverge (FAILED).
TINY = '''
from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(name="{name}", description="tiny", variants={{
    "net": TrainConfig(dataset="synthetic", model="lenet_relu", epochs=1, train_limit=500),
}})
'''
DIVERGE = ["--set", "optimizer=sgd", "--set", "lr=1e6", "--set", "momentum=0.9", "--set", "epochs=2"]


def _parent_ids(experiment: str) -> list[tuple[str, str]]:
    """(run id, status) of the experiment's `harness run` parents, oldest first."""
    return [(r.info.run_id, r.info.status) for r in experiment_runs(experiment, "run")]


def _flat(text: str) -> str:
    """Help text with rich's box characters and line wrapping removed."""
    return " ".join(text.replace("│", " ").split())


# ----------------------------------------------------------------- os._exit at import


def test_list_goes_on_past_a_file_calling_os_exit(workdir: Path) -> None:
    """`harness list`: the file calling `os._exit(0)` is a broken row naming the file, line and reason,
    the experiments after it are still listed, its error is the one stderr line, and the exit code is 1."""
    write_experiment(workdir, "another", GOOD_EXPERIMENT.format(name="another"))
    write_experiment(workdir, "exits", OS_EXIT)
    result = harness_process("list", cwd=workdir, env={"COLUMNS": "200"}, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert list(rows) == ["another", "exits", "quickstart"]  # quickstart is listed after the file
    reason = "experiments/exits.py line 3: calls os._exit(0) at import"
    assert f"(broken: {reason})" in rows["exits"]
    assert "lenet_relu" in rows["quickstart"] and "net" in rows["another"]
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines() == [f"error: {reason}"]


@pytest.mark.parametrize("command", ["show", "run"])
def test_show_and_run_of_a_file_calling_os_exit_are_one_line(workdir: Path, command: str) -> None:
    """`harness show/run exits`: the same one line as for `sys.exit`, exit code 2."""
    write_experiment(workdir, "exits", OS_EXIT)
    result = harness_process(command, "exits", cwd=workdir, env={"COLUMNS": "200"}, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == ["error: experiments/exits.py line 3: calls os._exit(0) at import"]


def test_os_exit_is_restored_after_the_import(workdir: Path) -> None:
    """The replacement lasts only for the import, whether the file calls `os._exit` or not."""
    write_experiment(workdir, "exits", OS_EXIT)
    code = ("import os, posix\nfrom harness.errors import HarnessError\n"
            "from harness.experiment import load_experiment\n"
            "for name in ('exits', 'quickstart'):\n"
            "    try:\n        load_experiment(name)\n    except HarnessError:\n        pass\n"
            "    assert os._exit is posix._exit, name\n"
            "print('restored')\n")
    result = python("-c", code, cwd=workdir, env={"COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "restored", (result.stdout, result.stderr)


# ----------------------------------------------------------------- report's default run


def test_report_defaults_to_the_latest_finished_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished run, then a FAILED one: `harness report NAME` reports the finished one and says
    which and why on stderr; `--run` still reports the FAILED one."""
    write_experiment(workdir, "tiny", TINY.format(name="tiny"))
    code, out, err = harness(capsys, "run", "tiny")
    assert code == 0, err
    code, out, err = harness(capsys, "run", "tiny", *DIVERGE)
    assert code == 1, err
    (finished, finished_status), (failed, failed_status) = _parent_ids("tiny")
    assert (finished_status, failed_status) == ("FINISHED", "FAILED")

    code, out, err = harness(capsys, "report", "tiny", "--out", str(workdir / "default.html"))
    assert code == 0, err
    assert f"also on run {finished} as report/report.html" in out
    assert (f"note: reporting run {finished}, the latest finished `harness run` (the newest, {failed}, is FAILED; "
            f"run_id '{failed}' reports it).") in err.splitlines()
    assert f"report of run {finished}" in (workdir / "default.html").read_text(encoding="utf-8")

    code, out, err = harness(capsys, "report", "tiny", "--run", failed, "--out", str(workdir / "failed.html"))
    assert code == 0, err
    assert f"also on run {failed} as report/report.html" in out and "note: reporting run" not in err


def test_report_without_any_finished_run_is_one_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only a FAILED run: one line saying so, naming it and how to pick a run by id; nothing written."""
    write_experiment(workdir, "doomed", TINY.format(name="doomed"))
    code, out, err = harness(capsys, "run", "doomed", *DIVERGE)
    assert code == 1, err
    [(failed, status)] = _parent_ids("doomed")
    assert status == "FAILED"
    code, out, err = harness(capsys, "report", "doomed", "--out", str(workdir / "doomed.html"))
    assert code == 2, (out, err)
    assert err.strip().splitlines() == [
        f"error: Experiment 'doomed' has no finished `harness run` yet (the newest, {failed}, is FAILED); report an "
        "unfinished one by its run_id (`harness runs doomed` lists them)."]
    assert not (workdir / "doomed.html").exists()


def test_report_and_predict_help_state_the_same_rule(capsys: pytest.CaptureFixture[str]) -> None:
    """Both --help texts say the default is the latest FINISHED `harness run`; report's says --run takes any."""
    code, out, _ = harness(capsys, "report", "--help")
    assert code == 0
    report_help = _flat(out)
    assert "default: the latest finished `harness run`" in report_help
    assert "Parent run id, whatever its status" in report_help
    assert "latest finished `harness tune` study" in report_help
    code, out, _ = harness(capsys, "predict", "--help")
    assert code == 0
    assert "latest finished `harness run`" in _flat(out)
