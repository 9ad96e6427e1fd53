"""`harness compare`: the variants of one `harness run` (or the trials of one `harness tune`
study) side by side, read back from MLflow alone; nothing is trained.

`load_comparison` builds the table: one row per variant, or with repeated seeds one row per
variant with mean ± std, n and a test against the best variant (see `stats.compare_to_best`).
`write_reports` draws the learning curves and confusion matrices into a local folder and logs
them to the parent run; with `confusion=True` it also tells which classes each variant
confuses at its first and at its last epoch.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import reports, stats, tracking
from harness.errors import ConfigError, UnknownNameError, WriteError, first_line
from harness.experiment import check_name
from harness.registry import unknown_name_message
from harness.tracking import RunRecord, Tracker, no_runs_message

FORMATS = ("table", "csv", "markdown", "json")
DEFAULT_METRIC = "best_val_acc"  # selection metric: the test set is for the final report, not for ranking
KEY_PARAMS = ("optimizer", "lr", "momentum", "batch_size", "weight_decay", "epochs")
# Never shown as hyperparameters: the seed has its own column, the rest do not change results.
NOT_HYPERPARAMETERS = {"model", "dataset", "seed", "device", "num_workers", "eval_batch_size"}
# Table column -> the MLflow metric it reads (the runner logs the median throughput under its own name;
# trials only have the per-epoch `images_per_second`, whose latest value is then used).
RESULT_METRICS = {"best_val_acc": "best_val_acc", "best_epoch": "best_epoch", "test_acc": "test_acc",
                  "test_loss": "test_loss", "epochs_run": "epochs_run", "train_seconds": "train_seconds",
                  "images_per_second": "median_images_per_second", "param_count": "param_count"}
INT_COLUMNS = ("best_epoch", "epochs_run", "param_count")
# Averaged over seeds; param_count is the same for every seed of a variant.
STAT_COLUMNS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "epochs_run", "train_seconds", "wall_seconds",
                "elapsed_seconds", "images_per_second")
# Read off the run's times, not logged: the time it was worked on (data, training, testing, logging;
# over all its sessions if resumed) and, where that differs, its end - start (idle time included).
TIME_COLUMNS = ("wall_seconds", "elapsed_seconds")
CURVE_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")
MAX_PANELS = 12  # figures show the best 12 variants or trials
TOP_PAIRS = 3  # most-confused class pairs per variant, at the first and at the last epoch
ARTIFACT_DIR = "compare"  # where the figures go on the parent run
DIGEST_SHOWN = 8  # hex characters of the data digest in the table
# Human-readable columns: table column -> header.
DISPLAY_COLUMNS = {"best_val_acc": "val acc", "best_epoch": "best ep", "test_acc": "test acc", "test_loss": "test loss",
                   "epochs_run": "epochs", "wall_seconds": "wall s", "elapsed_seconds": "elapsed s",
                   "images_per_second": "img/s", "param_count": "params"}


@dataclass
class Comparison:
    """The children of one parent run side by side."""

    experiment: str
    parent_run_id: str
    parent_status: str
    kind: str  # "run" (`harness run`) or "study" (`harness tune`)
    metric: str  # what the table is sorted by
    runs: pd.DataFrame  # one row per child run
    table: pd.DataFrame  # one row per variant (per trial for a study), best first
    repeated: bool  # several seeds per variant: the table holds `<col>_mean` / `<col>_std`
    hyperparameters: list[str]  # hyperparameter columns of `runs` and `table`
    varying: list[str]  # those that differ between the runs

    @property
    def title(self) -> str:
        n = len(self.table)
        what = ("trial" if self.kind == "study" else "variant") + ("" if n == 1 else "s")
        parent = "study run" if self.kind == "study" else "run"
        spread = ", mean ± std over seeds" if self.repeated else ""
        return f"{self.experiment}: {n} {what} of {parent} {self.parent_run_id} ({self.parent_status}){spread}"

    @property
    def warnings(self) -> list[str]:
        """What makes the table misleading: variants that read different data at the same seed. (Runs
        at different seeds differ by design: the seed draws the validation split.)"""
        if "data" not in self.runs:
            return []
        runs = self.runs.dropna(subset=["data"])
        for _, group in runs.groupby(runs["seed"].fillna(-1)):
            if group["data"].nunique() > 1:
                by = group.groupby("data")["variant"].agg(lambda v: ", ".join(dict.fromkeys(v)))
                which = "; ".join(f"{', '.join(sorted(set(by[d].split(', '))))}: {d}" for d in sorted(by.index))
                return [f"variants did not read the same data ({which}): their metrics are not directly comparable "
                        "(the MLflow UI's 'Datasets used' shows each split's digest)."]
        return []

    @property
    def note(self) -> str:
        """How to read the table: its order and what (if anything) it claims about differences."""
        direction = "lower" if stats.lower_is_better(self.metric) else "higher"
        if self.kind == "study":
            return f"Sorted by {self.metric} ({direction} is better). One run per trial: differences are not tested."
        if not self.repeated:
            return (f"Sorted by {self.metric} ({direction} is better). One run per variant, so no difference is "
                    f"tested; `harness run {self.experiment} --repeat 3` measures the seed-to-seed spread.")
        return (f"Sorted by mean {self.metric} ({direction} is better); cells are mean ± sample std over the n "
                f"finished seeds. 'vs best': Welch's t-test on {self.metric} against the best variant, "
                f"Holm-corrected over the comparisons, alpha {stats.ALPHA}; 'within seed noise' means not shown "
                "to differ, not equal.")


@dataclass
class CompareOutcome:
    """A comparison with the files written for it."""

    comparison: Comparison
    files: list[Path] = field(default_factory=list)  # written locally and logged to the parent run
    pairs: pd.DataFrame | None = None  # most-confused class pairs (with `confusion=True`)
    notes: list[str] = field(default_factory=list)  # what could not be drawn, and why


# ----------------------------------------------------------------- choosing the parent run


def select_parent(tracker: Tracker, experiment: str, run_id: str | None = None,
                  study: bool = False) -> tuple[str, RunRecord]:
    """(experiment id, parent run): `run_id` if given, else the latest `harness run` parent (the
    latest `harness tune` study parent with `study`)."""
    if run_id and study:
        raise ConfigError("Give either run_id or study (the latest study), not both.")
    experiment_id = tracker.find_experiment(experiment)
    if experiment_id is None:
        raise UnknownNameError(no_runs_message(tracker, experiment))
    if run_id:
        run = tracker.find_run(run_id)
        if run is None or run.experiment_id != experiment_id:
            raise UnknownNameError(f"No run '{run_id}' in experiment '{experiment}'; "
                                   f"`harness runs {experiment}` lists its runs.")
        parent_of = run.tags.get(tracking.PARENT_RUN)
        if parent_of:
            raise ConfigError(f"Run {run_id} is one variant or trial; compare its parent instead: "
                              f"run_id '{parent_of}'.")
        if run.tags.get(tracking.KIND_TAG) not in ("run", "study"):
            raise ConfigError(f"Run {run_id} was not made by `harness run` or `harness tune`; "
                              f"`harness runs {experiment}` lists the runs that can be compared.")
        return experiment_id, run
    parent = tracker.latest_parent_run(experiment_id, kind="study" if study else "run")
    if parent is None:
        command = f"harness tune {experiment}" if study else f"harness run {experiment}"
        raise UnknownNameError(f"No `{command}` of experiment '{experiment}' is recorded yet; run `{command}` first.")
    return experiment_id, parent


# ----------------------------------------------------------------- the table


def _param_value(text: str | None) -> Any:
    """An MLflow param (always a string) as int or float when it is one, None for "None"."""
    if text is None or text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def hyperparameter_columns(params: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """(hyperparameters to show, those among them that differ between runs): the key ones
    (optimizer, lr, ...) plus any other config field that differs, e.g. a study's tuned ones."""
    names = {k for p in params for k in p} - NOT_HYPERPARAMETERS
    varying = sorted(k for k in names if len({p.get(k) for p in params}) > 1)
    shown = [k for k in KEY_PARAMS if k in names] + [k for k in varying if k not in KEY_PARAMS]
    return shown, [k for k in shown if k in varying]


