"""Seed statistics: mean ± std per variant over repeated runs, and which differences to the best
variant are larger than the seed-to-seed spread.

Pure functions of pandas frames with one row per child run (columns `variant`, `seed`,
`status`, `run_id` and numeric metrics); `harness run --repeat` and `harness compare` share them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

ALPHA = 0.05  # family-wise error rate for "differs from the best" (after Holm's correction)


def lower_is_better(metric: str) -> bool:
    """Losses and durations are minimised; accuracies, throughput and the rest maximised."""
    return "loss" in metric or metric.endswith("seconds")


def sort_by(frame: pd.DataFrame, column: str, metric: str) -> pd.DataFrame:
    """`frame` sorted best first on `column` (which holds `metric` or its mean); missing values last."""
    return frame.sort_values(column, ascending=lower_is_better(metric), na_position="last",
                             kind="stable").reset_index(drop=True)


def seed_summary(runs: pd.DataFrame, stat_columns: Sequence[str], by: str = "variant") -> pd.DataFrame:
    """One row per `by` group: `n` (finished runs), `seeds`, `<col>_mean` and `<col>_std` for each
    of `stat_columns`, a `status` count and the `run_ids`; other columns are kept when constant
    within the group (model, dataset, hyperparameters), else joined with commas.

    Only FINISHED runs enter the statistics: a failed or killed run has no final metrics, and
    its partial ones would bias the mean. The spread is the sample standard deviation
    (ddof=1); it is NaN for n < 2, where no spread was measured.
    """
    rows = []
    for name, group in runs.groupby(by, sort=False):
        done = group[group["status"] == "FINISHED"]
        row: dict[str, object] = {by: name, "n": len(done),
                                  "seeds": ",".join(str(int(s)) for s in group["seed"] if not pd.isna(s))}
        for col in group.columns:
            if col in (by, "seed", "run_id", "status") or col in stat_columns:
                continue
            values = list(dict.fromkeys(v for v in group[col].tolist() if not _missing(v)))
            row[col] = None if not values else values[0] if len(values) == 1 else ",".join(map(str, values))
        for col in stat_columns:
            values = pd.to_numeric(done[col], errors="coerce").dropna() if col in done else pd.Series(dtype=float)
            row[f"{col}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        counts = group["status"].value_counts()
        row["status"] = ("FINISHED" if list(counts.index) == ["FINISHED"]
                         else ", ".join(f"{count} {status}" for status, count in counts.items()))
        row["run_ids"] = ",".join(group["run_id"])
        rows.append(row)
    return pd.DataFrame(rows)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted as a test)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # adjusted p-values never decrease
        adjusted[i] = running
    return adjusted


def compare_to_best(runs: pd.DataFrame, summary: pd.DataFrame, metric: str, by: str = "variant") -> pd.DataFrame:
    """Add `p_vs_best`, `p_vs_best_holm` and `differs_from_best` to `summary` (sorted best first).

    Each variant's finished-run values of `metric` are compared with the best variant's by
    Welch's two-sided t-test (unequal variances: the seed spread differs between variants).
    The p-values of the k-1 comparisons are Holm-corrected, and `differs_from_best` is True
    when the corrected p-value is below ALPHA (0.05), i.e. the gap is larger than what the
    seed-to-seed spread explains. No claim is made (NaN p, `differs_from_best` None) when a
    side has fewer than 2 finished runs or neither side varies across seeds.

    Caveats, stated so the numbers are read honestly: the best variant is chosen on the same
    runs it is tested with, which makes the gaps to it look somewhat larger than they are;
    with 2-3 seeds the test has little power, so "not shown to differ" is not "equal"; and the
    spread is the seed's effect on initialisation, data order and validation split only.
    """
    from scipy import stats

    finished = runs[runs["status"] == "FINISHED"]
    values = {name: pd.to_numeric(group[metric], errors="coerce").dropna().to_numpy(dtype=float)
              for name, group in finished.groupby(by, sort=False)} if metric in finished else {}
    best = summary[by].iloc[0] if len(summary) else None
    reference = values.get(best, np.array([]))
    raw = []
    for name in summary[by]:
        mine = values.get(name, np.array([]))
        spread = len(mine) > 1 and len(reference) > 1 and (mine.std() > 0 or reference.std() > 0)
        raw.append(math.nan if name == best or not spread
                   else float(stats.ttest_ind(mine, reference, equal_var=False).pvalue))
    adjusted = holm(raw)
    out = summary.copy()
    out["p_vs_best"] = raw
    out["p_vs_best_holm"] = adjusted
    out["differs_from_best"] = [None if math.isnan(p) else bool(p < ALPHA) for p in adjusted]
    return out


def format_mean_std(mean: float, std: float, places: int) -> str:
    """'mean ± std' with `places` decimals; just the mean when no spread was measured (n < 2)."""
    if math.isnan(mean):
        return ""
    text = f"{mean:,.{places}f}"
    return text if math.isnan(std) else f"{text} ± {std:,.{places}f}"


def verdict(row: pd.Series, best: str, by: str = "variant") -> str:
    """How a variant stands against the best one, in words, for tables meant to be read."""
    if row[by] == best:
        return "best"
    if pd.isna(row["differs_from_best"]):
        return "n/a (no seed spread measured)"
    word = "differs" if row["differs_from_best"] else "within seed noise"
    return f"{word} (p={row['p_vs_best_holm']:.2g})"
