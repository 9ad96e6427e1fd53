"""Every figure in `harness.reports` fits its content: drawn with Agg, each visible piece of text
(titles, axis and tick labels, legends, colorbar labels, cell counts) lies on the canvas, for 2 and
10 classes and for one and several variants; spread bands stay inside the metric's range; learning
curves mark the best epoch; Optuna's four plots (as `harness tune` draws them) fit once passed
through `optuna_figure`. Offline, no MLflow, no training: a few seconds."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.text import Text

from harness import reports

TOLERANCE_PX = 1.0
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CLASSES = {2: ["negative", "positive"], 10: FASHION}
VARIANTS = ["lenet_relu-augmented (n=3)", "alexnet", "googlenet-wd1e-4", "resnet18 (n=2)", "mobilenet"]
# Titles as long as `harness compare` makes them.
GRID_TITLE = "exp_lenet_vs_alexnet: test confusion matrices (best 5 of 12 by val_acc)"
ERRORS_TITLE = "exp_lenet_vs_alexnet: validation error rate per class across epochs (best 5 of 12 by val_acc)"
CURVES_TITLE = "exp_lenet_vs_alexnet: learning curves, mean ± std over seeds"


@contextmanager
def _recording_text_draws() -> Iterator[list[Text]]:
    """Collect the Text artists that actually draw (visible, non-empty, inside their axis' view):
    tick labels matplotlib keeps but does not draw must not count."""
    drawn: list[Text] = []
    original = Text.draw

    def draw(self: Text, renderer: object) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    Text.draw = draw  # type: ignore[method-assign]
    try:
        yield drawn
    finally:
        Text.draw = original  # type: ignore[method-assign]


def assert_fits(fig: Figure) -> list[Text]:
    """Draw `fig` and check that every drawn text lies inside the canvas; return those texts."""
    with _recording_text_draws() as drawn:
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    outside = []
    for text in drawn:
        box = text.get_window_extent(renderer)
        if (box.x0 < canvas.x0 - TOLERANCE_PX or box.y0 < canvas.y0 - TOLERANCE_PX
                or box.x1 > canvas.x1 + TOLERANCE_PX or box.y1 > canvas.y1 + TOLERANCE_PX):
            outside.append(f"{text.get_text()!r} at {box.bounds}")
    size = fig.get_size_inches()
    reports.release(fig)
    assert not outside, f"text off a {canvas.width:.0f}x{canvas.height:.0f} px canvas ({size} in): {outside}"
    assert drawn, "nothing drawn"
    return drawn


def _confusion(k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, size=(k, k))
    counts[np.arange(k), np.arange(k)] = rng.integers(800, 1000, size=k)  # 4-digit-ish counts, like a test set
    return counts


def _frame(k: int, seed: int = 0) -> pd.DataFrame:
    return reports.confusion_frame(_confusion(k, seed), CLASSES[k])


def _count_texts(fig: Figure) -> list[Text]:
    return [t for ax in fig.axes for t in ax.texts if t.get_text().strip().isdigit()]


@pytest.mark.parametrize("k", [2, 10])
def test_confusion_figure_fits_with_legible_counts(k: int) -> None:
    fig = reports.confusion_figure(_confusion(k), CLASSES[k], "lenet_relu-augmented: test confusion matrix")
    counts = _count_texts(fig)
    assert len(counts) == k * k
    assert min(t.get_fontsize() for t in counts) >= 7  # points: readable at the 100 dpi figures are saved with
    assert_fits(fig)


@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("panels", [1, 5])
def test_confusion_grid_figure_fits_with_legible_counts(k: int, panels: int) -> None:
    matrices = {name: _frame(k, i) for i, name in enumerate(VARIANTS[:panels])}
    fig = reports.confusion_grid_figure(matrices, GRID_TITLE)
    counts = _count_texts(fig)
    assert len(counts) == panels * k * k
    assert min(t.get_fontsize() for t in counts) >= 7
    drawn = assert_fits(fig)
    assert "fraction of true class" in {t.get_text() for t in drawn}  # the colorbar label is drawn
    # Each count fits inside its cell (it is readable, not overprinted on its neighbours).
    for ax in (a for a in fig.axes if a.texts):
        cell = ax.get_window_extent().width / k
        assert max(t.get_window_extent().width for t in ax.texts) <= cell


@pytest.mark.parametrize(("k", "panels", "same_classes"), [(2, 1, True), (10, 1, True), (10, 5, True), (10, 5, False)])
def test_class_error_figure_fits(k: int, panels: int, same_classes: bool) -> None:
    rng = np.random.default_rng(k)
    errors = {}
    for i, name in enumerate(VARIANTS[:panels]):
        classes = CLASSES[k] if same_classes or i == 0 else [f"{c} ({i})" for c in CLASSES[k]]
        errors[name] = (rng.uniform(0, 1, size=(6, k)), classes)
    fig = reports.class_error_figure(errors, ERRORS_TITLE)
    texts = {t.get_text() for t in assert_fits(fig)}
    assert set(CLASSES[k]) <= texts  # legend entries drawn


def _history(epochs: int = 6) -> list[dict[str, float]]:
    return [{"train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 1 - 0.5 / e, "val_acc": 1 - 0.6 / e}
            for e in range(1, epochs + 1)]


def test_learning_curve_figure_marks_best_epoch() -> None:
    fig = reports.learning_curve_figure(_history(), "lenet_relu-augmented", best_epoch=3)
    texts = [t.get_text() for t in assert_fits(fig)]
    assert "best epoch 3" in texts
    # Positional use (without the marker) still works.
    texts = [t.get_text() for t in assert_fits(reports.learning_curve_figure(_history(), "plain"))]
    assert not any("best" in t for t in texts)


def _curves(labels: list[str], seeds: int = 2, epochs: int = 5) -> pd.DataFrame:
    """Seeds that straddle the metric's bounds: accuracy right at 1, loss right at 0, so mean ± std
    crosses them."""
    rows = []
    for i, label in enumerate(labels):
        for s in range(seeds):
            for e in range(1, epochs + 1):
                decay = 1 / (e + i)
                values = {"train_loss": 0.0 if s == 0 else 0.1 * decay, "val_loss": 0.02 * (1 + s) + 0.2 * decay,
                          "train_acc": 1.0 if s == 0 else 1 - 0.1 * decay, "val_acc": 0.99 - 0.05 * s - 0.1 * decay}
                rows += [{"label": label, "run_id": f"{label}-{s}", "metric": metric, "epoch": e, "value": value}
                         for metric, value in values.items()]
    return pd.DataFrame(rows)


def _bands(fig: Figure) -> dict[str, np.ndarray]:
    """The y values of each panel's spread bands, by panel title."""
    out = {}
    for ax in fig.axes:
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        if ax.get_title() and polys:
            out[ax.get_title()] = np.concatenate([p.vertices[:, 1] for c in polys for p in c.get_paths()])
    return out


@pytest.mark.parametrize("variants", [1, 5])
def test_overlay_curves_figure_clips_bands_to_the_metric_range(variants: int) -> None:
    labels = VARIANTS[:variants]
    fig = reports.overlay_curves_figure(_curves(labels), CURVES_TITLE)
    bands = _bands(fig)
    assert sorted(bands) == ["train acc", "train loss", "val acc", "val loss"]
    for title, ys in bands.items():
        assert ys.min() >= 0, f"{title}: band below 0"
        if title.endswith("acc"):
            assert ys.max() <= 1, f"{title}: band above 1"
    assert_fits(fig)


def test_overlay_curves_figure_marks_best_epochs() -> None:
    best = {label: 1.5 + i % 4 for i, label in enumerate(VARIANTS)}  # means over seeds need not be whole
    fig = reports.overlay_curves_figure(_curves(VARIANTS), CURVES_TITLE, best_epochs=best)
    for ax in fig.axes:
        if ax.get_title().startswith("val"):  # one marker per label, at its best epoch
            xs = sorted(x for line in ax.get_lines() if line.get_linestyle() == "None" for x in line.get_xdata())
            assert xs == sorted(best.values()), ax.get_title()
    texts = [t.get_text() for t in assert_fits(fig)]
    assert any("best" in t for t in texts), texts


def test_overlay_curves_figure_positional_without_seeds() -> None:
    curves = _curves(["plain"], seeds=1)
    assert_fits(reports.overlay_curves_figure(curves, "one run"))


@pytest.fixture(scope="module")
def study():  # noqa: ANN201 - optuna is imported here so a missing optuna fails only these tests
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        batch_size = trial.suggest_categorical("batch_size", [32, 64, 128])
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        return 1 - (np.log10(lr) + 2) ** 2 / 10 - (momentum - 0.9) ** 2 - batch_size / 1e4 - weight_decay

    s = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    s.optimize(objective, n_trials=8)
    return s


@pytest.mark.parametrize("plot", ["plot_optimization_history", "plot_param_importances", "plot_parallel_coordinate",
                                  "plot_slice"])
def test_optuna_figure_fits(study, plot: str) -> None:  # noqa: ANN001
    from optuna.visualization import matplotlib as ov

    # Optuna switches the global style to ggplot; keep that out of the other tests.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        axes = getattr(ov, plot)(study)
        fig = reports.optuna_figure(axes)
        assert isinstance(fig, Figure)
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        assert first.get_figure() is fig
        texts = [t.get_text() for t in assert_fits(fig)]
    if plot == "plot_param_importances":
        assert "Hyperparameter" in texts  # the y label the review found clipped


def test_figures_leave_the_callers_matplotlib_backend_alone(tmp_path) -> None:  # noqa: ANN001
    """A notebook's inline backend (here: svg, chosen before harness draws) is still the backend
    after harness made and saved its figures, and pyplot never got them (so a cell shows no copy)."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
            "from pathlib import Path; from harness import reports\n"
            "h = [{'train_loss': 1.0, 'val_loss': 1.1, 'train_acc': 0.5, 'val_acc': 0.4}] * 2\n"
            f"reports.save_figure(reports.learning_curve_figure(h, 't'), Path({str(tmp_path / 'c.png')!r}))\n"
            "print(matplotlib.get_backend(), len(plt.get_fignums()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "0"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
