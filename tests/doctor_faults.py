"""The data doctor's seeded fault suite (tests/test_doctor.py): a small clean dataset built in memory,
the faults injected into it, each with the check meant to flag it, and writers of episodes to files."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vla.data.episodes import Episode
from vla.data.isaac import write_isaac_episode
from vla.data.statistics import compute_statistics, save_statistics

# A small clean dataset that behaves like robot data: 40 episodes of 25 steps at 10 Hz (1,000 frames,
# so a fault in under 10 frames stays outside q01..q99), joint targets in radians following smooth
# sines, a small-range wrist, a 0/1 gripper (a7, masked as OpenVLA masks grippers), 6 joint-position
# states, 4 instructions with 10 episodes each.
EPISODES, STEPS, FPS = 40, 25, 10.0
INSTRUCTIONS = ["pick up the cube", "open the drawer", "push the red button", "wave the left arm"]
GRIPPER = 7
MASK = [GRIPPER]
KEY = "sim_robot"


def clean_episode(i: int) -> Episode:
    rng = np.random.default_rng(i)
    t = np.arange(STEPS) / FPS
    amplitude = np.r_[rng.uniform(0.3, 1.2, 5), rng.uniform(0.05, 0.15), rng.uniform(0.3, 1.2)]
    frequency, phase = rng.uniform(0.3, 0.6, 7), rng.uniform(0, 2 * np.pi, 7)
    joints = amplitude * np.sin(2 * np.pi * frequency * t[:, None] + phase)
    gripper = (np.arange(STEPS) >= rng.integers(5, 20)).astype(float)
    actions = np.c_[joints, gripper].astype(np.float32)
    states = (joints[:, :6] + rng.normal(0, 0.01, (STEPS, 6))).astype(np.float32)
    return Episode(
        episode_id=f"ep{i:02d}",
        source="isaac",
        path=Path(f"/data/ep{i:02d}"),
        instruction=INSTRUCTIONS[i % 4],
        instructions=[INSTRUCTIONS[i % 4]],
        actions=actions,
        states=states,
        fps=FPS,
        timestamps=t.astype(np.float64),
        frames=rng.integers(0, 256, (STEPS, 8, 8, 3), dtype=np.uint8),
    )


class Fault(NamedTuple):
    check: str
    episodes: set[str]
    dim: str | None
    inject: Callable[[list[Episode], Path], dict]
    """Changes the episodes in place (or appends); returns extra arguments for `check` (base_stats)."""
    also: frozenset[str] = frozenset()
    """Other checks the fault rightly trips too (a one-frame outlier is also a jump); no other may."""


def _set(episodes, i, **changes):
    episodes[i] = dataclasses.replace(episodes[i], **changes)
    return {}


def _scaled(array, rows, column, factor=None, value=None, add=None):
    array = array.copy()
    if factor is not None:
        array[rows, column] *= factor
    if value is not None:
        array[rows, column] = value
    if add is not None:
        array[rows, column] += add
    return array


def _outlier(episodes, _):
    x = np.concatenate([e.actions[:, 5] for e in episodes]).astype(np.float64)
    q01, q99 = np.quantile(x, [0.01, 0.99])
    return _set(episodes, 7, actions=_scaled(episodes[7].actions, 12, 5, value=q99 + 5 * (q99 - q01)))


def _quantile_collapse(episodes, _):
    """a6 rests at 0 except for 3 frames of ep09 (0.5, 0.6, 0.7): 0.3% of the frames."""
    for i, e in enumerate(episodes):
        _set(episodes, i, actions=_scaled(e.actions, slice(None), 6, value=0.0))
    return _set(episodes, 9, actions=_scaled(episodes[9].actions, slice(0, 3), 6, value=[0.5, 0.6, 0.7]))


def _timestamps(i, change):
    def inject(episodes, _):
        times = episodes[i].timestamps.copy()
        change(times)
        return _set(episodes, i, timestamps=times)

    return inject


def _swap(times):
    times[[8, 9]] = times[[9, 8]]


def _gap(times):
    times[12:] += 0.5


def duplicate(episodes, _):
    episodes.append(dataclasses.replace(episodes[12], episode_id="ep12_copy"))
    return {}


def _instruction(i, text):
    return lambda episodes, _: _set(episodes, i, instruction=text, instructions=[text])


def _base_stats(episodes, tmp_path):
    stats = compute_statistics(episodes)
    for group in ("mean", "std", "max", "min", "q01", "q99", "mask"):
        stats["action"][group] = stats["action"][group][:7]
    save_statistics(tmp_path / "dataset_statistics.json", {KEY: stats})
    return {"base_stats": tmp_path}  # a folder holding dataset_statistics.json, as a run or a model


def _extra_dim(episodes, _):
    e = episodes[15]
    return _set(episodes, 15, actions=np.c_[e.actions, np.zeros(STEPS, np.float32)])


def _gripper_255(episodes, _):
    for i, e in enumerate(episodes):
        _set(episodes, i, actions=_scaled(e.actions, slice(None), GRIPPER, factor=255.0))
    return {}


FAULTS = {
    "nan_action": Fault(
        "non_finite",
        {"ep03"},
        "action/a3",
        lambda es, _: _set(es, 3, actions=_scaled(es[3].actions, 5, 3, value=np.nan)),
    ),
    "inf_state": Fault(
        "non_finite",
        {"ep04"},
        "state/s1",
        lambda es, _: _set(es, 4, states=_scaled(es[4].states, 7, 1, value=np.inf)),
    ),
    "degrees_episode": Fault(
        "unit_mixup",
        {"ep05"},
        "action/a1",
        lambda es, _: _set(es, 5, actions=_scaled(es[5].actions, slice(None), 1, factor=180 / np.pi)),
    ),
    "degrees_from_step_20": Fault(
        "jump",
        {"ep06"},
        "action/a3",
        lambda es, _: _set(es, 6, actions=_scaled(es[6].actions, slice(20, None), 3, factor=180 / np.pi)),
        also=frozenset({"unit_mixup", "outlier"}),  # 5 frames in degrees: outliers too
    ),
    "outlier_frame": Fault("outlier", {"ep07"}, "action/a5", _outlier, also=frozenset({"jump"})),
    "dead_state_sensor": Fault(
        "frozen",
        {"ep08"},
        "state/s2",
        lambda es, _: _set(es, 8, states=_scaled(es[8].states, slice(None), 2, value=es[8].states[0, 2])),
    ),
    "q01_equals_q99": Fault("quantile_collapse", {"ep09"}, "action/a6", _quantile_collapse),
    "gripper_0_255": Fault(
        "gripper_range", {f"ep{i:02d}" for i in range(EPISODES)}, f"action/a{GRIPPER}", _gripper_255
    ),
    "timestamps_backwards": Fault("timestamp_order", {"ep10"}, None, _timestamps(10, _swap)),
    "timestamps_gap": Fault("timestamp_gap", {"ep11"}, None, _timestamps(11, _gap)),
    "duplicated_episode": Fault("duplicate", {"ep12", "ep12_copy"}, None, duplicate),
    "frames_copied": Fault(
        "duplicate_frames", {"ep20", "ep21"}, None, lambda es, _: _set(es, 20, frames=es[21].frames.copy())
    ),
    "rare_instruction": Fault("instruction_rare", {"ep13"}, None, _instruction(13, "wave at the camera")),
    "instruction_variant": Fault(
        "instruction_variant",
        {"ep14", "ep02", "ep06"},
        None,
        _instruction(14, "Push the red button."),
        also=frozenset({"instruction_rare"}),
    ),
    "extra_action_dim": Fault("dim_mismatch", {"ep15"}, None, _extra_dim),
    "base_has_7_actions": Fault("base_action_dim", set(), None, _base_stats),
}


def write_folders(episodes: list[Episode], root: Path) -> None:
    for e in episodes:
        metadata = {"task_description": e.instruction, "success": True, "fps": e.fps}
        write_isaac_episode(
            {
                "images": e.frames,
                "actions": e.actions,
                "states": e.states,
                "timestamps": e.timestamps,
                "metadata": metadata,
            },
            root / e.episode_id,
        )


def write_isaac_lab_hdf5(path: Path, episodes: list[Episode], wrist_short: int | None = None) -> None:
    """Isaac Lab's recorder layout: data/demo_N/{actions, obs/joint_pos, obs/front_rgb, obs/wrist_rgb}."""
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Isaac-Stack-Cube-Franka-v0"})
        data.attrs["total"] = sum(e.num_steps for e in episodes)
        for i, e in enumerate(episodes):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = e.num_steps
            demo.attrs["success"] = True
            demo["actions"] = e.actions
            demo["obs/joint_pos"] = e.states
            demo["obs/front_rgb"] = e.frames
            demo["obs/wrist_rgb"] = e.frames[: e.num_steps - 2] if i == wrist_short else e.frames