def runs_frame(children: list[RunRecord], hyperparameters: list[str], extra_metric: str | None = None) -> pd.DataFrame:
    """One row per child run: what it is, its settings and its results, straight from MLflow."""
    rows = []
    for run in children:
        params, metrics, tags = run.params, run.metrics, run.tags
        row: dict[str, Any] = {"variant": tags.get(tracking.VARIANT_TAG) or run.name,
                               "seed": tracking.run_seed(run), "model": params.get("model"),
                               "dataset": params.get("dataset"),
                               # All its splits' digest (short): equal digests mean the same bytes.
                               "data": tags.get(tracking.DATA_DIGEST_TAG, "")[:DIGEST_SHOWN] or None}
        row.update({k: _param_value(params.get(k)) for k in hyperparameters})
        if extra_metric:
            row[extra_metric] = metrics.get(extra_metric)
        for column, key in RESULT_METRICS.items():
            value = metrics.get(key, metrics.get(column))
            row[column] = int(value) if column in INT_COLUMNS and value is not None else value
            if column == "train_seconds":  # the run's whole life (data, testing, logging) beside its training time
                row.update(_run_seconds(run))
        row["status"] = run.status
        if tracking.TRIAL_STATE_TAG in tags:
            row["trial_state"] = tags[tracking.TRIAL_STATE_TAG]
        row["run_id"] = run.run_id
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")  # integers that may be missing
    return frame


