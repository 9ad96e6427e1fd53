"""`harness report`: one self-contained HTML file of a `harness run` (or a `harness tune` study) that a
colleague reads in any browser, without MLflow.

Everything is read back from MLflow (and, for a study, from its Optuna storage): the comparison
table exactly as `harness compare` builds it, the config fields that differ between variants,
learning curves, confusion matrices, the most-confused class pairs at the first and last epoch,
per-class precision/recall/F1, the datasets each run read, the environment, and the commands
that reproduce the runs. Figures are PNGs embedded as `data:` URIs and the styles are inline, so
the page makes no request beyond its own file. Every text from the store is HTML-escaped. The
file is also logged to the parent run as `report/report.html`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shlex
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import harness
from harness import comparison as compare
from harness import reports, tracking
from harness.config import field_names
from harness.errors import HarnessError, TrackingError, UnknownNameError, WriteError, first_line, os_error_reason
from harness.experiment import Experiment, check_name, load_experiment
from harness.tracking import RunRecord, Tracker
from harness.uris import redact

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

ARTIFACT = "report/report.html"  # where the page goes on the parent run
NOT_RECORDED = "not recorded"
# Environment tags every run carries (`tracking.environment_tags`): tag -> column header.
ENV_TAGS = {"harness.version": "harness", "torch.version": "torch", "torchvision.version": "torchvision",
            "python.version": "python", "device": "device", "host": "host", "git_commit": "git commit"}
MIN_TRIALS_FOR_IMPORTANCE = 2  # Optuna's importance evaluators need at least two complete trials
# study run params
STUDY_OPTIONS = ("variant", "trials", "sampler", "sampler_seed", "pruner", "n_jobs", "repeat", "seeds", "storage")


@dataclass
class ReportOutcome:
    """The written page: where it is, which parent run it describes and what was left out."""

    path: Path
    parent_run_id: str
    kind: str  # "run" or "study" (the parent's kind)
    size: int  # bytes
    artifact: str = ARTIFACT
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One part of the page: its anchor, heading and (already escaped) HTML body."""

    anchor: str
    title: str
    body: str


@dataclass
class Context:
    """What every section reads: the comparison, the child runs by id, the parent and a scratch folder."""

    tracker: Tracker
    comparison: compare.Comparison
    parent: RunRecord
    children: dict[str, RunRecord]  # run id -> run, in the comparison's row order
    tmp: Path
    study: optuna.Study | None = None  # a `harness tune` parent's study, read from its Optuna storage
    notes: list[str] = field(default_factory=list)
    figures: int = 0  # counter for scratch PNG names

    @property
    def name(self) -> str:
        """The experiment's name."""
        return self.comparison.experiment

    def png(self, figure: Figure) -> bytes:
        """The figure as PNG bytes (drawn and freed by `reports.save_figure`)."""
        self.figures += 1
        return reports.save_figure(figure, self.tmp / f"figure-{self.figures}.png").read_bytes()


# ----------------------------------------------------------------- entry point


def default_out(experiment: str, run_id: str | None = None, study: bool = False) -> Path:
    """reports/NAME-run.html, reports/NAME-study.html, or reports/NAME-<run id[:8]>.html with --run."""
    # Only letters and digits of the id: the name must not reach outside reports/ whatever is typed.
    suffix = "".join(ch for ch in run_id[:8] if ch.isalnum()) if run_id else "study" if study else "run"
    return Path("reports") / f"{check_name(experiment)}-{suffix}.html"


