"""The `meta/` side of a LeRobotDataset v3: the layout's path templates (LeRobot's
`lerobot/datasets/utils.py`), reading info.json, the tasks and the episode table (`vla.data.lerobot`),
and the statistics of meta/stats.json, computed exactly over all frames (`vla.data.lerobot_writer`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from vla.data.limits import DataError, load_json

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # files per chunk folder (LeRobot's DEFAULT_CHUNK_SIZE)
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # the q01 ... q99 of LeRobot's stats.json


def resolve_root(root: str | Path) -> Path:
    """`root` as a local dataset folder. A hub id (`owner/name`) that is not a local folder is an error
    saying how to get it: this reader never downloads (training machines here have no hub access)."""
    path = Path(root)
    if path.is_dir():
        return path
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(root)):
        raise DataError(
            f"data.root={root}: no such folder; to use the hub dataset {root}, download it where a network "
            f"exists (huggingface-cli download --repo-type dataset {root} --local-dir DIR) and pass data.root=DIR"
        )
    raise DataError(f"{root}: not a folder (expected a LeRobotDataset v3 folder with meta/info.json)")


def read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DataError(f"{root}: missing {path}; not a LeRobotDataset (v3 keeps its metadata in meta/)")
    info = load_json(path, str(root))
    if not isinstance(info, dict):
        raise DataError(f"{path}: must hold a JSON object")
    missing = [k for k in ("codebase_version", "fps", "features", "data_path") if k not in info]
    if missing:
        raise DataError(f"{path}: missing keys {missing}")
    version = str(info["codebase_version"])
    if not version.startswith("v3"):
        raise DataError(
            f"{path}: codebase_version {version}; this reader reads v3 datasets (convert a v2.1 dataset with "
            "LeRobot's lerobot.datasets.v30.convert_dataset_v21_to_v30)"
        )
    if not isinstance(info["features"], dict) or not all(
        isinstance(f, dict) for f in info["features"].values()
    ):
        raise DataError(f"{path}: 'features' must map each key to its dtype/shape")
    return info


def read_parquet(path: Path, where: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{where}: missing {path}")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # ArrowInvalid for truncated or corrupt files, KeyError-like for columns
        raise DataError(f"{where}: cannot read {path}: {type(exc).__name__}: {exc}") from exc


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task. LeRobot writes a pandas frame indexed by the task string (column `task` or
    pandas' `__index_level_0__`)."""
    path = root / "meta" / "tasks.parquet"
    table = read_parquet(path, str(root))
    names = table.column_names
    text = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if "task_index" not in names or text is None:
        raise DataError(f"{path}: expected columns task_index and task, found {names}")
    return dict(zip(table["task_index"].to_pylist(), table[text].to_pylist(), strict=True))


def read_episode_table(root: Path) -> list[dict[str, Any]]:
    """The rows of meta/episodes (all files, in episode order), without the per-episode statistics."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DataError(f"{root}: no episode table (meta/episodes/chunk-*/file-*.parquet)")
    rows = []
    for path in files:
        table = read_parquet(path, str(root))
        table = table.select([c for c in table.column_names if not c.startswith("stats/")])
        rows.extend(table.to_pylist())
    for row in rows:
        for key in ("episode_index", "length", "data/chunk_index", "data/file_index"):
            if not isinstance(row.get(key), int):
                raise DataError(
                    f"{root}/meta/episodes: a row lacks an integer {key!r}: {row.get('episode_index')}"
                )
    return sorted(rows, key=lambda row: row["episode_index"])


def vector_stats(values: np.ndarray) -> dict[str, Any]:
    """Statistics of [N, D] values over all N frames (not averaged per episode)."""
    values = np.asarray(values, dtype=np.float64)
    stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": [len(values)],
    }
    for q in QUANTILES:
        stats[f"q{round(q * 100):02d}"] = np.quantile(values, q, axis=0)
    return {k: v if isinstance(v, list) else v.tolist() for k, v in stats.items()}


class ImageStats:
    """Per-channel statistics of uint8 frames in [0, 1], exact: integer sums and a 256-level histogram."""

    def __init__(self) -> None:
        self.histogram = np.zeros((3, 256), dtype=np.int64)
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        self.frames += len(frames)
        for c in range(3):
            self.histogram[c] += np.bincount(frames[..., c].ravel(), minlength=256)

    def result(self) -> dict[str, Any]:
        levels = np.arange(256, dtype=np.float64)
        n = self.histogram.sum(axis=1)  # pixels per channel
        mean = (self.histogram * levels).sum(axis=1) / n
        var = (self.histogram * (levels - mean[:, None]) ** 2).sum(axis=1) / n
        cumulative = np.cumsum(self.histogram, axis=1)
        stats: dict[str, Any] = {
            "min": [float(np.flatnonzero(h)[0]) for h in self.histogram],
            "max": [float(np.flatnonzero(h)[-1]) for h in self.histogram],
            "mean": mean,
            "std": np.sqrt(var),
        }
        for q in QUANTILES:  # numpy's default (linear) quantile of the sorted pixel values
            values = []
            for c in range(3):
                position = q * (n[c] - 1)
                low, high = int(np.floor(position)), int(np.ceil(position))
                v_low = np.searchsorted(cumulative[c], low, side="right")
                v_high = np.searchsorted(cumulative[c], high, side="right")
                values.append(v_low + (position - low) * (v_high - v_low))
            stats[f"q{round(q * 100):02d}"] = values
        # LeRobot's image statistics: [3, 1, 1] in [0, 1].
        out = {
            k: [[[float(v) / 255.0]] for v in np.asarray(vals, dtype=np.float64)] for k, vals in stats.items()
        }
        out["count"] = [self.frames]
        return out