def _run_seconds(run: RunRecord) -> dict[str, float | None]:
    """`wall_seconds` (end - start less the idle time between sessions of a resumed run) and
    `elapsed_seconds` (end - start). None while it runs: a resumed run's end is then its last session's."""
    ended, started = run.end_time, run.start_time
    if not (ended and started) or run.status == "RUNNING":
        return {"wall_seconds": None, "elapsed_seconds": None}
    elapsed = (ended - started) / 1000
    return {"wall_seconds": elapsed - run.metrics.get(tracking.PAUSED_METRIC, 0.0), "elapsed_seconds": elapsed}


def load_comparison(tracker: Tracker, experiment: str, run_id: str | None = None, study: bool = False,
                    metric: str = DEFAULT_METRIC, only: list[str] | None = None) -> Comparison:
    """The comparison table of a parent run's children (those with ids in `only`, if given; see
    the module docstring). `harness run` prints and logs this same table for the run it made."""
    experiment_id, parent = select_parent(tracker, experiment, run_id, study)
    parent_id = parent.run_id
    children = [r for r in tracker.children(experiment_id, parent_id) if only is None or r.run_id in only]
    if not children:
        raise UnknownNameError(f"Run {parent_id} of '{experiment}' has no variant or trial runs yet; "
                               "wait for it to start training, or pick another with run_id (see `harness runs`).")
    logged = {key for run in children for key in run.metrics}
    shown, varying = hyperparameter_columns([dict(r.params) for r in children])
    runs = runs_frame(children, shown, None if metric in (*RESULT_METRICS, *TIME_COLUMNS) else metric)
    available = {c for c in (*RESULT_METRICS, *TIME_COLUMNS) if runs[c].notna().any()} | logged
    # The default metric is always accepted: a run whose variants all failed early has none yet,
    # and its table (statuses, reasons) is still worth showing.
    if metric not in available and metric != DEFAULT_METRIC:
        raise UnknownNameError(unknown_name_message("metric", metric, available))
    # Results nobody logged (a study's trials are never tested) are left out rather than shown empty.
    runs = runs.drop(columns=[c for c in (*RESULT_METRICS, *TIME_COLUMNS) if c != metric and runs[c].isna().all()])
    # Elapsed time is shown only where some run was resumed: elsewhere it is the wall time again.
    if ("elapsed_seconds" in runs and metric != "elapsed_seconds"
            and runs["elapsed_seconds"].equals(runs.get("wall_seconds"))):
        runs = runs.drop(columns="elapsed_seconds")
    # A study's trials are compared as trials; its retrained best (or a run's variants) as variants.
    kind = "study" if any(r.tags.get(tracking.KIND_TAG) == "trial" for r in children) else "run"
    recorded_plan = {"repeat", "seeds"} & set(parent.params)
    repeated = kind == "run" and (bool(recorded_plan) or bool(runs.groupby("variant").size().max() > 1))
    if repeated:
        columns = [c for c in (*STAT_COLUMNS, metric) if c in runs]
        summary = stats.seed_summary(runs, list(dict.fromkeys(columns)))
        table = stats.compare_to_best(runs, stats.sort_by(summary, f"{metric}_mean", metric), metric)
    else:
        table = stats.sort_by(runs, metric, metric)
    return Comparison(experiment, parent_id, parent.status, kind, metric, runs, table, repeated, shown, varying)


