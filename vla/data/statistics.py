"""Episode-level train/val split, and dataset statistics in OpenVLA's `dataset_statistics.json` format.

The file maps a dataset key to `{"action": {mean, std, max, min, q01, q99, mask}, "proprio": {mean, std,
max, min, q01, q99}, "num_transitions", "num_trajectories"}`, every statistic a list with one float per
dimension, as OpenVLA's `get_dataset_statistics` / `save_dataset_statistics` write it. OpenVLA
un-normalizes predicted actions with q01/q99 on the dimensions where `mask` is True and passes the others
(e.g. a binary gripper) through unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from vla.data.episodes import DataError, Episode

logger = logging.getLogger(__name__)

# The order OpenVLA writes them in.
STATISTIC_KEYS = ("mean", "std", "max", "min", "q01", "q99")
DATASET_KEYS = ("action", "proprio", "num_transitions", "num_trajectories")


class ProprioStatistics(TypedDict):
    mean: list[float]
    std: list[float]
    max: list[float]
    min: list[float]
    q01: list[float]
    q99: list[float]


class ActionStatistics(ProprioStatistics):
    mask: list[bool]  # True: normalized; False: passed through (gripper-like dimensions)


class DatasetStatistics(TypedDict):
    action: ActionStatistics
    proprio: ProprioStatistics
    num_transitions: int
    num_trajectories: int


def split_episodes(
    episodes: Sequence[Episode], val_fraction: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """Split whole episodes into (train, val), each in the input order.

    The split depends only on the episode ids, `val_fraction` and `seed` (not on the input order), so
    the same data and seed always give the same split. The validation split gets val_fraction * n
    episodes rounded half up, but at least one, and the train split keeps at least one; a single
    episode goes to train. `val_fraction=0` gives an empty validation split.

    Episodes whose metadata names the same `split_group` (a string; e.g. the simulator's counterfactual
    twins of one scene) go to the same side, so validation never shows a scene that training saw; then
    the validation split gets whole groups until it holds at least that many episodes. Without groups
    (every episode its own) the split is the plain one above.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not episodes:
        raise DataError("no episodes to split")
    ids = [episode.episode_id for episode in episodes]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"episode ids must be unique to split by episode; repeated: {duplicates}")
    num_val = 0
    if val_fraction > 0:
        if len(ids) == 1:
            logger.warning("Only one episode: it goes to train and the validation split is empty")
        else:
            num_val = min(max(math.floor(val_fraction * len(ids) + 0.5), 1), len(ids) - 1)
    groups: dict[str, list[str]] = {}
    for episode in episodes:
        group = (episode.metadata or {}).get("split_group")
        groups.setdefault(group if isinstance(group, str) else episode.episode_id, []).append(
            episode.episode_id
        )
    keys = sorted(groups)
    val_ids: set[str] = set()
    for i in np.random.default_rng(seed).permutation(len(keys)):
        if len(val_ids) >= num_val:
            break
        if len(val_ids) + len(groups[keys[i]]) < len(ids):  # train keeps at least one episode
            val_ids.update(groups[keys[i]])
    if num_val and not val_ids:
        logger.warning(
            "Every split_group is too large to leave train an episode: the validation split is empty"
        )
    train = [episode for episode in episodes if episode.episode_id not in val_ids]
    val = [episode for episode in episodes if episode.episode_id in val_ids]
    return train, val


