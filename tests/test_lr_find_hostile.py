"""`harness lr-find` under hostile arguments (issue 24): many steps show progress, and a grid too
coarse to trust is warned about before the test runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import harness

PROGRESS = re.compile(r"^lr-find lenet_relu: step (\d+)/(\d+), lr \S+, smoothed loss \S+$")


def test_many_steps_print_progress_lines_before_the_result(capsys: pytest.CaptureFixture[str], workdir: Path) -> None:
    # Piped (capsys is no terminal): plain lines, one per tenth of the steps, then the result.
    code, out, err = harness(capsys, "lr-find", "quickstart", "--steps", "100", "--min-lr", "1e-5", "--max-lr", "1")
    assert code == 0, err
    lines = out.splitlines()
    progress = [(i, PROGRESS.match(line)) for i, line in enumerate(lines) if PROGRESS.match(line)]
    result = next(i for i, line in enumerate(lines) if "suggested lr" in line or "no suggestion" in line)
    assert len(progress) >= 3, out
    assert all(i < result for i, _ in progress)  # progress first, the answer last
    steps = [int(m.group(1)) for _, m in progress]
    assert steps == sorted(steps) and steps[0] == 10 and {int(m.group(2)) for _, m in progress} == {100}
    assert f"{steps[-1]} steps, stopped because" in lines[result]  # the last line shows the last step
    assert "warning:" not in err  # 5 decades in 100 steps is fine grid


def test_a_coarse_grid_is_warned_about_on_stderr_in_the_run_and_in_the_outcome(
        capsys: pytest.CaptureFixture[str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    import harness.lr_finder as lr_find_module

    outcomes = []
    real = lr_find_module.lr_find
    monkeypatch.setattr(lr_find_module, "lr_find", lambda *a, **k: outcomes.append(real(*a, **k)) or outcomes[-1])
    code, out, err = harness(capsys, "lr-find", "quickstart", "--min-lr", "1e-8", "--max-lr", "1e3", "--steps", "20")
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "1.8 steps per decade" in warning and "steps=110" in warning, warning
    (outcome,) = outcomes
    assert outcome.warning and outcome.warning in warning  # a Python caller sees it too
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.tags[lr_find_module.WARNING_TAG] == outcome.warning


def test_the_warning_comes_before_the_test_runs_and_the_default_range_has_none(
        capsys: pytest.CaptureFixture[str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.lr_finder as lr_find_module
    from harness.errors import HarnessError

    def no_data(*args: object) -> None:
        raise HarnessError("no data here")

    # The data never loads: a warning printed anyway was known before any training.
    monkeypatch.setattr(lr_find_module, "load_data", no_data)
    code, _, err = harness(capsys, "lr-find", "quickstart", "--min-lr", "1e-8", "--max-lr", "1e3", "--steps", "20")
    assert code == 2 and "no data here" in err
    assert err.index("warning:") < err.index("no data here")
    assert "steps per decade" in err
    code, _, err = harness(capsys, "lr-find", "quickstart")  # the defaults: 1e-5 to 10 in 100 steps
    assert code == 2 and "warning:" not in err
    assert lr_find_module.coarse_grid_warning(1e-5, 10.0, 100) is None
    assert lr_find_module.coarse_grid_warning(1e-5, 10.0, 59) is not None  # under 10 per decade
