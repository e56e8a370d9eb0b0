"""The scripted expert's plan served as a policy, for measuring the deployment path alone.

A trained policy's success mixes model quality with transport; this one is right whenever its chunk
is used on time, so its success over the server measures what late chunks, async vs sync execution and
reconnects cost. It is privileged: the request's `meta` names the episode ({"task", "seed"}), which
the controller sends only to a server whose metadata says `reads_meta`.
"""

from __future__ import annotations

import numpy as np

from vla.model.policy import PolicyInfo
from vla.sim.athena import NUM_JOINTS, AthenaRobot
from vla.sim.tasks import expert_action, sample_episode


class ExpertOracle:
    reads_meta = True

    def __init__(self, robot: AthenaRobot, chunk_size: int) -> None:
        self.robot = robot
        self.info = PolicyInfo(
            source="expert-oracle",
            backend="scripted",
            kind="oracle",
            action_dim=NUM_JOINTS,
            chunk_size=chunk_size,
            grounding=0,
            image_size=robot.sim.image_size,
            dataset_key="athena",
            control_hz=float(robot.sim.control_hz),
        )
        self._specs: dict[tuple[str, int], object] = {}

    def act(self, image, instruction: str, state=None, *, meta: dict) -> np.ndarray:
        """The expert's targets [K, 23] for ticks meta["step"].. of episode (meta["task"], meta["seed"])."""
        key = (str(meta["task"]), int(meta["seed"]))
        if key not in self._specs:
            self._specs[key] = sample_episode(self.robot, *key)
        spec, step = self._specs[key], int(meta["step"])
        return np.stack([expert_action(spec, step + k) for k in range(self.info.chunk_size)])
