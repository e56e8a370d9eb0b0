"""Write `Episode`s as a LeRobotDataset v3 (`scripts/convert_data.py`), the layout `vla.data.lerobot` and
LeRobot's own `LeRobotDataset(repo_id, root=...)` read:

    meta/info.json        codebase_version "v3.0", fps, features (dtype, shape, names), path templates
    meta/stats.json       min, max, mean, std, count, q01/q10/q50/q90/q99 per feature, exact over all frames
    meta/tasks.parquet    task_index, indexed by the task string (LeRobot reads it with pandas)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its rows and
                          video span are (data/*, dataset_from_index/to_index, videos/<key>/*)
    data/chunk-000/file-NNN.parquet            one row per frame: action, observation.state, timestamp,
                          frame_index, episode_index, index, task_index (and images, without video)
    videos/<key>/chunk-000/file-NNN.mp4        the frames of `episodes_per_file` episodes back to back

Frame i of an episode is shown at from_timestamp + i / fps in its MP4 (libx264, yuv420p, a keyframe
every 2 frames as LeRobot encodes): `timestamp` is frame_index / fps. Image statistics are per channel
in [0, 1] with shape [3, 1, 1], as LeRobot keeps them; their quantiles are exact (from the 256-level
histogram of every pixel). The dataset is written into a temporary sibling folder and renamed into
place: a failed conversion leaves nothing behind, and `out` is never half-written.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla.data.episodes import DataError, Episode
from vla.data.lerobot_meta import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    VIDEO_PATH,
    ImageStats,
    vector_stats,
)
from vla.data.video import encode_video

log = logging.getLogger(__name__)

INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def camera_key(name: str | None) -> str:
    """LeRobot's feature key for a camera: `observation.images.<name>` (a key already of that form is kept)."""
    name = name or "front"
    return name if name.startswith("observation.images.") else f"observation.images.{name}"


def _common_fps(episodes: Sequence[Episode], fps: float | None) -> float:
    if fps is not None:
        return float(fps)
    rates = {e.fps for e in episodes}
    if None in rates or len(rates) != 1:
        raise DataError(
            f"the episodes record frame rates {sorted(rates, key=str)}; pass one (convert_data's fps=) "
            "for the LeRobot dataset's single fps"
        )
    return float(rates.pop())


def _names(episodes: Sequence[Episode], dim: int, kind: str) -> list[str] | None:
    """The dimension names the source recorded (`action_names` / `state_names`, or an action's
    `joint_names`), when they fit."""
    metadata = episodes[0].metadata
    for key in (f"{kind}_names", "joint_names" if kind == "action" else None):
        names = metadata.get(key) if key else None
        if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def _cameras(episodes: Sequence[Episode]) -> list[tuple[str, str | None]]:
    """(LeRobot key, the episodes' camera name) of every camera all episodes have, the model's first."""
    first = episodes[0]
    names = [first.camera, *first.cameras]
    for episode in episodes:
        if [episode.camera, *episode.cameras] != names:
            raise DataError(
                f"episode {episode.episode_id!r} has cameras {[episode.camera, *episode.cameras]}, "
                f"episode {first.episode_id!r} has {names}: a LeRobot dataset has one set of cameras"
            )
    return [(camera_key(name), name) for name in names]