# ----------------------------------------------------------------- rendering


def best_run(comparison: Comparison) -> pd.Series | None:
    """The finished child run that stands for the comparison's best (what `harness predict NAME`
    uses and `harness run --register` registers): the first variant of the table (its own ranking,
    by mean with repeats) that has one, and among that variant's seeds the best on the same metric."""
    finished = comparison.runs[comparison.runs["status"] == "FINISHED"]
    for variant in comparison.table["variant"]:
        runs = finished[finished["variant"] == variant]
        if len(runs):
            return stats.sort_by(runs, comparison.metric, comparison.metric).iloc[0]
    return None


def check_format(fmt: str) -> None:
    """Fail on an unknown --format before anything is read."""
    if fmt not in FORMATS:
        raise UnknownNameError(unknown_name_message("format", fmt, FORMATS))


def _show_param(value: Any) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show_number(value: Any, places: int) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{float(value):,.{places}f}"


def column_places(column: str, values: pd.Series) -> int:
    """Decimals of every cell of a column, so that a column reads in one format: none for counts
    and images per second, one for seconds, four for metrics (one when they reach 10, none from
    10,000: a loss that diverged)."""
    if column in INT_COLUMNS or column == "images_per_second":
        return 0
    if column in (*TIME_COLUMNS, "train_seconds"):
        return 1
    largest = pd.to_numeric(values, errors="coerce").abs().max()
    return 4 if pd.isna(largest) or largest < 10 else 1 if largest < 10_000 else 0


def display_frame(c: Comparison) -> pd.DataFrame:
    """The table as people read it: formatted cells, the hyperparameters that differ, short run ids."""
    t = c.table
    out = pd.DataFrame({"trial" if c.kind == "study" else "variant": t["variant"]})
    if c.repeated:
        out["n"] = t["n"]
    for column in ("model", "dataset"):
        if column in t and (column == "model" or t[column].nunique() > 1):
            out[column] = t[column]
    if "data" in t and t["data"].notna().any():
        out["data"] = t["data"].fillna("")
    for name in c.varying:
        out[name] = t[name].map(_show_param)
    columns = ([c.metric] if c.metric not in DISPLAY_COLUMNS else []) + list(DISPLAY_COLUMNS)
    for column in columns:
        header = DISPLAY_COLUMNS.get(column, column)
        if c.repeated and f"{column}_mean" in t:
            places = 1 if column in INT_COLUMNS else column_places(column, t[f"{column}_mean"])  # a mean epoch: 7.5
            out[header] = [stats.format_mean_std(m, s, places)
                           for m, s in zip(t[f"{column}_mean"], t[f"{column}_std"])]
        elif column in t:
            out[header] = [_show_number(v, column_places(column, t[column])) for v in t[column]]
    out["status"] = t["status"]
    if "trial_state" in t:
        out["state"] = t["trial_state"]
    if c.repeated:
        best = t["variant"].iloc[0]
        out["vs best"] = [stats.verdict(row, best) for _, row in t.iterrows()]
    else:
        out["run"] = t["run_id"].str[:8]
    return out


