"""Figures and tables made from training results: confusion matrices, per-class scores,
learning curves, variant comparisons. Pure functions of data; MLflow logging is elsewhere."""

from __future__ import annotations

import functools
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: matplotlib and rich are imported when a figure or table is made
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from rich.table import Table


# Sizes are in inches and font sizes in points; figures are saved at 100 dpi (`save_figure`).
MIN_COUNT_PT = 7.0  # smallest cell count still readable at 100 dpi; smaller cells get no counts
MAX_COUNT_PT = 12.0
MIN_TICK_PT = 6.0  # class names on a matrix axis below this are dropped rather than overprinted
MATRIX_CELL = 0.5  # preferred side of one confusion-matrix cell (a single matrix)
GRID_CELL = 0.42  # the same in a grid of matrices
MAX_LEGEND_CLASSES = 20  # more classes than this: a legend nobody can match to the lines
LEARNING_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure drawn by Agg, made without pyplot: a report never changes the caller's
    backend (a notebook's inline plots keep working) and needs no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """`pyplot.subplots` on a `_figure` (constrained layout)."""
    fig = _figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(*grid, **kwargs)


def _rc(key: str) -> Any:
    import matplotlib

    return matplotlib.rcParams[key]


def _colours(n: int) -> Any:
    """The qualitative colour map for `n` lines."""
    import matplotlib

    return matplotlib.colormaps["tab10" if n <= 10 else "tab20"]


# ----------------------------------------------------------------- sizing helpers


@functools.lru_cache(maxsize=1)
def _measurer():  # noqa: ANN202 - a RendererAgg, only used to measure text
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(1, 1, 72)  # at 72 dpi one pixel is one point


def _points(size: float | str) -> float:
    """A font size (number or name such as 'large') in points, under the current rcParams."""
    from matplotlib.font_manager import FontProperties

    return float(FontProperties(size=size).get_size_in_points())


def _text_size(text: str, fontsize: float) -> tuple[float, float]:
    """Width and height (inches) of `text`, one or more lines, at `fontsize` points as Agg draws it."""
    from matplotlib.font_manager import FontProperties

    lines = str(text).split("\n")
    prop = FontProperties(size=fontsize)
    width = max(_measurer().get_text_width_height_descent(line or " ", prop, ismath=False)[0] for line in lines)
    return width / 72, len(lines) * fontsize * 1.2 / 72


def _longest(texts: Sequence[str], fontsize: float) -> float:
    """Width (inches) of the widest of `texts`; 0 when there are none."""
    return max((_text_size(t, fontsize)[0] for t in texts), default=0.0)


def _wrap(text: str, width: float, fontsize: float) -> str:
    """`text` broken at spaces into lines no wider than `width` inches, so a long title wraps
    instead of running off the figure."""
    if "\n" in text:  # lines the caller broke stay broken
        return "\n".join(_wrap(line, width, fontsize) for line in text.split("\n"))
    full = _text_size(text, fontsize)[0]
    if full <= width or not text:
        return text
    chars = max(12, int(len(text) * width / full))
    return textwrap.fill(text, chars, break_long_words=False, break_on_hyphens=False)


def _title_points() -> float:
    return _points(_rc("figure.titlesize"))


def _fit(fig: Figure, rounds: int = 4) -> Figure:
    """Grow `fig` until everything it draws lies on the canvas, and return it.

    Constrained layout arranges the decorations inside the figure but never enlarges it; where the
    size estimated from the content came out too small, the overflow measured here is added."""
    pad = 0.04
    for _ in range(rounds):
        with warnings.catch_warnings():
            # A too-small figure makes constrained layout give up for this draw; it is grown just below.
            warnings.filterwarnings("ignore", message=".*constrained_layout not applied.*")
            fig.draw_without_rendering()
        box = fig.get_tightbbox()  # inches
        width, height = fig.get_size_inches()
        grow_w = max(0.0, -box.x0) + max(0.0, box.x1 - width)
        grow_h = max(0.0, -box.y0) + max(0.0, box.y1 - height)
        if grow_w < 0.01 and grow_h < 0.01:
            break
        fig.set_size_inches(width + grow_w + 2 * pad, height + grow_h + 2 * pad)
    return fig


def _grid(panels: int, width: float = 4.2, height: float = 3.8, columns: int = 4) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with `panels` axes (each `width` x `height` inches) in rows of
    at most `columns`; the unused cells of the last row are left empty."""
    ncols = max(1, min(columns, panels))
    nrows = max(1, -(-panels // ncols))
    fig, axes = _subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.remove()  # an empty cell rather than an empty frame
    return fig, list(axes.flat[:panels])


def _integer_ticks() -> MaxNLocator:
    """Epochs are whole numbers: no 1.5 on the epoch axis."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


# ----------------------------------------------------------------- confusion matrices


def confusion_frame(confusion: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Confusion counts labelled by class (rows = true, columns = predicted)."""
    return pd.DataFrame(confusion, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def per_class_scores(confusion: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, from a confusion matrix."""
    c = confusion.astype(np.float64)
    tp = np.diag(c)
    predicted, actual = c.sum(axis=0), c.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame(
        {"class": list(classes), "precision": precision, "recall": recall, "f1": f1, "support": actual.astype(int)}
    )


def _matrix_labels(xnames: Sequence[str], ynames: Sequence[str],
                   cell: float) -> tuple[float | None, bool, float, float]:
    """How to label a matrix with `cell`-inch cells: tick font size (None: too small to read, no
    class names), whether the x names are rotated (wider than a cell), and the room (inches) the
    names plus the axis labels need left of and below the matrix."""
    axis_label = 0.45  # 'true' / 'predicted' with their padding
    size = min(10.0, 0.8 * cell * 72)
    if size < MIN_TICK_PT:
        return None, False, axis_label, axis_label
    xw, yw, line = _longest(xnames, size), _longest(ynames, size), size * 1.3 / 72
    rotated = xw > 0.9 * cell
    below = (xw + line) * 0.72 if rotated else line  # 45 degrees
    # Rotated names hang left of their column; the first one may reach past the y names.
    left = max(yw + axis_label, (xw + line) * 0.72 - cell / 2)
    return size, rotated, left + 0.1, below + axis_label + 0.1


def _label_matrix(ax: Axes, xnames: Sequence[str], ynames: Sequence[str], size: float | None, rotated: bool) -> None:
    """Class names on both axes of a matrix (none when `size` is None), 'predicted' / 'true'."""
    if size is None:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xticks(range(len(xnames)), labels=list(xnames), fontsize=size, rotation=45 if rotated else 0,
                      ha="right" if rotated else "center", rotation_mode="anchor")
        ax.set_yticks(range(len(ynames)), labels=list(ynames), fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def _count_points(cell_w: float, cell_h: float, digits: int) -> float | None:
    """The font size (points) at which a `digits`-digit count fills a cell of `cell_w` x `cell_h`
    points without touching its neighbours; None when that is below MIN_COUNT_PT."""
    size = min(MAX_COUNT_PT, 0.5 * cell_h, 0.85 * cell_w / (0.64 * max(digits, 1)))  # a digit is ~0.64 em wide
    return size if size >= MIN_COUNT_PT else None


def _write_counts(ax: Axes, counts: np.ndarray, dark: np.ndarray) -> None:
    """Write `counts` into an already laid-out matrix, in the largest font that fits a cell, white
    where the cell is `dark`; nothing when the cells are too small to read."""
    rows, cols = counts.shape if counts.ndim == 2 else (0, 0)
    if not rows or not cols:
        return
    box = ax.get_window_extent()  # pixels, after layout (and the image's equal aspect)
    to_points = 72 / ax.get_figure().dpi
    size = _count_points(box.width / cols * to_points, box.height / rows * to_points, len(str(int(counts.max()))))
    if size is None:
        return
    for i in range(rows):
        for j in range(cols):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=size, clip_on=True,
                    color="white" if dark[i, j] else "black")


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """A labelled heatmap of the confusion matrix, counts written in the cells when legible.

    The figure is sized from the class count and the longest class name; counts get the largest
    font their cell allows and are left out only when that font would be unreadably small."""
    confusion = np.asarray(confusion)
    names = [str(c) for c in classes]
    k = len(names)
    side = min(max(3.0, MATRIX_CELL * k), 24.0)  # the matrix itself
    cell = side / max(k, 1)
    size, rotated, left, below = _matrix_labels(names, names, cell)
    width = left + side + 1.1  # + colorbar and its tick labels
    title = _wrap(title, width - 0.2, _points(_rc("axes.titlesize")))
    height = below + side + _text_size(title, _points(_rc("axes.titlesize")))[1] + 0.25
    fig, ax = _subplots(figsize=(width, height))
    im = ax.imshow(confusion, cmap="Blues")
    # A bar about a quarter inch thick, a fifth of an inch from the matrix (pad is a fraction of its width).
    fig.colorbar(im, ax=ax, aspect=max(20.0, side / 0.25), pad=min(0.05, 0.2 / side))
    _label_matrix(ax, names, names, size, rotated)
    ax.set_title(title)
    _fit(fig)
    threshold = confusion.max() / 2 if confusion.size else 0
    _write_counts(ax, confusion, confusion > threshold)
    return fig


def confusion_grid_figure(matrices: dict[str, pd.DataFrame], title: str) -> Figure:
    """Confusion matrices side by side, each row normalised to the fraction of its true class
    (so variants tested on the same data share one colour scale); counts in the cells when legible.

    Panels are sized from the class count and the longest class name, rows hold fewer panels for
    larger matrices, and counts get the largest font their cell allows."""
    k = max((len(frame) for frame in matrices.values()), default=1)
    columns = 4 if k <= 12 else 3 if k <= 30 else 2  # bigger matrices, fewer per row: cells stay readable
    side = min(max(2.6, GRID_CELL * k), 12.0)
    cell = side / max(k, 1)
    xnames = [str(c) for frame in matrices.values() for c in frame.columns]
    ynames = [str(c) for frame in matrices.values() for c in frame.index]
    size, rotated, left, below = _matrix_labels(xnames, ynames, cell)
    panel_pt = 10.0
    fig, axes = _grid(len(matrices), width=left + side + 0.15, height=below + side + 0.4, columns=columns)
    image, written = None, []
    for ax, (label, frame) in zip(axes, matrices.items()):
        counts = frame.to_numpy(dtype=np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        _label_matrix(ax, [str(c) for c in frame.columns], [str(c) for c in frame.index], size, rotated)
        ax.set_title(_wrap(label, side + left - 0.2, panel_pt), fontsize=panel_pt)
        written.append((ax, counts, rates))
    width, height = fig.get_size_inches()
    if image is not None:  # one bar for all panels, about a quarter inch thick
        fig.colorbar(image, ax=axes, label="fraction of true class", aspect=max(20.0, height / 0.25),
                     pad=min(0.05, 0.2 / width))
    width += 1.2 if image is not None else 0  # the colorbar with its label
    suptitle = _wrap(title, width - 0.2, _title_points())
    fig.suptitle(suptitle)
    fig.set_size_inches(width, height + _text_size(suptitle, _title_points())[1] + 0.2)
    _fit(fig)
    for ax, counts, rates in written:
        _write_counts(ax, counts, rates > 0.5)
    return fig


def class_error_figure(errors: dict[str, tuple[np.ndarray, Sequence[str]]], title: str) -> Figure:
    """Per variant, each class's validation error rate (1 - recall) against epoch.

    `errors[label]` is (rates of shape (epochs, classes), class names); one panel per label,
    one line per class; one shared legend when every panel has the same (at most 20) classes,
    else a legend beside each panel. Panels are sized so the legends fit."""
    class_lists = [[str(c) for c in classes] for _, classes in errors.values()]
    n_classes = max((len(c) for c in class_lists), default=0)
    legend = 0 < n_classes <= MAX_LEGEND_CLASSES
    shared = legend and all(c == class_lists[0] for c in class_lists)
    legend_pt = 9.0 if shared else 8.0
    ncol = 1 if n_classes <= 12 else 2
    rows = -(-n_classes // ncol)
    names = [n for c in class_lists for n in c]
    legend_w = ncol * (_longest(names, legend_pt) + 0.55)  # + line sample and padding
    legend_h = rows * legend_pt * 1.5 / 72 + 0.45  # entries + title and border
    plot_w, plot_h, deco_w, deco_h = 3.6, 2.5, 0.8, 0.9
    panel_w = plot_w + deco_w + (legend_w if legend and not shared else 0)
    panel_h = max(plot_h + deco_h, legend_h + 0.3 if legend and not shared else 0)
    columns = 4 if shared or not legend else 3  # a legend beside every panel makes panels wider
    fig, axes = _grid(len(errors), width=panel_w, height=panel_h, columns=columns)
    for ax, (label, (rates, classes)) in zip(axes, errors.items()):
        colours = _colours(len(classes))
        epochs = np.arange(1, len(rates) + 1)
        for c, name in enumerate(classes):
            ax.plot(epochs, rates[:, c], marker="o", markersize=2, color=colours(c % colours.N), label=str(name))
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation error rate")
        ax.set_title(_wrap(label, plot_w, 10.0), fontsize=10)
        ax.grid(alpha=0.3)
        if legend and not shared and len(classes):
            # Beside the panel, not over the lines; constrained layout makes room for it.
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=legend_pt, ncol=ncol,
                      frameon=False, title="true class", title_fontsize=legend_pt)
    width, height = fig.get_size_inches()
    if shared and axes:
        # Beside the top-right panel (not a figure legend, which would sit level with the suptitle).
        handles, labels = axes[0].get_legend_handles_labels()
        axes[min(columns, len(axes)) - 1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                                 borderaxespad=0, frameon=False, title="true class",
                                                 fontsize=legend_pt, title_fontsize=legend_pt, ncol=ncol)
        width, height = width + legend_w + 0.2, max(height, legend_h + 0.3)
    suptitle = _wrap(title, width - 0.2, _title_points())
    fig.suptitle(suptitle)
    fig.set_size_inches(width, height + _text_size(suptitle, _title_points())[1] + 0.2)
    return _fit(fig)


# ----------------------------------------------------------------- learning curves


def learning_curve_figure(history: Sequence[dict[str, float]], title: str, best_epoch: int | None = None) -> Figure:
    """Loss and accuracy against epoch, train and validation.

    `best_epoch` (1-based, as `FitState.best_epoch`; None or 0: not known) is marked on both
    panels by a dashed vertical line with the legend entry "best epoch N"."""
    epochs = np.arange(1, len(history) + 1)
    fig, (ax_loss, ax_acc) = _subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [h[key] for h in history], marker="o", label=split)
        if best_epoch:
            ax.axvline(best_epoch, color="0.35", linestyle="--", linewidth=1, label=f"best epoch {best_epoch:g}")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(_wrap(title, 9.8, _title_points()))
    return _fit(fig)


def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float | None,
                   title: str) -> Figure:
    """The learning-rate range test: training loss (raw and smoothed) against lr on a log axis,
    the suggested lr marked."""
    fig, ax = _subplots(figsize=(7, 4.2))
    ax.plot(lrs, losses, color="0.75", linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, linewidth=2, label="smoothed loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1, label=f"suggested lr {suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:  # the diverging tail would flatten the useful part of the curve
        ax.set_ylim(min(finite) * 0.95 if min(finite) > 0 else None, min(max(finite), 4 * min(finite)) * 1.05 or None)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.suptitle(_wrap(title, 6.8, _title_points()))
    return _fit(fig)


def overlay_curves_figure(curves: pd.DataFrame, title: str, best_epochs: Mapping[str, float] | None = None) -> Figure:
    """Every variant's train/validation loss and accuracy against epoch, 2x2, one colour each.

    `curves` is long-form: columns `label` (variant), `run_id`, `metric` (train_loss,
    val_loss, train_acc, val_acc), `epoch`, `value`. A label with several runs (seeds) is drawn
    as the mean over its runs with a ±1 std band; each epoch averages the runs that reached it.
    Bands are clipped to the metric's range (accuracy in [0, 1], loss >= 0).

    `best_epochs[label]` (e.g. the mean best epoch over the label's seeds; labels left out, NaN or
    below 1 are not marked) is marked by a star in the label's colour on the mean validation curves
    (on the training curves for a label without validation), with one legend entry "best epoch".
    The shared legend below the panels wraps into as many rows as the labels need."""
    from matplotlib.lines import Line2D

    best = {k: float(v) for k, v in (best_epochs or {}).items() if v is not None and np.isfinite(v) and v >= 1}
    labels = list(dict.fromkeys(curves["label"])) if len(curves) else []
    with_val = set(curves.loc[curves["metric"].str.startswith("val_"), "label"]) if len(curves) else set()
    colours = _colours(len(labels))
    width = 11.0
    fig, axes = _subplots(2, 2, figsize=(width, 6.6), sharex=True)
    marked = False
    for ax, metric in zip(axes.flat, LEARNING_METRICS):
        low, high = (0.0, 1.0) if metric.endswith("acc") else (0.0, None)  # a std band must not leave the range
        rows = curves[curves["metric"] == metric] if len(curves) else curves
        for i, label in enumerate(labels):
            points = rows[rows["label"] == label]
            if points.empty:
                continue
            by_epoch = points.groupby("epoch")["value"]
            mean, std, runs = by_epoch.mean(), by_epoch.std(ddof=1), points["run_id"].nunique()
            colour = colours(i % colours.N)
            x, y = mean.index.to_numpy(dtype=np.float64), mean.to_numpy()
            ax.plot(x, y, marker="o", markersize=3, color=colour, label=f"{label} (n={runs})" if runs > 1 else label)
            if runs > 1:
                spread = std.fillna(0).to_numpy()
                ax.fill_between(x, np.clip(y - spread, low, high), np.clip(y + spread, low, high), color=colour,
                                alpha=0.2)
            on_this_panel = metric.startswith("val_") or label not in with_val
            if label in best and on_this_panel and x[0] <= best[label] <= x[-1]:
                ax.plot([best[label]], [np.interp(best[label], x, y)], linestyle="none", marker="*", markersize=13,
                        color=colour, markeredgecolor="black", markeredgewidth=0.6, zorder=4)
                marked = True
        ax.set_title(metric.replace("_", " "))
        ax.xaxis.set_major_locator(_integer_ticks())
        if metric.endswith("acc"):  # the bottom row; the top row shares its epoch axis
            ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if metric.endswith("loss") else "accuracy")
        ax.grid(alpha=0.3)
    # One legend for all panels: every label that was drawn anywhere, in label order.
    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    if marked:
        entries["best epoch"] = Line2D([], [], linestyle="none", marker="*", markersize=11, color="0.6",
                                       markeredgecolor="black", markeredgewidth=0.6)
    height = 6.6
    if entries:
        legend_pt = _points(_rc("legend.fontsize"))
        entry_w = _longest(list(entries), legend_pt) + 0.75  # + line sample and column spacing
        ncol = max(1, min(len(entries), int((width - 0.4) // entry_w)))
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=ncol, frameon=False)
        height += -(-len(entries) // ncol) * legend_pt * 1.6 / 72 + 0.2
    suptitle = _wrap(title, width - 0.2, _title_points())
    fig.suptitle(suptitle)
    fig.set_size_inches(width, height + _text_size(suptitle, _title_points())[1])
    return _fit(fig)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style markdown table (no extra dependency)."""

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


# ----------------------------------------------------------------- Optuna's plots


def _extent_inches(artists: Sequence[Any], renderer: Any, dpi: float) -> tuple[float, float]:
    """Largest width and height (inches) among the drawn `artists` with text."""
    boxes = [a.get_window_extent(renderer) for a in artists if a.get_visible() and a.get_text().strip()]
    return (max((b.width for b in boxes), default=0.0) / dpi, max((b.height for b in boxes), default=0.0) / dpi)


def _texts_inside_xlim(ax: Axes, renderer: Any) -> None:
    """Widen the x range so texts placed in data coordinates (Optuna's importance values at the bar
    ends) stay inside the axes at the figure's new size, as Optuna does for its own size."""
    right = ax.get_xlim()[1]
    for text in ax.texts:
        if text.get_transform() == ax.transData and text.get_visible() and text.get_text():
            right = max(right, text.get_window_extent(renderer).transformed(ax.transData.inverted()).x1 * 1.05)
    if right > ax.get_xlim()[1]:
        ax.set_xlim(right=right)


def _no_empty_ratios(fig: Figure) -> None:
    """Give zero-height/width gridspec rows and columns a sliver of size: a colorbar that was made
    before constrained layout (Optuna's parallel-coordinate plot) sits in a nested gridspec with
    zero ratios around it, which constrained layout divides by."""
    for ax in fig.axes:
        spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
        if spec is None:
            continue
        grid = spec.get_gridspec()
        heights, widths = grid.get_height_ratios(), grid.get_width_ratios()
        if heights is not None and min(heights) <= 0:
            grid.set_height_ratios([max(r, 1e-3) for r in heights])
        if widths is not None and min(widths) <= 0:
            grid.set_width_ratios([max(r, 1e-3) for r in widths])


def optuna_figure(ax_or_axes: Any) -> Figure:
    """The figure of an `optuna.visualization.matplotlib.plot_*` result (an Axes or an array of
    Axes), resized from its content and laid out so titles, labels, ticks, legends and colorbar
    all lie on the canvas; returns that Figure (the same object, changed in place).

    Size: per panel from its tick count and widest tick label (e.g. one row per hyperparameter in
    the importance plot, one column per dimension in the parallel-coordinate plot), plus the widest
    y tick labels and any colorbar; then constrained layout places the decorations, and the figure
    grows by whatever still overflows."""
    if isinstance(ax_or_axes, np.ndarray):
        panels = list(ax_or_axes.flat)
    elif isinstance(ax_or_axes, (list, tuple)):
        panels = list(np.asarray(ax_or_axes, dtype=object).flat)
    else:
        panels = [ax_or_axes]
    fig = panels[0].get_figure()
    fig.draw_without_rendering()  # tick labels exist only once drawn
    renderer, dpi = fig.canvas.get_renderer(), fig.dpi
    shown = [ax for ax in panels if ax.get_visible()]
    others = [ax for ax in fig.axes if ax not in shown and ax.get_visible()]  # colorbars, twin axes
    n = max(1, len(shown))
    x_w, x_h = _extent_inches([t for ax in shown for t in ax.get_xticklabels()], renderer, dpi)
    y_w, y_h = _extent_inches([t for ax in shown for t in ax.get_yticklabels()], renderer, dpi)
    n_x = max((len([t for t in ax.get_xticklabels() if t.get_text()]) for ax in shown), default=0)
    n_y = max((len([t for t in ax.get_yticklabels() if t.get_text()]) for ax in shown), default=0)
    panel_w = max(4.0 if n > 1 else 6.0, n_x * (x_w + 0.25))
    panel_h = max(3.6, n_y * max(y_h, 0.1) * 2.2)
    extra_w, _ = _extent_inches([t for ax in others for t in ax.get_yticklabels()], renderer, dpi)
    right = (0.8 + extra_w) if others else 0.2  # colorbar (and its label) or the outer twin axis' labels
    width = y_w + 0.7 + n * panel_w + right
    height = x_h + 0.7 + panel_h + 0.6  # + axis label, + title
    _no_empty_ratios(fig)
    try:
        fig.set_layout_engine("constrained")
    except RuntimeError:  # a colorbar made under an incompatible engine: tight layout still fits it
        fig.set_layout_engine("tight")
    fig.set_size_inches(width, height)
    _fit(fig)
    for ax in shown:
        _texts_inside_xlim(ax, fig.canvas.get_renderer())
    return _fit(fig)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG to `path` (folders created) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    release(figure)
    return path


def release(figure: Figure) -> None:
    """Free a figure: one pyplot made (optuna's plots) is closed there; ours are only dropped."""
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(figure)


def rich_table(frame: pd.DataFrame, title: str | None = None, caption: str | None = None) -> Table:
    """A rich Table of a frame whose cells are already formatted (None/NaN shown empty)."""
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for col in frame.columns:
        table.add_column(str(col))
    for row in frame.itertuples(index=False):
        table.add_row(*("" if v is None or pd.isna(v) else str(v) for v in row))
    return table