def _parquet_image(image: np.ndarray) -> dict[str, Any]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _write_camera(
    group: Sequence[Episode],
    key: str,
    name: str | None,
    tmp: Path,
    where: dict[str, int],
    fps: float,
    use_video: bool,
    codec: str,
    crf: int,
    stats: ImageStats,
    frame_shapes: dict[str, tuple[int, ...]],
) -> list:
    """Camera `name` of the file's episodes: one MP4 with their frames back to back (returns each
    episode's span in it), or with `use_video=False` each episode's frames as Parquet image cells."""
    cells: list = []

    def frames_of_each():
        for episode in group:
            frames = episode.camera_frames(name)
            shape = frame_shapes.setdefault(key, frames.shape[1:])
            if frames.shape[1:] != shape:
                raise DataError(
                    f"episode {episode.episode_id!r}: camera {name!r} frames are {frames.shape[1:]}, "
                    f"earlier episodes' {shape}: a LeRobot feature has one shape"
                )
            stats.add(frames)
            if not use_video:
                cells.append([_parquet_image(image) for image in frames])
            yield from frames

    if not use_video:
        for _ in frames_of_each():
            pass
        return cells
    video = tmp / VIDEO_PATH.format(video_key=key, **where)
    video.parent.mkdir(parents=True, exist_ok=True)
    encode_video(frames_of_each(), video, fps, codec=codec, crf=crf)
    spans, offset = [], 0
    for episode in group:
        spans.append({
            "chunk_index": where["chunk_index"],
            "file_index": where["file_index"],
            "from_timestamp": offset / fps,
            "to_timestamp": (offset + episode.num_steps) / fps,
        })  # fmt: skip
        offset += episode.num_steps
    return spans