def pairs_display(pairs: pd.DataFrame) -> pd.DataFrame:
    """The confused-pairs table with "count (rate)" cells and the change in percentage points."""

    def cell(count: int, rate: float) -> str:
        return f"{count} ({rate:.1%})"

    return pd.DataFrame({
        "variant": pairs["variant"],
        "true → predicted": pairs["true"].astype(str) + " → " + pairs["predicted"].astype(str),
        "first epoch": [cell(n, r) for n, r in zip(pairs["first_count"], pairs["first_rate"])],
        "last epoch": [cell(n, r) for n, r in zip(pairs["last_count"], pairs["last_rate"])],
        "change": [f"{100 * d:+.1f} pts" for d in pairs["rate_change"]],
    })


PAIRS_NOTE = ("Most-confused validation class pairs of each variant at its first and last epoch (with repeats, counts "
              "pooled over seeds); rate = share of the true class predicted as the other.")


def render(outcome: CompareOutcome, fmt: str) -> str:
    """The comparison as csv, markdown or json text (the table format is `rich_tables`)."""
    c = outcome.comparison
    if fmt == "csv":
        return c.table.to_csv(index=False)
    if fmt == "json":
        doc: dict[str, Any] = {
            "experiment": c.experiment, "parent_run_id": c.parent_run_id, "parent_status": c.parent_status,
            "kind": c.kind, "metric": c.metric, "higher_is_better": not stats.lower_is_better(c.metric),
            "repeated": c.repeated, "note": c.note, "rows": json.loads(c.table.to_json(orient="records")),
        }
        if outcome.pairs is not None:
            doc["confused_pairs"] = json.loads(outcome.pairs.to_json(orient="records"))
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "markdown":
        text = f"### {c.title}\n\n{reports.markdown_table(display_frame(c))}\n{c.note}\n"
        if outcome.pairs is not None:
            text += f"\n{reports.markdown_table(pairs_display(outcome.pairs))}\n{PAIRS_NOTE}\n"
        return text
    check_format(fmt)
    raise ConfigError("The table format is printed with rich_tables, not rendered as text.")


def rich_tables(outcome: CompareOutcome) -> list[Any]:
    """The comparison (and the confused pairs) as rich Tables for the terminal."""
    c = outcome.comparison
    tables = [reports.rich_table(display_frame(c), c.title, " ".join([c.note, *(f"Warning: {w}" for w in c.warnings)]))]
    if outcome.pairs is not None:
        tables.append(reports.rich_table(pairs_display(outcome.pairs), "Most-confused class pairs", PAIRS_NOTE))
    return tables


# ----------------------------------------------------------------- figures


def _groups(c: Comparison) -> dict[str, pd.DataFrame]:
    """The best MAX_PANELS variants (or trials), each with its child runs."""
    names = list(c.table["variant"])[:MAX_PANELS]
    return {name: c.runs[c.runs["variant"] == name] for name in names}


def curves_frame(tracker: Tracker, c: Comparison) -> pd.DataFrame:
    """Long-form per-epoch history (label, run_id, metric, epoch, value) of the shown runs."""
    rows = [(label, run_id, metric, step, value)
            for label, runs in _groups(c).items() for run_id in runs["run_id"]
            for metric in CURVE_METRICS for step, value in tracker.metric_history(run_id, metric)]
    return pd.DataFrame(rows, columns=["label", "run_id", "metric", "epoch", "value"])


def _label(name: str, runs: int) -> str:
    return f"{name} ({runs} seeds pooled)" if runs > 1 else name


def load_test_confusions(tracker: Tracker, c: Comparison, tmp: Path) -> dict[str, pd.DataFrame]:
    """Each shown variant's test confusion matrix (counts summed over its finished seeds)."""
    out: dict[str, pd.DataFrame] = {}
    for name, runs in _groups(c).items():
        frames = []
        for run_id in runs.loc[runs["status"] == "FINISHED", "run_id"]:
            path = tracker.download_artifact(run_id, "confusion_matrix.csv", tmp / run_id)
            if path is not None:
                frames.append(pd.read_csv(path, index_col=0))
        if frames:
            out[_label(name, len(frames))] = sum(frames[1:], frames[0])
    return out


