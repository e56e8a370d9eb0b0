"""Load Isaac Lab recorder / robomimic HDF5 demos (`data=hdf5 data.root=FILE_OR_DIR`) into `Episode`s.

The layout (Isaac Lab's `HDF5DatasetFileHandler`, robomimic's dataset format): a `data` group with
attributes `total` (steps) and `env_args` (JSON, with `env_name`); one group `data/demo_N` per demo
with attributes `num_samples` and, when recorded, `success` and `seed`; datasets `actions` [T, D] and
`obs/<key>` (images uint8 [T, H, W, 3], state vectors [T, k]; Isaac Lab nests observation groups, e.g.
`obs/policy/joint_pos`, read as key `policy/joint_pos`); `states/...` and `initial_state/...` (the
simulator's state, not read).

Keys: `camera` (an image obs key; default the first in name order, logged), `state_keys` (vector obs
keys concatenated in that order; default every vector obs key in name order), `action_key` (default
`actions`). The instruction is `instruction` when given, else the demo's or file's recorded language
(`language_instruction` attribute, robomimic/LIBERO's `problem_info`), else the env name from
`env_args` (logged: set data.instruction for a real one). The camera's frames are read into memory;
the other cameras stay in the file (`H5Frames`) until `Episode.camera_frames` reads them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla.data.episodes import (
    DataError,
    Episode,
    LoadResult,
    OnError,
    SkippedEpisode,
    as_float_matrix,
    check_on_error,
    finish_loading,
    natural_sort_key,
    skip_or_raise,
)
from vla.data.limits import MAX_ARRAY_BYTES

log = logging.getLogger(__name__)

SUFFIXES = (".hdf5", ".h5")


class H5Frames:
    """A camera left in its HDF5 file: `load()` reads the dataset (uint8 [T, H, W, 3])."""

    def __init__(self, path: Path, dataset: str):
        self.path, self.dataset = path, dataset

    def load(self) -> np.ndarray:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                return np.asarray(f[self.dataset])
        except Exception as exc:
            raise DataError(f"{self.path}: cannot read {self.dataset}: {type(exc).__name__}: {exc}") from exc


def hdf5_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder (expected an .hdf5 file or a folder of them)")
    files = sorted((p for p in root.iterdir() if p.suffix.lower() in SUFFIXES), key=natural_sort_key)
    if not files:
        raise DataError(f"{root}: no {'/'.join(SUFFIXES)} files")
    return files


def _datasets(group, prefix: str = "") -> dict[str, Any]:
    """Every dataset under `group` by its path relative to it (nested groups joined with '/')."""
    import h5py

    out = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out.update(_datasets(item, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _text_attr(attrs, key: str) -> Any:
    value = attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def _recorded_instruction(data_group, demo) -> str | None:
    for attrs in (demo.attrs, data_group.attrs):
        for key in ("language_instruction", "instruction"):
            text = _text_attr(attrs, key)
            if isinstance(text, str) and text.strip():
                return text.strip()
    try:  # LIBERO's robomimic files: data.attrs["problem_info"] = {"language_instruction": ...}
        problem = json.loads(_text_attr(data_group.attrs, "problem_info") or "{}")
        text = problem.get("language_instruction")
        if isinstance(text, list):
            text = " ".join(text)
        return text.strip() if isinstance(text, str) and text.strip() else None
    except (json.JSONDecodeError, AttributeError):
        return None


def load_hdf5_demos(
    root: str | Path,
    *,
    camera: str | None = None,
    state_keys: Sequence[str] | None = None,
    action_key: str | None = None,
    instruction: str | None = None,
    on_error: OnError = "raise",
    expected_action_dim: int | None = None,
    expected_state_dim: int | None = None,
) -> LoadResult:
    """Load and validate every demo of every HDF5 file at `root` (see the module docstring)."""
    import h5py

    check_on_error(on_error)
    action_key = action_key or "actions"
    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    keys = {"camera": camera, "state_keys": None if state_keys is None else list(state_keys)}
    for path in hdf5_files(root):
        try:
            handle = h5py.File(path, "r")
        except Exception as exc:  # OSError for truncated / not-HDF5 files
            error = DataError(f"{path}: cannot open as HDF5: {type(exc).__name__}: {exc}")
            skip_or_raise(error, on_error, skipped, path.name, exc)
            continue
        with handle:
            if "data" not in handle or not isinstance(handle["data"], h5py.Group):
                error = DataError(
                    f"{path}: no 'data' group (keys: {list(handle)}); not an Isaac Lab/robomimic file"
                )
                skip_or_raise(error, on_error, skipped, path.name)
                continue
            data = handle["data"]
            try:
                env_args = json.loads(_text_attr(data.attrs, "env_args") or "{}")
            except json.JSONDecodeError as exc:
                error = DataError(f"{path}: data.attrs['env_args'] is not JSON: {exc}")
                skip_or_raise(error, on_error, skipped, path.name, exc)
                continue
            names = sorted(
                (k for k in data if isinstance(data[k], h5py.Group)), key=lambda k: natural_sort_key(Path(k))
            )
            for name in names:
                episode_id = f"{path.name}#{name}"
                try:
                    episodes.append(
                        _demo(path, data, name, episode_id, keys, action_key, instruction, env_args)
                    )
                except DataError as error:
                    skip_or_raise(error, on_error, skipped, episode_id)
    return finish_loading(
        episodes,
        skipped,
        expected_action_dim=expected_action_dim,
        expected_state_dim=expected_state_dim,
        on_error=on_error,
        empty=f"{root}: no usable demos",
    )


def _read(dataset, where: str, key: str) -> np.ndarray:
    nbytes = int(np.prod(dataset.shape, dtype=object)) * dataset.dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(
            f"{where}: {key!r} is {nbytes / 2**30:.1f} GiB; at most {MAX_ARRAY_BYTES / 2**30:.0f} GiB"
        )
    try:
        return np.asarray(dataset)
    except Exception as exc:  # a damaged chunk
        raise DataError(f"{where}: cannot read {key!r}: {type(exc).__name__}: {exc}") from exc


def _demo(
    path: Path,
    data,
    name: str,
    episode_id: str,
    keys: dict[str, Any],
    action_key: str,
    instruction: str | None,
    env_args: dict[str, Any],
) -> Episode:
    demo = data[name]
    where = f"demo {episode_id!r} ({path})"
    if action_key not in demo:
        raise DataError(f"{where}: missing dataset {action_key!r} (the demo has {sorted(demo)})")
    actions = as_float_matrix(_read(demo[action_key], where, action_key), key=action_key, where=where)
    steps = len(actions)
    declared = demo.attrs.get("num_samples")
    if declared is not None and int(declared) != steps:
        raise DataError(f"{where}: num_samples is {int(declared)} but {action_key!r} has {steps} steps")
    if steps == 0:
        raise DataError(f"{where}: {action_key!r} has no steps")
    import h5py

    # Isaac Lab records the policy observation group: a group of terms, or one dataset when the group
    # concatenates its terms (then its only key is "obs").
    obs = demo.get("obs")
    obs = _datasets(obs) if isinstance(obs, h5py.Group) else {"obs": obs} if obs is not None else {}
    images = sorted(k for k, d in obs.items() if d.ndim == 4 and d.shape[-1] == 3)
    vectors = sorted(k for k, d in obs.items() if d.ndim in (1, 2))
    if not images:
        raise DataError(f"{where}: no image observation (uint8 [T, H, W, 3]) among obs keys {sorted(obs)}")
    if keys["camera"] is None:
        keys["camera"] = images[0]
        log.info("data.camera: %s (the first of the image observations %s)", images[0], images)
    camera = keys["camera"]
    if camera not in images:
        raise DataError(f"{where}: data.camera={camera!r} is not an image observation; the demo has {images}")
    if keys["state_keys"] is None:
        keys["state_keys"] = vectors
        log.info("data.state_keys: %s (every vector observation, in name order)", vectors)
    missing = [k for k in keys["state_keys"] if k not in vectors]
    if missing:
        raise DataError(f"{where}: data.state_keys {missing} not among the vector observations {vectors}")
    for key in [camera, *keys["state_keys"]]:
        if len(obs[key]) != steps:
            raise DataError(f"{where}: obs {key!r} has {len(obs[key])} steps, {action_key!r} has {steps}")
    frames = _read(obs[camera], where, f"obs/{camera}")
    if frames.dtype != np.uint8:
        raise DataError(f"{where}: obs {camera!r} must be uint8 RGB, got {frames.dtype}")
    states = [
        as_float_matrix(_read(obs[k], where, k).reshape(steps, -1), key=f"obs/{k}", where=where)
        for k in keys["state_keys"]
    ]
    states = np.concatenate(states, axis=1) if states else np.zeros((steps, 0), dtype=np.float32)
    text = instruction or _recorded_instruction(data, demo)
    if text is None:
        env_name = env_args.get("env_name") if isinstance(env_args, dict) else None
        if not isinstance(env_name, str) or not env_name.strip():
            raise DataError(f"{where}: the file records no instruction or env name; set data.instruction")
        text = env_name.strip()
    success = demo.attrs.get("success")
    return Episode(
        episode_id=episode_id,
        source="hdf5",
        path=path,
        instruction=text,
        instructions=[text],
        actions=actions,
        states=states,
        success=None if success is None else bool(np.asarray(success).item()),
        frames=frames,
        camera=camera,
        cameras={k: H5Frames(path, f"data/{name}/obs/{k}") for k in images if k != camera},
        metadata={
            "demo": name,
            "env_args": env_args,
            "state_keys": list(keys["state_keys"]),
            "seed": None if demo.attrs.get("seed") is None else int(demo.attrs["seed"]),
        },
    )
