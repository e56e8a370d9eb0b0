"""Load a LeRobotDataset v3 (`data=lerobot data.root=DIR`) into `Episode`s.

The layout (LeRobot's `lerobot/datasets/utils.py`; `vla.data.lerobot_writer` writes the same):
`meta/info.json` (codebase_version "v3.*", fps, features, `data_path` / `video_path` templates),
`meta/tasks.parquet` (task_index and the task string), `meta/episodes/chunk-*/file-*.parquet` (one row
per episode: `length`, `data/chunk_index`, `data/file_index`, and per video key
`videos/<key>/chunk_index`, `file_index`, `from_timestamp`, `to_timestamp`), `data/chunk-*/file-*.parquet`
(one row per frame of several episodes: `episode_index`, `frame_index`, `timestamp`, `task_index` and
the features) and `videos/<key>/chunk-*/file-*.mp4` (several episodes back to back; an episode's frame
i is the one shown at from_timestamp + i / fps).

Features are chosen by key: `camera` (default the first visual feature: logged), `state_keys`
(concatenated in that order; default `observation.state` when there is one) and `action_key`
(default `action`). The training instruction is the episode's first frame's task; fps comes from
info.json; `success` from a boolean `success` column of the episode table when there is one (our
writer adds it; LeRobot itself records none). Video frames stay in their MP4 until the frame cache decodes them (`vla.data.video`);
frames stored as images inside the Parquet files (dtype "image") are decoded when loading. The other
visual features are kept, not decoded, in `Episode.cameras`.

Every problem is a `DataError` naming the file and episode; with `on_error="skip"` a bad episode (or
every episode of an unreadable data or video file) is left out and reported.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vla.data.episodes import (
    DataError,
    Episode,
    LoadResult,
    OnError,
    SkippedEpisode,
    as_float_matrix,
    check_on_error,
    finish_loading,
    skip_or_raise,
)
from vla.data.lerobot_meta import read_episode_table, read_info, read_parquet, read_tasks, resolve_root
from vla.data.limits import image_to_rgb8
from vla.data.video import VideoClip, frames_decode, probe_video

log = logging.getLogger(__name__)

VISUAL = ("video", "image")
# An episode's video span may differ from length / fps by rounding in the container; more is a mismatch.
SPAN_TOLERANCE_FRAMES = 0.5


class ParquetImages:
    """A camera stored as encoded images inside a Parquet data file (dtype "image"): the episode's
    image bytes, decoded by `load()` (memoized like `decode_clip`)."""

    def __init__(self, images: list[bytes | None], data_file: Path, episode_index: int, key: str, where: str):
        self.images, self.data_file, self.episode_index, self.key, self.where = (
            images,
            data_file,
            episode_index,
            key,
            where,
        )
        self.num_frames = len(images)

    def fingerprint(self) -> list[Any]:
        stat = self.data_file.stat()
        return [str(self.data_file.resolve()), stat.st_size, stat.st_mtime_ns, self.episode_index, self.key]

    def check(self) -> None:
        """The first and last images decode (the others are decoded when the frame cache is built)."""
        for t in {0, self.num_frames - 1}:
            _decode_png(self.images[t], self.where, t)

    def load(self) -> np.ndarray:
        return _decode_images(self)


@functools.lru_cache(maxsize=1)
def _decode_images(images: ParquetImages) -> np.ndarray:
    frames = np.stack([_decode_png(data, images.where, t) for t, data in enumerate(images.images)])
    frames.flags.writeable = False
    return frames


def _decode_png(data: bytes | None, where: str, t: int) -> np.ndarray:
    if not data:
        raise DataError(f"{where}: frame {t} has no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image_to_rgb8(image, f"{where}: frame {t}")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: frame {t}: cannot decode the image: {type(exc).__name__}: {exc}") from exc


def _column_matrix(table, key: str, where: str) -> np.ndarray:
    """A Parquet column of vectors (list / fixed-size list) or scalars as a [N, D] array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table[key].combine_chunks()
    if (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise DataError(f"{where}: column {key!r} has vectors of lengths {sorted(set(lengths.tolist()))}")
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), int(lengths[0]) if len(lengths) else 0)
    return column.to_numpy(zero_copy_only=False).reshape(-1, 1)


