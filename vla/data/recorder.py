"""Record demonstrations from any robot (or simulator) into the formats the DataModule trains on.

    recorder = DemonstrationRecorder(fps=25)
    recorder.start("pick up the red cube")
    while teleoperating:
        recorder.record(robot)          # anything with the four `RobotSource` methods
    recorder.stop(success=True)
    recorder.save("demos.pkl")                      # data=pickle data.root=demos.pkl
    recorder.save("episodes", format="isaac")       # data=isaac data.root=episodes

Each `record()` stores one frame: the RGB image, `robot_state` = joint positions ++ joint velocities,
`action` = the joint positions just observed, and the gripper state. The action of the step that
follows observation i is the next frame's joint positions (and gripper): the joint-position target the
operator drove the robot to. The pickle loader's default `next_action=True` makes that pairing; the Isaac
writer stores it directly. An episode of N frames therefore trains N-1 steps.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from vla.data.episodes import Episode
from vla.data.isaac import write_isaac_episode


class RecordingError(RuntimeError):
    """The recorder was used out of order (record before start, save while recording, ...) or was
    given a frame that does not fit the episode."""


@runtime_checkable
class RobotSource(Protocol):
    """What `DemonstrationRecorder.record` reads from; a robot driver, a simulator or a test double."""

    def get_rgb(self) -> np.ndarray:
        """The camera image: uint8 [H, W, 3] RGB (the same size for every frame of an episode)."""

    def get_joint_positions(self) -> np.ndarray:
        """[J] joint positions (rad), in the order the policy's actions use."""

    def get_joint_velocities(self) -> np.ndarray:
        """[J] joint velocities (rad/s), same order."""

    def get_gripper_state(self) -> float | np.ndarray:
        """Gripper opening: a scalar, [G] values, or an empty array for a robot without a gripper."""


@dataclass
class _Demo:
    instruction: str
    started: float  # time.time() at start(): the demo's `timestamp`
    images: list[np.ndarray] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    velocities: list[np.ndarray] = field(default_factory=list)
    grippers: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds since start()
    success: bool | None = None


