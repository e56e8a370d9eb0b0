"""`AthenaEnv`: one episode at a time of one athena task, driven by 23 joint targets per control step."""

from __future__ import annotations

import numpy as np

from vla.config.sim import SimSettings
from vla.sim.athena import HOME_POSE, NUM_JOINTS, AthenaRobot
from vla.sim.tasks import EpisodeSpec, evaluate_success, expert_action, sample_episode


class AthenaEnv:
    """The simulated athena running one task episode.

        env = AthenaEnv(SimSettings(image_size=96))
        spec = env.reset("reach_ball", seed=3)      # spec.instruction: what to tell the policy
        while not env.done:
            env.step(policy([env.render()], [spec.instruction])[0])
        env.success()                                # checked on the final step
        env.close()

    Several envs may share one `AthenaRobot` (model and renderer), e.g. parallel evaluation episodes;
    the robot is then closed by whoever created it.
    """

    def __init__(self, sim: SimSettings | None = None, robot: AthenaRobot | None = None) -> None:
        if robot is None:
            robot = AthenaRobot(sim or SimSettings())
            self._owns_robot = True
        else:
            self._owns_robot = False
        self.robot = robot
        self.data = robot.new_data()
        self.spec: EpisodeSpec | None = None
        self.t = 0

    def reset(self, task: str, seed: int) -> EpisodeSpec:
        """Start episode `seed` of `task` at the home pose; the same (task, seed) gives the same scene."""
        self.spec = sample_episode(self.robot, task, seed)
        self.robot.set_pose(self.data, HOME_POSE)
        self.robot.set_balls(self.data, self.spec.balls)
        self.data.time = 0.0
        self.t = 0
        return self.spec

    @property
    def done(self) -> bool:
        return self.spec is not None and self.t >= self.spec.num_steps

    def step(self, action: np.ndarray) -> None:
        """Send joint targets [23] for one control period (1 / control_hz s). Unfiltered: evaluation puts
        `vla.sim.safety.SafetyFilter` in front."""
        if self.spec is None:
            raise RuntimeError("call reset(task, seed) before step()")
        action = np.asarray(action)
        if action.shape != (NUM_JOINTS,):
            raise ValueError(f"action has shape {action.shape}; athena takes {NUM_JOINTS} joint targets")
        self.robot.apply(self.data, action)
        self.t += 1

    def render(self) -> np.ndarray:
        return self.robot.render(self.data)

    def state(self) -> np.ndarray:
        return self.robot.state(self.data)

    def joint_positions(self) -> np.ndarray:
        return self.robot.joint_positions(self.data)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's joint targets for the current step."""
        return expert_action(self.spec, self.t)

    def success_details(self) -> dict:
        return evaluate_success(self.robot, self.data, self.spec)

    def success(self) -> bool:
        return self.success_details()["success"]

    def close(self) -> None:
        if self._owns_robot:
            self.robot.close()
