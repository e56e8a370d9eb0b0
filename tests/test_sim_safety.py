"""The safety filter: unsafe actions (NaN, huge steps, out-of-range and out-of-workspace targets) never
reach the simulator; a stuck policy triggers a retract toward home."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vla.config.sim import SafetySettings, SimSettings
from vla.sim.athena import HOME_POSE, AthenaRobot
from vla.sim.env import AthenaEnv
from vla.sim.safety import SafetyFilter

HZ = 25


@pytest.fixture(scope="module")
def robot():
    with AthenaRobot(SimSettings(image_size=64)) as robot:
        yield robot


@pytest.fixture
def env(robot):
    env = AthenaEnv(robot=robot)
    env.reset("raise_arm", 0)
    return env


def make_filter(robot, env, **changes) -> SafetyFilter:
    safety = SafetyFilter(robot, dataclasses.replace(SafetySettings(), **changes), HZ)
    safety.reset(env.joint_positions())
    return safety


def sent_ctrl(env) -> np.ndarray:
    """What the simulator's actuators are actually commanded to."""
    return env.data.ctrl[env.robot.actuator_ids].copy()


def box_check(safety: SafetyFilter, hands: dict, tolerance: float = 0.0) -> bool:
    return all(
        np.all(h >= safety.box_min - tolerance) and np.all(h <= safety.box_max + tolerance)
        for h in hands.values()
    )


# Left arm straight out to the side: the hand goes ~5 cm past the box's y = 0.55 m.
OUTSIDE = HOME_POSE.copy()
OUTSIDE[[12, 13, 15]] = (0.0, 1.57, 1.57)


def test_nan_and_inf_never_reach_the_simulator(robot, env):
    safety = make_filter(robot, env)
    action = HOME_POSE.copy()
    action[[3, 12, 20]] = (np.nan, np.inf, -np.inf)
    for _ in range(5):
        env.step(safety(action, env.joint_positions()))
        assert np.isfinite(sent_ctrl(env)).all() and np.isfinite(env.data.qpos).all()
    np.testing.assert_allclose(sent_ctrl(env)[[3, 12, 20]], HOME_POSE[[3, 12, 20]])
    assert safety.counts["nonfinite"] == 5


def test_huge_steps_are_rate_limited(robot, env):
    safety = make_filter(robot, env, max_joint_speed=4.0)
    previous = sent_ctrl(env)
    for sign in (1, -1, 1):
        env.step(safety(HOME_POSE + sign * 100.0, env.joint_positions()))
        assert np.abs(sent_ctrl(env) - previous).max() <= 4.0 / HZ + 1e-9
        previous = sent_ctrl(env)
    assert safety.counts["speed"] == 3


def test_targets_are_clipped_to_the_model_joint_limits(robot, env):
    safety = make_filter(robot, env, stuck_steps=1000, workspace_min=[-9, -9, -9], workspace_max=[9, 9, 9])
    for _ in range(60):
        env.step(safety(HOME_POSE + 100.0, env.joint_positions()))
        ctrl = sent_ctrl(env)
        assert np.all(ctrl >= robot.joint_limits[:, 0]) and np.all(ctrl <= robot.joint_limits[:, 1])
    np.testing.assert_allclose(sent_ctrl(env), robot.joint_limits[:, 1] - 0.02)
    assert safety.counts["joint_limit"] > 0


def test_hands_stay_inside_the_workspace(robot, env):
    safety = make_filter(robot, env, stuck_steps=1000)
    assert not box_check(safety, robot.hand_positions_at(OUTSIDE))  # the target really is outside
    for _ in range(50):
        env.step(safety(OUTSIDE, env.joint_positions()))
        assert box_check(safety, robot.hand_positions_at(sent_ctrl(env)))
        assert box_check(safety, robot.hand_positions(env.data), tolerance=0.01)
    assert safety.counts["workspace"] > 0
    # It got as far as the box allows rather than freezing early.
    assert robot.hand_positions(env.data)["left"][1] > safety.box_max[1] - 0.05


def test_stuck_policy_triggers_a_retract_toward_home(robot, env):
    safety = make_filter(robot, env, stuck_steps=8, recovery_steps=6)
    distances = []
    for _ in range(60):
        env.step(safety(OUTSIDE, env.joint_positions()))
        distances.append(np.abs(sent_ctrl(env) - HOME_POSE).max())
        if safety.counts["stuck"]:
            break
    assert safety.counts["stuck"] == 1
    start = len(distances) - 1
    for _ in range(5):  # the rest of the recovery: commands head home whatever the policy says
        env.step(safety(OUTSIDE, env.joint_positions()))
        distances.append(np.abs(sent_ctrl(env) - HOME_POSE).max())
    assert all(b < a for a, b in zip(distances[start - 1 :], distances[start:]))
    assert safety.counts["recovery"] == 6


def test_holding_still_is_not_stuck(robot, env):
    safety = make_filter(robot, env, stuck_steps=5)
    for _ in range(40):
        env.step(safety(HOME_POSE, env.joint_positions()))
    assert safety.counts == dict.fromkeys(safety.counts, 0)


@pytest.mark.parametrize("task", ["reach_ball", "raise_arm", "turn_torso", "lift_knee"])
def test_expert_needs_no_intervention(robot, task):
    env = AthenaEnv(robot=robot)
    for seed in range(3):
        env.reset(task, seed)
        safety = make_filter(robot, env)
        while not env.done:
            action = env.expert_action()
            command = safety(action, env.joint_positions())
            np.testing.assert_array_equal(command, action)
            env.step(command)
        assert sum(safety.counts.values()) == 0 and env.success()


def test_garbage_fuzz(robot, env):
    rng = np.random.default_rng(0)
    safety = make_filter(robot, env)
    for _ in range(80):
        action = rng.choice([np.nan, np.inf, -np.inf, 1e6, -1e6, 0.5, -2.0], size=23)
        env.step(safety(action, env.joint_positions()))
        ctrl = sent_ctrl(env)
        assert np.isfinite(ctrl).all()
        assert np.all(ctrl >= robot.joint_limits[:, 0]) and np.all(ctrl <= robot.joint_limits[:, 1])
        assert box_check(safety, robot.hand_positions_at(ctrl))
    assert np.isfinite(env.data.qpos).all() and np.isfinite(env.data.qvel).all()


def test_disabled_filter_still_blocks_nan_only(robot, env):
    safety = make_filter(robot, env, enabled=False)
    action = HOME_POSE + 1.0
    action[0] = np.nan
    command = safety(action, env.joint_positions())
    assert command[0] == HOME_POSE[0] and np.all(command[1:] == action[1:])


def test_wrong_size_is_rejected(robot, env):
    with pytest.raises(ValueError, match="23 joint targets"):
        make_filter(robot, env)(np.zeros(24), env.joint_positions())


def test_settings_validation():
    with pytest.raises(ValueError, match="workspace_min"):
        SafetySettings(workspace_min=[0, 0, 2], workspace_max=[1, 1, 1])
    with pytest.raises(ValueError, match="max_joint_speed"):
        SafetySettings(max_joint_speed=0)
