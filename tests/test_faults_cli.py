"""User mistakes and faults, each as the user meets it: a `harness` command in a subprocess.

The promise: a mistake or fault ends in ONE line on stderr (`error: ...`), a non-zero exit code
and no traceback, and no MLflow run is left RUNNING (the ones below fail before any run is
created). Each row of `CASES` is: the case, how it is caused (experiment files written, command
line), and what the user must see (exit code, text in the stderr line).
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import GOOD_EXPERIMENT, harness_here, harness_popen, one_error_line, runs_in, wait_until, write_experiment

# Writes a marker file when imported: proves a refused name never ran the file.
EVIL = '''
from pathlib import Path
Path(__file__).with_name("EVIL_RAN").write_text("ran")
'''


@dataclass(frozen=True)
class Case:
    """One fault: the files it needs, the command, and what the user must see."""

    id: str
    files: dict[str, str]  # experiments/<key>.py -> source
    args: list[str]
    code: int  # exit code
    expected: list[str]  # each must be in the one stderr line
    stdout: list[str] = field(default_factory=list)  # each must be in stdout (list still lists the good ones)


SYNTAX = "x = (\n"  # never closed: SyntaxError at line 1
NAME_ERROR = "import dataclasses\n\nfoo = undefined_name\n"  # NameError at line 3
IMPORT_ERROR = "import os\nimport no_such_module_for_harness_tests\n"  # ModuleNotFoundError at line 2
RAISES = "raise ValueError('boom')\n"
BAD_CONFIG = "from harness.config import TrainConfig\n\ncfg = TrainConfig(lr=float('inf'))\n"
EXITS = "import sys\nsys.exit(0)\n"
INTERRUPTS = "raise KeyboardInterrupt\n"
NO_EXPERIMENT = "x = 1\n"

CASES = [
    # 1. broken experiment files: one line naming the file, the line and the error
    Case("syntax-error-run", {"bad": SYNTAX}, ["run", "bad"], 2, ["experiments/bad.py line 1: SyntaxError: "]),
    Case("syntax-error-show", {"bad": SYNTAX}, ["show", "bad"], 2, ["experiments/bad.py line 1: SyntaxError: "]),
    Case("syntax-error-list", {"bad": SYNTAX}, ["list"], 1, ["experiments/bad.py line 1: SyntaxError: "],
         ["quickstart", "bad", "(broken: experiments/bad.py line 1: SyntaxError"]),
    Case("name-error-run", {"bad": NAME_ERROR}, ["run", "bad"], 2,
         ["experiments/bad.py line 3: NameError: name 'undefined_name' is not defined"]),
    Case("name-error-list", {"bad": NAME_ERROR}, ["list"], 1, ["experiments/bad.py line 3: NameError"],
         ["quickstart", "(broken: experiments/bad.py line 3: NameError"]),
    Case("failing-import-run", {"bad": IMPORT_ERROR}, ["run", "bad"], 2,
         ["experiments/bad.py line 2: ModuleNotFoundError: No module named 'no_such_module_for_harness_tests'"]),
    Case("exception-at-import-show", {"bad": RAISES}, ["show", "bad"], 2,
         ["experiments/bad.py line 1: ValueError: boom"]),
    Case("invalid-config-in-file-run", {"bad": BAD_CONFIG}, ["run", "bad"], 2,
         ["experiments/bad.py line 3: lr must be a finite number greater than 0 (got inf)."]),
    Case("no-experiment-defined-run", {"bad": NO_EXPERIMENT}, ["run", "bad"], 2,
         ["experiments/bad.py must define `experiment = Experiment(...)`"]),
    # 2. an experiment file ending the process at import is a broken file, not the end of the command
    Case("sys-exit-list", {"bad": EXITS}, ["list"], 1, ["experiments/bad.py line 2: calls sys.exit(0) at import"],
         ["quickstart", "(broken: experiments/bad.py line 2"]),
    Case("sys-exit-run", {"bad": EXITS}, ["run", "bad"], 2, ["experiments/bad.py line 2: calls sys.exit(0) at import"]),
    Case("keyboard-interrupt-list", {"bad": INTERRUPTS}, ["list"], 1,
         ["experiments/bad.py line 1: raises KeyboardInterrupt at import"], ["quickstart", "(broken:"]),
    Case("keyboard-interrupt-show", {"bad": INTERRUPTS}, ["show", "bad"], 2,
         ["experiments/bad.py line 1: raises KeyboardInterrupt at import"]),
    # 3. names are plain identifiers: nothing outside experiments/ is imported
    Case("dotdot-name-show", {}, ["show", "../outside/evil"], 2,
         ["Experiment name '../outside/evil' is not a plain name"]),
    Case("dotdot-name-run", {}, ["run", "../outside/evil"], 2, ["is not a plain name"]),
    Case("slash-name-show", {}, ["show", "sub/evil"], 2, ["Experiment name 'sub/evil' is not a plain name"]),
    Case("absolute-name-show", {}, ["show", "/tmp/evil"], 2, ["is not a plain name"]),
    Case("dash-file-show", {"my-exp": GOOD_EXPERIMENT.format(name="my-exp")}, ["show", "my-exp"], 2,
         ["experiments/my-exp.py: the file name is not a plain name", "rename it to my_exp.py"]),
    Case("dotdot-name-compare", {}, ["compare", "../outside/evil"], 2, ["is not a plain name"]),
    # 4. config values that used to pass and fail later (in training, NumPy or the allocator)
    *[Case(f"config-{setting}", {}, ["run", "quickstart", "--set", setting], 2, [message]) for setting, message in [
        ("lr=inf", "lr must be a finite number greater than 0 (got inf)."),
        ("lr=nan", "lr must be a finite number greater than 0 (got nan)."),
        ("weight_decay=inf", "weight_decay must be a finite number 0 or more (got inf)."),
        ("grad_clip=inf", "grad_clip must be a finite number greater than 0 or none (got inf)."),
        ("image_size=100000000", "image_size must be from 1 to 4096 pixels or none (got 100000000)."),
        ("seed=-1", "seed must be from 0 to 4294967295 (got -1)."),
        (f"seed={10**20}", f"seed must be from 0 to 4294967295 (got {10**20})."),
        ("epochs=10000000", "epochs must be at least 1 and at most 1,000,000 (got 10000000)."),
        ("batch_size=10000000", "batch_size must be at least 1 and at most 1,000,000 (got 10000000)."),
        ("eval_batch_size=10000000", "eval_batch_size must be at least 1 and at most 1,000,000"),
        ("num_workers=100000", "num_workers must be 0 or more and at most 1024 (got 100000)."),
    ]],
    # 5. compare --out naming a file
    Case("compare-out-is-a-file", {}, ["compare", "quickstart", "--out", "afile"], 2,
         ["out 'afile' is a file, not a folder"]),
    Case("compare-out-under-a-file", {}, ["compare", "quickstart", "--out", "afile/sub"], 2,
         ["out 'afile/sub': afile is a file, not a folder"]),
]


def _harness(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return harness_here(*args, cwd=workdir, env={"COLUMNS": "200"})


def _runs(workdir: Path) -> list[tuple[str, str]]:
    """(run name, status) of every MLflow run in the working folder's store (none if never opened)."""
    return [(r.info.run_name, r.info.status) for r in runs_in(workdir)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_is_one_clear_line(workdir: Path, case: Case) -> None:
    """The fault ends in one `error:` line and the exit code of the table, before any run is created."""
    for name, source in case.files.items():
        write_experiment(workdir, name, source)
    (workdir / "outside").mkdir()
    (workdir / "outside" / "evil.py").write_text(EVIL)
    (workdir / "experiments" / "sub").mkdir()
    (workdir / "experiments" / "sub" / "evil.py").write_text(EVIL)
    (workdir / "afile").write_text("keep me")
    proc = _harness(workdir, *case.args)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == case.code, (out, err)
    line = one_error_line(err)
    for text in case.expected:
        assert text in line, line
    for text in case.stdout:
        assert text in out, out
    assert not list(workdir.rglob("EVIL_RAN")), "a refused name imported a file"
    assert (workdir / "afile").read_text() == "keep me"
    assert _runs(workdir) == []  # failed before any run was created, so none is left RUNNING


def test_list_shows_good_and_broken(workdir: Path) -> None:
    """`harness list` lists every good experiment with its variants on stdout, one row per broken
    file, and one stderr line per broken file; exit 1 says it found a problem."""
    write_experiment(workdir, "another", GOOD_EXPERIMENT.format(name="another"))
    write_experiment(workdir, "bad", SYNTAX)
    write_experiment(workdir, "exits", EXITS)
    proc = _harness(workdir, "list")
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 1, (out, err)
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert list(rows) == ["another", "bad", "exits", "quickstart"]
    assert "net" in rows["another"] and "lenet_relu" in rows["quickstart"]
    assert "(broken: experiments/bad.py line 1: SyntaxError" in rows["bad"]
    assert "(broken: experiments/exits.py line 2: calls sys.exit(0)" in rows["exits"]
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: {rows['bad'].split('(broken: ', 1)[1][:-1]}",
        f"error: {rows['exits'].split('(broken: ', 1)[1][:-1]}",
    ]


