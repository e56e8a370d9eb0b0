"""Relabelling for DAgger: the scripted expert's action at the state the robot actually visited, and
the mixed policy that decides, chunk by chunk, whether the expert or the learned policy drives.

DAgger (Ross, Gordon and Bagnell 2011) trains on the states the learner's own policy reaches, each
labelled with what the expert would do there; round i executes pi_i = beta_i pi* + (1 - beta_i) pi_hat_i.
Here the mixture is drawn per chunk request (`MixingPolicy`, served like any policy, so the expert's
chunks go through the same server, client, safety filter and recovery as the policy's), and every
recorded step carries the expert's label whichever of the two drove it (`expert_label`).
"""

from __future__ import annotations

import numpy as np

from vla.sim.tasks import EXPERT_MAX_SPEED, EpisodeSpec, expert_action, sample_episode


def expert_label(spec: EpisodeSpec, step: int, q: np.ndarray, control_hz: int) -> np.ndarray:
    """The expert's joint targets [23] for control step `step` from joint positions `q` [23]: its
    reference for that step (`vla.sim.tasks.expert_action`, which ends at the goal and holds it),
    approached from where the robot is no faster than the expert itself moves (EXPERT_MAX_SPEED).

    From the expert's own path this is its reference (its steps are within that speed); from a state
    the policy drifted to, it is the expert's way back, at a speed the safety filter lets through."""
    q = np.asarray(q, dtype=np.float64)
    target = expert_action(spec, step)
    reach = EXPERT_MAX_SPEED / control_hz
    return q + np.clip(target - q, -reach, reach)


class MixingPolicy:
    """Serves `policy` (a `vla.model.policy.Policy`), except that each chunk request is answered by
    the scripted expert with probability `beta`, drawn from a stream seeded by (seed, round, task,
    episode seed, step), so a rerun of a round mixes the same way.

    The expert's chunk is its reference plan from the request's step on (`expert_action`), privileged
    as `vla.deploy.oracle.ExpertOracle` is: the request's `meta` names the episode. `decisions` records
    who answered each request: {(task, seed): [(step, "expert" | "policy"), ...]}."""

    reads_meta = True

    def __init__(self, policy, robot, beta: float, seed: int, round_index: int, tasks: list[str]) -> None:
        self.policy = policy
        self.info = policy.info
        self.robot = robot  # an AthenaRobot, for sampling the episode's scene (the expert's goal)
        self.beta = beta
        self.seed, self.round_index, self.tasks = seed, round_index, list(tasks)
        self.decisions: dict[tuple[str, int], list[tuple[int, str]]] = {}
        self._specs: dict[tuple[str, int], EpisodeSpec] = {}

    def expert_drives(self, task: str, episode_seed: int, step: int) -> bool:
        if self.beta <= 0:
            return False
        rng = np.random.default_rng([self.seed, self.round_index, self.tasks.index(task), episode_seed, step])
        return bool(rng.random() < self.beta)

    def act(self, image, instruction: str, state=None, *, meta: dict | None = None) -> np.ndarray:
        if meta is None:  # a client that does not send the episode: the policy alone
            return self.policy.act(image, instruction, state)
        task, episode_seed, step = str(meta["task"]), int(meta["seed"]), int(meta["step"])
        key = (task, episode_seed)
        driver = "expert" if self.expert_drives(task, episode_seed, step) else "policy"
        self.decisions.setdefault(key, []).append((step, driver))
        if driver == "policy":
            return self.policy.act(image, instruction, state)
        if key not in self._specs:
            self._specs[key] = sample_episode(self.robot, task, episode_seed)
        spec = self._specs[key]
        return np.stack([expert_action(spec, step + k) for k in range(self.info.chunk_size)])
