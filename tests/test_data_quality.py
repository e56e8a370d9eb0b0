"""The episode quality filter (vla.data.quality): each rule, the report, and its place in the DataModule."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
from data_factories import make_isaac_dataset, make_pickle_demos, write_isaac_episode

from vla.config import ConfigError, DataConfig, FilterConfig
from vla.data.datamodule import VLADataModule
from vla.data.episodes import DataError, Episode
from vla.data.quality import RULES, filter_episodes


def episode(
    name: str,
    steps: int = 20,
    *,
    state_scale: float = 1.0,
    state_dim: int = 4,
    success: bool | None = True,
) -> Episode:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return Episode(
        episode_id=name,
        source="pickle",
        path=Path(f"/data/{name}"),
        instruction="wave",
        instructions=["wave"],
        actions=rng.normal(size=(steps, 3)).astype(np.float32),
        states=(state_scale * rng.normal(size=(steps, state_dim))).astype(np.float32),
        success=success,
        frames=np.zeros((steps, 4, 4, 3), dtype=np.uint8),
    )


def test_each_rule_drops_its_episode_with_the_reason_and_keeps_the_rest_untouched(caplog):
    good = [episode("good_a"), episode("good_b", steps=30)]
    nan_actions = episode("nan_actions")
    nan_actions.actions[3, 1] = np.nan
    inf_states = episode("inf_states")
    inf_states.states[0, 2] = -np.inf
    # Variance of 0.001-scaled unit normals is ~1e-6, far below the 1e-4 threshold.
    static = episode("static", state_scale=1e-3)
    batch = [
        good[0],
        nan_actions,
        episode("short", steps=4),
        episode("long", steps=51),
        static,
        inf_states,
        episode("failed", success=False),
        good[1],
    ]
    cfg = FilterConfig(min_length=5, max_length=50, min_state_variance=1e-4)

    with caplog.at_level(logging.WARNING, logger="vla.data.quality"):
        kept, dropped = filter_episodes(batch, cfg, success_only=True)[:2]

    assert [e.episode_id for e in kept] == ["good_a", "good_b"]
    assert all(k is g for k, g in zip(kept, good))  # the same objects, not copies
    assert {d.episode_id: d.rule for d in dropped} == {
        "nan_actions": "non_finite",
        "inf_states": "non_finite",
        "short": "too_short",
        "long": "too_long",
        "static": "static",
        "failed": "unsuccessful",
    }
    reasons = {d.episode_id: d.reason for d in dropped}
    assert "actions" in reasons["nan_actions"] and "step 3, dim 1" in reasons["nan_actions"]
    assert "states" in reasons["inf_states"] and "step 0, dim 2" in reasons["inf_states"]
    assert "4 steps" in reasons["short"] and "51 steps" in reasons["long"]
    for d in dropped:  # every drop is in the log with the id and the rule
        assert any(d.episode_id in r.message and d.rule in r.message for r in caplog.records)


def test_report_counts_every_rule():
    result = filter_episodes(
        [episode("a"), episode("b", steps=2), episode("c", steps=3), episode("d", state_scale=0)],
        FilterConfig(),
    )
    report = result.report()
    assert report == {
        "episodes": 4,
        "kept": 1,
        "dropped": 3,
        "dropped/non_finite": 0,
        "dropped/unsuccessful": 0,
        "dropped/too_short": 2,
        "dropped/too_long": 0,
        "dropped/static": 1,
        "static_unjudged": 0,
    }
    assert set(RULES) == {key.removeprefix("dropped/") for key in report if key.startswith("dropped/")}


def test_static_threshold_is_a_mean_over_dimensions():
    # Dims with variance 0, 0, 0, 4e-4: mean 1e-4. Constructed so the mean, not the max, is compared.
    states = np.zeros((20, 4), dtype=np.float32)
    states[:, 3] = np.where(np.arange(20) % 2, 0.02, -0.02)  # variance exactly 4e-4
    ep = episode("one_joint_moves")
    ep.states[:] = states
    assert filter_episodes([ep], FilterConfig(min_state_variance=0.9e-4)).kept == [ep]
    with pytest.raises(DataError, match="1 static"):
        filter_episodes([ep], FilterConfig(min_state_variance=1.1e-4))


def test_episode_without_state_dims_is_kept_and_counted_as_unjudged():
    stateless = episode("stateless", state_dim=0)
    result = filter_episodes([stateless, episode("a")], FilterConfig(min_state_variance=1.0e9))
    assert result.kept == [stateless]
    assert result.report()["static_unjudged"] == 1 and result.report()["dropped/static"] == 1


def test_success_unknown_is_an_error_only_with_success_only():
    unknown = episode("unknown", success=None)
    assert filter_episodes([unknown], FilterConfig()).kept == [unknown]
    with pytest.raises(DataError, match="'unknown'.*does not record whether it succeeded"):
        filter_episodes([unknown], FilterConfig(), success_only=True)


def test_everything_dropped_names_the_rules():
    with pytest.raises(DataError, match=r"dropped all 3 episodes: 1 unsuccessful, 2 too_short"):
        filter_episodes(
            [episode("a", steps=2), episode("b", steps=3), episode("c", success=False)],
            FilterConfig(),
            success_only=True,
        )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"min_length": 0}, "min_length"),
        ({"max_length": 3}, "max_length"),
        ({"min_state_variance": -1}, "variance"),
    ],
)
def test_bad_filter_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"data.filter.*{key}"):
        FilterConfig(**kwargs)


def test_datamodule_filters_before_the_split(tmp_path):
    make_isaac_dataset(tmp_path, n_episodes=5, steps=8, successes=[True, False, True, True, True])
    write_isaac_episode(tmp_path / "episode_005", steps=3, seed=5)  # too short
    cfg = DataConfig(format="isaac", root=str(tmp_path), success_only=True, val_fraction=0.25)
    module = VLADataModule(cfg)
    module.prepare()
    ids = sorted(e.episode_id for e in module.train_episodes + module.val_episodes)
    assert ids == ["episode_000", "episode_002", "episode_003", "episode_004"]
    assert (
        module.filter_report["dropped/unsuccessful"] == 1 and module.filter_report["dropped/too_short"] == 1
    )
    assert module.filter_report["kept"] == 4


def test_datamodule_success_only_with_pickle_demos_without_success_is_an_error(tmp_path):
    # Before the filter, data.success_only was silently ignored for pickle demos.
    make_pickle_demos(tmp_path / "demos.pkl", n_demos=3, n_frames=8)
    cfg = DataConfig(format="pickle", root=str(tmp_path / "demos.pkl"), success_only=True)
    with pytest.raises(DataError, match="demos.pkl#0.*data.success_only"):
        VLADataModule(cfg).prepare()


def test_default_filter_keeps_the_simulated_sample_episodes(tmp_path):
    """The defaults must not drop any expert episode the simulator generates (one of each task)."""
    from vla.config.sim import SampleDataSettings, SimSettings
    from vla.data.isaac import load_isaac_episodes
    from vla.sim.episodes import generate_dataset

    settings = SampleDataSettings(episodes_per_task=1, sim=SimSettings(image_size=32))
    generate_dataset(settings, tmp_path, progress=False)
    episodes = load_isaac_episodes(tmp_path).episodes
    assert len(episodes) == len(settings.tasks) == 4
    result = filter_episodes(episodes, FilterConfig(), success_only=True)
    assert result.dropped == [] and len(result.kept) == 4
