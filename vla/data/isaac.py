"""Load Isaac episode folders into `Episode`s (and write one: `write_isaac_episode`).

Layout: `ROOT/<episode>/metadata.json`, `ROOT/<episode>/episode_data.npz` (or `trajectory.npz`) with
`actions` [T, D], `states` (or `observations`) [T, S] and optional `timestamps` [T], and
`ROOT/<episode>/images/` with one PNG or JPEG per step. Frames stay on disk and are decoded on access.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vla.data.episodes import (
    IMAGE_SUFFIXES,
    DataError,
    Episode,
    LoadResult,
    OnError,
    SkippedEpisode,
    as_float_matrix,
    check_image_file,
    check_on_error,
    finish_loading,
    natural_sort_key,
    skip_or_raise,
)
from vla.data.limits import load_json, read_npz

NPZ_NAMES = ("episode_data.npz", "trajectory.npz")
STATE_KEYS = ("states", "observations")
# Where the training instruction comes from, in order of preference (see `episode_instructions`).
INSTRUCTION_KEYS = ("instructions", "task_description", "task_descriptions")


def load_isaac_episodes(
    root: str | Path,
    *,
    on_error: OnError = "raise",
    expected_action_dim: int | None = None,
    expected_state_dim: int | None = None,
) -> LoadResult:
    """Load and validate every episode folder under `root`, in natural name order.

    Args:
        root: the folder holding one sub-folder per episode (hidden folders and plain files are ignored).
        on_error: "raise" raises a `DataError` at the first bad episode; "skip" leaves bad episodes out,
            logs each, and lists them with the reason in `LoadResult.skipped`.
        expected_action_dim, expected_state_dim: required dimensions (e.g. the model's statistics);
            without them every episode must match the most common dimension.

    Raises `DataError` whatever `on_error` says when no usable episode is left. `success` comes from the
    metadata (None when absent); `data.success_only` is applied by `vla.data.quality.filter_episodes`.
    """
    check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per Isaac episode)")
    episode_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_sort_key
    )
    if not episode_dirs:
        raise DataError(f"{root}: no episode folders")

    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    for episode_dir in episode_dirs:
        try:
            metadata = read_metadata(episode_dir)
            episodes.append(_load_episode(episode_dir, metadata, _success(metadata, episode_dir)))
        except DataError as error:
            skip_or_raise(error, on_error, skipped, episode_dir.name)

    return finish_loading(
        episodes,
        skipped,
        expected_action_dim=expected_action_dim,
        expected_state_dim=expected_state_dim,
        on_error=on_error,
        empty=f"{root}: no usable episodes ({len(episode_dirs)} folders)",
    )


def read_metadata(episode_dir: Path) -> dict[str, Any]:
    """The episode's `metadata.json` as a dict, or a DataError naming the file."""
    path = episode_dir / "metadata.json"
    where = f"episode {episode_dir.name!r}"
    if not path.is_file():
        raise DataError(f"{where}: missing {path}")
    metadata = load_json(path, where)  # size and nesting bounded before parsing
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: {path} must hold a JSON object, got {type(metadata).__name__}")
    return metadata


def episode_instructions(metadata: dict[str, Any], where: str) -> list[str]:
    """Every distinct non-empty instruction in the metadata, the one to train on first.

    The first of `instructions` is preferred: those are written as commands to the robot, the way a
    user phrases them at inference. `task_description` (the generator's description of the task) comes
    next, then `task_descriptions`. All candidates are kept for instruction augmentation.
    """
    candidates: list[str] = []
    for key in INSTRUCTION_KEYS:
        if key not in metadata:
            continue
        value = metadata[key]
        values = [value] if key == "task_description" else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            expected = "a string" if key == "task_description" else "a list of strings"
            raise DataError(f"{where}: metadata key {key!r} must be {expected}, got {value!r}")
        candidates.extend(v.strip() for v in values)
    instructions = list(dict.fromkeys(c for c in candidates if c))  # ordered and de-duplicated
    if not instructions:
        raise DataError(f"{where}: metadata has no non-empty instruction in any of {list(INSTRUCTION_KEYS)}")
    return instructions


def _success(metadata: dict[str, Any], episode_dir: Path) -> bool | None:
    where = f"episode {episode_dir.name!r} ({episode_dir / 'metadata.json'})"
    if "success" not in metadata:
        return None
    if not isinstance(metadata["success"], bool):
        raise DataError(f"{where}: 'success' must be true or false, got {metadata['success']!r}")
    return metadata["success"]


def _load_episode(episode_dir: Path, metadata: dict[str, Any], success: bool | None) -> Episode:
    where = f"episode {episode_dir.name!r} ({episode_dir})"
    in_metadata = f"episode {episode_dir.name!r} ({episode_dir / 'metadata.json'})"
    instructions = episode_instructions(metadata, in_metadata)
    fps = None
    if "fps" in metadata:
        fps = metadata["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise DataError(f"{in_metadata}: 'fps' must be a positive number, got {fps!r}")
        fps = float(fps)
    if "joint_names" in metadata and not (
        isinstance(metadata["joint_names"], list) and all(isinstance(n, str) for n in metadata["joint_names"])
    ):
        raise DataError(f"{in_metadata}: 'joint_names' must be a list of strings")

    npz_path, arrays = _read_npz(episode_dir, where)
    in_npz = f"episode {episode_dir.name!r} ({npz_path})"
    if "actions" not in arrays:
        raise DataError(f"{in_npz}: missing key 'actions' (keys: {sorted(arrays)})")
    actions = as_float_matrix(arrays["actions"], key="actions", where=in_npz)
    num_steps = len(actions)
    if num_steps == 0:
        raise DataError(f"{in_npz}: 'actions' has no steps")
    state_key = next((key for key in STATE_KEYS if key in arrays), None)
    if state_key is None:
        states = np.zeros((num_steps, 0), dtype=np.float32)
    else:
        states = as_float_matrix(arrays[state_key], key=state_key, where=in_npz, num_rows=num_steps)
    timestamps = None
    if "timestamps" in arrays:
        timestamps = arrays["timestamps"]
        if timestamps.shape != (num_steps,) or not np.issubdtype(timestamps.dtype, np.number):
            raise DataError(
                f"{in_npz}: 'timestamps' must be numeric [{num_steps}], "
                f"got {timestamps.dtype} {timestamps.shape}"
            )
        if not np.isfinite(timestamps).all():
            raise DataError(f"{in_npz}: 'timestamps' has non-finite values (NaN/inf)")
        timestamps = timestamps.astype(np.float64)

    images_dir = episode_dir / "images"
    if not images_dir.is_dir():
        raise DataError(f"{where}: missing folder {images_dir}")
    frame_paths = sorted(
        (p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=natural_sort_key,
    )
    if len(frame_paths) != num_steps:
        raise DataError(
            f"{where}: {len(frame_paths)} images in {images_dir} but {num_steps} actions in {npz_path.name}"
        )
    for frame_path in frame_paths:
        check_image_file(frame_path, where=where)

    return Episode(
        episode_id=episode_dir.name,
        source="isaac",
        path=episode_dir,
        instruction=instructions[0],
        instructions=instructions,
        actions=actions,
        states=states,
        success=success,
        fps=fps,
        timestamps=timestamps,
        frame_paths=frame_paths,
        metadata=metadata,
    )


def _read_npz(episode_dir: Path, where: str) -> tuple[Path, dict[str, np.ndarray]]:
    npz_path = next((episode_dir / name for name in NPZ_NAMES if (episode_dir / name).is_file()), None)
    if npz_path is None:
        raise DataError(f"{where}: missing {' or '.join(NPZ_NAMES)}")
    with open(npz_path, "rb") as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise DataError(
                f"{where}: {npz_path.name} is a single .npy array, not an npz archive of named arrays"
            )
    # Each array's size is checked from its header before it is read; object arrays are refused.
    return npz_path, read_npz(npz_path, where)


def write_isaac_episode(episode: dict[str, Any], folder: Path) -> None:
    """Write one episode folder in the layout above (`folder` must not exist yet; callers that need
    atomicity write into a temporary folder and rename it).

    `episode`: `images` (T uint8 [H, W, 3]), `actions` [T, D], `states` [T, S], `timestamps` [T] and
    `metadata` (a JSON-serialisable dict).
    """
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    for t, image in enumerate(episode["images"]):
        # compress_level=1: PNG writing would otherwise cost more than rendering the frame.
        Image.fromarray(image).save(images_dir / f"frame_{t:06d}.png", compress_level=1)
    np.savez(
        folder / "episode_data.npz",
        actions=episode["actions"],
        states=episode["states"],
        timestamps=episode["timestamps"],
    )
    (folder / "metadata.json").write_text(json.dumps(episode["metadata"], indent=2), encoding="utf-8")