class _DataFile:
    """One data file's frames as arrays, read once for all its episodes."""

    def __init__(self, path: Path, keys: list[str], image_keys: list[str]):
        where = f"data file {path}"
        self.path = path
        table = read_parquet(path, where)
        missing = [
            k for k in [*keys, *image_keys, "episode_index", "frame_index"] if k not in table.column_names
        ]
        if missing:
            raise DataError(f"{where}: missing columns {missing} (it has {table.column_names})")
        self.episode_index = table["episode_index"].to_numpy()
        self.frame_index = table["frame_index"].to_numpy()
        self.columns = {key: _column_matrix(table, key, where) for key in keys}
        self.images = {}
        for key in image_keys:
            self.images[key] = [cell["bytes"] if cell else None for cell in table[key].to_pylist()]

    def rows(self, episode_index: int) -> np.ndarray:
        rows = np.flatnonzero(self.episode_index == episode_index)
        return rows[np.argsort(self.frame_index[rows], kind="stable")]


def load_lerobot_dataset(
    root: str | Path,
    *,
    camera: str | None = None,
    state_keys: Sequence[str] | None = None,
    action_key: str | None = None,
    on_error: OnError = "raise",
    expected_action_dim: int | None = None,
    expected_state_dim: int | None = None,
) -> LoadResult:
    """Load and validate every episode of the LeRobotDataset v3 at `root` (see the module docstring).

    `state_keys=[]` loads no state; None: `observation.state` when the dataset has it. Raises
    `DataError` whatever `on_error` says when the metadata is unreadable or no usable episode is left."""
    check_on_error(on_error)
    root = resolve_root(root)
    info = read_info(root)
    features, fps = info["features"], float(info["fps"])
    visual = [key for key, feature in features.items() if feature.get("dtype") in VISUAL]
    vectors = [key for key in features if key not in visual]
    if not visual:
        raise DataError(f"{root}: no visual feature (dtype video or image) among {list(features)}")
    if camera is None:
        camera = visual[0]
        log.info("data.camera: %s (the first of the dataset's cameras %s)", camera, visual)
    elif camera not in visual:
        raise DataError(
            f"{root}: data.camera={camera!r} is not a visual feature; the dataset's cameras: {visual}"
        )
    action_key = action_key or "action"
    if state_keys is None:
        state_keys = ["observation.state"] if "observation.state" in features else []
    for kind, key in [("action_key", action_key), *(("state_keys", k) for k in state_keys)]:
        if key not in vectors:
            raise DataError(
                f"{root}: data.{kind} has unknown feature {key!r}; the dataset's vector features: {vectors}"
            )
    if features[camera]["dtype"] == "video" and not info.get("video_path"):
        raise DataError(f"{root}/meta/info.json: {camera!r} is a video feature but video_path is not set")

    tasks = read_tasks(root)
    image_keys = [key for key in visual if features[key]["dtype"] == "image"]
    keys = [action_key, *state_keys, *(k for k in ("timestamp", "task_index") if k in features)]
    data_files: dict[Path, _DataFile | DataError] = {}
    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    rows = read_episode_table(root)
    for row in rows:
        episode_id = f"episode_{row['episode_index']:06d}"
        try:
            path = root / info["data_path"].format(
                chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
            )
            if path not in data_files:
                try:
                    data_files[path] = _DataFile(path, keys, image_keys)
                except DataError as error:
                    data_files[path] = error
            data = data_files[path]
            if isinstance(data, DataError):
                raise DataError(f"episode {episode_id!r}: {data}")
            episodes.append(
                _episode(
                    root,
                    info,
                    row,
                    episode_id,
                    data,
                    path,
                    camera,
                    visual,
                    state_keys,
                    action_key,
                    tasks,
                    fps,
                )
            )
        except DataError as error:
            skip_or_raise(error, on_error, skipped, episode_id)
    episodes = _drop_unreadable_video(episodes, on_error, skipped)
    return finish_loading(
        episodes,
        skipped,
        expected_action_dim=expected_action_dim,
        expected_state_dim=expected_state_dim,
        on_error=on_error,
        empty=f"{root}: no usable episodes ({len(rows)} in the table)",
    )


