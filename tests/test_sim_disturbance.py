"""Deployment disturbances (`sim.disturbance`): off by default, drawn from the episode's seed (so every
policy meets the same ones on a scene), only on the chosen joints, and fair: the expert still succeeds."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FAST_TRAIN, SMALL_SAMPLE, compose_config, load_script
from vla.config import ConfigError, EvalSettings, EvaluateConfig, SimSettings
from vla.config.sim import DisturbanceSettings
from vla.sim.athena import HOME_POSE, AthenaRobot
from vla.sim.env import AthenaEnv
from vla.sim.evaluate import evaluate_policy
from vla.sim.tasks import task_dims

SIM = SimSettings(image_size=32, control_hz=5, camera="upper_body")
# The deployment conditions of docs/experiments/continuous_learning.md's covariate-shift measurement.
DEPLOYED = DisturbanceSettings(start_std=0.6, push_prob=0.5, push_std=0.6, joints="others")


@pytest.fixture(scope="module")
def robot():
    with AthenaRobot(SIM) as robot:
        yield robot


def test_off_by_default_everywhere_and_bad_values_name_the_key():
    assert not DisturbanceSettings().enabled and not EvalSettings().disturbance.enabled
    cfg = compose_config("evaluate", ["sim.disturbance.push_prob=1.5"], return_hydra_config=False)
    assert cfg.sim.disturbance.start_std == 0 and cfg.sim.disturbance.push_std == 0  # conf/sim/athena.yaml
    with pytest.raises(ConfigError, match=r"sim\.disturbance\.push_prob"):
        compose_config("evaluate", ["sim.disturbance.push_prob=1.5"], EvaluateConfig)
    for changes, key in [
        ({"start_std": -0.1}, "start_std"),
        ({"push_std": -1.0}, "push_std"),
        ({"joints": "arms"}, "joints"),
    ]:
        with pytest.raises(ConfigError, match=rf"sim\.disturbance\.{key}"):
            DisturbanceSettings(**changes)
    assert DisturbanceSettings(start_std=0.3).enabled and not DisturbanceSettings(push_std=0.5).enabled


def test_the_disturbance_is_drawn_from_the_episode_seed_on_the_chosen_joints(robot):
    env = AthenaEnv(robot=robot)
    env.reset("lift_knee", 1_000_003)
    np.testing.assert_array_equal(env.joint_positions(), HOME_POSE)  # none asked for: home, no push
    assert env.disturbance is None
    spec = env.reset("lift_knee", 1_000_003, DEPLOYED)
    start = env.joint_positions()
    np.testing.assert_allclose(start, env.disturbance.start, atol=1e-12)
    dims = task_dims(spec)
    np.testing.assert_array_equal(start[dims], HOME_POSE[dims])  # joints=others: the task's stay home
    assert np.abs(start - HOME_POSE).max() > 0.3
    env.reset("lift_knee", 1_000_004, DEPLOYED)
    assert not np.allclose(env.joint_positions(), start)  # another scene, another draw
    env.reset("lift_knee", 1_000_003, DEPLOYED)
    np.testing.assert_array_equal(env.joint_positions(), start)  # the same scene, the same draw
    env.reset("lift_knee", 1_000_003, DisturbanceSettings(start_std=1.2, joints="others"))
    farther = env.joint_positions() - HOME_POSE  # the same directions, farther (clipped inside the limits)
    np.testing.assert_array_equal(np.sign(farther), np.sign(start - HOME_POSE))
    assert np.all(np.abs(farther) >= np.abs(start - HOME_POSE) - 1e-12)

    # A push: after its step the joints jump by the drawn offset, the command unchanged; the rest of the
    # episode the motors pull back toward the command.
    push = DisturbanceSettings(push_prob=1.0, push_std=0.5, joints="all")
    env.reset("raise_arm", 1_000_001, push)
    assert env.disturbance.push_step is not None and env.disturbance.push_step < env.spec.num_steps // 2
    before = None
    while env.t <= env.disturbance.push_step:
        before = env.joint_positions()
        env.step(HOME_POSE)
    jump = env.joint_positions() - before
    lo, hi = robot.joint_limits[:, 0], robot.joint_limits[:, 1]
    np.testing.assert_allclose(
        jump, np.clip(before + env.disturbance.push_offset, lo, hi) - before, atol=0.05
    )
    assert np.abs(jump).max() > 0.3
    env.close()


def test_expert_still_succeeds_under_the_deployed_disturbance_and_every_policy_meets_the_same_one(robot):
    settings = EvalSettings(
        tasks=["raise_arm", "lift_knee"],
        episodes_per_task=6,
        sim=SIM,
        gif_episodes=0,
        baselines=[],
        disturbance=DEPLOYED,
    )
    expert = evaluate_policy("expert", settings, robot=robot)
    assert expert["success_rate"] == 1.0
    assert evaluate_policy("random", settings, robot=robot)["success_rate"] == 0.0

    # Every policy meets the same disturbance on a scene: what two runs see first is the same displaced
    # robot, unlike the nominal run's.
    def first_frames(disturbance: DisturbanceSettings) -> list[np.ndarray]:
        frames = []

        def policy(images, instructions):
            if not frames:
                frames.extend(images)
            return np.tile(HOME_POSE, (len(images), 1))

        one = EvalSettings(tasks=["lift_knee"], episodes_per_task=3, sim=SIM, gif_episodes=0, baselines=[])
        evaluate_policy(policy, EvalSettings(**{**one.__dict__, "disturbance": disturbance}), robot=robot)
        return frames

    disturbed = first_frames(DEPLOYED)
    np.testing.assert_array_equal(np.stack(disturbed), np.stack(first_frames(DEPLOYED)))
    assert not np.array_equal(np.stack(disturbed), np.stack(first_frames(DisturbanceSettings())))


@pytest.mark.slow  # imports torch through vla.inference: seconds on its own
def test_evaluate_script_passes_the_disturbance_on(tmp_path, monkeypatch):
    evaluate = load_script("evaluate")
    captured = {}

    def fake(policy, settings, out_dir, name="policy", progress=True):
        captured["disturbance"] = settings.disturbance
        return {"results": {}}

    monkeypatch.setattr("vla.sim.evaluate.evaluate_with_baselines", fake)
    cfg = compose_config(
        "evaluate",
        ["checkpoint=null", "sim.disturbance.start_std=0.4", f"output_dir={tmp_path}"],
        EvaluateConfig,
    )
    evaluate.run(cfg, tmp_path)
    assert captured["disturbance"] == DisturbanceSettings(start_std=0.4)


def test_training_check_meets_the_disturbance_and_demo_generators_refuse_it(tmp_path, monkeypatch):
    """`train.py sim.disturbance...`: the demonstrations stay nominal, the in-loop closed-loop check (like
    scripts/evaluate.py) runs disturbed; the entry points that only record demonstrations refuse the key
    instead of ignoring it."""
    import train as entry
    from vla.config import ConvertDataConfig, MakeSampleDataConfig, TrainConfig

    captured = []

    def fake(policy, settings, **_):
        captured.append(settings)
        return {"success_rate": 0.0, "per_task": {}}

    monkeypatch.setattr("vla.sim.evaluate.evaluate_policy", fake)
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *FAST_TRAIN,
        *SMALL_SAMPLE,
        "callbacks.sim_eval_every_n_val=1",
        "sim.disturbance.start_std=0.6",
        "sim.disturbance.joints=others",
    ]
    entry.run(compose_config("train", overrides, TrainConfig))
    assert [s.disturbance for s in captured] == [DisturbanceSettings(start_std=0.6, joints="others")]
    demos = sorted((tmp_path / "cache").rglob("metadata.json"))
    assert demos, "no sample episodes were generated"

    for name, schema in (("make_sample_data", MakeSampleDataConfig), ("convert_data", ConvertDataConfig)):
        extra = ["output_dir=/tmp/x"] if name == "convert_data" else []
        with pytest.raises(
            ConfigError, match=rf"sim\.disturbance: {name} records the expert's demonstrations"
        ):
            compose_config(name, ["sim.disturbance.start_std=0.6", *extra], schema)
        compose_config(name, extra, schema)  # nominal: accepted
