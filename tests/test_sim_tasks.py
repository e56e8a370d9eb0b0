"""athena tasks: success functions, experts, scene sampling, instructions."""

from __future__ import annotations

import numpy as np
import pytest

from vla.config.sim import TASK_NAMES, SimSettings
from vla.sim.athena import BALL_COLORS, HOME_POSE, AthenaRobot
from vla.sim.env import AthenaEnv
from vla.sim.tasks import (
    _MIN_BALL_GAP,
    EXPERT_MAX_SPEED,
    PHRASINGS,
    REACH_RADIUS,
    expert_action,
    sample_episode,
    solve_reach_ik,
)


@pytest.fixture(scope="module")
def env():
    with AthenaRobot(SimSettings(image_size=64)) as robot:
        yield AthenaEnv(robot=robot)


def run(env: AthenaEnv, actions) -> dict:
    """Play `actions(t)` to the end of the episode; the success details."""
    while not env.done:
        env.step(actions(env.t))
    return env.success_details()


def test_task_names_agree():
    assert tuple(PHRASINGS) == TASK_NAMES


@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_succeeds_and_standing_still_fails(env, task):
    for seed in (0, 1, 2):
        env.reset(task, seed)
        expert = run(env, lambda t: env.expert_action())
        assert expert["success"], (task, seed)
        # Only reach_ball has distractors to tell apart; the expert's hand ends at the named ball.
        assert expert["named_ball"] is (True if task == "reach_ball" else None)
        env.reset(task, seed)
        result = run(env, lambda t: HOME_POSE)
        assert not result["goal_met"] and result["posture_ok"], (task, seed)


@pytest.mark.parametrize("task", ["raise_arm", "turn_torso", "lift_knee"])
def test_the_other_side_fails(env, task):
    """Language matters: doing the task with the other side is a failure."""
    spec = env.reset(task, 4)
    other = sample_episode(
        env.robot, task, next(s for s in range(5, 50) if sample_episode(env.robot, task, s).side != spec.side)
    )
    result = run(env, lambda t: expert_action(other, t))
    assert not result["success"]


def test_reaching_a_distractor_fails(env):
    """Vision and language matter: the right hand at the wrong colour is a failure."""
    checked = 0
    for seed in range(10):
        spec = sample_episode(env.robot, "reach_ball", seed)
        assert len(spec.balls) == 3 and set(spec.balls) == set(BALL_COLORS)
        for color, position in spec.balls.items():
            goal, error = solve_reach_ik(env.robot, spec.side, position)
            if color == spec.color or error > 0.01:
                continue  # the target itself, or a distractor out of this arm's reach
            env.reset("reach_ball", seed)
            wrong = sample_episode(env.robot, "reach_ball", seed)
            wrong.goal = goal
            result = run(env, lambda t, wrong=wrong: expert_action(wrong, t))
            assert result["value"] > REACH_RADIUS and not result["success"]
            # The hand is at the distractor (balls are >= 16 cm apart): the policy went for the wrong one.
            assert result["named_ball"] is False
            checked += 1
    assert checked >= 3


def test_flailing_other_joints_fails_the_posture_condition(env):
    env.reset("reach_ball", 3)

    def flail(t):
        action = env.expert_action()
        action[2] += 0.5  # left hip yaw: not needed to reach
        return action

    result = run(env, flail)
    assert result["goal_met"] and not result["posture_ok"] and not result["success"]


def test_scenes_are_seeded_and_varied(env):
    a, b = sample_episode(env.robot, "reach_ball", 7), sample_episode(env.robot, "reach_ball", 7)
    assert a.instruction == b.instruction and all(np.array_equal(a.balls[c], b.balls[c]) for c in a.balls)
    specs = [sample_episode(env.robot, "reach_ball", s) for s in range(40)]
    targets = np.array([s.balls[s.color] for s in specs])
    assert targets[:, 1].std() > 0.08 and targets[:, 2].std() > 0.05  # the target's place must be seen
    assert {s.color for s in specs} == set(BALL_COLORS) and {s.side for s in specs} == {"left", "right"}
    for s in specs:
        places = list(s.balls.values())
        gaps = [np.linalg.norm(p - q) for i, p in enumerate(places) for q in places[i + 1 :]]
        assert min(gaps) >= _MIN_BALL_GAP
    # Seed i of two tasks draws from different streams.
    assert [sample_episode(env.robot, "raise_arm", s).side for s in range(12)] != [
        sample_episode(env.robot, "turn_torso", s).side for s in range(12)
    ]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_instructions(env, task):
    assert len(PHRASINGS[task]) >= 3
    spec = sample_episode(env.robot, task, 5)
    assert spec.instruction == spec.phrasings[0] and len(set(spec.phrasings)) == len(PHRASINGS[task])
    for text in spec.phrasings:
        assert spec.side in text and (spec.color is None or spec.color in text)
    assert spec.description() in spec.phrasings


@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_respects_the_speed_limit(env, task):
    hz = env.robot.sim.control_hz
    for seed in range(5):
        spec = sample_episode(env.robot, task, seed)
        path = np.array([HOME_POSE] + [expert_action(spec, t) for t in range(spec.num_steps)])
        assert np.abs(np.diff(path, axis=0)).max() <= EXPERT_MAX_SPEED / hz + 1e-9
        np.testing.assert_allclose(path[-1], spec.goal)


def test_unknown_task(env):
    with pytest.raises(ValueError, match="choose from"):
        env.reset("dance", 0)
