"""`harness report`: one self-contained HTML file of a run or a study, read from the session's
finished quickstart run and study (`quickstart_store`), checked as text and in headless Chromium.

Each report is generated once per session (`_report`) and shared by the tests that read it.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from conftest import harness
from helpers import browser_kit
from typer.testing import CliRunner

from harness import html_report
from harness.cli import app
from harness.tracking import Tracker

SECTIONS = ("overview", "comparison", "config", "curves", "confusion", "epochs", "per-class", "datasets",
            "environment", "reproduce")
STUDY_SECTIONS = ("study", "study-plots")
_MADE: dict[str, tuple[Path, str, str]] = {}  # kind -> (file, CLI output, parent run id)


def _report(kind: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """`harness report quickstart [--study] --out X.html`, made once per session (the caller holds
    `quickstart_store`, so the working folder is the store's)."""
    if kind not in _MADE:
        out = tmp_path_factory.mktemp("html_report") / f"{kind}.html"
        args = ["report", "quickstart", "--out", str(out)] + (["--study"] if kind == "study" else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        match = re.search(r"also on run ([0-9a-f]{32}) as report/report\.html", result.output)
        assert match, result.output
        _MADE[kind] = (out, result.output, match[1])
    return _MADE[kind]


def _no_external_resources(page: str) -> None:
    """Nothing the browser would fetch from elsewhere: no script, stylesheet link, import or remote src/href."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"<script|<link|@import|url\(|<iframe|<object|<embed", page, re.IGNORECASE)
    sources = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def _sections(page: str, anchors: tuple[str, ...]) -> None:
    for anchor in anchors:
        assert f'<section id="{anchor}">' in page, anchor
        assert f'href="#{anchor}"' in page, anchor  # listed in the contents


def test_run_report_has_every_section_and_is_logged(quickstart_store: Path, tmp_path_factory: pytest.TempPathFactory,
                                                    tmp_path: Path) -> None:
    out, output, parent_id = _report("run", tmp_path_factory)
    assert f"wrote {out}" in output
    page = out.read_text(encoding="utf-8")
    _sections(page, SECTIONS)
    assert '<section id="study">' not in page
    # harness compare's table, title and note
    assert "quickstart: 1 variant of run" in page
    for header in ("<th>variant</th>", "<th>val acc</th>", "<th>test acc</th>", "<th>status</th>"):
        assert header in page
    assert "Sorted by best_val_acc (higher is better)" in page
    assert "<td>lenet_relu</td>" in page and "<td>FINISHED</td>" in page
    assert "LeNet (ReLU) on scikit-learn&#x27;s bundled digits" in page  # the description, escaped
    assert "One variant (lenet_relu): nothing to compare" in page
    assert "harness run quickstart --set epochs=2" in page  # the fixture's --set, against the file
    assert "<th>torch</th>" in page and "<th>git commit</th>" in page
    # Datasets: the runs' dataset inputs, or "not recorded" where a run has none.
    datasets = page.split('<section id="datasets">', 1)[1].split("</section>", 1)[0]
    assert "not recorded" in datasets or re.search(r"<td>(train|validation|test)</td>", datasets)
    _no_external_resources(page)
    assert page.count("<img ") >= 3  # curves, confusion matrix, error rates across epochs
    logged = Tracker.open().download_artifact(parent_id, "report/report.html", tmp_path)
    assert logged is not None and logged.read_bytes() == out.read_bytes()


def test_study_report_has_trials_and_optuna_plots(quickstart_store: Path,
                                                  tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    out, _, parent_id = _report("study", tmp_path_factory)
    page = out.read_text(encoding="utf-8")
    _sections(page, SECTIONS + STUDY_SECTIONS)
    study = page.split('<section id="study">', 1)[1].split("</section>", 1)[0]
    assert "Study &#x27;quickstart-lenet_relu&#x27;: 3 finished trials; best trial" in study
    assert "<th>number</th>" in study and "<th>state</th>" in study and "<td>COMPLETE</td>" in study
    plots = page.split('<section id="study-plots">', 1)[1].split("</section>", 1)[0]
    assert "<h3>Optimization history</h3>" in plots and "<h3>Parallel coordinates</h3>" in plots
    assert "Parameter importances" in plots  # drawn, or a sentence saying why not
    reproduce = page.split('<section id="reproduce">', 1)[1].split("</section>", 1)[0]
    assert ("harness tune quickstart --variant lenet_relu --study-name quickstart-lenet_relu-repro --trials 3"
            in reproduce)
    assert "--set epochs=2" in reproduce and "--retrain-best" in reproduce and "--seed 0" in reproduce
    assert "val_fraction=0.0" in reproduce  # the retrained best trains on train + validation
    _no_external_resources(page)
    logged = Tracker.open().download_artifact(parent_id, "report/report.html", tmp_path)
    assert logged is not None and logged.read_bytes() == out.read_bytes()


def test_reports_open_from_disk_in_chromium_without_any_request(quickstart_store: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    sync_api, chromium, shots = browser_kit()
    files = {kind: _report(kind, tmp_path_factory)[0] for kind in ("run", "study")}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])  # root in CI
        try:
            for kind, path in files.items():
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                requested: list[str] = []
                page.on("request", lambda request, requested=requested: requested.append(request.url))
                url = path.resolve().as_uri()
                page.goto(url, wait_until="load")
                assert page.title().startswith("quickstart: report of")
                sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
                assert sizes and all(done and width > 0 for done, width in sizes), sizes
                page.screenshot(path=shots / f"report_{kind}.png", full_page=True)
                assert requested and requested[0] == url
                outside = [u for u in requested if u != url and not u.startswith("data:")]
                assert not outside, outside
                page.close()
        finally:
            browser.close()
    for kind in files:
        assert (shots / f"report_{kind}.png").stat().st_size > 10_000


# ----------------------------------------------------------------- user errors


@pytest.mark.parametrize(("args", "expected"), [
    (["report", "no_such_experiment"], "No runs of experiment 'no_such_experiment'"),
    (["report", "quickstart", "--run", "0123456789abcdef0123456789abcdef"],
     "No run '0123456789abcdef0123456789abcdef'"),
    (["report", "quickstart", "--run", "x", "--study"], "not both"),
    (["report", "../etc"], "not a plain name"),
])
def test_bad_inputs_end_in_one_line(quickstart_store: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                    expected: str) -> None:
    code, out, err = harness(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in out + err


def test_unwritable_out_ends_in_one_line(quickstart_store: Path, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, expected in ((blocker / "report.html", "is a file, not a folder"), (tmp_path, "is a folder")):
        code, _, err = harness(capsys, "report", "quickstart", "--out", str(out))
        assert code == 2 and err.count("\n") == 1 and expected in err, err


def test_study_without_its_storage_ends_in_one_line(quickstart_store: Path, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    code, _, err = harness(capsys, "report", "quickstart", "--study", "--storage", f"sqlite:///{missing}",
                           "--out", str(tmp_path / "r.html"))
    assert code == 2 and err.count("\n") == 1 and "No Optuna storage file" in err, err
    assert not missing.exists()  # not created empty


# ----------------------------------------------------------------- the parts, without a store


def test_too_few_trials_for_importances_is_said_not_failed(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1.0, log=True), n_trials=1)
    ctx = html_report.Context(None, None, None, {}, tmp_path)  # type: ignore[arg-type]
    body = html_report.study_plots(ctx, study)
    assert "Parameter importances: not drawn, it needs at least 2 complete trials (1 so far)." in body
    assert "<h3>Optimization history</h3>" in body
    assert any("Parameter importances" in n for n in ctx.notes)


def test_dataset_inputs_or_not_recorded_and_escaped() -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Run, RunData, RunInfo, RunInputs

    from harness.tracking import RunRecord

    def run(*inputs: DatasetInput) -> RunRecord:  # read from MLflow's entity as the tracker does
        info = RunInfo(run_id="1" * 32, experiment_id="0", user_id="", status="FINISHED", start_time=0,
                       end_time=1, lifecycle_stage="active")
        return RunRecord.of(Run(info, RunData(), RunInputs(dataset_inputs=list(inputs))))

    data = DatasetInput(Dataset(name="digits<script>", digest="abc123", source_type="local",
                                source='{"uri": "https://example.org/digits"}', profile='{"samples": 1293}'),
                        tags=[InputTag("mlflow.data.context", "train")])
    runs = pd.DataFrame({"variant": ["a", "b"], "seed": [0, 1], "run_id": ["1" * 32, "2" * 32]})
    frame = html_report.datasets_frame(SimpleNamespace(runs=runs), {"1" * 32: run(data), "2" * 32: run()})
    assert frame.loc[0, ["context", "name", "digest", "source", "profile"]].tolist() == [
        "train", "digits<script>", "abc123", "https://example.org/digits", "samples=1293"]
    assert frame.loc[1, "name"] == "not recorded"
    page = html_report.table_html(frame)
    assert "digits&lt;script&gt;" in page and "<script>" not in page
    assert 'href="https' not in page  # a source URL is text, never a link the page would follow


def test_set_arguments_common_or_per_variant() -> None:
    assert html_report.set_arguments({"a": {"epochs": "2"}, "b": {"epochs": "2", "lr": "0.1"}}, ["a", "b"]) == [
        "--set", "epochs=2", "--set", "b.lr=0.1"]
    assert html_report.set_arguments({"a": {"epochs": "2"}}, ["a", "b"]) == ["--set", "a.epochs=2"]
    assert html_report.command("harness", "run", "x", "--set", "milestones=3,5", "--set", "data_path=my images") == \
        "harness run x --set milestones=3,5 --set 'data_path=my images'"


def test_per_class_differences_against_the_best_variant() -> None:
    def scores(f1: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"precision": f1, "recall": f1, "f1": f1, "support": [10, 10]},
                            index=pd.Index(["cat", "dog"], name="class"))

    table = html_report.per_class_frame({"best": scores([0.9, 0.8]), "other": scores([0.6, 0.8])})
    assert table[("ΔF1 vs best", "other")].round(3).tolist() == [-0.3, 0.0]
    assert html_report.widest_f1_gaps(table, ["best", "other"]) == \
        "Largest F1 differences between variants: class cat: 0.300 (highest best, lowest other)."
    page = html_report.table_html(html_report._scores_text(table))
    assert '<th colspan="3">best</th>' in page and "<td>-0.300</td>" in page


def test_default_out_stays_in_reports() -> None:
    assert html_report.default_out("quickstart") == Path("reports/quickstart-run.html")
    assert html_report.default_out("quickstart", study=True) == Path("reports/quickstart-study.html")
    # Only the letters and digits of the id's first 8 characters ("../../et"): never a path outside reports/.
    assert html_report.default_out("quickstart", run_id="../../etc/passwd") == Path("reports/quickstart-et.html")