def compute_statistics(episodes: Sequence[Episode], *, mask_dims: Iterable[int] = ()) -> DatasetStatistics:
    """OpenVLA's statistics of the actions and proprio states over every step of `episodes`.

    Compute them on the train split only. `mask_dims` are the action dimensions left un-normalized
    (mask False), e.g. gripper dimensions; negative indices count from the end. q01/q99 are
    `np.quantile(..., 0.01 / 0.99)` over all steps (linear interpolation); std is the population std.
    """
    if not episodes:
        raise DataError("no episodes to compute statistics on")
    for name in ("action_dim", "state_dim"):
        reference = getattr(episodes[0], name)
        for episode in episodes:
            if getattr(episode, name) != reference:
                raise DataError(
                    f"episode {episode.episode_id!r}: {name} {getattr(episode, name)} differs from "
                    f"{reference} in episode {episodes[0].episode_id!r}"
                )
    # float64 so sums over millions of steps do not lose precision.
    actions = np.concatenate([episode.actions for episode in episodes]).astype(np.float64)
    states = np.concatenate([episode.states for episode in episodes]).astype(np.float64)
    action_dim = actions.shape[1]
    mask = [True] * action_dim
    for dim in mask_dims:
        if not -action_dim <= dim < action_dim:
            raise ValueError(f"mask_dims entry {dim} is out of range for action dimension {action_dim}")
        mask[dim] = False
    return DatasetStatistics(
        action=ActionStatistics(**_summary(actions), mask=mask),
        proprio=ProprioStatistics(**_summary(states)),
        num_transitions=len(actions),
        num_trajectories=len(episodes),
    )


def _summary(values: np.ndarray) -> dict[str, list[float]]:
    return {
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "min": values.min(axis=0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def save_statistics(path: str | Path, stats_by_key: dict[str, DatasetStatistics]) -> None:
    """Write `{dataset_key: statistics}` to `path` as JSON, atomically (temp file + os.replace).

    A reader never sees a half-written file, and a crash mid-write leaves any previous file intact.
    """
    path = Path(path)
    validate_statistics(stats_by_key, source=f"statistics to save to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(stats_by_key, indent=2, allow_nan=False)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes the file private; the statistics are not secret
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_statistics(path: str | Path) -> dict[str, DatasetStatistics]:
    """Read and validate a `dataset_statistics.json`; errors name the file, dataset key and missing key."""
    path = Path(path)
    try:
        stats_by_key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such statistics file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON statistics file: {exc}") from exc
    validate_statistics(stats_by_key, source=str(path))
    return stats_by_key


def validate_statistics(stats_by_key: Any, *, source: str) -> None:
    """Check the structure of `{dataset_key: statistics}`; `source` (a file name) starts each error."""
    if not isinstance(stats_by_key, dict) or not stats_by_key:
        raise DataError(f"{source}: expected a non-empty object mapping dataset keys to statistics")
    for dataset_key, stats in stats_by_key.items():
        where = f"{source}: dataset {dataset_key!r}"
        _require_keys(stats, DATASET_KEYS, where)
        for count_key in ("num_transitions", "num_trajectories"):
            count = stats[count_key]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise DataError(f"{where}: {count_key!r} must be a non-negative integer, got {count!r}")
        for group in ("action", "proprio"):
            keys = STATISTIC_KEYS + (("mask",) if group == "action" else ())
            _require_keys(stats[group], keys, f"{where} -> {group!r}")
            lengths = set()
            for key in STATISTIC_KEYS:
                values = stats[group][key]
                if not isinstance(values, list) or not all(_is_finite_number(v) for v in values):
                    raise DataError(f"{where} -> {group!r} -> {key!r}: expected a list of finite numbers")
                lengths.add(len(values))
            if len(lengths) != 1:
                raise DataError(f"{where} -> {group!r}: statistics have different lengths {sorted(lengths)}")
        mask = stats["action"]["mask"]
        if not isinstance(mask, list) or not all(isinstance(m, bool) for m in mask):
            raise DataError(f"{where} -> 'action' -> 'mask': expected a list of true/false")
        if len(mask) != len(stats["action"]["mean"]):
            raise DataError(
                f"{where} -> 'action' -> 'mask': {len(mask)} entries "
                f"for {len(stats['action']['mean'])} dimensions"
            )


def _require_keys(value: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object, got {type(value).__name__}")
    for key in keys:
        if key not in value:
            raise DataError(f"{where}: missing key {key!r}")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
