"""scripts/bench_data.py runs from the shared config tree and reports every rate and ratio."""

from __future__ import annotations

import math

from data_factories import make_isaac_dataset

from tests.conftest import compose_config, load_script
from vla.config import BenchDataConfig


def test_bench_data_reports_rates_and_ratios(tmp_path, capsys):
    make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=5)
    overrides = [
        "data=isaac",
        f"data.root={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=2",
        "model.architecture.image_size=56",
        "augment=openvla",
        "train_steps=1",
        "warmup_steps=1",
    ]
    cfg = compose_config("bench_data", overrides, BenchDataConfig)
    script = load_script("bench_data")
    result = script.run(cfg)
    rates = ("cold_samples_per_s", "cached_samples_per_s", "trainer_samples_per_s")
    assert all(result[k] > 0 and math.isfinite(result[k]) for k in rates)
    assert math.isclose(
        result["cached_over_cold"], result["cached_samples_per_s"] / result["cold_samples_per_s"]
    )
    assert math.isclose(
        result["loader_over_trainer"], result["cached_samples_per_s"] / result["trainer_samples_per_s"]
    )
    out = capsys.readouterr().out
    assert "cached / cold" in out and "loader / trainer" in out
    assert not (tmp_path / "cache" / "bench_data").exists()  # its scratch cache is removed
