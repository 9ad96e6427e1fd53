"""`harness ui` in a real browser: headless Chromium (Debian's, driven by Playwright) reads a finished run.

Skips, saying why, when Playwright for Python or a Chromium binary is missing (`bash .ci/chromium.sh`
installs Debian's). Screenshots go to $HARNESS_TEST_ARTIFACTS/browser, else test-artifacts/browser.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from helpers import browser_kit, write_experiment
from mlflow import MlflowClient
from typer.testing import CliRunner
from uiserver import harness_ui

from harness.cli import app
from harness.tracking import Tracker

TIMEOUT_MS = 60_000  # the MLflow UI is a large React app; a busy 2-core machine renders it slowly
VARIANTS = ("base", "high_lr")


def _finished_run(workdir: Path) -> tuple[str, str]:
    """A tiny two-variant `harness run` on generated data; returns (experiment id, run id of `base`)."""
    write_experiment(workdir, "ui_browser", textwrap.dedent("""
        from harness.config import TrainConfig
        from harness.experiment import Experiment

        base = TrainConfig(dataset="synthetic", model="lenet_relu", epochs=2, train_limit=600, batch_size=64)
        experiment = Experiment(name="ui_browser", description="browser test", variants={
            "base": base,
            "high_lr": TrainConfig(dataset="synthetic", model="lenet_relu", epochs=2, train_limit=600,
                                   batch_size=64, lr=0.05),
        })
    """))
    result = CliRunner().invoke(app, ["run", "ui_browser"])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("ui_browser").experiment_id
    (run,) = client.search_runs([exp_id], filter_string="tags.`harness.variant` = 'base'")
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    return exp_id, run.info.run_id


def _digests(run_id: str) -> dict[str, str]:
    """context -> digest of the splits a run logged."""
    return {tag.value: d.dataset.digest for d in MlflowClient().get_run(run_id).inputs.dataset_inputs
            for tag in d.tags if tag.key == "mlflow.data.context"}


def test_mlflow_ui_shows_runs_metrics_and_confusion_matrix(workdir: Path) -> None:
    sync_api, chromium, shots = browser_kit()
    Tracker.open()  # the store's schema first, so the server and the run below do not both create it
    # The server boots (10-20 s) while the run trains: it reads the store the run is writing.
    with harness_ui(workdir, wait=False) as server, sync_api.sync_playwright() as playwright:
        exp_id, run_id = _finished_run(workdir)
        server.wait_ready()
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])  # root in CI
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        # Cosmetic: keep MLflow's assistant side panel closed so screenshots show the page itself.
        page.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                             "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
        try:
            # MLflow 3 opens experiments on its GenAI overview; ?workflowType=machine_learning is the
            # "Model training" view with the runs table.
            page.goto(f"{server.url}/#/experiments/{exp_id}?workflowType=machine_learning")
            parent = page.get_by_role("link", name=re.compile(r"^ui_browser-"))
            parent.wait_for()
            # The variants are child runs, folded under the `harness run` parent: unfold it.
            page.get_by_role("gridcell").filter(has=parent).get_by_role("button").first.click()
            for variant in VARIANTS:
                page.get_by_role("link", name=variant, exact=True).wait_for()
            page.screenshot(path=shots / "experiment_runs.png")

            page.get_by_role("link", name="base", exact=True).click()
            page.wait_for_url(re.compile(f"/runs/{run_id}"))
            page.get_by_text("test_acc", exact=True).first.wait_for()
            page.get_by_text("best_val_acc", exact=True).first.wait_for()
            # The splits the run read (`mlflow.log_input`): the page names the first with its digest
            # ("synthetic (8e16ca2c...) Train +2") and the system metrics MLflow's monitor sampled.
            page.get_by_text("Datasets", exact=True).first.wait_for()
            page.get_by_text(_digests(run_id)["train"]).first.wait_for()
            page.get_by_text("system/cpu_utilization_percentage").first.wait_for()
            page.screenshot(path=shots / "run_overview.png", full_page=True)

            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("confusion_matrix.png", exact=True).first.click()
            # The artifact viewer shows where the file lives: the ./mlruns that `harness run` wrote.
            page.get_by_text(f"{workdir}/mlruns/{exp_id}/{run_id}/artifacts/confusion_matrix.png").wait_for()
            image = page.locator("img[src^='blob:']").first  # the PNG fetched from the server
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert width > 100 and height > 100, (width, height)
            page.screenshot(path=shots / "confusion_matrix.png")
        except Exception:
            page.screenshot(path=shots / "failure.png", full_page=True)
            raise
        finally:
            browser.close()
        assert server.interrupt() == 0
    assert "Traceback" not in server.drain()
