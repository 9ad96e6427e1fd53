"""One reporter for the library's progress and status (`harness.reporter`): the library prints
nothing itself; what a call reports goes where its `reporter=` says (plain lines, rich bars, a
notebook's updating lines, nothing, or a caller's own `Reporter`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import REPO, Collected

import harness
from harness import reporter
from harness.reporter import NotebookReporter, Reporter, RichReporter, SilentReporter

SMALL = {"epochs": 2, "train_limit": 200}


def test_the_library_has_no_print_call() -> None:
    """Only the CLI (and the benchmarks beside the product) print; everything else reports."""
    found = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative in ("harness/cli.py", "harness/reporter.py") or relative.startswith("harness/bench/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                found.append(f"{relative}:{node.lineno}")
    assert not found, "print() in the library (use harness.reporter): " + ", ".join(found)


def test_a_run_reports_to_the_callers_reporter_and_prints_nothing(workdir: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    collected = Collected()
    result = harness.run("quickstart", set=SMALL, system_metrics=False, reporter=collected)
    assert result.status == "FINISHED"
    assert [line.split("  ")[0] for line in collected.statuses] == ["lenet_relu epoch 1/2", "lenet_relu epoch 2/2"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    # Resuming a finished run says so through the reporter too.
    again = Collected()
    harness.run("quickstart", set=SMALL, resume="auto", system_metrics=False, reporter=again)
    assert again.statuses[0] == "No interrupted run of quickstart: starting a new one."


def test_silent_reports_nothing_and_plain_is_one_line_per_epoch(workdir: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    harness.run("quickstart", set=SMALL, system_metrics=False, reporter="silent")
    assert capfd.readouterr() == ("", "")
    harness.run("quickstart", set=SMALL, system_metrics=False, reporter="plain")
    lines = capfd.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["lenet_relu epoch 1/2", "lenet_relu epoch 2/2"]
    assert "val_acc" in lines[-1] and "img/s" in lines[-1]


def test_rich_bars_draw_on_a_terminal_console_and_stop_clean(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws its live display as on a terminal
    monkeypatch.setenv("COLUMNS", "120")
    harness.run("quickstart", set=SMALL, system_metrics=False, reporter="rich")
    out = capfd.readouterr().out
    assert "lenet_relu 1/2" in out and "lenet_relu 2/2" in out and "val loss" in out
    assert "lenet_relu epoch 1/2" not in out  # the bars, not the plain lines
    assert out.endswith("\x1b[?25h")  # the display stopped last: the cursor is shown again


def test_tune_and_lr_find_report_through_it_too(workdir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    collected = Collected()
    harness.tune("quickstart", trials=2, set={"epochs": 1, "train_limit": 200}, system_metrics=False,
                 reporter=collected)
    ended = [line.split()[1] for line in collected.statuses if re.match(r"trial \d+ (COMPLETE|PRUNED)", line)]
    assert ended == ["0", "1"]
    lr = Collected()
    harness.lr_find("quickstart", steps=6, min_lr=1e-3, max_lr=1.0, set={"train_limit": 200}, reporter=lr)
    assert lr.warnings and "steps per decade" in lr.warnings[0]  # 6 steps over 3 decades: too coarse
    assert lr.statuses[-1].startswith("lr-find lenet_relu: step ")
    assert capfd.readouterr() == ("", "")


def test_names_auto_and_the_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reporter.ENV, raising=False)
    assert type(reporter.make("plain")) is Reporter and isinstance(reporter.make("silent"), SilentReporter)
    assert isinstance(reporter.make("rich"), RichReporter) and isinstance(reporter.make("notebook"), NotebookReporter)
    assert type(reporter.make("auto")) is Reporter  # pytest's stdout is no terminal, and this is no kernel
    monkeypatch.setenv(reporter.ENV, "silent")  # what a launching process tells its workers
    assert isinstance(reporter.make("auto"), SilentReporter)
    assert [reporter.worker_name(reporter.make(n)) for n in ("rich", "plain", "notebook", "silent")] == \
        ["rich", "plain", "plain", "silent"]
    mine = Collected()
    assert reporter.make(mine) is mine and reporter.worker_name(mine) == "plain"
    with reporter.using("silent"):
        assert isinstance(reporter.current(), SilentReporter)
        with reporter.using(mine):
            reporter.status("inner")
        assert isinstance(reporter.current(), SilentReporter)
    assert mine.statuses == ["inner"]


def test_an_unknown_reporter_is_one_sentence(workdir: Path) -> None:
    with pytest.raises(harness.ConfigError, match=r"^reporter must be one of auto, rich, plain, notebook, silent "
                                                  r"or a harness.Reporter \(got 'loud'\)\.$"):
        harness.run("quickstart", set=SMALL, reporter="loud")


def test_notebook_bars_update_one_display_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a kernel each bar is one display handle, updated in place (here IPython's `display` is
    replaced by a recorder; the quickstart notebook test runs the real one in a kernel)."""
    import IPython.display

    shown: dict[str, list[str]] = {}

    class Handle:
        def __init__(self, display_id: str) -> None:
            self.display_id = display_id

        def update(self, shown_object: IPython.display.Pretty) -> None:
            shown[self.display_id].append(shown_object.data)

    def display(shown_object: IPython.display.Pretty, display_id: bool) -> Handle:
        handle = Handle(f"h{len(shown)}")
        shown[handle.display_id] = [shown_object.data]
        return handle

    monkeypatch.setattr(IPython.display, "display", display)
    bars = NotebookReporter().bars()
    first = bars.add("lenet 1/2", total=4)
    bars.update(first, completed=2, stats="loss 0.5")
    second = bars.add("lenet 2/2")
    bars.update(second, completed=4, total=4, stats="loss 0.2")
    bars.close()
    assert shown["h0"] == ["lenet 1/2  [..............................] 0/4",
                           "lenet 1/2  [###############...............] 2/4  loss 0.5"]
    assert shown["h1"][-1] == "lenet 2/2  [##############################] 4/4  loss 0.2"
