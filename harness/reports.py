"""Figures and tables made from training results: confusion matrices, per-class scores,
learning curves, variant comparisons. Pure functions of data; MLflow logging is elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: matplotlib and rich are imported when a figure or table is made
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from rich.table import Table


def _pyplot():  # noqa: ANN202 - matplotlib is imported lazily and without a display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], title: str):  # noqa: ANN201
    """A labelled heatmap of the confusion matrix, counts written in the cells when legible."""
    plt = _pyplot()
    k = len(classes)
    side = min(max(4.0, 0.55 * k + 2), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        threshold = confusion.max() / 2 if confusion.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if confusion[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def learning_curve_figure(history: Sequence[dict[str, float]], title: str):  # noqa: ANN201
    """Loss and accuracy against epoch, train and validation."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [h[key] for h in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style markdown table (no extra dependency)."""

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _grid(plt: Any, panels: int, width: float = 4.2, height: float = 3.8, columns: int = 4) -> tuple[Figure, list[Any]]:
    """A figure with `panels` axes in rows of at most `columns`; unused axes hidden."""
    ncols = max(1, min(columns, panels))
    nrows = max(1, -(-panels // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:panels])


def _integer_ticks() -> MaxNLocator:
    """Epochs are whole numbers: no 1.5 on the epoch axis."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def overlay_curves_figure(curves: pd.DataFrame, title: str) -> Figure:
    """Every variant's train/validation loss and accuracy against epoch, 2x2, one colour each.

    `curves` is long-form: columns `label` (variant), `run_id`, `metric` (train_loss,
    val_loss, train_acc, val_acc), `epoch`, `value`. A label with several runs (seeds) is drawn
    as the mean over its runs with a ±1 std band; each epoch averages the runs that reached it.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    labels = list(dict.fromkeys(curves["label"])) if len(curves) else []
    colours = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for ax, metric in zip(axes.flat, ("train_loss", "val_loss", "train_acc", "val_acc")):
        rows = curves[curves["metric"] == metric] if len(curves) else curves
        for i, label in enumerate(labels):
            points = rows[rows["label"] == label]
            if points.empty:
                continue
            by_epoch = points.groupby("epoch")["value"]
            mean, std, runs = by_epoch.mean(), by_epoch.std(ddof=1), points["run_id"].nunique()
            colour = colours(i % colours.N)
            ax.plot(mean.index, mean.to_numpy(), marker="o", markersize=3, color=colour,
                    label=f"{label} (n={runs})" if runs > 1 else label)
            if runs > 1:
                spread = std.fillna(0).to_numpy()
                ax.fill_between(mean.index, mean.to_numpy() - spread, mean.to_numpy() + spread, color=colour, alpha=0.2)
        ax.set_title(metric.replace("_", " "))
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if metric.endswith("loss") else "accuracy")
        ax.grid(alpha=0.3)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return fig


def confusion_grid_figure(matrices: dict[str, pd.DataFrame], title: str) -> Figure:
    """Confusion matrices side by side, each row normalised to the fraction of its true class
    (so variants tested on the same data share one colour scale); counts in the cells when legible."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(matrices), width=4.6, height=4.4)
    image = None
    for ax, (label, frame) in zip(axes, matrices.items()):
        counts = frame.to_numpy(dtype=np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        k = len(frame)
        names = [str(c) for c in frame.columns]
        if k <= 20:
            ax.set_xticks(range(k), labels=names, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(k), labels=[str(c) for c in frame.index], fontsize=7)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="fraction of true class")
    fig.suptitle(title)
    return fig


def class_error_figure(errors: dict[str, tuple[np.ndarray, Sequence[str]]], title: str) -> Figure:
    """Per variant, each class's validation error rate (1 - recall) against epoch.

    `errors[label]` is (rates of shape (epochs, classes), class names); one panel per label,
    one line per class; one shared legend when every panel has the same (at most 20) classes.
    """
    plt = _pyplot()
    fig, axes = _grid(plt, len(errors))
    class_lists = [list(classes) for _, classes in errors.values()]
    shared = all(c == class_lists[0] for c in class_lists) and len(class_lists[0]) <= 20 if class_lists else False
    for ax, (label, (rates, classes)) in zip(axes, errors.items()):
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        epochs = np.arange(1, len(rates) + 1)
        for c, name in enumerate(classes):
            ax.plot(epochs, rates[:, c], marker="o", markersize=2, color=colours(c % colours.N), label=str(name))
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation error rate")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if not shared and len(classes) <= 20:
            ax.legend(fontsize=6)
    if shared:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="center right", frameon=False, title="true class")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.88 if shared else 1, 0.95))
    return fig


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG to `path` (folders created) and free it."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def rich_table(frame: pd.DataFrame, title: str | None = None, caption: str | None = None) -> Table:
    """A rich Table of a frame whose cells are already formatted (None/NaN shown empty)."""
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for col in frame.columns:
        table.add_column(str(col))
    for row in frame.itertuples(index=False):
        table.add_row(*("" if v is None or pd.isna(v) else str(v) for v in row))
    return table
