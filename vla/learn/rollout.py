"""One round's episodes: the deployed policy through the policy server and the robot client, every
step recorded with its labels, every episode judged and written to the versioned dataset.

The rollouts take the deployment path itself (`vla.deploy`): a `PolicyServer` on loopback serves the
policy (or DAgger's `MixingPolicy`), and the robot client's control loop (`run_episode`) drives the
simulated athena with the safety filter and stuck recovery in front of it, exactly as `run_robot.py`
drives a robot. The recorded data is therefore what a deployed robot would log. `RecordingRobot` sits
between the control loop and the robot and keeps, per control tick, the frame and state the command
was chosen from, the command that passed the filter, and the expert's label at that state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from vla.config.learn import LearnSettings
from vla.config.sim import DisturbanceSettings
from vla.deploy.robot import SimAthena
from vla.learn.dataset import VersionedDataset
from vla.learn.relabel import expert_label
from vla.sim.athena import JOINT_NAMES, STATE_NAMES
from vla.sim.episodes import episode_name

log = logging.getLogger(__name__)
Judge = Callable[[str, int, str, bool], bool]  # (task, seed, instruction, simulator's verdict) -> success


class RecordingRobot:
    """A `vla.deploy.robot.Robot` that records every tick of the episode it drives."""

    def __init__(self, robot: SimAthena, disturbance: DisturbanceSettings | None = None) -> None:
        self.robot = robot
        self.disturbance = disturbance  # deployment conditions (`sim.disturbance`); None: nominal
        self.control_hz = robot.control_hz
        self.env = robot.env
        self.frames: list[np.ndarray] = []
        self.states: list[np.ndarray] = []
        self.commands: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self._frame: tuple[int, np.ndarray] | None = None

    def start(self, task: str, seed: int):
        self.frames, self.states, self.commands, self.labels = [], [], [], []
        self._frame = None
        return self.env.reset(task, seed, self.disturbance)  # SimAthena.start, with the disturbance

    def image(self) -> np.ndarray:
        if self._frame is None or self._frame[0] != self.env.t:  # rendered once per tick
            self._frame = (self.env.t, self.robot.image())
        return self._frame[1]

    def joint_positions(self) -> np.ndarray:
        return self.robot.joint_positions()

    def joint_velocities(self) -> np.ndarray:
        return self.robot.joint_velocities()

    def state(self) -> np.ndarray:
        return self.robot.state()

    def apply(self, targets: np.ndarray) -> None:
        q = self.robot.joint_positions()
        self.frames.append(self.image())
        self.states.append(self.robot.state())
        self.commands.append(np.asarray(targets, dtype=np.float64))
        self.labels.append(expert_label(self.env.spec, self.env.t, q, self.control_hz))
        self.robot.apply(targets)


def terminal_judge(task: str, seed: int, instruction: str, sim_says: bool) -> bool:
    """Ask a person whether the episode succeeded (the seed's `input("Task successful? (y/n)")`)."""
    from vla.learn.dataset import LoopError

    while True:
        try:
            answer = input(f"{task} seed {seed} ({instruction!r}): success? [y/n] ").strip().lower()
        except EOFError:
            raise LoopError(
                "learn.judge=human: no answer on standard input (not a terminal?); the episodes recorded so "
                "far are kept: rerun on a terminal with the same output_dir, or use learn.judge=sim"
            ) from None
        if answer in ("y", "yes", "n", "no"):
            return answer.startswith("y")
        print("answer y or n")


def episode_record(recorder: RecordingRobot, spec, labels: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """The episode in `vla.data.isaac.write_isaac_episode`'s form. `labels`: "expert" (DAgger: the
    expert's action at each visited state) or "executed" (the commands that passed the safety filter)."""
    actions = np.asarray(recorder.labels if labels == "expert" else recorder.commands, dtype=np.float32)
    hz = recorder.control_hz
    metadata = {
        "task_description": spec.description(),
        "instructions": spec.phrasings,
        "success": outcome["success"],
        "fps": hz,
        "joint_names": list(JOINT_NAMES),
        "state_names": list(STATE_NAMES),
        "seed": spec.seed,
        "task": spec.task,
        "side": spec.side,
        "color": spec.color,
        "image_size": recorder.env.robot.sim.image_size,
        "camera": recorder.env.robot.sim.camera,
        "num_steps": len(actions),
        "labels": labels,
        "disturbance": None if recorder.env.disturbance is None else recorder.env.disturbance.record(),
        **{k: v for k, v in outcome.items() if k != "success"},
    }
    return {
        "images": recorder.frames,
        "actions": actions,
        "states": np.asarray(recorder.states, dtype=np.float32),
        "timestamps": np.arange(len(actions), dtype=np.float64) / hz,
        "metadata": metadata,
    }


def record_rollouts(
    dataset: VersionedDataset,
    round_index: int,
    learn: LearnSettings,
    recorder: RecordingRobot,
    client,
    safety,
    control,
    server_metadata: dict,
    mixing=None,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Drive every (task, seed) of the round not yet on disk and write it; returns the counts."""
    from vla.deploy.controller import run_episode

    labels = "expert" if learn.relabel == "dagger" else "executed"
    done = dataset.recorded(round_index)
    counts = {"episodes": 0, "successes": 0, "sim_successes": 0, "expert_requests": 0, "requests": 0}
    for task in learn.tasks:
        for seed in learn.round_seeds(round_index):
            name = episode_name(task, seed)
            if name in done:
                continue
            spec = recorder.start(task, seed)
            meta = {"task": task, "seed": seed} if server_metadata.get("reads_meta") else None
            result = run_episode(
                recorder, client, safety, control, spec.instruction, spec.num_steps, server_metadata, meta
            )
            details = recorder.env.success_details()
            sim_says = result["events"]["gave_up"] == 0 and details["success"]
            success = judge(task, seed, spec.instruction, sim_says) if judge else sim_says
            drivers = [d for _, d in (mixing.decisions.get((task, seed), []) if mixing else [])]
            outcome = {
                "success": bool(success),
                "judge": "human" if judge else "sim",
                "sim_success": bool(sim_says),
                "success_value": details["value"],
                "round": round_index,
                "relabel": learn.relabel,
                "expert_requests": drivers.count("expert"),
                "requests": result["events"]["requests"],
                "events": result["events"],
                "safety_interventions": result["interventions"],
            }
            extra = {"executed": np.asarray(recorder.commands, dtype=np.float32)}
            dataset.write_episode(round_index, name, episode_record(recorder, spec, labels, outcome), extra)
            log.info("round %d %s seed %d: %s", round_index, task, seed, "success" if success else "failure")
    for folder in sorted(dataset.episodes_dir(round_index).iterdir()):
        if folder.name.startswith("."):
            continue
        meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        counts["episodes"] += 1
        counts["successes"] += int(bool(meta["success"]))
        counts["sim_successes"] += int(bool(meta.get("sim_success", meta["success"])))
        counts["expert_requests"] += int(meta.get("expert_requests", 0))
        counts["requests"] += int(meta.get("requests", 0))
    return counts