def load_epoch_confusions(tracker: Tracker, c: Comparison, tmp: Path) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """Each shown variant's per-epoch validation confusion matrices (one (epochs, true, predicted)
    array per finished run) with its class names."""
    out: dict[str, tuple[list[np.ndarray], list[str]]] = {}
    for name, runs in _groups(c).items():
        arrays, classes = [], None
        for run_id in runs.loc[runs["status"] == "FINISHED", "run_id"]:
            npy = tracker.download_artifact(run_id, "val_confusion/per_epoch.npy", tmp / run_id)
            names = tracker.download_artifact(run_id, "val_confusion/classes.json", tmp / run_id)
            if npy is not None and names is not None:
                arrays.append(np.load(npy))
                classes = json.loads(names.read_text())["classes"]
        if arrays and classes is not None:
            out[name] = (arrays, classes)
    return out


def pooled_by_epoch(arrays: list[np.ndarray]) -> np.ndarray:
    """(epochs, K, K) counts summed over runs; epoch e sums the runs that reached it
    (early stopping can end seeds at different epochs)."""
    epochs = max(len(a) for a in arrays)
    pooled = np.zeros((epochs, *arrays[0].shape[1:]), dtype=np.int64)
    for a in arrays:
        pooled[: len(a)] += a.astype(np.int64)
    return pooled


def class_error_rates(pooled: np.ndarray) -> np.ndarray:
    """(epochs, K) share of each true class predicted as something else (NaN for an absent class)."""
    totals = pooled.sum(axis=2).astype(np.float64)
    correct = np.diagonal(pooled, axis1=1, axis2=2).astype(np.float64)
    return np.divide(totals - correct, totals, out=np.full_like(totals, np.nan), where=totals > 0)


