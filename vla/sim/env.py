"""`AthenaEnv`: one episode at a time of one athena task, driven by 23 joint targets per control step."""

from __future__ import annotations

import numpy as np

from vla.config.sim import DisturbanceSettings, SimSettings
from vla.sim.athena import HOME_POSE, NUM_JOINTS, AthenaRobot
from vla.sim.tasks import (
    Disturbance,
    EpisodeSpec,
    evaluate_success,
    expert_action,
    sample_disturbance,
    sample_episode,
)


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
        self.disturbance: Disturbance | None = None
        self.t = 0

    def reset(
        self,
        task: str,
        seed: int,
        disturbance: DisturbanceSettings | None = None,
        spec: EpisodeSpec | None = None,
    ) -> EpisodeSpec:
        """Start episode `seed` of `task` at the home pose; the same (task, seed) gives the same scene.
        With an enabled `disturbance` it starts from that episode's displaced pose instead and may be
        pushed once (`vla.sim.tasks.sample_disturbance`; `self.disturbance` holds the draw). `spec`: play
        this episode of (task, seed) instead of the sampled one (a counterfactual twin)."""
        if spec is not None and (spec.task, spec.seed) != (task, seed):
            raise ValueError(f"spec is episode {spec.seed} of {spec.task}, not {seed} of {task}")
        self.spec = spec or sample_episode(self.robot, task, seed)
        self.disturbance = None
        if disturbance is not None and disturbance.enabled:
            self.disturbance = sample_disturbance(self.spec, disturbance, self.robot.joint_limits)
        self.robot.set_pose(self.data, HOME_POSE if self.disturbance is None else self.disturbance.start)
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
        if self.disturbance is not None and self.t == self.disturbance.push_step:
            # A shove: the joints are displaced and at rest, the motors still hold the last command.
            lo, hi = self.robot.joint_limits[:, 0], self.robot.joint_limits[:, 1]
            pushed = np.clip(self.joint_positions() + self.disturbance.push_offset, lo, hi)
            self.robot.set_pose(self.data, pushed)
            self.data.ctrl[self.robot.actuator_ids] = action
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