def test_ctrl_c_while_importing_still_stops_list(workdir: Path) -> None:
    """A real Ctrl-C (SIGINT) while an experiment file is being imported stops `harness list`
    with exit 130 and one line: it is not taken for a broken file."""
    started = workdir / "started"
    write_experiment(workdir, "slow",
                     f"import time\nfrom pathlib import Path\n\nPath({str(started)!r}).touch()\ntime.sleep(60)\n")
    proc = harness_popen("list", cwd=workdir, env={"COLUMNS": "200"})
    wait_until(started.exists, proc, timeout=60, what=f"{started} created by the experiment file")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().splitlines() == ["Interrupted."], err
    assert "quickstart" in out  # listed before the slow file (sorted)


def test_repeat_past_the_largest_seed_is_one_line(workdir: Path) -> None:
    """`--repeat 2` from seed 2**32-1 would need seed 2**32: one line naming the variant and seeds,
    and no run left RUNNING. (The seeds are checked when the jobs are planned, after the parent run
    is started, so that run exists and ends FAILED; `harness run` calling `SeedPlan.check` before
    opening the store would create none.)"""
    proc = _harness(workdir, "run", "quickstart", "--set", "seed=4294967295", "--repeat", "2")
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 2, (out, err)
    line = one_error_line(err)
    assert "repeat=2 from seed 4294967295 of variant 'lenet_relu' reaches seed 4294967296" in line
    assert all(status != "RUNNING" for _, status in _runs(workdir)), _runs(workdir)
    assert not [name for name, _ in _runs(workdir) if name.startswith("lenet_relu")]  # no child was started
