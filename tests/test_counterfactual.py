"""Counterfactual instructions for reach_ball (`data.sample.counterfactual_twins`): a scene recorded again
naming another ball the same hand can reach, with the expert going there."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import vla.sim.episodes as episodes
from tests.conftest import compose_config
from vla.config import ConfigError, SampleDataSettings, SimSettings, TrainConfig
from vla.sim.athena import AthenaRobot
from vla.sim.tasks import _TARGET_Y, counterfactual_episode, sample_episode

SIM = SimSettings(image_size=48, control_hz=5, camera="upper_body")


@pytest.fixture(scope="module")
def robot():
    with AthenaRobot(SIM) as robot:
        yield robot


def test_a_twin_is_the_same_scene_with_another_reachable_ball_named(robot):
    seen = {1: 0, 2: 0}
    for seed in range(12):
        spec = sample_episode(robot, "reach_ball", seed)
        others = [c for c in ("red", "green", "blue") if c != spec.color]
        for twin in (1, 2):
            cf = counterfactual_episode(robot, spec, twin)
            ball = spec.balls[others[twin - 1]]
            inside = _TARGET_Y[spec.side][0] <= ball[1] <= _TARGET_Y[spec.side][1]
            if cf is None:
                continue  # out of the hand's region (`inside` False) or out of its reach (IK)
            seen[twin] += 1
            assert inside and cf.color == others[twin - 1] and cf.side == spec.side and cf.seed == seed
            assert all(np.array_equal(cf.balls[c], spec.balls[c]) for c in spec.balls)  # same scene
            # Same phrasings but for the colour word.
            assert [p.replace(cf.color, spec.color) for p in cf.phrasings] == spec.phrasings
            assert cf.color in cf.instruction and spec.color not in cf.instruction
            # The expert's goal puts the named hand on the newly named ball.
            assert np.linalg.norm(robot.hand_positions_at(cf.goal)[cf.side] - ball) < 0.01
            assert not np.allclose(cf.goal, spec.goal)
    assert seen[1] and seen[2], seen  # both twins occur in a dozen scenes
    with pytest.raises(ValueError, match="reach_ball"):
        counterfactual_episode(robot, sample_episode(robot, "raise_arm", 0), 1)
    with pytest.raises(ValueError, match="twin 3"):
        counterfactual_episode(robot, sample_episode(robot, "reach_ball", 0), 3)


def test_generation_writes_twins_the_expert_solves_and_keys_the_cache(tmp_path):
    settings = SampleDataSettings(tasks=["reach_ball", "raise_arm"], episodes_per_task=4, sim=SIM,
                                  counterfactual_twins=2)  # fmt: skip
    summary = episodes.generate_dataset(settings, tmp_path, progress=False)
    twins = sorted(p for p in tmp_path.iterdir() if "_cf" in p.name)
    assert summary["counterfactual_twins"] == len(twins) > 0
    assert summary["episodes"] == 8 + len(twins) and summary["success_rate"]["reach_ball"] == 1.0
    assert not any(p.name.startswith("raise_arm") for p in twins)  # reach_ball's only
    for twin in twins:
        base = tmp_path / twin.name.split("_cf")[0]
        meta, base_meta = (json.loads((p / "metadata.json").read_text()) for p in (twin, base))
        assert meta["success"] and meta["counterfactual"]["of_color"] == base_meta["color"] != meta["color"]
        assert meta["balls"] == base_meta["balls"] and meta["seed"] == base_meta["seed"]
        assert meta["split_group"] == base.name and "split_group" not in base_meta  # one side of the split
        first = [np.asarray(Image.open(p / "images" / "frame_000000.png")) for p in (twin, base)]
        assert np.array_equal(*first)  # the same first image, another instruction and motion
        with np.load(twin / "episode_data.npz") as a, np.load(base / "episode_data.npz") as b:
            assert np.abs(a["actions"][-1] - b["actions"][-1]).max() > 0.05
    plain = SampleDataSettings(tasks=["reach_ball", "raise_arm"], episodes_per_task=4, sim=SIM)
    assert episodes.sample_dataset_key(plain) != episodes.sample_dataset_key(settings)


def test_bad_twin_counts_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.sample\.counterfactual_twins=3"):
        compose_config("train", ["run_dir=x", "data.sample.counterfactual_twins=3"], TrainConfig)
    with pytest.raises(ConfigError, match=r"counterfactual_twins=-1"):
        SampleDataSettings(counterfactual_twins=-1)
    cfg = compose_config("train", ["run_dir=x", "data.sample.counterfactual_twins=2"], TrainConfig)
    assert cfg.data.sample.generation_settings(cfg.sim).counterfactual_twins == 2
