"""Video frames with PyAV (FFmpeg): an episode's clip of an MP4 decoded on access, and MP4 encoding.

LeRobotDataset v3 stores several episodes back to back in one MP4 per camera and chunk; an episode's
frames are the ones whose presentation time lies in [from_timestamp, from_timestamp + T / fps).
`VideoClip` names that span; `decode_clip` decodes it to uint8 [T, H, W, 3] RGB, keeping the last
clip decoded in memory so that reading its frames one by one (`Episode.frame`, the frame cache's
build) decodes the video once. Training reads the decoded frames from the frame cache
(`vla.data.cache`), keyed by the file's size and mtime and the clip, so the video is decoded once
per dataset, not once per epoch.

Every failure of the decoder (a truncated file, a missing stream, frames missing from the span)
becomes a `DataError` naming the file and the episode.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vla.data.limits import MAX_IMAGE_PIXELS, DataError


class LazyFrames(Protocol):
    """An episode's frames kept encoded until needed (`Episode.video`): a `VideoClip`, or
    `vla.data.lerobot.ParquetImages` (LeRobot images stored inside Parquet)."""

    num_frames: int

    def load(self) -> np.ndarray:
        """All frames, uint8 [T, H, W, 3] RGB; the last one loaded is kept, so frame-by-frame reads
        decode once."""

    def fingerprint(self) -> list[Any]:
        """What the decoded frames depend on (the frame cache's key)."""


@dataclass(frozen=True)
class VideoClip:
    """`num_frames` frames at `fps` starting at `start` seconds into the video file `path`."""

    path: Path
    start: float
    num_frames: int
    fps: float
    episode: str
    """The episode the clip belongs to (error messages name it)."""

    def fingerprint(self) -> list[Any]:
        """What the decoded frames depend on: the file (path, size, mtime) and the span."""
        stat = os.stat(self.path)
        return [str(Path(self.path).resolve()), stat.st_size, stat.st_mtime_ns, self.start, self.num_frames]

    def load(self) -> np.ndarray:
        """The clip's frames, uint8 [T, H, W, 3] RGB (read-only)."""
        return decode_clip(self)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    duration: float
    """Seconds from the first frame's time to the end of the last frame."""
    codec: str
    pix_fmt: str | None


def _where(clip: VideoClip) -> str:
    return f"episode {clip.episode!r} ({clip.path})"


@functools.lru_cache(maxsize=64)
def _probe(path: str, size: int, mtime_ns: int) -> VideoInfo:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise DataError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # microseconds (av.time_base)
        else:
            raise DataError(f"{path}: the video's duration is unknown")
        ctx = stream.codec_context
        return VideoInfo(ctx.width, ctx.height, duration, ctx.name, ctx.pix_fmt)


def probe_video(path: Path, where: str) -> VideoInfo:
    """Size, duration and codec of the first video stream, from the container's header (memoized per
    file size and mtime); a DataError naming `where` when the file cannot be opened."""
    try:
        stat = os.stat(path)
        info = _probe(str(path), stat.st_size, stat.st_mtime_ns)
    except DataError as error:
        raise DataError(f"{where}: {error}") from None
    except Exception as exc:  # av.error.InvalidDataError, OSError, ...: the file is at fault
        raise DataError(f"{where}: cannot open the video {path}: {type(exc).__name__}: {exc}") from exc
    if info.width * info.height > MAX_IMAGE_PIXELS:
        raise DataError(f"{where}: {path} declares {info.width} x {info.height} frames; at most "
                        f"{MAX_IMAGE_PIXELS:,} pixels are read")  # fmt: skip
    return info


def frames_decode(path: Path, times: list[float], fps: float) -> list[bool]:
    """Whether the frame shown at each of `times` (seconds) decodes: one seek and a frame or two each
    (one open of the file). A truncated MP4 whose header is at its start (LeRobot's "faststart" files)
    opens and reports its full duration; only decoding shows which frames are gone."""
    import av

    readable = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for time in times:
            found = False
            try:
                container.seek(int(time / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.time is not None and frame.time > time - 0.5 / fps:
                        found = abs(frame.time - time) < 0.5 / fps
                        break
            except av.error.FFmpegError:
                found = False
            readable.append(found)
    return readable


# One clip: an episode's frames are read one by one after each other, by one process at a time.
@functools.lru_cache(maxsize=1)
def decode_clip(clip: VideoClip) -> np.ndarray:
    """Decode the clip's frames to uint8 [T, H, W, 3] RGB (read-only; the last clip is memoized).

    Frame i is the one shown at `start + i / fps` (the nearest presentation time); a frame missing
    from the span is a DataError, as LeRobot's own reader refuses frames off their timestamps."""
    import av

    where = _where(clip)
    probe_video(clip.path, where)
    frames: np.ndarray | None = None
    filled = np.zeros(clip.num_frames, dtype=bool)
    try:
        with av.open(str(clip.path)) as container:
            stream = container.streams.video[0]
            if clip.start > 0:  # to the keyframe at or before the clip's first frame
                container.seek(int(clip.start / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                index = round((frame.time - clip.start) * clip.fps)
                if index < 0:
                    continue
                if index >= clip.num_frames:
                    break
                if frames is None:
                    frames = np.empty((clip.num_frames, frame.height, frame.width, 3), dtype=np.uint8)
                if not filled[index]:
                    frames[index] = frame.to_ndarray(format="rgb24")
                    filled[index] = True
    except DataError:
        raise
    except Exception as exc:  # av.error.* for corrupt streams
        raise DataError(f"{where}: cannot decode the video: {type(exc).__name__}: {exc}") from exc
    if not filled.all():
        missing = np.flatnonzero(~filled)
        raise DataError(
            f"{where}: the video has {int(filled.sum())} of the episode's {clip.num_frames} frames from "
            f"{clip.start:.3f} s at {clip.fps} fps (first missing: frame {int(missing[0])}); the file is "
            "truncated or its timestamps do not match the episode table"
        )
    frames.flags.writeable = False
    return frames


def encode_video(
    frames: Iterable[np.ndarray],
    path: Path,
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 18,
    gop: int = 2,
) -> int:
    """Write uint8 [H, W, 3] RGB frames to an MP4 at `fps` as `codec` / yuv420p; frame i is shown at
    i / fps exactly (LeRobot locates frames by timestamp). Returns the number of frames written.

    `gop` 2 (a keyframe every other frame) is what LeRobot encodes with: any frame decodes after at
    most one other, for random access during training."""
    import av

    count = 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1) / Fraction(fps).limit_denominator(100_000)
        stream.options = {"crf": str(crf), "g": str(gop)}
        for image in frames:
            if count == 0:
                height, width = image.shape[:2]
                if height % 2 or width % 2:
                    raise DataError(f"{path}: {codec}/yuv420p needs even frame sizes, got {width} x {height}")
                stream.width, stream.height = width, height
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = count
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode())
    return count
