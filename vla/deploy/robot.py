"""The robot as the control loop sees it (`Robot`), and the simulated athena behind that interface.

A real robot implements the same five members: its camera frame, its joint positions and velocities,
its state vector in the training data's layout, and `apply(targets)`, which hands one set of joint
targets to the motor controllers. The control loop (`vla.deploy.controller`) paces itself at the
policy's rate; `apply` on a real robot returns at once, the simulator's runs one control period of
physics. Everything the loop commands has passed the safety filter first.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vla.config.sim import SimSettings
from vla.sim.athena import AthenaRobot
from vla.sim.env import AthenaEnv


class Robot(Protocol):
    control_hz: int

    def image(self) -> np.ndarray:
        """The camera frame, RGB uint8 [H, W, 3]."""

    def joint_positions(self) -> np.ndarray:
        """[23] rad, in `vla.sim.athena.JOINT_NAMES` order."""

    def joint_velocities(self) -> np.ndarray:
        """[23] rad/s."""

    def state(self) -> np.ndarray:
        """The state a policy trained with one reads (athena: 47 values, `vla.sim.athena.STATE_NAMES`)."""

    def apply(self, targets: np.ndarray) -> None:
        """Command joint-position targets [23] (already through the safety filter)."""


class SimAthena:
    """The MuJoCo athena as a `Robot`, one task episode at a time (`start(task, seed)`)."""

    def __init__(self, sim: SimSettings, robot: AthenaRobot | None = None) -> None:
        self.env = AthenaEnv(sim, robot)
        self.model = self.env.robot  # the robot description: joint limits and forward kinematics
        self.control_hz = sim.control_hz

    def start(self, task: str, seed: int):
        """Reset to episode `seed` of `task`; returns its `EpisodeSpec` (instruction, num_steps)."""
        return self.env.reset(task, seed)

    def image(self) -> np.ndarray:
        return self.env.render()

    def joint_positions(self) -> np.ndarray:
        return self.env.joint_positions()

    def joint_velocities(self) -> np.ndarray:
        return self.env.data.qvel[self.model.dof_adr].copy()

    def state(self) -> np.ndarray:
        return self.env.state()

    def apply(self, targets: np.ndarray) -> None:
        self.env.step(targets)

    def success(self) -> bool:
        return self.env.success()

    def close(self) -> None:
        self.env.close()