def check_out(out: Path) -> None:
    """Raise WriteError unless `out` can be written as a file (missing folders are created)."""
    if out.is_dir():
        raise WriteError(f"out '{out}' is a folder; give a file name such as {out / 'report.html'}.")
    if out.exists() and not os.access(out, os.W_OK):
        raise WriteError(f"out '{out}' is not writable (permission denied); give another file as out.")
    existing = next((p for p in out.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise WriteError(f"out '{out}': {existing} is a file, not a folder; give another file as out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"out '{out}': folder {existing} is not writable; give another file as out.")


def write_report(tracker: Tracker, experiment: str, run_id: str | None = None, study: bool = False,
                 out: Path | None = None, storage: str | None = None) -> ReportOutcome:
    """`harness report`: build the page of a parent run (`run_id`, whatever its status, else the
    latest finished `harness run`, or the latest finished `harness tune` study with `study`), write
    it to `out` and log it to the parent run as `report/report.html`. Bad names, ids, storages, an
    unwritable `out` and no finished run to default to are one HarnessError each, raised before
    anything is written."""
    check_name(experiment)
    out = out or default_out(experiment, run_id, study)
    check_out(out)
    notes: list[str] = []
    if run_id is None:
        picked, notes = latest_finished(tracker, experiment, study)
        if picked is not None:  # an id selects it whatever its kind, so `study` is not passed on
            run_id, study = picked, False
    experiment_id, parent = compare.select_parent(tracker, experiment, run_id, study)
    comparison = compare.load_comparison(tracker, experiment, run_id=parent.run_id)
    loaded_study = _load_study(parent, storage) if _is_study(parent) else None  # a bad storage fails before drawing
    runs = {r.run_id: r for r in tracker.children(experiment_id, parent.run_id)}
    children = {i: runs[i] for i in comparison.runs["run_id"] if i in runs}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(tracker, comparison, parent, children, Path(tmp), loaded_study, notes)
        page = render_page(ctx, build_sections(ctx))
    data = page.encode("utf-8")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:  # no permission, disk full, read-only file system: one line
        raise WriteError(f"Cannot write the report to {out}: {os_error_reason(exc)}; "
                         "give another file as out.") from None
    tracker.log_bytes(parent.run_id, data, ARTIFACT)
    return ReportOutcome(out, parent.run_id, parent.tags.get(tracking.KIND_TAG, "run"), len(data),
                         notes=ctx.notes)


def latest_finished(tracker: Tracker, experiment: str, study: bool = False) -> tuple[str | None, list[str]]:
    """(id, notes) of the latest FINISHED parent run of the kind asked (`harness run`, or `harness
    tune` with `study`), the rule `harness predict NAME` follows too; the note names a newer
    unfinished one skipped. None when the experiment has no such run at all (`compare.select_parent`
    then says so); a HarnessError when it has only unfinished ones."""
    experiment_id = tracker.find_experiment(experiment)
    kind = "study" if study else "run"
    latest = tracker.latest_parent_run(experiment_id, kind=kind) if experiment_id is not None else None
    if latest is None:
        return None, []
    if latest.status == "FINISHED":
        return latest.run_id, []
    command = f"harness {'tune' if study else 'run'}"
    newest = f"the newest, {latest.run_id}, is {latest.status}"
    finished = tracker.latest_parent_run(experiment_id, kind=kind, finished_only=True)
    if finished is None:
        raise UnknownNameError(f"Experiment '{experiment}' has no finished `{command}` yet ({newest}); report an "
                               f"unfinished one by its run_id (`harness runs {experiment}` lists them).")
    return finished.run_id, [f"reporting run {finished.run_id}, the latest finished `{command}` ({newest}; "
                                  f"run_id '{latest.run_id}' reports it)."]


def build_sections(ctx: Context) -> list[Section]:
    """Every section of the page, in reading order (the study's own sections after the table)."""
    sections = [overview_section(ctx), table_section(ctx)]
    if ctx.study is not None:
        sections += study_sections(ctx, ctx.study)
    sections += [config_section(ctx), curves_section(ctx), confusion_section(ctx), epochs_section(ctx),
                 per_class_section(ctx), datasets_section(ctx), environment_section(ctx), reproduce_section(ctx)]
    if ctx.notes:
        sections.append(Section("notes", "Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in ctx.notes) + "</ul>"))
    return sections


# ----------------------------------------------------------------- HTML helpers


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too, so it is also safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _cell(value: Any) -> str:
    if value is None or (not isinstance(value, (str, list, tuple, dict)) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(frame: pd.DataFrame, caption: str | None = None, code_columns: Iterable[str] = ()) -> str:
    """`frame` as an escaped HTML table; two header rows when its columns are (group, name) pairs.
    Cells of `code_columns` are shown as code (commands)."""
    code = set(code_columns)
    if isinstance(frame.columns, pd.MultiIndex):
        groups: list[tuple[str, int]] = []
        for top, _ in frame.columns:
            if groups and groups[-1][0] == top:
                groups[-1] = (top, groups[-1][1] + 1)
            else:
                groups.append((top, 1))
        head = ("<tr>" + "".join(f'<th colspan="{n}">{esc(top)}</th>' for top, n in groups) + "</tr><tr>"
                + "".join(f"<th>{esc(sub)}</th>" for _, sub in frame.columns) + "</tr>")
    elif any(str(c) for c in frame.columns):
        head = "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in frame.columns) + "</tr>"
    else:  # a key-value table: no header row
        head = ""
    rows = []
    for values in frame.itertuples(index=False):
        cells = [f"<td><code>{esc(_cell(v))}</code></td>" if col in code else f"<td>{esc(_cell(v))}</td>"
                 for col, v in zip(frame.columns, values)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # The caption as a paragraph, not <caption>: a <caption> is only as wide as its (often narrow) table.
    cap = f'<p class="caption">{esc(caption)}</p>' if caption else ""
    head = f"<thead>{head}</thead>" if head else ""
    return f'<div class="scroll"><table>{head}<tbody>{"".join(rows)}</tbody></table></div>{cap}'


def figure_html(png: bytes, alt: str, caption: str | None = None) -> str:
    """An embedded PNG (a data: URI, so the page needs no other file) with its caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def paragraph(text: str) -> str:
    """`text` as an escaped paragraph."""
    return f"<p>{esc(text)}</p>"


def missing(text: str) -> str:
    """A sentence saying what is not there (styled apart from results)."""
    return f'<p class="missing">{esc(text)}</p>'


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1280px;
padding:1.5rem 2rem;color:#1d2125;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;padding-bottom:.25rem;
margin-top:2.2rem}
nav ul{columns:3;padding-left:1.2rem}.meta{color:#57606a;font-size:.9rem}
.scroll{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:.85rem}th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f6f8fa}tbody tr:nth-child(even){background:#fbfcfd}
.caption{color:#57606a;font-size:.8rem;margin-top:-.3rem;max-width:70rem}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:.6rem .8rem;overflow-x:auto;white-space:pre-wrap;
word-break:break-all}
figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.85rem}.missing{color:#8c4b00}
td{overflow-wrap:break-word;max-width:36rem}
"""


def render_page(ctx: Context, sections: list[Section]) -> str:
    """The whole document: inline styles, a table of contents, the sections; no script, no link."""
    c, parent = ctx.comparison, ctx.parent
    what = "study" if _is_study(parent) else "run"
    title = f"{c.experiment}: report of {what} {c.parent_run_id}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p class=\"meta\">Generated {esc(generated)} by harness "
            f"{esc(harness.__version__)} (`harness report`) from the tracking store {esc(redact(ctx.tracker.uri))}."
            f"</p></header><nav><ul>{nav}</ul></nav>{body}</body></html>\n")


# ----------------------------------------------------------------- runs and variants


def _is_study(parent: RunRecord) -> bool:
    return parent.tags.get(tracking.KIND_TAG) == "study"


def _shown_variants(c: compare.Comparison) -> list[str]:
    """The variants (trials) the figures show: the best MAX_PANELS, as in `harness compare`."""
    return list(c.table["variant"])[: compare.MAX_PANELS]


def _run_ids(c: compare.Comparison, variant: str, finished: bool = False) -> list[str]:
    rows = c.runs[c.runs["variant"] == variant]
    if finished:
        rows = rows[rows["status"] == "FINISHED"]
    return list(rows["run_id"])


def _label(variant: str, runs: int) -> str:
    return f"{variant} ({runs} seeds pooled)" if runs > 1 else variant


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "—"


# ----------------------------------------------------------------- sections


def overview_section(ctx: Context) -> Section:
    """What was run, when, and the experiment's description (as MLflow recorded it, else from its file)."""
    parent, c = ctx.parent, ctx.comparison
    description = ctx.tracker.experiment_description(c.experiment)
    if not description:
        try:
            description = load_experiment(c.experiment).description
        except HarnessError as exc:  # the file is not here (or broken): the rest of the page does not need it
            ctx.notes.append(f"The experiment's description was not read: {exc}")
    kind = "`harness tune` study" if _is_study(parent) else "`harness run`"
    facts = pd.DataFrame([
        ("experiment", c.experiment), ("description", description or NOT_RECORDED),
        ("parent run", f"{parent.run_id} ({parent.name}), {kind}"), ("status", parent.status),
        ("started", _when(parent.start_time)), ("ended", _when(parent.end_time)),
        ("child runs", str(len(c.runs))),
    ], columns=["", ""])
    failure = parent.tags.get(tracking.FAILURE_TAG)
    if failure:
        facts.loc[len(facts)] = ("failure reason", failure)
    return Section("overview", "Overview", table_html(facts))


def table_section(ctx: Context) -> Section:
    """The comparison table exactly as `harness compare` prints it, with its title and note."""
    c = ctx.comparison
    # `Comparison.warnings` (runs that read different data) is new beside this module; older ones have none.
    warned = "".join(missing(f"Warning: {w}") for w in c.warnings)
    body = paragraph(c.title) + table_html(compare.display_frame(c), c.note) + warned
    return Section("comparison", "Comparison", body)


def variant_configs(ctx: Context) -> pd.DataFrame:
    """Config field x variant: each variant's logged value (several seeds' values joined)."""
    c = ctx.comparison
    columns: dict[str, list[str]] = {}
    for variant in c.table["variant"]:
        runs = [ctx.children[i] for i in _run_ids(c, variant) if i in ctx.children]
        column = []
        for name in field_names():
            values = list(dict.fromkeys(r.params[name] for r in runs if name in r.params))
            column.append(", ".join(values) if values else NOT_RECORDED)
        columns[variant] = column
    return pd.DataFrame(columns, index=pd.Index(field_names(), name="field"))


def config_section(ctx: Context) -> Section:
    """Only the config fields that differ between variants; the shared ones folded away."""
    configs = variant_configs(ctx)
    differs = configs.nunique(axis=1) > 1
    what = "trials" if ctx.comparison.kind == "study" else "variants"
    if len(configs.columns) < 2:
        body = paragraph(f"One variant ({configs.columns[0]}): nothing to compare; its configuration is below.")
    elif not differs.any():
        body = paragraph(f"All {len(configs.columns)} {what} share one configuration (below).")
    else:
        shown = configs[differs].reset_index()
        body = table_html(shown, f"The {int(differs.sum())} config fields whose logged values differ between the "
                                 f"{what} (children's params); {int((~differs).sum())} more are shared.")
    shared = configs[~differs].iloc[:, :1].reset_index().set_axis(["field", "value"], axis=1)
    body += f"<details><summary>Shared configuration ({len(shared)} fields)</summary>{table_html(shared)}</details>"
    return Section("config", "Configuration differences", body)


def curves_section(ctx: Context) -> Section:
    """All variants' learning curves in one figure (mean ± std over seeds), as `harness compare` draws them."""
    c = ctx.comparison
    curves = compare.curves_frame(ctx.tracker, c)
    if curves.empty:
        ctx.notes.append("No per-epoch metrics are logged, so no learning curves were drawn.")
        return Section("curves", "Learning curves", missing("No per-epoch metrics are logged yet."))
    spread = ", mean ± std over seeds" if c.repeated else ""
    figure = reports.overlay_curves_figure(curves, f"{c.experiment}: learning curves{spread}",
                                           best_epochs=compare.best_epochs(c))
    caption = ("Training and validation loss and accuracy per epoch; ★ marks the best epoch (chosen by "
               "early_stopping_metric).")
    return Section("curves", "Learning curves", figure_html(ctx.png(figure), "learning curves", caption))


def confusion_section(ctx: Context) -> Section:
    """The test confusion matrices of the shown variants side by side (seeds pooled)."""
    c = ctx.comparison
    matrices = compare.load_test_confusions(ctx.tracker, c, ctx.tmp)
    if not matrices:
        text = "No finished run logged a test confusion matrix (tuning trials are never tested)."
        ctx.notes.append(text)
        return Section("confusion", "Test confusion matrices", missing(text))
    figure = reports.confusion_grid_figure(matrices, f"{c.experiment}: test confusion matrices")
    caption = "Rows: true class, columns: predicted; colour = fraction of the true class, numbers = counts."
    return Section("confusion", "Test confusion matrices", figure_html(ctx.png(figure), "confusion matrices", caption))


def confused_pairs_frame(per_variant: dict[str, tuple[list[Any], list[str]]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(most-confused pairs at the first vs last epoch, per-class error rates by epoch), with
    `harness compare --confusion`'s own functions and pooling."""
    rows, errors = [], {}
    for name, (arrays, classes) in per_variant.items():
        pooled = compare.pooled_by_epoch(arrays)
        last = sum(a[-1].astype("int64") for a in arrays)  # each run's own last epoch (early stopping)
        rows += compare.confused_pairs(name, pooled[0], last, classes)
        errors[_label(name, len(arrays))] = (compare.class_error_rates(pooled), classes)
    columns = ["variant", "true", "predicted", "first_count", "first_rate", "last_count", "last_rate", "rate_change"]
    return pd.DataFrame(rows, columns=columns), errors


def epochs_section(ctx: Context) -> Section:
    """The most-confused class pairs at the first and the last epoch, and each class's error over epochs."""
    title = "Confusions across epochs"
    per_variant = compare.load_epoch_confusions(ctx.tracker, ctx.comparison, ctx.tmp)
    if not per_variant:
        text = ("No finished run logged per-epoch validation confusion matrices (runs without a validation "
                "split, such as a study's retrain-best, and tuning trials have none).")
        ctx.notes.append(text)
        return Section("epochs", title, missing(text))
    pairs, errors = confused_pairs_frame(per_variant)
    body = (table_html(compare.pairs_display(pairs), compare.PAIRS_NOTE) if len(pairs)
            else paragraph("No validation image was confused at the first or the last epoch."))
    figure = reports.class_error_figure(errors, f"{ctx.name}: validation error rate per class across epochs")
    body += figure_html(ctx.png(figure), "validation error rate per class across epochs")
    return Section("epochs", title, body)


def per_class_scores(ctx: Context) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """(each shown variant's per-class precision/recall/F1/support from per_class_metrics.csv, mean
    over its finished seeds and indexed by class; how many seeds each mean is over)."""
    scores: dict[str, pd.DataFrame] = {}
    seeds: dict[str, int] = {}
    for variant in _shown_variants(ctx.comparison):
        frames = []
        for run_id in _run_ids(ctx.comparison, variant, finished=True):
            path = ctx.tracker.download_artifact(run_id, "per_class_metrics.csv", ctx.tmp / run_id)
            if path is not None:
                frames.append(pd.read_csv(path, dtype={"class": str}))
        if frames:
            scores[variant] = pd.concat(frames).groupby("class", sort=False).mean(numeric_only=True)
            seeds[variant] = len(frames)
    return scores, seeds


def per_class_frame(scores: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Class x (variant, precision/recall/F1) plus, with several variants, each one's F1 minus the
    first (best) variant's."""
    classes = list(dict.fromkeys(c for frame in scores.values() for c in frame.index))
    table = pd.DataFrame({("", "class"): classes})
    for label, frame in scores.items():
        for metric, header in (("precision", "P"), ("recall", "R"), ("f1", "F1")):
            table[(label, header)] = [frame[metric].get(c) for c in classes]
    labels = list(scores)
    for label in labels[1:]:
        table[("ΔF1 vs " + labels[0], label)] = table[(label, "F1")] - table[(labels[0], "F1")]
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def _scores_text(table: pd.DataFrame) -> pd.DataFrame:
    """Scores with 3 decimals (differences signed), so the columns line up."""
    shown = table.copy()
    for column in shown.columns[1:]:
        signed = column[0].startswith("ΔF1")
        shown[column] = [("" if pd.isna(v) else f"{v:+.3f}" if signed else f"{v:.3f}") for v in shown[column]]
    return shown


def widest_f1_gaps(table: pd.DataFrame, labels: list[str], top: int = 3) -> str:
    """One sentence: the classes whose F1 differs most between the variants (best and worst named)."""
    f1 = pd.DataFrame({label: table[(label, "F1")] for label in labels})
    gap = (f1.max(axis=1) - f1.min(axis=1)).fillna(0)
    widest = [i for i in gap.sort_values(ascending=False, kind="stable").index[:top] if gap[i] > 0]
    if not widest:
        return "No class's F1 differs between the variants."
    return "Largest F1 differences between variants: " + "; ".join(
        f"class {table[('', 'class')][i]}: {gap[i]:.3f} (highest {f1.loc[i].idxmax()}, lowest {f1.loc[i].idxmin()})"
        for i in widest) + "."


def per_class_section(ctx: Context) -> Section:
    """Per-class precision/recall/F1 on the test set, and where the variants differ most."""
    title = "Per-class precision, recall and F1 (test set)"
    scores, seeds = per_class_scores(ctx)
    if not scores:
        text = "No finished run logged per_class_metrics.csv (tuning trials are never tested)."
        ctx.notes.append(text)
        return Section("per-class", title, missing(text))
    table = per_class_frame(scores)
    labels = list(scores)
    body = paragraph(widest_f1_gaps(table, labels)) if len(labels) > 1 else ""
    averaged = [f"{v}: mean of {n} seeds" for v, n in seeds.items() if n > 1]
    caption = ("P = precision, R = recall, F1 per class on the test set (per_class_metrics.csv"
               + (f"; {', '.join(averaged)}" if averaged else "") + ")."
               + (f" ΔF1: each variant's F1 minus {labels[0]}'s (the best by the table's metric)."
                  if len(labels) > 1 else ""))
    return Section("per-class", title, body + table_html(_scores_text(table), caption))


def _dataset_cells(run: RunRecord | None) -> list[dict[str, str]]:
    """One row per dataset input of `run` (MLflow's "Datasets used"), or one saying none."""
    if run is None or not run.datasets:
        return [{"context": "—", "name": NOT_RECORDED, "digest": "", "source": "", "profile": ""}]
    return [{"context": ds.context or "—", "name": ds.name, "digest": ds.digest,
             "source": _json_text(ds.source, single_key="uri"), "profile": _json_text(ds.profile)}
            for ds in run.datasets]


def _json_text(text: str | None, single_key: str | None = None) -> str:
    """A JSON object as `k=v, ...` (its one value if it is just {single_key: v}); other text as it is."""
    if not text:
        return ""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    if not isinstance(value, dict):
        return json.dumps(value)
    if single_key and set(value) == {single_key}:
        return str(value[single_key])
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in value.items())


def datasets_frame(c: compare.Comparison, children: dict[str, RunRecord]) -> pd.DataFrame:
    """Variant, seed, run and each dataset input (context, name, digest, source, profile) of every child run."""
    rows = []
    for record in c.runs.itertuples(index=False):
        run = children.get(record.run_id)
        cells = _dataset_cells(run)
        seed = "" if pd.isna(record.seed) else str(int(record.seed))
        rows += [{"variant": record.variant, "seed": seed, "run": record.run_id[:8], **cell} for cell in cells]
    return pd.DataFrame(rows, columns=["variant", "seed", "run", "context", "name", "digest", "source", "profile"])


def datasets_section(ctx: Context) -> Section:
    """The data each run read, by digest: the same digest means the same images in the same split."""
    frame = datasets_frame(ctx.comparison, ctx.children)
    recorded = frame[frame["name"] != NOT_RECORDED]
    if recorded.empty:
        body = missing("No run recorded its dataset inputs (MLflow `log_input`): not recorded.")
    else:
        differing = [ctx_name for ctx_name, group in recorded.groupby("context") if group["digest"].nunique() > 1]
        body = paragraph("Every run read the same data in each context (one digest per context)." if not differing
                         else "Digests differ between runs for: " + ", ".join(differing)
                         + " (other data or another split: e.g. a retrain on train + validation, or a validation "
                           "split drawn by another seed).")
    caption = ("Each run's MLflow dataset inputs (run.inputs.dataset_inputs): context tag, name, digest, "
               "source and profile.")
    return Section("datasets", "Datasets", body + table_html(frame, caption))


def _environment(run: RunRecord) -> tuple[str, ...]:
    tags = run.tags
    values = {k: tags.get(k) for k in ENV_TAGS}
    values["git_commit"] = values["git_commit"] or tags.get(tracking.GIT_COMMIT_TAG)
    return tuple(values[k] or NOT_RECORDED for k in ENV_TAGS)


def environment_frame(c: compare.Comparison, children: dict[str, RunRecord]) -> pd.DataFrame:
    """One row per distinct environment (versions, device, host, git commit) with the runs that had it."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for record in c.runs.itertuples(index=False):
        run = children.get(record.run_id)
        if run is not None:
            groups.setdefault(_environment(run), []).append(f"{record.variant} ({record.run_id[:8]})")
    rows = [{"runs": "all runs" if len(groups) == 1 else ", ".join(names), **dict(zip(ENV_TAGS.values(), env))}
            for env, names in groups.items()]
    return pd.DataFrame(rows, columns=["runs", *ENV_TAGS.values()])


def environment_section(ctx: Context) -> Section:
    """Versions, device, host and git commit the runs recorded (tags)."""
    frame = environment_frame(ctx.comparison, ctx.children)
    caption = ("Tags every run records: harness.version, torch.version, torchvision.version, python.version, "
               "device, host, git_commit.")
    return Section("environment", "Environment", table_html(frame, caption))


# ----------------------------------------------------------------- reproducing the runs


@dataclass
class Reference:
    """What `--set` overrides are measured against: the experiment file's variants when the file
    here is the one logged with the runs, else nothing (every field is then set)."""

    experiment: Experiment | None
    exact: bool  # the file here is byte-for-byte the logged source/ copy
    reason: str  # why not, when not exact

    def fields(self, variant: str) -> dict[str, str] | None:
        """The file's config of `variant` as logged params would read (None: not comparable)."""
        if not self.exact or self.experiment is None or variant not in self.experiment.variants:
            return None
        from harness.config import flatten

        return flatten(self.experiment.variants[variant])


def load_reference(ctx: Context) -> Reference:
    """The experiment file, if it is here and identical to the `source/` copy logged with the first child."""
    try:
        exp = load_experiment(ctx.name)
    except HarnessError as exc:
        return Reference(None, False, f"the experiment file is not usable here ({exc})")
    source = Path(exp.source_file or "")
    logged = None
    for run_id in ctx.children:
        logged = ctx.tracker.download_artifact(run_id, f"source/{source.name}", ctx.tmp / "source" / run_id)
        if logged is not None:
            break
    if logged is None:
        return Reference(exp, False, "no run logged its experiment file (source/), so it cannot be compared")
    if logged.read_bytes() != source.read_bytes():
        return Reference(exp, False, f"{source.name} here differs from the copy logged with the runs")
    return Reference(exp, True, "")


def overrides(params: dict[str, str], reference: dict[str, str] | None, skip: Iterable[str] = ()) -> dict[str, str]:
    """The config fields of a run's params that differ from `reference` (every field without one)."""
    left_out = set(skip)
    return {k: params[k] for k in field_names()
            if k in params and k not in left_out and (reference is None or reference.get(k) != params[k])}


def set_arguments(per_variant: dict[str, dict[str, str]], file_variants: list[str]) -> list[str]:
    """`--set` arguments: `key=value` when every variant of the file gets the same value (or the file
    has one variant), else `VARIANT.key=value`."""
    common: dict[str, str] = {}
    if file_variants and set(per_variant) >= set(file_variants):
        first, *others = file_variants
        common = {k: v for k, v in per_variant[first].items() if all(per_variant[o].get(k) == v for o in others)}
    args = [arg for k, v in common.items() for arg in ("--set", f"{k}={v}")]
    for variant, fields in per_variant.items():
        args += [arg for k, v in fields.items() if k not in common for arg in ("--set", f"{variant}.{k}={v}")]
    return args


def command(*parts: str) -> str:
    """A shell command line, each argument quoted where the shell needs it."""
    return " ".join(shlex.quote(p) for p in parts)


def _commit_line(ctx: Context) -> tuple[list[str], str]:
    """(`git checkout` line if a commit is recorded, a sentence on it)."""
    commits = {ctx.parent.tags.get("git_commit")} | {r.tags.get("git_commit") for r in ctx.children.values()}
    commits.discard(None)
    if not commits:
        return [], ("No git commit is recorded (the experiment file was not in a git repository): run the commands "
                    "with the code and experiment file these runs used.")
    if len(commits) > 1:
        return [f"git checkout {c}  # one of {len(commits)} commits the runs recorded" for c in sorted(commits)], \
            "The runs recorded several git commits (a resumed run?); pick the one of the run you reproduce."
    return [command("git", "checkout", commits.pop())], "The commit the runs recorded."


def _file_variants(reference: Reference, fallback: Iterable[str]) -> list[str]:
    return list(reference.experiment.variants) if reference.experiment is not None else list(fallback)


def run_commands(ctx: Context, reference: Reference) -> list[str]:
    """`harness run NAME [--seeds|--repeat] --set ...`: one command that retrains every child run of
    a `harness run` parent (the seed plan the parent recorded; every other difference to the file
    as `--set`)."""
    params = ctx.parent.params
    seeds_arg: list[str] = []
    skip: tuple[str, ...] = ()
    if "seeds" in params:
        seeds_arg, skip = ["--seeds", params["seeds"]], ("seed",)
    elif "repeat" in params:
        seeds_arg = ["--repeat", params["repeat"]]  # seeds count up from each variant's config seed
    per_variant: dict[str, dict[str, str]] = {}
    c = ctx.comparison
    for variant in dict.fromkeys(c.runs["variant"]):
        runs = [ctx.children[i] for i in _run_ids(c, variant) if i in ctx.children and ctx.children[i].params]
        if not runs:
            continue
        first = min(runs, key=lambda r: tracking.run_seed(r) or 0)  # with --repeat: the variant's config seed
        per_variant[variant] = overrides(dict(first.params), reference.fields(variant), skip)
    file_variants = _file_variants(reference, per_variant)
    return [command("harness", "run", c.experiment, *seeds_arg, *set_arguments(per_variant, file_variants))]


def study_commands(ctx: Context, reference: Reference) -> tuple[str, pd.DataFrame]:
    """(the `harness tune` command that reruns the study into a new study name, one `harness run`
    command per trial / retrain-best child with that child's fields as `--set`)."""
    c, params = ctx.comparison, ctx.parent.params
    variant = params.get("variant") or "VARIANT"
    file_variants = _file_variants(reference, [variant])
    tuned = set(reference.experiment.search_space) if reference.experiment is not None else set()
    if ctx.study is not None:
        tuned |= {k for t in ctx.study.get_trials(deepcopy=False) for k in t.params}
    rows, base = [], None
    for record in c.runs.itertuples(index=False):
        run = ctx.children.get(record.run_id)
        if run is None or not run.params:
            continue
        fields = overrides(dict(run.params), reference.fields(variant))
        state = getattr(record, "trial_state", None)
        rows.append({"run": record.variant, "state": record.status if pd.isna(state) else state,
                     "command": command("harness", "run", c.experiment,
                                        *set_arguments({variant: fields}, file_variants))})
        if base is None and run.tags.get(tracking.KIND_TAG) == "trial":
            base = {k: v for k, v in fields.items() if k not in tuned}  # what `tune --set` gave every trial
    if base is None:  # a continued study whose trials ran under an earlier parent run
        trial = _first_trial_run(ctx)
        if trial is not None:
            base = {k: v for k, v in overrides(dict(trial.params), reference.fields(variant)).items()
                    if k not in tuned}
        else:
            ctx.notes.append("No trial run was found, so the `harness tune` command lacks the study's own --set.")
    tune = ["harness", "tune", c.experiment, "--variant", variant, "--study-name", f"{c.experiment}-{variant}-repro"]
    for option in ("trials", "sampler", "pruner", "seeds", "repeat"):
        if option in params:
            tune += [f"--{option}", params[option]]
    if "sampler_seed" in params:
        tune += ["--seed", params["sampler_seed"]]
    if params.get("n_jobs", "1") != "1":
        tune += ["--n-jobs", params["n_jobs"]]
    tune += set_arguments({variant: base or {}}, file_variants)
    if any(r.tags.get(tracking.VARIANT_TAG) == "retrain-best" for r in ctx.children.values()):
        tune.append("--retrain-best")
    return command(*tune), pd.DataFrame(rows, columns=["run", "state", "command"])


def _first_trial_run(ctx: Context) -> RunRecord | None:
    """The MLflow run of the study's first trial that has logged params (found through its user attribute)."""
    if ctx.study is None:
        return None
    from harness.study_store import TRIAL_RUN_ATTR

    for trial in ctx.study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
        run = ctx.tracker.find_run(run_id) if run_id else None
        if run is not None and run.params:
            return run
    return None


def reproduce_section(ctx: Context) -> Section:
    """The commands that retrain these runs, and what they assume."""
    reference = load_reference(ctx)
    checkout, commit_note = _commit_line(ctx)
    if reference.exact:
        basis = (f"`--set` lists each run's config fields that differ from experiments/{ctx.name}.py, which is "
                 "identical to the copy logged with the runs (source/).")
    else:
        basis = (f"`--set` lists every config field, because {reference.reason}; the variant names must match "
                 "the experiment file's.")
    body = paragraph(commit_note + " " + basis)
    if _is_study(ctx.parent):
        tune, per_run = study_commands(ctx, reference)
        body += "<pre>" + esc("\n".join([*checkout, tune])) + "</pre>"
        seed_note = ("" if "sampler_seed" in ctx.parent.params else
                     " Optuna's sampler seed (--seed) is not recorded on this (older) run: the default 0 is assumed.")
        body += paragraph("The whole study, into a new study name so the recorded one is not continued." + seed_note +
                          " With --n-jobs above 1 or a resumed study the sampled params need not repeat.")
        body += table_html(per_run, "One trial (or the retrained best) as a plain `harness run`: its sampled params "
                                    "and the study's --set. `harness run` trains every variant of the experiment, "
                                    "without pruning, and tests it once.", code_columns=["command"])
    else:
        body += "<pre>" + esc("\n".join([*checkout, *run_commands(ctx, reference)])) + "</pre>"
        body += paragraph("One command retrains every variant and seed of this run under a new parent run "
                          "(`harness run` always trains all the experiment's variants).")
    return Section("reproduce", "Reproduce", body)


# ----------------------------------------------------------------- the Optuna study


def study_storage(parent: RunRecord, storage: str | None) -> str:
    """The storage to read the study from: --storage, else the one the study run recorded (unless its
    password was hidden), else the default; a sqlite or journal file that is not there is an error
    (opening it would create an empty storage)."""
    from harness.study_store import DEFAULT_STORAGE

    recorded = parent.params.get("storage")
    url = storage or recorded or DEFAULT_STORAGE
    if storage is None and recorded and "***" in recorded:
        raise TrackingError(f"The study's storage {recorded} has a password, which is never recorded; "
                            "give the full URL as storage.")
    path = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else \
        url[len("journal:"):] if url.startswith("journal:") else None
    if path and path != ":memory:" and not Path(path).is_file():
        raise TrackingError(f"No Optuna storage file {path} (from {redact(url)}) here; run `harness report` where "
                            "the study was run or give its storage URL as storage.")
    return url


def _load_study(parent: RunRecord, storage: str | None) -> optuna.Study:
    """The Optuna study of a `harness tune` parent run (its `optuna.study_name` tag)."""
    from harness.study_store import load_study

    name = parent.tags.get(tracking.STUDY_NAME_TAG)
    if not name:
        raise UnknownNameError(f"Run {parent.run_id} records no Optuna study name (tag optuna.study_name).")
    return load_study(study_storage(parent, storage), name)


def study_sections(ctx: Context, study: optuna.Study) -> list[Section]:
    """The best trial, the trials table and Optuna's plots."""
    from harness.study_store import best_summary, trials_table

    table = trials_table(study)
    if "mlflow_run_id" in table:
        table["mlflow_run_id"] = table["mlflow_run_id"].astype("string").str[:8]
        table = table.rename(columns={"mlflow_run_id": "run"})
    caption = (f"Every trial of study '{study.study_name}' (as `harness study` lists them): "
               "state, value (best val_acc), params, seconds.")
    recorded = ctx.parent.params  # how `harness tune` was asked to run (the storage without its password)
    options = pd.DataFrame([(k, recorded[k]) for k in STUDY_OPTIONS if k in recorded], columns=["", ""])
    body = paragraph(best_summary(study)) + table_html(options) + table_html(table, caption)
    return [Section("study", "Study", body), Section("study-plots", "Study plots", study_plots(ctx, study))]


def study_plots(ctx: Context, study: optuna.Study) -> str:
    """Optuna's history, param-importance and parallel-coordinate plots (matplotlib backends) as
    embedded PNGs; a plot the study cannot have yet is one sentence saying why."""
    import optuna
    from optuna.visualization import matplotlib as ov

    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    parts = []
    for title, plot, needs in (("Optimization history", ov.plot_optimization_history, 1),
                               ("Parameter importances", ov.plot_param_importances, MIN_TRIALS_FOR_IMPORTANCE),
                               ("Parallel coordinates", ov.plot_parallel_coordinate, 1)):
        parts.append(f"<h3>{esc(title)}</h3>")
        if complete < needs:
            plural = "s" if needs > 1 else ""
            text = f"{title}: not drawn, it needs at least {needs} complete trial{plural} ({complete} so far)."
            ctx.notes.append(text)
            parts.append(missing(text))
            continue
        try:
            with warnings.catch_warnings():  # few trials: degenerate axes warn, the figure still tells
                warnings.simplefilter("ignore")
                figure = reports.optuna_figure(plot(study))
            parts.append(figure_html(ctx.png(figure), title))
        except Exception as exc:  # noqa: BLE001 - e.g. a param that never varied: say so, draw the rest
            text = f"{title}: not drawn ({first_line(exc)})."
            ctx.notes.append(text)
            parts.append(missing(text))
    return "".join(parts)
