"""The system-metrics cost benchmark runs end to end on generated data (tiny: a point check, not a measurement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench import system_metrics


def test_monitor_cost_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # A point check: 1,000 of the generated training images are enough (not 9,000 per epoch).
    load = system_metrics.load_data
    monkeypatch.setattr(system_metrics, "load_data", lambda config, data_dir: load(config.override(train_limit=1000),
                                                                                   data_dir))
    rows = system_metrics.run_system_metrics(None, "cpu", epochs=2, log=lambda m: None, passes=1)
    assert [r["monitor"] for r in rows] == ["off", "every_10s", "every_1s"]
    off = rows[0]
    assert off["ratio_vs_off"] == 1.0 and off["paired_ratio_vs_off"] == 1.0
    assert all(r["images_per_second"] > 0 and r["paired_ratio_vs_off"] > 0 for r in rows)
    assert not list(tmp_path.iterdir())  # the temporary store is gone