def _episode(
    root: Path,
    info: dict[str, Any],
    row: dict[str, Any],
    episode_id: str,
    data: _DataFile,
    data_path: Path,
    camera: str,
    visual: list[str],
    state_keys: Sequence[str],
    action_key: str,
    tasks: dict[int, str],
    fps: float,
) -> Episode:
    where = f"episode {episode_id!r} ({data_path})"
    rows = data.rows(row["episode_index"])
    steps = len(rows)
    if steps == 0 or steps != row["length"]:
        raise DataError(
            f"{where}: {steps} frames in the data file but length {row['length']} in meta/episodes"
        )
    actions = as_float_matrix(data.columns[action_key][rows], key=action_key, where=where)
    states = [as_float_matrix(data.columns[k][rows], key=k, where=where) for k in state_keys]
    states = np.concatenate(states, axis=1) if states else np.zeros((steps, 0), dtype=np.float32)
    timestamps = (
        data.columns["timestamp"][rows, 0].astype(np.float64) if "timestamp" in data.columns else None
    )
    if "task_index" in data.columns:
        unknown = set(data.columns["task_index"][rows, 0].tolist()) - tasks.keys()
        if unknown:
            raise DataError(f"{where}: task_index {sorted(unknown)} not in meta/tasks.parquet")
        per_step = [tasks[int(i)] for i in data.columns["task_index"][rows, 0]]
    else:
        per_step = list(row.get("tasks") or [])
    instructions = list(dict.fromkeys(t.strip() for t in per_step if isinstance(t, str) and t.strip()))
    if not instructions:
        raise DataError(f"{where}: no task (instruction) for the episode")

    sources = {
        key: _camera_source(root, info, row, key, rows, data, steps, fps, episode_id) for key in visual
    }
    main = sources.pop(camera)
    if isinstance(main, VideoClip):
        _check_span(root, info, row, camera, main, fps, episode_id)
    else:
        main.check()
    return Episode(
        episode_id=episode_id,
        source="lerobot",
        path=root,
        instruction=instructions[0],
        instructions=instructions,
        actions=actions,
        states=states,
        success=row.get("success") if isinstance(row.get("success"), bool) else None,
        fps=fps,
        timestamps=timestamps,
        video=main,
        camera=camera,
        cameras=sources,
        metadata={
            "episode_index": row["episode_index"],
            "robot_type": info.get("robot_type"),
            "data_file": str(data_path),
            "state_keys": list(state_keys),
            "action_key": action_key,
        },
    )


def _camera_source(root, info, row, key, rows, data, steps, fps, episode_id) -> VideoClip | ParquetImages:
    if key in data.images:
        where = f"episode {episode_id!r} ({data.path}): {key!r}"
        return ParquetImages([data.images[key][r] for r in rows], data.path, row["episode_index"], key, where)
    needed = [f"videos/{key}/{k}" for k in ("chunk_index", "file_index", "from_timestamp")]
    if any(row.get(k) is None for k in needed):
        raise DataError(f"episode {episode_id!r} ({root}/meta/episodes): no {needed} for video {key!r}")
    path = root / info["video_path"].format(
        video_key=key, chunk_index=row[needed[0]], file_index=row[needed[1]]
    )
    return VideoClip(path, float(row[needed[2]]), steps, fps, episode_id)


def _drop_unreadable_video(episodes: list[Episode], on_error: OnError, skipped: list) -> list[Episode]:
    """The episodes whose last frame decodes (each video file opened once): a truncated MP4 that opens
    (header first) fails here, at load time, rather than when the frame cache is built."""
    by_file: dict[Path, list[Episode]] = {}
    for episode in episodes:
        if isinstance(episode.video, VideoClip):
            by_file.setdefault(episode.video.path, []).append(episode)
    bad = set()
    for path, group in by_file.items():
        ends = [e.video.start + (e.video.num_frames - 1) / e.video.fps for e in group]
        for episode, ok in zip(group, frames_decode(path, ends, group[0].video.fps), strict=True):
            if ok:
                continue
            error = DataError(
                f"episode {episode.episode_id!r} ({path}): its last frame (at {ends[group.index(episode)]:.3f} s) "
                "does not decode: the video is truncated or damaged"
            )
            skip_or_raise(error, on_error, skipped, episode.episode_id)
            bad.add(episode.episode_id)
    return [e for e in episodes if e.episode_id not in bad]


def _check_span(root, info, row, key, clip: VideoClip, fps: float, episode_id: str) -> None:
    """The episode's video span holds its frames: the table's span is length / fps and the file is long
    enough (a truncated file fails to open, or ends early)."""
    where = f"episode {episode_id!r} ({clip.path})"
    if not clip.path.is_file():
        raise DataError(f"{where}: missing video file for {key!r}")
    end = row.get(f"videos/{key}/to_timestamp")
    if end is not None and abs((end - clip.start) * fps - clip.num_frames) > SPAN_TOLERANCE_FRAMES:
        raise DataError(
            f"{where}: the video span {clip.start:.3f}-{end:.3f} s holds {(end - clip.start) * fps:.1f} frames at "
            f"{fps} fps, the data file has {clip.num_frames}"
        )
    video = probe_video(clip.path, where)
    if clip.start + clip.num_frames / fps > video.duration + SPAN_TOLERANCE_FRAMES / fps:
        raise DataError(
            f"{where}: the episode's {clip.num_frames} frames from {clip.start:.3f} s end after the video "
            f"({video.duration:.3f} s): truncated, or the episode table does not match it"
        )
