"""The benchmark machinery runs and reports consistent ratios (no timing assertions)."""

from __future__ import annotations

import pytest

from harness.bench import Case, run_case
from harness.config import TrainConfig
from harness.data import load_data


def test_run_case_measures_every_contender() -> None:
    config = TrainConfig(model="lenet_relu", dataset="synthetic", batch_size=64, train_limit=512, seed=0)
    result = run_case(Case("tiny", config), load_data(config), epochs=2, log=lambda _: None)
    for key in ("tutorial", "floor", "harness", "harness_eval", "harness_untracked"):
        assert result[key] > 0, key
    assert result["harness/floor"] == pytest.approx(result["harness"] / result["floor"])
    assert result["harness/tutorial"] == pytest.approx(result["harness"] / result["tutorial"])
    assert result["images"] == 512
