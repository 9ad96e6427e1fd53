"""Figures and tables made from training results: confusion matrices, per-class scores,
learning curves, variant comparisons. Pure functions of data; MLflow logging is elsewhere."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


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
