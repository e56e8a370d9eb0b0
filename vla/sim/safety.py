"""Safety filter and stuck recovery between a policy and athena (the seed's `SafeVLAController` and
`RobustVLAController`, made real).

Every command passes, in order:
  1. non-finite values (NaN/inf) are replaced by the previous command's value for that joint;
  2. the change from the previous command is clipped to max_joint_speed / control_hz per joint. The
     speed limit is the configured one for every joint: MJCF has no joint velocity attribute, and the
     G1 model athena is built from gives its actuators only torque ranges (actuatorfrcrange), so the
     robot description has no velocity limit to read (the joint ranges in 3. do come from it);
  3. the result is clipped to the joint ranges read from the MuJoCo model (minus a margin);
  4. if forward kinematics puts either hand outside the workspace box, the step from the previous
     command is scaled down (bisection) to the largest fraction that keeps both hands inside.
Stuck: when the policy keeps asking to move (its target is far from the measured joints) but the
joints make no progress for `stuck_steps` steps, the filter ignores the policy for `recovery_steps`
steps and retracts toward the home pose at the speed limit.

E-stop (`estop()`, until `release()`): every command is the last safe command, whatever the policy
asks; `hold()` gives the same when a policy has nothing to say (late inference in `vla.deploy`).
The robot client (`vla.deploy.controller`) and the simulator's evaluation use this one filter.

Each intervention increments a counter in `SafetyFilter.counts` (see `INTERVENTIONS`).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vla.config.sim import SafetySettings
from vla.sim.athena import HOME_POSE, NUM_JOINTS, AthenaRobot

# Counter names: steps where each intervention changed the command; `stuck` counts detections and
# `recovery` the steps spent retracting; `estop` the steps held by the e-stop.
INTERVENTIONS = ("nonfinite", "speed", "joint_limit", "workspace", "stuck", "recovery", "estop")
_BISECTION_STEPS = 12  # 2^-12 of the step: well under a millimetre at the hand


class SafetyFilter:
    """Turns any policy output into a safe joint command for `AthenaRobot.apply`.

        safety = SafetyFilter(robot, settings, control_hz)
        safety.reset(env.joint_positions())          # at the start of each episode
        env.step(safety(action, env.joint_positions()))

    With `settings.enabled = False` only the shape check and NaN replacement remain (a NaN target
    would corrupt the simulator state for the rest of the episode).
    """

    def __init__(self, robot: AthenaRobot, settings: SafetySettings, control_hz: int) -> None:
        self.robot = robot
        self.settings = settings
        self.max_step = settings.max_joint_speed / control_hz
        margin = settings.joint_limit_margin
        self.lower = robot.joint_limits[:, 0] + margin
        self.upper = robot.joint_limits[:, 1] - margin
        self.box_min = np.asarray(settings.workspace_min, dtype=np.float64)
        self.box_max = np.asarray(settings.workspace_max, dtype=np.float64)
        self.counts = dict.fromkeys(INTERVENTIONS, 0)
        self.stopped = False
        self.reset(HOME_POSE)

    def estop(self) -> None:
        """Emergency stop: from now on every command holds the last safe command, until `release()`."""
        self.stopped = True

    def release(self) -> None:
        self.stopped = False

    def hold(self) -> np.ndarray:
        """The last safe command again (a stop in place: never an extrapolation of the policy)."""
        return self.previous.copy()

    def reset(self, q_measured: np.ndarray) -> None:
        """Start an episode from joint positions `q_measured` [23] (counts are kept: they add up)."""
        self.previous = np.asarray(q_measured, dtype=np.float64).copy()
        self._history: deque[np.ndarray] = deque(maxlen=self.settings.stuck_steps + 1)
        self._wanting_steps = 0
        self._recovery_left = 0

    def hands_inside(self, q: np.ndarray) -> bool:
        hands = self.robot.hand_positions_at(q)
        return all(np.all(h >= self.box_min) and np.all(h <= self.box_max) for h in hands.values())

    def __call__(self, action: np.ndarray, q_measured: np.ndarray) -> np.ndarray:
        """The safe command [23] for `action` [23] given the measured joint positions [23]."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (NUM_JOINTS,):
            raise ValueError(f"action has shape {action.shape}; athena takes {NUM_JOINTS} joint targets")
        bad = ~np.isfinite(action)
        if bad.any():
            self.counts["nonfinite"] += 1
            action = np.where(bad, self.previous, action)
        if self.stopped:
            self.counts["estop"] += 1
            return self.hold()
        if not self.settings.enabled:
            self.previous = action
            return action.copy()

        q_measured = np.asarray(q_measured, dtype=np.float64)
        if self._recovery_left == 0 and self._is_stuck(action, q_measured):
            self.counts["stuck"] += 1
            self._recovery_left = self.settings.recovery_steps
        if self._recovery_left > 0:
            self._recovery_left -= 1
            self.counts["recovery"] += 1
            action = HOME_POSE  # the speed limit below makes this a gradual retract

        too_fast = np.abs(action - self.previous) > self.max_step
        command = np.where(too_fast, self.previous + np.sign(action - self.previous) * self.max_step, action)
        if too_fast.any():
            self.counts["speed"] += 1
        limited = np.clip(command, self.lower, self.upper)
        if np.any(limited != command):
            self.counts["joint_limit"] += 1
        command = limited
        if not self.hands_inside(command):
            self.counts["workspace"] += 1
            command = self._scale_into_workspace(command)
        self.previous = command
        return command.copy()

    def _scale_into_workspace(self, command: np.ndarray) -> np.ndarray:
        """The largest fraction of the step previous -> command that keeps both hands inside the box."""
        step = command - self.previous
        if not self.hands_inside(self.previous):
            # Only when an episode starts outside the box: move back toward home instead of freezing.
            toward_home = self.previous + np.clip(HOME_POSE - self.previous, -self.max_step, self.max_step)
            return np.clip(toward_home, self.lower, self.upper)
        inside, outside = 0.0, 1.0
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (inside + outside)
            if self.hands_inside(self.previous + middle * step):
                inside = middle
            else:
                outside = middle
        return self.previous + inside * step

    def _is_stuck(self, action: np.ndarray, q_measured: np.ndarray) -> bool:
        """The policy has wanted to move for `stuck_steps` steps and no joint has made progress."""
        self._history.append(q_measured.copy())
        wants_to_move = np.max(np.abs(action - q_measured)) > self.settings.stuck_request
        self._wanting_steps = self._wanting_steps + 1 if wants_to_move else 0
        if self._wanting_steps < self.settings.stuck_steps or len(self._history) <= self.settings.stuck_steps:
            return False
        progress = np.max(np.abs(self._history[-1] - self._history[0]))
        if progress < self.settings.stuck_progress:
            self._wanting_steps = 0
            self._history.clear()
            return True
        return False