def confused_pairs(name: str, first: np.ndarray, last: np.ndarray, classes: list[str],
                   top: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The `top` most-confused (true, predicted) pairs at the first and at the last epoch, with
    their count and rate (share of the true class) at both, and the change in rate."""

    def ranked(matrix: np.ndarray) -> list[tuple[int, int]]:
        off = matrix.astype(np.int64).copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None, kind="stable")[::-1][:top]
        return [divmod(int(i), off.shape[1]) for i in order if off.flat[i] > 0]

    rows = []
    for i, j in dict.fromkeys(ranked(first) + ranked(last)):
        rates = [m[i, j] / m[i].sum() if m[i].sum() else 0.0 for m in (first, last)]
        rows.append({"variant": name, "true": classes[i], "predicted": classes[j],
                     "first_count": int(first[i, j]), "first_rate": float(rates[0]),
                     "last_count": int(last[i, j]), "last_rate": float(rates[1]),
                     "rate_change": float(rates[1] - rates[0])})
    return sorted(rows, key=lambda r: (-r["last_count"], -r["first_count"]))


def best_epochs(c: Comparison) -> dict[str, float]:
    """Each shown variant's best epoch (the mean over its seeds with repeats), keyed by variant
    as its curves are."""
    column = "best_epoch_mean" if c.repeated else "best_epoch"
    if column not in c.table:
        return {}
    epochs = c.table.set_index("variant")[column]
    return {name: float(epochs[name]) for name in _groups(c) if pd.notna(epochs[name])}


def write_reports(tracker: Tracker, c: Comparison, out: Path, confusion: bool = False) -> CompareOutcome:
    """Write the table (CSV) and figures to `out`, log them to the parent run under `compare/`,
    and with `confusion` the most-confused class pairs (first vs last epoch) and their figure."""
    outcome = CompareOutcome(c)
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        table_csv = out / "comparison.csv"
        table_csv.write_text(c.table.to_csv(index=False))
    except OSError as exc:  # no permission, disk full, ...: one line naming the folder
        raise WriteError(f"Cannot write the comparison to {out}: {exc.strerror or first_line(exc)}; "
                         "give another folder as out.") from None
    outcome.files.append(table_csv)
    shown = f" (best {MAX_PANELS} of {len(c.table)} by {c.metric})" if len(c.table) > MAX_PANELS else ""
    spread = ", mean ± std over seeds" if c.repeated else ""
    curves = curves_frame(tracker, c)
    if curves.empty:
        outcome.notes.append("No per-epoch metrics are logged yet, so no learning curves were drawn.")
    else:
        figure = reports.overlay_curves_figure(curves, f"{c.experiment}: learning curves{spread}{shown}",
                                               best_epochs=best_epochs(c))
        outcome.files.append(reports.save_figure(figure, out / "learning_curves.png"))
    with tempfile.TemporaryDirectory() as tmp:
        matrices = load_test_confusions(tracker, c, Path(tmp))
        if matrices:
            figure = reports.confusion_grid_figure(matrices, f"{c.experiment}: test confusion matrices{shown}")
            outcome.files.append(reports.save_figure(figure, out / "confusion_matrices.png"))
        else:
            outcome.notes.append("No finished run logged a test confusion matrix (tuning trials log none), "
                                 "so confusion_matrices.png was not drawn.")
        if confusion:
            _confusion_over_epochs(outcome, load_epoch_confusions(tracker, c, Path(tmp)), out, shown)
    for path in outcome.files:
        tracker.log_file(c.parent_run_id, path, ARTIFACT_DIR)
    return outcome


def _confusion_over_epochs(outcome: CompareOutcome, per_variant: dict[str, tuple[list[np.ndarray], list[str]]],
                           out: Path, shown: str) -> None:
    if not per_variant:
        outcome.notes.append("No finished run logged per-epoch validation confusion matrices "
                             "(val_confusion/per_epoch.npy; runs without a validation split "
                             "and tuning trials have none).")
        return
    rows, errors = [], {}
    for name, (arrays, classes) in per_variant.items():
        pooled = pooled_by_epoch(arrays)
        # Each run's own last epoch (seeds stopped early end sooner), summed.
        last = sum(a[-1].astype(np.int64) for a in arrays)
        rows += confused_pairs(name, pooled[0], last, classes)
        errors[_label(name, len(arrays))] = (class_error_rates(pooled), classes)
    outcome.pairs = pd.DataFrame(rows, columns=["variant", "true", "predicted", "first_count", "first_rate",
                                                "last_count", "last_rate", "rate_change"])
    pairs_csv = out / "confused_pairs.csv"
    pairs_csv.write_text(outcome.pairs.to_csv(index=False))
    figure = reports.class_error_figure(errors, f"{outcome.comparison.experiment}: validation error rate per class "
                                                f"across epochs{shown}")
    outcome.files += [pairs_csv, reports.save_figure(figure, out / "confusion_epochs.png")]


def compare_experiment(tracker: Tracker, experiment: str, run_id: str | None = None, study: bool = False,
                       metric: str = DEFAULT_METRIC, fmt: str = "table", out: Path | None = None,
                       confusion: bool = False) -> CompareOutcome:
    """`harness compare`: load the comparison, write and log its table and figures.

    A bad name or an `out` that cannot be a folder fails first, before MLflow is read."""
    check_format(fmt)
    out = out or Path("compare") / check_name(experiment)  # a plain name: compare/NAME stays under compare/
    check_out(out)
    comparison = load_comparison(tracker, experiment, run_id, study, metric)
    outcome = write_reports(tracker, comparison, out, confusion)
    outcome.notes[:0] = [f"warning: {w}" for w in comparison.warnings]
    return outcome


def check_out(out: Path) -> None:
    """Raise WriteError unless `out` is a folder or can be made one (it is created if missing)."""
    if out.exists() and not out.is_dir():
        raise WriteError(f"out '{out}' is a file, not a folder; give a folder for the comparison's files "
                         "(it is created if missing).")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise WriteError(f"out '{out}': {parent} is a file, not a folder; "
                             "give a folder for the comparison's files.")
