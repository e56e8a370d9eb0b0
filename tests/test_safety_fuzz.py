"""The safety filter under adversarial chunks (hypothesis): whatever mix of NaN, inf, huge jumps,
out-of-range targets, stalls and e-stops a policy sends, every command is finite, inside the joint
ranges, within one step's speed of the previous command, keeps both hands in the workspace box, and
holds still under the e-stop."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla.config.sim import SafetySettings, SimSettings
from vla.sim.athena import HOME_POSE, NUM_JOINTS, AthenaRobot
from vla.sim.safety import SafetyFilter

SIM = SimSettings(image_size=32)
_ROBOT: list[AthenaRobot] = []


def robot() -> AthenaRobot:
    if not _ROBOT:  # one model for every example (hypothesis calls the test many times)
        _ROBOT.append(AthenaRobot(SIM))
    return _ROBOT[0]


value = st.one_of(
    st.floats(-4.0, 4.0),  # around and beyond every joint range (rad)
    st.floats(-1e9, 1e9),
    st.sampled_from([np.nan, np.inf, -np.inf]),
)
step = st.tuples(
    st.lists(value, min_size=NUM_JOINTS, max_size=NUM_JOINTS),
    st.sampled_from(["sustained", "sustained", "this"]),  # keep pushing one target, or this action
    st.sampled_from(["follow", "stall", "noise"]),  # what the measured joints do
    st.sampled_from(["run", "run", "run", "estop", "release"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(-4.0, 4.0), min_size=NUM_JOINTS, max_size=NUM_JOINTS),
    st.lists(step, min_size=1, max_size=60),
    st.integers(0, 2**31 - 1),
)
def test_no_command_leaves_the_limits(target, steps, seed):
    model = robot()
    config = SafetySettings(stuck_steps=3, recovery_steps=2)  # reach recovery within short sequences
    safety = SafetyFilter(model, config, SIM.control_hz)
    safety.reset(HOME_POSE)
    rng = np.random.default_rng(seed)
    lower = model.joint_limits[:, 0] + config.joint_limit_margin
    upper = model.joint_limits[:, 1] - config.joint_limit_margin
    box_min, box_max = np.array(config.workspace_min), np.array(config.workspace_max)
    max_step = config.max_joint_speed / SIM.control_hz
    previous, measured, stopped = HOME_POSE.copy(), HOME_POSE.copy(), False
    for action, which, joints, switch in steps:
        if switch == "estop":
            safety.estop()
            stopped = True
        elif switch == "release":
            safety.release()
            stopped = False
        command = safety(np.array(target if which == "sustained" else action), measured)
        assert np.all(np.isfinite(command))
        assert np.all(command >= lower - 1e-12) and np.all(command <= upper + 1e-12)
        assert np.all(np.abs(command - previous) <= max_step + 1e-9)
        for hand in model.hand_positions_at(command).values():
            assert np.all(hand >= box_min - 1e-9) and np.all(hand <= box_max + 1e-9)
        if stopped:
            np.testing.assert_array_equal(command, previous)
        previous = command
        if joints == "follow":
            measured = command.copy()
        elif joints == "noise":
            measured = command + rng.normal(0, 0.05, NUM_JOINTS)
