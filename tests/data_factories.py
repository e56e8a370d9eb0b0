"""Small synthetic datasets in both seed formats, for tests (plain functions; reuse them freely).

Defaults follow the athena humanoid: 23 action dimensions (22 joints + gripper for pickle demos) and 47
proprio dimensions, with 32x32 images so a dataset builds in milliseconds.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ACTION_DIM = 23
STATE_DIM = 47
IMAGE_SIZE = 32


def random_image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_isaac_episode(
    episode_dir: Path,
    *,
    steps: int = 12,
    action_dim: int = ACTION_DIM,
    state_dim: int = STATE_DIM,
    image_size: int = IMAGE_SIZE,
    image_format: str = "png",
    success: bool = True,
    seed: int = 0,
    npz_name: str = "episode_data.npz",
    state_key: str = "states",
    timestamps: bool = True,
    metadata: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Write one Isaac episode folder; returns the arrays written (`actions`, `states`, `timestamps`).

    `metadata` replaces the default metadata.json content (instruction keys, success, fps, seed).
    """
    rng = np.random.default_rng(seed)
    episode_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        "actions": rng.normal(size=(steps, action_dim)).astype(np.float32),
        state_key: rng.normal(size=(steps, state_dim)).astype(np.float32),
    }
    if timestamps:
        arrays["timestamps"] = np.arange(steps, dtype=np.float64) / 30.0
    np.savez(episode_dir / npz_name, **arrays)
    if metadata is None:
        metadata = {
            "task_description": f"pick up the cube (task {seed})",
            "instructions": [f"pick up the cube {seed}", "grab the cube"],
            "task_descriptions": ["pick up the cube"],
            "success": success,
            "fps": 30,
            "seed": seed,
        }
    (episode_dir / "metadata.json").write_text(json.dumps(metadata))
    images_dir = episode_dir / "images"
    images_dir.mkdir(exist_ok=True)
    extension = {"png": "png", "jpeg": "jpg"}[image_format]
    for t in range(steps):
        # Unpadded numbers on purpose: the loader must sort frame_2 before frame_10.
        Image.fromarray(random_image(rng, image_size)).save(images_dir / f"frame_{t}.{extension}")
    return arrays


def make_isaac_dataset(
    root: Path,
    n_episodes: int = 4,
    steps: int = 12,
    action_dim: int = ACTION_DIM,
    state_dim: int = STATE_DIM,
    *,
    successes: list[bool] | None = None,
    image_format: str = "png",
) -> list[Path]:
    """Write `n_episodes` Isaac episode folders `episode_000`, ... under `root`; returns their paths."""
    successes = [True] * n_episodes if successes is None else successes
    paths = []
    for i in range(n_episodes):
        episode_dir = root / f"episode_{i:03d}"
        write_isaac_episode(
            episode_dir,
            steps=steps,
            action_dim=action_dim,
            state_dim=state_dim,
            success=successes[i],
            seed=i,
            image_format=image_format,
        )
        paths.append(episode_dir)
    return paths


def make_demo(
    n_frames: int = 12,
    arm_dim: int = ACTION_DIM - 1,
    state_dim: int = STATE_DIM,
    *,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    instruction: str = "wave the right hand",
) -> dict[str, Any]:
    """One teleop demo as the seed pickles hold it: `arm_dim` joint actions plus a scalar gripper."""
    rng = np.random.default_rng(seed)
    frames = [
        {
            "image": random_image(rng, image_size),
            "robot_state": rng.normal(size=state_dim).astype(np.float32),
            "action": rng.normal(size=arm_dim).astype(np.float32),
            "gripper": float(rng.integers(0, 2)),
        }
        for _ in range(n_frames)
    ]
    return {"instruction": instruction, "frames": frames, "timestamp": 1_700_000_000.0 + seed}


def make_pickle_demos(
    path: Path, n_demos: int = 3, n_frames: int = 12, **demo_kwargs: Any
) -> list[dict[str, Any]]:
    """Pickle a list of `n_demos` demos (seeds 0..n-1) to `path`; returns the demos."""
    demos = [make_demo(n_frames, seed=i, **demo_kwargs) for i in range(n_demos)]
    write_pickle(path, demos)
    return demos


def write_pickle(path: Path, payload: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(payload, protocol=protocol))


class CallOnUnpickle:
    """Pickles as a call `function(*args)`: what a hostile pickle does. Unpickling it must not run it."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def truncate_file(path: Path, keep_fraction: float = 0.5) -> None:
    """Cut `path` to a fraction of its size, as an interrupted write would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