def _frames_table(columns: dict[str, list]):
    """The data file's table: vectors as fixed-size float32 lists (what `datasets` writes for a
    LeRobot vector feature), images as {bytes, path} structs (`datasets.Image`), the index columns."""
    import pyarrow as pa

    arrays = {}
    for key, values in columns.items():
        if key in ("action", "observation.state"):
            type_ = pa.list_(pa.float32(), len(values[0]))
            arrays[key] = pa.array([np.asarray(v, dtype=np.float32) for v in values], type=type_)
        elif key == "timestamp":
            arrays[key] = pa.array(np.asarray(values, dtype=np.float32))
        elif key in INDEX_FEATURES:
            arrays[key] = pa.array(np.asarray(values, dtype=np.int64))
        else:
            arrays[key] = pa.array(values, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table(arrays)


def _tasks_table(tasks: list[str]):
    """meta/tasks.parquet as LeRobot writes it: a pandas frame of task_index indexed by the task."""
    import pandas as pd

    return pd.DataFrame(
        {"task_index": np.arange(len(tasks), dtype=np.int64)}, index=pd.Index(tasks, name="task")
    )


def write_lerobot_dataset(
    episodes: Sequence[Episode],
    out: str | Path,
    *,
    fps: float | None = None,
    robot_type: str | None = None,
    use_video: bool = True,
    episodes_per_file: int = 1000,
    codec: str = "libx264",
    crf: int = 18,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `episodes` (at least one) to the folder `out` as a LeRobotDataset v3; returns a summary.

    Cameras: the episodes' `camera` (the model's input) and `cameras`, as `observation.images.<name>`;
    `use_video=False` stores them as PNG images inside the Parquet files instead of MP4s. Every
    episode needs the same action and state sizes, cameras and frame size. `overwrite` replaces an
    existing `out` (only once the new dataset is complete)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not episodes:
        raise DataError("no episodes to write")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose a new folder (or overwrite=true to replace it)")
    fps = _common_fps(episodes, fps)
    first = episodes[0]
    for episode in episodes:
        if (episode.action_dim, episode.state_dim) != (first.action_dim, first.state_dim):
            raise DataError(
                f"episode {episode.episode_id!r} has action/state sizes {episode.action_dim}/{episode.state_dim}, "
                f"episode {first.episode_id!r} {first.action_dim}/{first.state_dim}: a LeRobot feature has one shape"
            )
    cameras = _cameras(episodes)
    tasks = list(dict.fromkeys(e.instruction for e in episodes))
    task_index = {task: i for i, task in enumerate(tasks)}
    has_state = first.state_dim > 0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        image_stats = {key: ImageStats() for key, _ in cameras}
        frame_shapes: dict[str, tuple[int, ...]] = {}
        episode_rows: list[dict[str, Any]] = []
        all_actions, all_states, all_index = [], [], []
        total = 0
        groups = [episodes[i : i + episodes_per_file] for i in range(0, len(episodes), episodes_per_file)]
        for file_number, group in enumerate(groups):
            chunk, file_index = divmod(file_number, CHUNKS_SIZE)
            where = {"chunk_index": chunk, "file_index": file_index}
            columns: dict[str, list] = (
                {"action": [], "observation.state": []} if has_state else {"action": []}
            )
            columns.update({name: [] for name in INDEX_FEATURES})
            if not use_video:
                columns.update({key: [] for key, _ in cameras})
            rows = [{"episode_index": len(episode_rows) + i} for i in range(len(group))]
            for key, name in cameras:
                spans = _write_camera(
                    group, key, name, tmp, where, fps, use_video, codec, crf, image_stats[key], frame_shapes
                )
                for row, span in zip(rows, spans):
                    if use_video:
                        row.update({f"videos/{key}/{k}": v for k, v in span.items()})
                    else:
                        columns[key].extend(span)
            for row, episode in zip(rows, group):
                steps = episode.num_steps
                columns["action"].extend(episode.actions)
                if has_state:
                    columns["observation.state"].extend(episode.states)
                columns["timestamp"].extend((np.arange(steps) / fps).astype(np.float32))
                columns["frame_index"].extend(range(steps))
                columns["episode_index"].extend([row["episode_index"]] * steps)
                columns["index"].extend(range(total, total + steps))
                columns["task_index"].extend([task_index[episode.instruction]] * steps)
                row.update(
                    {
                        "tasks": [episode.instruction],
                        "length": steps,
                        "data/chunk_index": chunk,
                        "data/file_index": file_index,
                        "dataset_from_index": total,
                        "dataset_to_index": total + steps,
                        "meta/episodes/chunk_index": 0,
                        "meta/episodes/file_index": 0,
                    }
                )
                if any(e.success is not None for e in episodes):
                    row["success"] = episode.success  # ours: LeRobot ignores it, data=lerobot reads it
                all_actions.append(episode.actions)
                all_states.append(episode.states)
                total += steps
            episode_rows.extend(rows)
            table = _frames_table(columns)
            path = tmp / DATA_PATH.format(**where)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            all_index.append(np.stack([np.asarray(columns[k], dtype=np.float64) for k in INDEX_FEATURES], 1))

        # meta/: episodes, tasks, stats, info.
        path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episode_rows), path)
        _tasks_table(tasks).to_parquet(tmp / "meta" / "tasks.parquet")

        features: dict[str, Any] = {
            "action": {"dtype": "float32", "shape": [first.action_dim], "names": _names(episodes, first.action_dim, "action")}
        }  # fmt: skip
        stats: dict[str, Any] = {"action": vector_stats(np.concatenate(all_actions))}
        if has_state:
            features["observation.state"] = {
                "dtype": "float32",
                "shape": [first.state_dim],
                "names": _names(episodes, first.state_dim, "state"),
            }
            stats["observation.state"] = vector_stats(np.concatenate(all_states))
        for key, _ in cameras:
            height, width, channels = frame_shapes[key]
            features[key] = {
                "dtype": "video" if use_video else "image",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
            }
            if use_video:
                features[key]["info"] = {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": "h264" if codec == "libx264" else codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": fps,
                    "video.channels": channels,
                    "has_audio": False,
                }
            stats[key] = image_stats[key].result()
        index_values = np.concatenate(all_index)
        for i, key in enumerate(INDEX_FEATURES):
            dtype = "float32" if key == "timestamp" else "int64"
            features[key] = {"dtype": dtype, "shape": [1], "names": None}
            stats[key] = vector_stats(index_values[:, i : i + 1])
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": len(episodes),
            "total_frames": total,
            "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500,
            "fps": int(fps) if float(fps).is_integer() else fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if use_video else None,
            "features": features,
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4), encoding="utf-8")
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4), encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"root": str(out), "episodes": len(episodes), "frames": total, "tasks": len(tasks), "fps": fps}
    summary["cameras"] = [key for key, _ in cameras]
    log.info(
        "wrote LeRobotDataset v3 %s: %d episodes, %d frames, cameras %s",
        out,
        len(episodes),
        total,
        summary["cameras"],
    )
    return summary


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` into `out` (replacing an old `out` only now), with the usual modes."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [tmp, *tmp.rglob("*")]:  # mkdtemp's folder is private (0700)
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