class DemonstrationRecorder:
    """Collects demos with start / record / stop and writes them with save (see the module docstring).

    Args:
        fps: the recording rate, stored in Isaac metadata; None: estimated from the frame times.
        joint_names: optional names of the J joints, stored in Isaac metadata.
    """

    def __init__(self, fps: float | None = None, joint_names: list[str] | None = None):
        self.fps = fps
        self.joint_names = joint_names
        self.demos: list[_Demo] = []  # finished demos, in recording order
        self._current: _Demo | None = None
        self._clock = time.monotonic
        self._t0 = 0.0  # clock at start()

    @property
    def recording(self) -> bool:
        return self._current is not None

    def start(self, instruction: str) -> None:
        """Begin a demo of the task `instruction` (a non-empty imperative, e.g. "wave the right hand")."""
        if self._current is not None:
            raise RecordingError("start() called while recording; call stop() first")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        self._current = _Demo(instruction.strip(), started=time.time())
        self._t0 = self._clock()

    def record(self, source: RobotSource) -> None:
        """Read one frame from `source` and append it to the current demo."""
        demo = self._current
        if demo is None:
            raise RecordingError("record() called before start(instruction)")
        i = len(demo.images)
        image = np.asarray(source.get_rgb())
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RecordingError(
                f"frame {i}: get_rgb() must give uint8 [H, W, 3], got {image.dtype} {image.shape}"
            )
        positions = _vector(source.get_joint_positions(), f"frame {i}: get_joint_positions()")
        velocities = _vector(source.get_joint_velocities(), f"frame {i}: get_joint_velocities()")
        gripper = _vector(source.get_gripper_state(), f"frame {i}: get_gripper_state()")
        if len(velocities) != len(positions):
            raise RecordingError(
                f"frame {i}: {len(velocities)} joint velocities but {len(positions)} joint positions"
            )
        if i:
            for name, value, first in (
                ("image", image.shape, demo.images[0].shape),
                ("joint positions", positions.shape, demo.positions[0].shape),
                ("gripper state", gripper.shape, demo.grippers[0].shape),
            ):
                if value != first:
                    raise RecordingError(f"frame {i}: {name} shape {value} differs from frame 0's {first}")
        demo.images.append(image.copy())  # the source may reuse its buffer
        demo.positions.append(positions)
        demo.velocities.append(velocities)
        demo.grippers.append(gripper)
        demo.times.append(self._clock() - self._t0)

    def stop(self, success: bool | None = None) -> None:
        """End the current demo; `success` (True / False / None: unknown) is saved with it and read by
        `data.success_only`. A demo needs at least 2 frames (one training step)."""
        demo = self._current
        if demo is None:
            raise RecordingError("stop() called without start()")
        if success is not None and not isinstance(success, bool):
            raise ValueError(f"success must be True, False or None, got {success!r}")
        self._current = None
        if len(demo.images) < 2:
            raise RecordingError(
                f"empty episode: demo {demo.instruction!r} has {len(demo.images)} frame(s); at least 2 are "
                "needed (observation -> next joint target); it was discarded"
            )
        demo.success = success
        self.demos.append(demo)

    def to_pickle_demos(self) -> list[dict[str, Any]]:
        """The finished demos in the teleop pickle format `vla.data.pickle_demos` reads."""
        return [
            {
                "instruction": demo.instruction,
                "frames": [
                    {
                        "image": image,
                        "robot_state": np.concatenate([pos, vel]),
                        "action": pos,
                        "gripper": gripper,
                    }
                    for image, pos, vel, gripper in zip(
                        demo.images, demo.positions, demo.velocities, demo.grippers
                    )
                ],
                "timestamp": demo.started,
                "success": demo.success,
            }
            for demo in self.demos
        ]

    def to_episodes(self) -> list[Episode]:
        """The finished demos as in-memory `Episode`s (ids `recorded#<i>`), e.g. for `filter_episodes`.
        Unlike the loaders this does not reject NaN/inf: the quality filter reports those."""
        episodes = []
        for i, demo in enumerate(self.demos):
            arrays = self._steps(demo)
            episodes.append(
                Episode(
                    episode_id=f"recorded#{i}",
                    source="pickle",
                    path=Path("<recorder>"),
                    instruction=demo.instruction,
                    instructions=[demo.instruction],
                    actions=arrays["actions"],
                    states=arrays["states"],
                    success=demo.success,
                    timestamps=arrays["timestamps"],
                    frames=np.stack(arrays["images"]),
                )
            )
        return episodes

    def save(
        self, path: str | Path, format: Literal["pickle", "isaac"] = "pickle", *, overwrite: bool = False
    ) -> Path:
        """Write every finished demo, atomically (a temporary sibling renamed into place).

        pickle: one file holding the list of demos (`data=pickle data.root=PATH`).
        isaac: a folder of episode folders `episode_000000`, ... (`data=isaac data.root=PATH`).
        An existing `path` is replaced only with `overwrite=True`.
        """
        path = Path(path)
        if format not in ("pickle", "isaac"):
            raise ValueError(f"format={format!r} is not valid; choose one of ['pickle', 'isaac']")
        if self._current is not None:
            raise RecordingError("save() called while recording; call stop() first")
        if not self.demos:
            raise RecordingError("nothing to save: no finished demo (start, record, stop first)")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            if format == "pickle":
                with open(tmp, "wb") as handle:
                    pickle.dump(self.to_pickle_demos(), handle, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, path)
            else:
                tmp.mkdir()
                for i, demo in enumerate(self.demos):
                    write_isaac_episode(self._isaac_episode(demo), tmp / f"episode_{i:06d}")
                _replace_folder(tmp, path)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
        return path

    def _steps(self, demo: _Demo) -> dict[str, Any]:
        """Observation i (image, positions ++ velocities) paired with frame i+1's positions ++ gripper."""
        commands = [np.concatenate([pos, grip]) for pos, grip in zip(demo.positions, demo.grippers)]
        return {
            "images": demo.images[:-1],
            "states": np.stack(
                [np.concatenate(pv) for pv in zip(demo.positions, demo.velocities)][:-1]
            ).astype(np.float32),
            "actions": np.stack(commands[1:]).astype(np.float32),
            "timestamps": np.asarray(demo.times[:-1], dtype=np.float64),
        }

    def _isaac_episode(self, demo: _Demo) -> dict[str, Any]:
        arrays = self._steps(demo)
        fps = self.fps
        if fps is None and len(demo.times) > 1 and demo.times[-1] > demo.times[0]:
            fps = (len(demo.times) - 1) / (demo.times[-1] - demo.times[0])
        metadata: dict[str, Any] = {
            "task_description": demo.instruction,
            "instructions": [demo.instruction],
            "num_steps": len(arrays["actions"]),
            "timestamp": demo.started,
            "recorded_by": "vla.data.recorder.DemonstrationRecorder",
        }
        if demo.success is not None:
            metadata["success"] = demo.success
        if fps:
            metadata["fps"] = float(fps)
        if self.joint_names is not None:
            metadata["joint_names"] = list(self.joint_names)
        return {**arrays, "metadata": metadata}


def _replace_folder(tmp: Path, path: Path) -> None:
    """Put the written `tmp` at `path`; an old `path` is moved aside first, so readers see the old or
    the new folder, never a half-deleted one (as `vla.model.checkpoint.commit_folder`)."""
    if not path.exists():
        tmp.rename(path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    path.rename(old)
    tmp.rename(path)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def _vector(value: Any, what: str) -> np.ndarray:
    try:
        array = np.atleast_1d(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise RecordingError(f"{what} is not numeric: {exc}") from exc
    if array.ndim != 1:
        raise RecordingError(f"{what} must be 1-D, got shape {array.shape}")
    return array.copy()
